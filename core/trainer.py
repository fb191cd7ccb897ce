"""fit(): train one architecture, writing its run folder as it goes (config, history, best.pt, last.pt).

Reads top to bottom: ``setup`` builds everything a run needs into a ``Run``; ``fit`` loops over
epochs, each one ``engine.train_one_epoch`` then ``end_epoch`` (validate, history, checkpoints).
"""
from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

import data
from core import distributed, engine
from core.checkpoint import CheckpointError, preprocess_from_checkpoint, rng_state, save_checkpoint, set_rng_state
from core.config import TrainConfig
from core.ema import ModelEMA
from core.phases import Phases
from core.errors import UserError
from core.hardware import enable_fast_kernels, make_runtime, out_of_memory_message
from core.pretrained import load_pretrained
from core.progress import plural
from core.runs import link_latest, write_history, write_json, write_text_atomic
from core.signals import StopSignal
from models import build_model, display_name

COUNTERS = ("epoch", "step", "history", "best_acc", "best_epoch")  # the loop's state, saved in every checkpoint


@dataclass(frozen=True)
class Resume:
    """A training state to continue: the loaded checkpoint and the run folder it belongs to."""

    ckpt: dict[str, Any]
    run_dir: Path


@dataclass
class Counters:
    """Where the loop is; saved in every checkpoint (``sums``: the unfinished epoch's running sums)."""

    epoch: int = 0
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_acc: float = -1.0
    best_epoch: int = 0
    sums: dict[str, Any] | None = None


@dataclass
class Run:
    """Everything ``fit`` works with, built once by ``setup``."""

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
    tb: Any = None  # core.tensorboard.TensorBoardLog with --tensorboard (main process only)
    ema: ModelEMA | None = None  # with --ema: what is validated and saved in best.pt
    phases: Phases = field(default_factory=Phases)  # wall time per phase -> timing.json

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
        with self.phases.time("checkpoints"):
            save_checkpoint({**self.snapshot(sums), **(extra or {})}, self.run_dir / "last.pt")
        self.last_save = time.monotonic()


def fit(arch: str, cfg: TrainConfig, source: data.DataSource, device: torch.device, dist: distributed.Dist,
        resume: Resume | None) -> Path:
    """Train one architecture for cfg.epochs, writing the run folder as it goes; returns it."""
    cfg = replace(cfg, augment=cfg.augment or data.default_augment(source.layout))  # stored as chosen
    phases = Phases(sync=torch.cuda.synchronize if device.type == "cuda" else None)
    with phases.time("setup"):
        run = setup(arch, cfg, source, device, dist, resume)
    run.phases = phases
    stop = StopSignal()  # before the first print, so a signal from now on saves last.pt
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
    finally:
        stop.restore()
        if run.tb:
            run.tb.close()
    finish(run)
    return run.run_dir


def train_epoch(run: Run, epoch: int, sums: engine.EpochSums, stop: StopSignal) -> bool:
    """One epoch of ``engine.train_one_epoch`` with mid-epoch saves; False if a signal stopped it."""
    cfg, steps = run.cfg, run.steps

    def after_step(done: int, sums: engine.EpochSums) -> bool:
        if run.ema:
            run.ema.update(run.raw, epoch * steps + done - 1)
        stopping = stop.requested(run.dist, done, run.learner.rt.device)
        if run.tb:
            run.tb.step(epoch * steps + done, run.schedule(epoch * steps + done - 1), sums.loss, sums.seen)
        due = (cfg.save_every and done % cfg.save_every == 0) or (
            cfg.save_minutes and time.monotonic() - run.last_save > cfg.save_minutes * 60)
        if run.dist.is_main and (stopping or (due and done < steps)):
            run.counters.step = done
            run.save_last(sums)
        return stopping

    try:
        return engine.train_one_epoch(run.learner, run.train_loader, epoch + 1, sums,
                                      lambda s: run.schedule(epoch * steps + s), after_step)
    except engine.NonFiniteLoss as exc:
        kept = (f"{run.run_dir / 'last.pt'} keeps the last good epoch ({run.counters.epoch})" if run.counters.epoch
                else "no checkpoint was written")
        raise UserError(f"{exc}; {kept}. Try a lower -r/--learning_rate or --no-amp") from None


