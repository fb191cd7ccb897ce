"""fit(): train one architecture, writing its run folder as it goes (config, history, best.pt, last.pt).

Reads top to bottom: ``setup`` builds everything a run needs into a ``Run``; ``fit`` loops over
epochs, each one ``engine.train_one_epoch`` then ``end_epoch`` (validate, history, checkpoints).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

import data
from common.errors import UserError
from common.progress import plural
from core import distributed, engine
from core.checkpoint import preprocess_from_checkpoint, rng_state, save_checkpoint
from core.hardware import enable_fast_kernels, make_runtime, out_of_memory_message
from core.runs import link_latest, write_history, write_json, write_text_atomic
from core.training.config import TrainConfig
from core.training.ema import ModelEMA
from core.training.phases import Phases
from core.training.pretrained import load_pretrained
from core.training.resume import (COUNTERS, Counters, Resume, accumulated, earlier_timing, lr_segments, restore,
                                  segmented_schedule, with_history)
from core.training.run_folder import check_writable, new_run_dir, run_info
from core.training.signals import StopSignal
from models import build_model, display_name

__all__ = ["Resume", "fit", "check_writable", "new_run_dir"]  # train.py and core/training/cv.py import these from here


@dataclass
class Run:
    """Everything ``fit`` works with, built once, complete, by ``setup``."""

    arch: str
    cfg: TrainConfig
    run_dir: Path
    raw: torch.nn.Module  # the plain model, whose state_dict is saved
    learner: engine.Learner
    train_loader: data.BatchLoader
    valid_loader: data.BatchLoader
    eval_tf: torch.nn.Module
    schedule: Callable[[int], float]  # global step -> learning rate
    dist: distributed.Dist
    meta: dict[str, Any]  # what every checkpoint carries besides the state: arch, classes, preprocessing, config
    counters: Counters
    last_save: float = field(default_factory=time.monotonic)
    tb: Any = None  # core.training.tensorboard.TensorBoardLog with --tensorboard (main process only)
    ema: ModelEMA | None = None  # with --ema: what is validated and saved in best.pt
    phases: Phases = field(default_factory=Phases)  # wall time per phase -> timing.json
    saved: tuple[int, int] | None = None  # (epoch, step) that last.pt holds, once there is one
    resumed_at: int | None = None  # epochs finished when this session resumed the run
    earlier_timing: dict[str, float] = field(default_factory=dict)  # timing.json of the earlier sessions

    @property
    def evaluated(self) -> torch.nn.Module:
        return self.ema.module if self.ema else self.raw

    @property
    def steps(self) -> int:
        return len(self.train_loader)

    def snapshot(self, sums: engine.EpochSums | None) -> dict[str, Any]:
        """The full training state as a plain dict (``torch.load(weights_only=True)`` reads it)."""
        learner = self.learner
        return {**self.meta, "model": self.raw.state_dict(), "optimizer": learner.optimizer.state_dict(),
                "scaler": learner.scaler.state_dict(), "rng": rng_state(),
                **{k: getattr(self.counters, k) for k in COUNTERS}, "sums": sums.state_dict() if sums else None,
                **({"ema": self.ema.state_dict()} if self.ema else {})}

    def best_state(self, row: dict[str, float]) -> dict[str, Any]:
        """What best.pt holds: the weights that were validated and the metadata eval.py needs, no training
        state (optimizer, scaler, RNGs: three times the weights' size; last.pt keeps them)."""
        c = self.counters
        return {**self.meta, "model": self.evaluated.state_dict(), "epoch": c.epoch, "step": c.step,
                "best_acc": c.best_acc, "best_epoch": c.best_epoch, "history": c.history, "valid": row}

    def save_last(self, sums: engine.EpochSums | None, extra: dict[str, Any] | None = None) -> None:
        """last.pt, on every rank together: the state must be finite everywhere, and each rank's RNG state
        and partial sums go into it (gathered on rank 0, which writes)."""
        c = self.counters
        at = (c.epoch + 1, c.step) if c.step else (c.epoch, self.steps)
        check_state_finite(self, sums, at)
        mine = {"rng": rng_state(), "sums": sums.state_dict() if sums else None,
                **({"ema_buffers": self.ema.rank_buffers()} if self.ema and self.dist.enabled else {})}
        ranks = distributed.gather_objects(mine, self.dist)
        if self.dist.is_main:
            with self.phases.time("checkpoints"):
                save_checkpoint({**self.snapshot(sums), **({"ranks": ranks} if self.dist.enabled else {}),
                                 **(extra or {})}, self.run_dir / "last.pt")
        self.saved, self.last_save = (c.epoch, c.step), time.monotonic()


def fit(arch: str, cfg: TrainConfig, source: data.DataSource, device: torch.device, dist: distributed.Dist,
        resume: Resume | None) -> Path:
    """Train one architecture for cfg.epochs, writing the run folder as it goes; returns it."""
    cfg = replace(cfg, augment=cfg.augment or data.default_augment(source.layout))  # stored as chosen
    phases = Phases(sync=torch.cuda.synchronize if device.type == "cuda" else None)
    with phases.time("setup"):
        run = setup(arch, cfg, source, device, dist, resume, phases)
    stop = StopSignal(verbose=dist.is_main)  # before the first print, so a signal from now on saves last.pt
    if dist.is_main:
        announce(run, source)
        print(data.audit_training(run.run_dir, source, (run.train_loader.dataset, run.valid_loader.dataset)))
    try:
        for epoch in range(run.counters.epoch, cfg.epochs):
            run.train_loader.set_epoch(epoch, start_batch=run.counters.step)
            run.raw.freeze_backbone(epoch < cfg.freeze_epochs)
            sums = (engine.EpochSums.from_state(run.counters.sums, device, run.counters.step) if run.counters.sums
                    else engine.EpochSums.zeros(device))
            if run.tb:
                run.tb.start_epoch(sums.loss, sums.seen)
            with phases.time("train steps"):
                done = train_epoch(run, epoch, sums, stop)
            if not done:
                raise SystemExit(stop.exit_message(run.run_dir, epoch + 1, run.counters.step))
            end_epoch(run, epoch, sums)
    except torch.OutOfMemoryError:
        raise UserError(out_of_memory_message(cfg.batch_size, cfg.image_size)) from None
    except engine.NonFiniteLoss as exc:
        raise UserError(non_finite_message(run, exc)) from None
    finally:
        stop.restore()
        if run.tb:
            run.tb.close()
    finish_run(run)
    return run.run_dir


def train_epoch(run: Run, epoch: int, sums: engine.EpochSums, stop: StopSignal) -> bool:
    """One epoch of ``engine.train_one_epoch`` with mid-epoch saves; False if a signal stopped it."""
    cfg, steps = run.cfg, run.steps

    def after_step(done: int, sums: engine.EpochSums) -> bool:
        if run.ema:
            run.ema.update(run.raw, epoch * steps + done - 1)
        if run.tb:
            run.tb.step(epoch * steps + done, run.schedule(epoch * steps + done - 1), sums.loss, sums.seen)
        due = done < steps and bool((cfg.save_every and done % cfg.save_every == 0) or (
            cfg.save_minutes and time.monotonic() - run.last_save > cfg.save_minutes * 60))
        # Every rank stops or saves at the same step: a signal or a clock on any rank decides for all.
        stopping, due = distributed.any_rank([stop.signum is not None, due], run.dist)
        if stopping or due:
            run.counters.step = done
            run.save_last(sums)
        return stopping

    return engine.train_one_epoch(run.learner, run.train_loader, epoch + 1, sums,
                                  lambda s: run.schedule(epoch * steps + s), after_step)


def check_state_finite(run: Run, sums: engine.EpochSums | None, at: tuple[int, int]) -> None:
    """NonFiniteLoss on every rank if the loss or the weights are NaN/inf on any (one host sync)."""
    tensors = [t for m in (run.raw, run.ema.module if run.ema else None) if m for t in m.state_dict().values()
               if t.is_floating_point()]
    weights_ok = torch.stack([torch.isfinite(t).all() for t in tensors]).all()
    loss_ok = (sums.bad_step < 0) & torch.isfinite(sums.objective) if sums else torch.ones((), dtype=torch.bool)
    loss_bad, weights_bad = distributed.any_rank([not bool(loss_ok), not bool(weights_ok)], run.dist)
    if loss_bad or weights_bad:
        step = int(sums.bad_step) + 1 if sums is not None and int(sums.bad_step) >= 0 else at[1]
        raise engine.NonFiniteLoss(at[0], step, "the training loss" if loss_bad else "the weights")


def non_finite_message(run: Run, exc: engine.NonFiniteLoss) -> str:
    """One line: what went wrong, what last.pt holds (never a non-finite state) and how to go on."""
    if run.saved is None:
        return f"{exc}; no checkpoint was written. Try a lower -r/--learning_rate or --no-amp"
    epoch, step = run.saved
    held = f"epoch {epoch + 1} up to step {step}" if step else f"the end of epoch {epoch}"
    return (f"{exc}; {run.run_dir / 'last.pt'} holds {held}, the last finite state. Continue it with a lower "
            f"rate: python train.py --resume {run.run_dir} -r {run.cfg.learning_rate / 10:.2g} (or --no-amp)")


def end_epoch(run: Run, epoch: int, sums: engine.EpochSums) -> None:
    """Validate, append the history row, write history.csv, best.pt (if better) and last.pt."""
    with run.phases.time("validation"):
        row = validate(run, sums, epoch)
    check_state_finite(run, sums, (epoch + 1, run.steps))  # before anything is written
    c = run.counters
    c.history.append(row)
    best = row["valid_acc"] > c.best_acc
    if best:
        c.best_acc, c.best_epoch = row["valid_acc"], epoch + 1
    c.epoch, c.step, c.sums = epoch + 1, 0, None
    if run.dist.is_main:
        with run.phases.time("history"):
            write_history(run.run_dir, c.history)
        if best:
            with run.phases.time("checkpoints"):
                save_checkpoint(run.best_state(row), run.run_dir / "best.pt")
    run.save_last(None, {"valid": row})
    if run.dist.is_main:
        write_json(run.run_dir / "timing.json", accumulated(run.earlier_timing, run.phases.summary()))
        print(epoch_line(row, run.cfg.epochs, best), flush=True)


def validate(run: Run, sums: engine.EpochSums, epoch: int) -> dict[str, float]:
    """Validate and reduce the epoch's sums over all processes into one history row."""
    for module in (run.raw, run.ema.module) if run.ema else (run.raw,):  # both are compared and saved
        distributed.average_buffers(module, run.dist)
    n = run.meta["num_classes"]
    confusion = torch.zeros(n, n, dtype=torch.int64, device=run.learner.rt.device) if run.cfg.tensorboard else None
    valid = engine.evaluate(run.evaluated, run.valid_loader, run.eval_tf, run.learner.rt, confusion=confusion)
    totals = torch.stack([sums.loss, sums.objective, sums.correct.double(), sums.seen.double(),
                          *(v.double() for v in valid)])
    loss, objective, correct, seen, vloss, vcorrect, vseen = distributed.all_reduce_sum(totals, run.dist).tolist()
    # train_loss and valid_loss are both plain cross-entropy; train_objective is what was minimised.
    row = {"epoch": epoch + 1, "train_loss": loss / seen, "train_acc": correct / seen,
           "valid_loss": vloss / vseen, "valid_acc": vcorrect / vseen,
           "lr": run.schedule(epoch * run.steps + run.steps - 1), "seconds": round(sums.seconds, 2),
           "train_objective": objective / seen}
    if confusion is not None:  # every process takes part in the sum; only the main one writes
        confusion = distributed.all_reduce_sum(confusion, run.dist).cpu().numpy()
        if run.tb:
            run.tb.epoch(row, confusion)
    return row


def finish_run(run: Run) -> None:
    """Check that all processes agree and print where the best weights are."""
    for what, module in (("model", run.raw), ("EMA", run.ema.module if run.ema else None)):
        differs = distributed.first_difference(module.state_dict(), run.dist) if module else None
        if differs:
            raise RuntimeError(f"the processes ended with different {what} tensors ({differs}); "
                               "please report this as a bug")
    if run.dist.is_main:
        name = display_name(run.arch)
        if run.dist.enabled:
            print(f"{name}: parameters identical on all {run.dist.world_size} processes")
        print(f"{name}: {run.phases.line()}")  # this session; timing.json adds up all sessions of the run
        write_json(run.run_dir / "timing.json", accumulated(run.earlier_timing, run.phases.summary()))
        print(f"{name}: best valid accuracy {run.counters.best_acc:.2%} at epoch {run.counters.best_epoch}; "
              f"weights {run.run_dir / 'best.pt'}\n  evaluate: python eval.py -m {run.run_dir}")


def epoch_line(row: dict[str, float], epochs: int, best: bool) -> str:
    return (f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.2%}  "
            f"valid loss {row['valid_loss']:.4f} acc {row['valid_acc']:.2%}  lr {row['lr']:.2e}  "
            f"{row['seconds']:.1f}s{'  * best' if best else ''}")


