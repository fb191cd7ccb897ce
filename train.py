"""Train hand-written ResNets; each run writes storage/<name>/ (config, history, best.pt, last.pt).

    python train.py -m ResNet18 ResNet50 ResNet152 -e 20 -b 32      # the whole lab, one after another
    python train.py --resume latest                                  # continue the newest run
    torchrun --nproc_per_node=4 train.py -m ResNet50 -b 64           # several GPUs (-b is per GPU)
"""
from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torchvision
from torch.nn.parallel import DistributedDataParallel

import dataloader as data
import distributed
import engine
from checkpoint import (CheckpointError, check_fields, load_checkpoint, preprocess_from_checkpoint,
                        resolve_checkpoint, rng_state, save_checkpoint, set_rng_state)
from errors import UserError, run_cli
from hardware import make_runtime, out_of_memory_message, pick_device
from models import MODELS, build_model, canonical_name, display_name
from pretrained import load_pretrained
from runs import link_latest, write_history, write_json

DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}
DEFAULT_WD = {"sgd": 5e-4, "adam": 0.0, "adamw": 0.05}
RESUME_OVERRIDES = ("epochs", "device", "workers", "save_every", "save_minutes", "amp", "compile")


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run; saved in config.json and in each checkpoint."""

    models: tuple[str, ...] = ("resnet18",)
    epochs: int = 20
    batch_size: int = 32
    optimizer: str = "adamw"
    learning_rate: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.05
    scheduler: str = "cosine"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    data: str = "new_dataset"
    layout: str = "auto"
    split: str = "patient"
    image_size: int = 224
    head: str = "linear"
    zero_init_residual: bool = False
    seed: int = 0
    device: str = "auto"
    workers: int = -1
    amp: bool | None = None
    channels_last: bool | None = None
    compile: bool = False
    sync_bn: bool = False
    cache: bool = True
    out: str = "storage"
    name: str | None = None
    save_every: int = 0
    save_minutes: float = 10.0
    pretrained: str | None = None
    freeze_epochs: int = 0
    backbone_lr_scale: float = 1.0
    class_weights: str = "none"
    balanced_sampler: bool = False


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", nargs="+", type=model_name, default=["resnet18"], metavar="MODEL",
                   help="one or more of " + ", ".join(display_name(n) for n in MODELS) + " (default ResNet18)")
    p.add_argument("-e", "--epochs", type=int, help="number of epochs (default 20)")
    p.add_argument("-b", "--batch_size", type=int, default=32, help="batch size per process (default 32)")
    p.add_argument("-o", "--optimizer", choices=sorted(DEFAULT_LR), default="adamw", help="default adamw")
    p.add_argument("-r", "--learning_rate", type=float,
                   help="peak learning rate (default 0.05 for sgd, 1e-3 for adam/adamw)")
    p.add_argument("-mm", "--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    p.add_argument("-wd", "--weight_decay", type=float,
                   help="weight decay (default 5e-4 sgd, 0 adam, 0.05 adamw); never on BatchNorm or biases")
    p.add_argument("--scheduler", choices=("cosine", "step", "none"), default="cosine",
                   help="cosine with linear warm-up (default), step (/10 at 50%% and 75%%), none")
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="warm-up length for cosine (default 1)")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="default 0.1")
    p.add_argument("--data", default="new_dataset", help="data root (default new_dataset/)")
    p.add_argument("--layout", default="auto", choices=("auto", *data.LAYOUTS),
                   help="data layout (default: detected)")
    p.add_argument("--split", default="patient", choices=data.SPLIT_METHODS,
                   help="how to split train/valid when the layout has no valid list (default patient)")
    p.add_argument("--image-size", type=int, default=224, help="input side in pixels (default 224)")
    p.add_argument("--head", choices=("linear", "mlp"), default="linear", help="classifier head (default linear)")
    p.add_argument("--pretrained", metavar="WEIGHTS",
                   help="start from 'imagenet' (torchvision's weights) or a state_dict/checkpoint file; "
                        "the head is replaced and ImageNet mean/std are used")
    p.add_argument("--freeze-epochs", type=int, default=0, metavar="N",
                   help="train only the head for the first N epochs, then the whole network")
    p.add_argument("--backbone-lr-scale", type=float, default=1.0, metavar="S",
                   help="backbone learning rate = S x head learning rate (e.g. 0.1 when fine-tuning)")
    p.add_argument("--class-weights", choices=("none", "inverse", "sqrt"), default="none",
                   help="weight the loss by inverse (or sqrt-inverse) class frequency (default none)")
    p.add_argument("--balanced-sampler", action="store_true",
                   help="draw training images so every class is seen about equally often")
    p.add_argument("--zero-init-residual", action="store_true", help="zero the last BN of each residual branch")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--workers", type=int, default=-1, help="loader processes (default: 0 on CPU, 4 on GPU)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, help="mixed precision (default: on for CUDA)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="channels_last memory format (default: on for CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (slow start, faster steps)")
    p.add_argument("--sync-bn", action="store_true", help="synchronise BatchNorm statistics across GPUs (torchrun)")
    p.add_argument("--no-cache", dest="cache", action="store_false",
                   help="decode images on every access instead of the decode-once cache in <out>/cache/")
    p.add_argument("--out", default="storage", help="where run folders go (default storage/)")
    p.add_argument("--name", help="run folder name (default <Model>-<date>-<time>)")
    p.add_argument("--resume", metavar="RUN", help="continue a run: its folder, a checkpoint, or 'latest'")
    p.add_argument("--save-every", type=int, default=0, metavar="N",
                   help="also write last.pt every N steps (default: at each epoch's end)")
    p.add_argument("--save-minutes", type=float, default=10.0, metavar="M",
                   help="also write last.pt when M minutes passed since the last save (default 10; 0 = off)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return p


def model_name(text: str) -> str:
    try:
        return canonical_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Fill the optimizer-dependent defaults and check ranges (UserError on a bad value)."""
    cfg = TrainConfig(
        models=tuple(dict.fromkeys(args.model)), epochs=20 if args.epochs is None else args.epochs,
        batch_size=args.batch_size, optimizer=args.optimizer,
        learning_rate=DEFAULT_LR[args.optimizer] if args.learning_rate is None else args.learning_rate,
        momentum=args.momentum,
        weight_decay=DEFAULT_WD[args.optimizer] if args.weight_decay is None else args.weight_decay,
        scheduler=args.scheduler, warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
        data=args.data, layout=args.layout, split=args.split, image_size=args.image_size, head=args.head,
        zero_init_residual=args.zero_init_residual, seed=args.seed, device=args.device, workers=args.workers,
        amp=args.amp, channels_last=args.channels_last, compile=args.compile, sync_bn=args.sync_bn,
        cache=args.cache, out=args.out, name=args.name, save_every=args.save_every,
        save_minutes=args.save_minutes, pretrained=args.pretrained,
        freeze_epochs=args.freeze_epochs, backbone_lr_scale=args.backbone_lr_scale,
        class_weights=args.class_weights, balanced_sampler=args.balanced_sampler)
    check_config(cfg)
    return cfg