def end_epoch(run: Run, epoch: int, sums: engine.EpochSums) -> None:
    """Validate, append the history row, write history.csv, best.pt (if better) and last.pt."""
    with run.phases.time("validation"):
        row = validate(run, sums, epoch)
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
        print(epoch_line(row, run.cfg.epochs, best), flush=True)


def validate(run: Run, sums: engine.EpochSums, epoch: int) -> dict[str, float]:
    """Validate and reduce the epoch's sums over all processes into one history row."""
    distributed.average_buffers(run.evaluated, run.dist)
    n = run.meta["num_classes"]
    confusion = torch.zeros(n, n, dtype=torch.int64, device=run.learner.rt.device) if run.cfg.tensorboard else None
    valid = engine.evaluate(run.evaluated, run.valid_loader, run.eval_tf, run.learner.rt, confusion=confusion)
    totals = torch.stack([sums.loss, sums.correct.double(), sums.seen.double(), *(v.double() for v in valid)])
    loss, correct, seen, vloss, vcorrect, vseen = distributed.all_reduce_sum(totals, run.dist).tolist()
    row = {"epoch": epoch + 1, "train_loss": loss / seen, "train_acc": correct / seen,
           "valid_loss": vloss / vseen, "valid_acc": vcorrect / vseen,
           "lr": run.schedule(epoch * run.steps + run.steps - 1), "seconds": round(sums.seconds, 2)}
    if confusion is not None:  # every process takes part in the sum; only the main one writes
        confusion = distributed.all_reduce_sum(confusion, run.dist).cpu().numpy()
        if run.tb:
            run.tb.epoch(row, confusion)
    return row


def finish(run: Run) -> None:
    """Check that all processes agree and print where the best weights are."""
    if not distributed.ranks_agree(run.raw, run.dist):
        raise RuntimeError("the processes ended with different weights; please report this as a bug")
    if run.dist.is_main:
        name = display_name(run.arch)
        if run.dist.enabled:
            print(f"{name}: parameters identical on all {run.dist.world_size} processes")
        print(f"{name}: {run.phases.line()}")
        write_json(run.run_dir / "timing.json", run.phases.summary())  # this process's share of the run
        print(f"{name}: best valid accuracy {run.counters.best_acc:.2%} at epoch {run.counters.best_epoch}; "
              f"weights {run.run_dir / 'best.pt'}\n  evaluate: python eval.py -m {run.run_dir}")


def epoch_line(row: dict[str, float], epochs: int, best: bool) -> str:
    return (f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.2%}  "
            f"valid loss {row['valid_loss']:.4f} acc {row['valid_acc']:.2%}  lr {row['lr']:.2e}  "
            f"{row['seconds']:.1f}s{'  * best' if best else ''}")


# ------------------------------------------------------------------------------------ setup


def setup(arch: str, cfg: TrainConfig, source: data.DataSource, device: torch.device, dist: distributed.Dist,
          resume: Resume | None) -> Run:
    """Data, model, optimizer and counters for one architecture; restored from ``resume`` if given.

    The order of the random draws (seeding, weight init, then the restored RNG state) is what
    makes a resumed run equal an uninterrupted one; keep it.
    """
    torch.manual_seed(cfg.seed + dist.rank)
    np.random.seed(cfg.seed)
    enable_fast_kernels(device)  # training only: eval.py and predict.py keep PyTorch's defaults
    rt = make_runtime(device, cfg.amp, cfg.channels_last)
    prep = preprocess_from_checkpoint(resume.ckpt, resume.run_dir / "last.pt") if resume else prepare(source, cfg, dist)
    train_set, valid_set = open_datasets(source, prep, cfg, dist)
    train_loader, valid_loader = make_loaders(train_set, valid_set, cfg, device, dist)
    raw, model = make_model(arch, len(source.classes), cfg, rt, dist, load_weights=resume is None)
    optimizer = engine.make_optimizer(raw, cfg.optimizer, cfg.learning_rate, cfg.momentum, cfg.weight_decay, device,
                                      backbone_lr_scale=cfg.backbone_lr_scale)
    scaler = torch.amp.GradScaler(device.type, enabled=rt.amp_dtype == torch.float16)
    weights = data.class_weights(source.splits["train"].labels, cfg.class_weights, num_classes=len(source.classes))
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights.to(device) if cfg.class_weights != "none" else None,
                                        label_smoothing=cfg.label_smoothing)
    augment = data.BatchTransform(prep, train=True, policy=cfg.augment).to(device)
    learner = engine.Learner(model, loss_fn, optimizer, scaler, augment, rt, show_progress=dist.is_main)
    steps = len(train_loader)
    schedule = engine.lr_schedule(cfg.scheduler, cfg.learning_rate, cfg.epochs * steps,
                                  round(cfg.warmup_epochs * steps))
    ema = ModelEMA(raw, cfg.ema_decay) if cfg.ema else None
    counters = restore(resume, (raw, ema), optimizer, scaler, device) if resume else Counters()
    run_dir = resume.run_dir if resume else new_run_dir(cfg, arch, dist)
    meta = {"arch": arch, "model_options": {"head": cfg.head}, "num_classes": len(source.classes),
            "classes": list(source.classes), "task": source.task, "preprocess": prep.to_dict(),
            "config": asdict(replace(cfg, models=(arch,)))}
    tb = None
    if cfg.tensorboard and dist.is_main:
        from core.tensorboard import TensorBoardLog

        tb = TensorBoardLog(run_dir, source.classes, steps, start_step=counters.epoch * steps + counters.step)
    return Run(arch, cfg, run_dir, raw, learner, train_loader, valid_loader,
               data.BatchTransform(prep, train=False).to(device), schedule, dist, meta, counters, tb=tb,
               ema=ema)