# ------------------------------------------------------------------------------------ setup


def setup(arch: str, cfg: TrainConfig, source: data.DataSource, device: torch.device, dist: distributed.Dist,
          resume: Resume | None, phases: Phases) -> Run:
    """Data, model, optimizer and counters for one architecture; restored from ``resume`` if given.

    The order of the random draws (seeding, weight init, then the restored RNG state) is what
    makes a resumed run equal an uninterrupted one; keep it.
    """
    torch.manual_seed(cfg.seed + dist.rank)
    np.random.seed(cfg.seed)
    enable_fast_kernels(device)  # training only: eval.py and predict.py keep PyTorch's defaults
    rt = make_runtime(device, cfg.amp, cfg.channels_last)
    prep = preprocess_from_checkpoint(resume.ckpt, resume.run_dir / "last.pt") if resume else prepare(source, cfg, dist)
    train_loader, valid_loader = make_loaders(*open_datasets(source, prep, cfg, dist), cfg, device, dist)
    raw, learner, ema = make_learner(arch, source, prep, cfg, rt, dist, load_weights=resume is None)
    counters = (restore(resume, (raw, ema), learner.optimizer, learner.scaler, device, dist) if resume
                else Counters())
    segments, note = lr_segments(resume.ckpt if resume else None, cfg, counters.epoch)
    if note and dist.is_main:
        print(note)
    run_dir = resume.run_dir if resume else new_run_dir(cfg, arch, dist)
    steps = len(train_loader)
    return Run(arch, cfg, run_dir, raw, learner, train_loader, valid_loader,
               eval_tf=data.BatchTransform(prep, train=False).to(device),
               schedule=segmented_schedule(segments, cfg, steps), dist=dist,
               meta=checkpoint_meta(arch, cfg, source, prep, segments), counters=counters,
               tb=open_tensorboard(run_dir, source, steps, counters, cfg, dist), ema=ema, phases=phases,
               saved=(counters.epoch, counters.step) if resume else None,
               resumed_at=counters.epoch if resume else None,
               earlier_timing=earlier_timing(run_dir, resume is not None) if dist.is_main else {})