def check_config(cfg: TrainConfig) -> None:
    """UserError naming the first setting out of its range."""
    checks = [(cfg.epochs >= 1, f"-e/--epochs must be at least 1 (got {cfg.epochs})"),
              (cfg.batch_size >= 1, f"-b/--batch_size must be at least 1 (got {cfg.batch_size})"),
              (cfg.learning_rate > 0, f"-r/--learning_rate must be positive (got {cfg.learning_rate})"),
              (cfg.weight_decay >= 0, f"-wd/--weight_decay must be >= 0 (got {cfg.weight_decay})"),
              (0 <= cfg.momentum < 1, f"-mm/--momentum must be in [0, 1) (got {cfg.momentum})"),
              (0 <= cfg.label_smoothing < 1, f"--label-smoothing must be in [0, 1) (got {cfg.label_smoothing})"),
              (cfg.warmup_epochs >= 0, f"--warmup-epochs must be >= 0 (got {cfg.warmup_epochs})"),
              (32 <= cfg.image_size <= 1024, f"--image-size must be between 32 and 1024 (got {cfg.image_size})"),
              (cfg.save_every >= 0, f"--save-every must be >= 0 (got {cfg.save_every})"),
              (cfg.save_minutes >= 0, f"--save-minutes must be >= 0 (got {cfg.save_minutes})"),
              (0 <= cfg.freeze_epochs, f"--freeze-epochs must be >= 0 (got {cfg.freeze_epochs})"),
              (cfg.backbone_lr_scale > 0, f"--backbone-lr-scale must be positive (got {cfg.backbone_lr_scale})")]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    resume = resolve_checkpoint(args.resume, prefer="last.pt", storage=Path(args.out)) if args.resume else None
    ckpt = load_checkpoint(resume) if resume else None
    cfg = resumed_config(ckpt, args, resume) if ckpt else config_from_args(args)
    device = pick_device(cfg.device)
    dist, device = distributed.init_distributed(device)
    try:
        if dist.is_main:
            check_writable(Path(cfg.out))
        source = data.open_data(cfg.data, cfg.layout, cfg.split, seed=cfg.seed)
        if dist.is_main:
            print(f"data: {source.root} ({source.layout} layout, {len(source.splits['train'])} train / "
                  f"{len(source.splits['valid'])} valid images, classes {', '.join(source.classes)})"
                  + (f"; {source.note}" if source.note else ""))
        for arch in cfg.models:
            fit(arch, cfg, source, device, dist, ckpt, run_folder(resume) if resume else None)
    finally:
        distributed.shutdown(dist)
    return 0