def announce(run: Run, source: data.DataSource) -> None:
    """config.json, storage/latest and the run's first line."""
    cfg, rt, dist = run.cfg, run.learner.rt, run.dist
    write_json(run.run_dir / "config.json", run_info(run, source))
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


def restore(resume: Resume, models: tuple[torch.nn.Module, ModelEMA | None], optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler, device: torch.device) -> Counters:
    """Load a training state into model (and its EMA), optimizer, scaler and the RNGs; returns the counters."""
    ckpt = resume.ckpt
    raw, ema = models
    try:
        raw.load_state_dict(ckpt["model"])
        if ema:
            ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        if ckpt["sums"] is not None:
            engine.EpochSums.from_state(ckpt["sums"], device, ckpt["step"])  # fail now, not mid-epoch
        set_rng_state(ckpt["rng"])
        return Counters(**{k: ckpt[k] for k in (*COUNTERS, "sums")})
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(f"{resume.run_dir}: its training state cannot be restored "
                              f"({str(exc).splitlines()[0][:160]}); the file is damaged") from None


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
    for turn in (True, False):
        if dist.is_main == turn:
            sets = tuple(data.ImageDataset(source.splits[s], prep, cache_dir) for s in ("train", "valid"))
        distributed.barrier(dist)
    return sets


def new_run_dir(cfg: TrainConfig, arch: str, dist: distributed.Dist) -> Path:
    """storage/<name>/, created by rank 0; an existing run is never overwritten."""
    name = cfg.name if cfg.name and len(cfg.models) == 1 else (
        f"{cfg.name}-{display_name(arch)}" if cfg.name else
        f"{display_name(arch)}{'-pretrained' if cfg.pretrained else ''}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir = Path(cfg.out) / name
    if dist.is_main:
        if (run_dir / "last.pt").exists() or (run_dir / "history.csv").exists():
            raise UserError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                            f"or choose another --name")
        check_writable(run_dir)
    distributed.barrier(dist)
    return run_dir


def check_writable(folder: Path) -> None:
    """Create ``folder`` and prove a file can be written there, before any long work starts."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write to {folder} ({exc.strerror or exc}); choose another --out") from None


def run_info(run: Run, source: data.DataSource) -> dict[str, Any]:
    """config.json: every setting, the command, library versions and the data fingerprint."""
    import torchvision  # only for its version; importing it costs a second

    return {"arch": run.arch, "model": display_name(run.arch), **run.meta["config"],
            "command": " ".join(["python", *sys.argv]) if sys.argv and sys.argv[0].endswith(".py") else None,
            "world_size": run.dist.world_size, "preprocess": run.meta["preprocess"],
            "data_layout": source.layout, "task": source.task, "classes": list(source.classes),
            "data_note": source.note,
            "data_fingerprint": {name: s.fingerprint() for name, s in source.splits.items()},
            "data_sizes": {name: len(s.paths) for name, s in source.splits.items()},
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "torchvision": torchvision.__version__, "numpy": np.__version__,
                         "cuda": torch.version.cuda, "platform": platform.platform()}}