def make_learner(arch: str, source: data.DataSource, prep: data.Preprocess, cfg: TrainConfig, rt: engine.Runtime,
                 dist: distributed.Dist, load_weights: bool) -> tuple[torch.nn.Module, engine.Learner, ModelEMA | None]:
    """The plain model, the Learner (model as trained, optimizer, loss, gradient scaler, augmentation) and,
    with --ema, the weight average."""
    raw, model = make_model(arch, len(source.classes), cfg, rt, dist, load_weights)
    optimizer = engine.make_optimizer(raw, cfg.optimizer, cfg.learning_rate, cfg.momentum, cfg.weight_decay,
                                      rt.device, backbone_lr_scale=cfg.backbone_lr_scale)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16)
    weights = data.class_weights(source.splits["train"].labels, cfg.class_weights, num_classes=len(source.classes))
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights.to(rt.device) if cfg.class_weights != "none" else None,
                                        label_smoothing=cfg.label_smoothing)
    augment = data.BatchTransform(prep, train=True, policy=cfg.augment).to(rt.device)
    learner = engine.Learner(model, loss_fn, optimizer, scaler, augment, rt, show_progress=dist.is_main)
    return raw, learner, ModelEMA(raw, cfg.ema_decay) if cfg.ema else None


def checkpoint_meta(arch: str, cfg: TrainConfig, source: data.DataSource, prep: data.Preprocess,
                    segments: list[dict]) -> dict[str, Any]:
    """What every checkpoint carries besides the state: architecture, classes, preprocessing, settings."""
    return {"arch": arch, "model_options": {"head": cfg.head}, "num_classes": len(source.classes),
            "classes": list(source.classes), "task": source.task, "preprocess": prep.to_dict(),
            "config": asdict(replace(cfg, models=(arch,))), "lr_segments": segments}