def run_folder(checkpoint: Path) -> Path:
    """The run a checkpoint belongs to, by its real name (storage/latest is only a link)."""
    real = checkpoint.resolve().parent
    try:
        return real.relative_to(Path.cwd())
    except ValueError:
        return real


def resumed_config(ckpt: dict[str, Any], args: argparse.Namespace, path: Path) -> TrainConfig:
    """The run's own settings; only the flags in RESUME_OVERRIDES given now replace them."""
    if "config" not in ckpt or "arch" not in ckpt:
        raise CheckpointError(f"{path} holds weights only, not a training state; it cannot be resumed")
    defaults = get_args_parser().parse_args([])
    if args.model != defaults.model and args.model[:1] != [ckpt["arch"]]:
        got = display_name(ckpt["arch"]) if str(ckpt["arch"]) in MODELS else repr(ckpt["arch"])
        raise CheckpointError(f"{path} is a {got} checkpoint but "
                              f"{display_name(args.model[0])} was asked for (-m); drop -m to resume it")
    check_fields(ckpt, path, training=True)
    saved = {f.name: ckpt["config"][f.name] for f in fields(TrainConfig) if f.name in ckpt["config"]}
    cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    for f in fields(TrainConfig):  # a damaged config must fail here, not deep inside training
        value, default = getattr(cfg, f.name), f.default
        kinds = {bool: (bool,), int: (int,), float: (int, float), str: (str,), tuple: (tuple,)}.get(
            type(default), (bool, str, type(None)))
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise CheckpointError(f"{path}: setting '{f.name}' = {value!r} is invalid; the file is damaged")
    given = config_from_args(args)
    changes = {k: getattr(given, k) for k in RESUME_OVERRIDES
               if getattr(args, k, None) not in (None, getattr(defaults, k, None))}
    cfg = replace(cfg, models=(ckpt["arch"],), **changes)
    check_config(cfg)
    return cfg


def fit(arch: str, cfg: TrainConfig, source: data.DataSource, device: torch.device, dist: distributed.Dist,
        ckpt: dict[str, Any] | None, run_dir: Path | None) -> Path:
    """Train one architecture for cfg.epochs, writing the run folder as it goes; returns it."""
    torch.manual_seed(cfg.seed + dist.rank)
    np.random.seed(cfg.seed)
    rt = make_runtime(device, cfg.amp, cfg.channels_last)
    prep = (preprocess_from_checkpoint(ckpt, run_dir / "last.pt") if ckpt else
            prepare(source, cfg, dist))
    train_set, valid_set = open_datasets(source, prep, cfg, dist)
    train_loader, valid_loader = make_loaders(train_set, valid_set, cfg, device, dist)
    train_tf, eval_tf = data.BatchTransform(prep, train=True).to(device), data.BatchTransform(prep, train=False).to(device)
    raw, model = make_model(arch, len(source.classes), cfg, rt, dist, load_weights=ckpt is None)
    optimizer = engine.make_optimizer(raw, cfg.optimizer, cfg.learning_rate, cfg.momentum, cfg.weight_decay, device,
                                      backbone_lr_scale=cfg.backbone_lr_scale)
    scaler = torch.amp.GradScaler(device.type, enabled=rt.amp_dtype == torch.float16)
    weights = data.class_weights(source.splits["train"].labels, cfg.class_weights, num_classes=len(source.classes))
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights.to(device) if cfg.class_weights != "none" else None,
                                        label_smoothing=cfg.label_smoothing)
    steps = len(train_loader)
    schedule = engine.lr_schedule(cfg.scheduler, cfg.learning_rate, cfg.epochs * steps,
                                  round(cfg.warmup_epochs * steps))

    state = {"epoch": 0, "step": 0, "history": [], "best_acc": -1.0, "best_epoch": 0, "sums": None}
    if ckpt:
        state.update(restore(ckpt, run_dir, raw, optimizer, scaler, device))
    else:
        run_dir = new_run_dir(cfg, arch, dist)
    common = {"arch": arch, "model_options": {"head": cfg.head}, "num_classes": len(source.classes),
              "classes": list(source.classes), "task": source.task, "preprocess": prep.to_dict(),
              "config": asdict(replace(cfg, models=(arch,)))}
    stop = StopSignal()  # before the first print, so a signal from now on saves last.pt
    if dist.is_main:
        write_json(run_dir / "config.json", run_info(cfg, arch, source, prep, dist))
        link_latest(Path(cfg.out), run_dir)
        print(f"{display_name(arch)}: {sum(p.numel() for p in raw.parameters()):,} parameters, {steps} steps/epoch "
              f"on {device}{' x' + str(dist.world_size) if dist.enabled else ''}"
              f"{', AMP ' + str(rt.amp_dtype).removeprefix('torch.') if rt.amp_dtype else ''}; run folder {run_dir}")

    def snapshot(sums: engine.EpochSums | None) -> dict[str, Any]:
        return {**common, "model": raw.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(), "rng": rng_state(), **{k: state[k] for k in
                ("epoch", "step", "history", "best_acc", "best_epoch")}, "sums": sums.state_dict() if sums else None}

    last_save = [time.monotonic()]

    def after_step(done: int, sums: engine.EpochSums) -> bool:
        stopping = stop.requested(dist, done, device)
        due = (cfg.save_every and done % cfg.save_every == 0) or (
            cfg.save_minutes and time.monotonic() - last_save[0] > cfg.save_minutes * 60)
        if dist.is_main and (stopping or (due and done < steps)):
            state["step"] = done
            save_checkpoint(snapshot(sums), run_dir / "last.pt")
            last_save[0] = time.monotonic()
        return stopping

    try:
        for epoch in range(state["epoch"], cfg.epochs):
            train_loader.set_epoch(epoch, start_batch=state["step"])
            raw.freeze_backbone(epoch < cfg.freeze_epochs)
            sums = (engine.EpochSums.from_state(state["sums"], device) if state["sums"] else
                    engine.EpochSums.zeros(device))
            try:
                finished = engine.train_one_epoch(
                    model, train_loader, train_tf, loss_fn, optimizer, scaler, rt,
                    lambda s, e=epoch: schedule(e * steps + s), epoch + 1, state["step"], sums, after_step,
                    show=dist.is_main)
            except engine.NonFiniteLoss as exc:
                kept = (f"{run_dir / 'last.pt'} keeps the last good epoch ({state['epoch']})" if state["epoch"]
                        else "no checkpoint was written")
                raise UserError(f"{exc}; {kept}. Try a lower -r/--learning_rate or --no-amp") from None
            if not finished:
                raise SystemExit(stop.exit_message(run_dir, epoch + 1, state["step"]))
            row = finish_epoch(raw, valid_loader, eval_tf, rt, dist, sums, epoch, schedule(epoch * steps + steps - 1))
            state["history"].append(row)
            best = row["valid_acc"] > state["best_acc"]
            if best:
                state["best_acc"], state["best_epoch"] = row["valid_acc"], epoch + 1
            state.update(epoch=epoch + 1, step=0, sums=None)
            if dist.is_main:
                write_history(run_dir, state["history"])
                if best:
                    save_checkpoint({**snapshot(None), "valid": row}, run_dir / "best.pt")
                save_checkpoint({**snapshot(None), "valid": row}, run_dir / "last.pt")
                last_save[0] = time.monotonic()
                print(epoch_line(row, cfg.epochs, best), flush=True)
    except torch.OutOfMemoryError:
        raise UserError(out_of_memory_message(cfg.batch_size, cfg.image_size)) from None
    finally:
        stop.restore()
    if not distributed.ranks_agree(raw, dist):
        raise RuntimeError("the processes ended with different weights; please report this as a bug")
    if dist.is_main:
        if dist.enabled:
            print(f"{display_name(arch)}: parameters identical on all {dist.world_size} processes")
        print(f"{display_name(arch)}: best valid accuracy {state['best_acc']:.2%} at epoch {state['best_epoch']}; "
              f"weights {run_dir / 'best.pt'}\n  evaluate: python eval.py -m {run_dir}")
    return run_dir