def open_tensorboard(run_dir: Path, source: data.DataSource, steps: int, counters: Counters, cfg: TrainConfig,
                     dist: distributed.Dist) -> Any:
    """The TensorBoard log with --tensorboard, on the main process only (else None)."""
    if not (cfg.tensorboard and dist.is_main):
        return None
    from core.training.tensorboard import TensorBoardLog

    return TensorBoardLog(run_dir, source.classes, steps, start_step=counters.epoch * steps + counters.step)


def announce(run: Run, source: data.DataSource) -> None:
    """config.json, storage/latest and the run's first line."""
    cfg, rt, dist = run.cfg, run.learner.rt, run.dist
    info = run_info(run.arch, run.meta, run.dist.world_size, source)
    write_json(run.run_dir / "config.json", with_history(info, run.run_dir, run.resumed_at))
    write_text_atomic(run.run_dir / data.SPLITS_FILE, data.splits_csv(source))  # eval and --resume read it back
    link_latest(Path(cfg.out), run.run_dir)
    print(f"{display_name(run.arch)}: {sum(p.numel() for p in run.raw.parameters()):,} parameters, "
          f"{plural(run.steps, 'step')}/epoch on {rt.device}{' x' + str(dist.world_size) if dist.enabled else ''}"
          f"{', AMP ' + str(rt.amp_dtype).removeprefix('torch.') if rt.amp_dtype else ''}; augment {cfg.augment}"
          f"{', EMA ' + format(cfg.ema_decay, 'g') if cfg.ema else ''}{', deterministic' if cfg.deterministic else ''}"
          f"; run folder {run.run_dir}")