def make_loaders(train_set: data.ImageDataset, valid_set: data.ImageDataset, cfg: TrainConfig,
                 device: torch.device, dist: distributed.Dist) -> tuple[data.BatchLoader, data.BatchLoader]:
    """This process's shard of the training and validation batches."""
    if cfg.batch_size * dist.world_size > len(train_set):
        raise UserError(f"-b {cfg.batch_size} is larger than the training set ({len(train_set)} images"
                        + (f" over {dist.world_size} processes" if dist.enabled else "")
                        + f"); use -b {max(1, len(train_set) // dist.world_size)} or less")
    workers = cfg.workers if cfg.workers >= 0 else (4 if device.type == "cuda" else 0)
    pin = device.type == "cuda"
    train_loader = data.make_loader(train_set, cfg.batch_size, shuffle=True, seed=cfg.seed, workers=workers,
                                    pin_memory=pin, drop_last=True, rank=dist.rank, world_size=dist.world_size,
                                    balanced=cfg.balanced_sampler)
    valid_loader = data.make_loader(valid_set, cfg.batch_size * 2, shuffle=False, workers=workers,
                                    pin_memory=pin, rank=dist.rank, world_size=dist.world_size)
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
        model = torch.compile(model)
    return raw, model


def restore(ckpt: dict[str, Any], run_dir: Path, raw: torch.nn.Module, optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler, device: torch.device) -> dict[str, Any]:
    """Load a training state into model, optimizer, scaler and the RNGs; returns the loop's counters."""
    try:
        raw.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        if ckpt["sums"] is not None:
            engine.EpochSums.from_state(ckpt["sums"], device)  # fail now, not mid-epoch
        set_rng_state(ckpt["rng"])
        return {k: ckpt[k] for k in ("epoch", "step", "history", "best_acc", "best_epoch", "sums")}
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(f"{run_dir}: its training state cannot be restored "
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


def finish_epoch(model: torch.nn.Module, valid_loader, eval_tf: torch.nn.Module, rt: engine.Runtime,
                 dist: distributed.Dist, sums: engine.EpochSums, epoch: int, lr: float) -> dict[str, float]:
    """Validate and reduce the epoch's sums over all processes into one history row."""
    distributed.average_buffers(model, dist)
    valid = engine.evaluate(model, valid_loader, eval_tf, rt)
    totals = torch.stack([sums.loss, sums.correct.double(), sums.seen.double(), *(v.double() for v in valid)])
    loss, correct, seen, vloss, vcorrect, vseen = distributed.all_reduce_sum(totals, dist).tolist()
    return {"epoch": epoch + 1, "train_loss": loss / seen, "train_acc": correct / seen,
            "valid_loss": vloss / vseen, "valid_acc": vcorrect / vseen, "lr": lr, "seconds": round(sums.seconds, 2)}


def epoch_line(row: dict[str, float], epochs: int, best: bool) -> str:
    return (f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.2%}  "
            f"valid loss {row['valid_loss']:.4f} acc {row['valid_acc']:.2%}  lr {row['lr']:.2e}  "
            f"{row['seconds']:.1f}s{'  * best' if best else ''}")


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


def run_info(cfg: TrainConfig, arch: str, source: data.DataSource, prep: data.Preprocess,
             dist: distributed.Dist) -> dict[str, Any]:
    """config.json: every setting, the command, library versions and the data fingerprint."""
    return {"arch": arch, "model": display_name(arch), **asdict(replace(cfg, models=(arch,))),
            "command": " ".join(["python", *sys.argv]) if sys.argv and sys.argv[0].endswith(".py") else None,
            "world_size": dist.world_size, "preprocess": prep.to_dict(),
            "data_layout": source.layout, "task": source.task, "classes": list(source.classes),
            "data_note": source.note,
            "data_fingerprint": {name: s.fingerprint() for name, s in source.splits.items()},
            "data_sizes": {name: len(s.paths) for name, s in source.splits.items()},
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "torchvision": torchvision.__version__, "numpy": np.__version__,
                         "cuda": torch.version.cuda, "platform": platform.platform()}}


class StopSignal:
    """SIGINT/SIGTERM ask the loop to finish its step, save last.pt and exit; a second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: finishing this step and saving last.pt "
              "(Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)

    def requested(self, dist: distributed.Dist, step: int, device: torch.device) -> bool:
        flag = self.signum is not None
        if dist.enabled:
            # Every rank must stop at the same step or the others would wait forever; agreeing
            # costs a sync, so ranks compare notes only every LOG_EVERY steps.
            if step % engine.LOG_EVERY:
                return False
            flag = distributed.all_reduce_sum(torch.tensor([float(flag)], device=device), dist).item() > 0
        return flag

    def exit_message(self, run_dir: Path, epoch: int, step: int) -> int:
        print(f"stopped during epoch {epoch} after step {step}; saved {run_dir / 'last.pt'}\n"
              f"  resume with: python train.py --resume {run_dir}", file=sys.stderr)
        return 128 + (self.signum or signal.SIGINT)

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