def make_loaders(train_set: data.ImageDataset, valid_set: data.ImageDataset, cfg: TrainConfig,
                 device: torch.device, dist: distributed.Dist) -> tuple[data.BatchLoader, data.BatchLoader]:
    """This process's shard of the training and validation batches."""
    if cfg.batch_size * dist.world_size > len(train_set):
        raise UserError(f"-b {cfg.batch_size} is larger than the training set ({len(train_set)} images"
                        + (f" over {dist.world_size} processes" if dist.enabled else "")
                        + f"); use -b {max(1, len(train_set) // dist.world_size)} or less")
    workers = cfg.workers if cfg.workers >= 0 else (4 if device.type == "cuda" else 0)
    pin = device.type == "cuda"
    shard = data.Sampling(rank=dist.rank, world_size=dist.world_size)
    train_order = replace(shard, shuffle=True, seed=cfg.seed, drop_single=True, balanced=cfg.balanced_sampler)
    train_loader = data.make_loader(train_set, cfg.batch_size, train_order, workers=workers, pin_memory=pin)
    valid_loader = data.make_loader(valid_set, cfg.batch_size * 2, shard, workers=workers, pin_memory=pin)
    return train_loader, valid_loader


def make_model(arch: str, num_classes: int, cfg: TrainConfig, rt: engine.Runtime, dist: distributed.Dist,
               load_weights: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the plain model, whose state_dict is saved; the model to train: DDP-wrapped and/or compiled)."""
    raw = build_model(arch, num_classes, head=cfg.head, zero_init_residual=cfg.zero_init_residual)
    if cfg.pretrained and load_weights and dist.is_main:  # DDP then copies rank 0's weights to the others
        print(f"{display_name(arch)}: {load_pretrained(raw, cfg.pretrained, arch)}")
    if cfg.sync_bn and dist.enabled:
        raw = torch.nn.SyncBatchNorm.convert_sync_batchnorm(raw)
    raw = raw.to(rt.device, memory_format=torch.channels_last if rt.channels_last else torch.preserve_format)
    # Frozen backbone weights get no gradients; DDP must be told to expect that.
    model: torch.nn.Module = DistributedDataParallel(
        raw, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
        find_unused_parameters=cfg.freeze_epochs > 0) if dist.enabled else raw
    if cfg.compile:
        model = torch.compile(model, mode=None if cfg.compile_mode == "default" else cfg.compile_mode)
    return raw, model


def prepare(source: data.DataSource, cfg: TrainConfig, dist: distributed.Dist) -> data.Preprocess:
    """Measure crop and statistics once (rank 0 builds the cache, the others then read it)."""
    cache_dir = Path(cfg.out) / "cache" if cfg.cache else None
    mode = "fundus" if source.task == "retinopathy" else "center"
    prep = None
    if dist.is_main:
        prep = data.fit_preprocess(source.splits["train"], cfg.image_size, mode,
                                   imagenet_stats=cfg.pretrained is not None, cache_dir=cache_dir)
    return distributed.broadcast_object(prep, dist)


def open_datasets(source: data.DataSource, prep: data.Preprocess, cfg: TrainConfig,
                  dist: distributed.Dist) -> tuple[data.ImageDataset, data.ImageDataset]:
    """Train and valid datasets; rank 0 opens (and if needed builds) the caches before the others."""
    cache_dir = Path(cfg.out) / "cache" if cfg.cache else None
    open_both = lambda: tuple(data.ImageDataset(source.splits[s], prep, cache_dir) for s in ("train", "valid"))  # noqa: E731
    sets = open_both() if dist.is_main else None
    distributed.barrier(dist)  # the caches exist now
    if not dist.is_main:
        sets = open_both()
    distributed.barrier(dist)
    return sets
