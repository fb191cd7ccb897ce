"""Train hand-written ResNets; each run writes storage/<name>/ (config, history, best.pt, last.pt).

    python train.py -m ResNet18 ResNet50 ResNet152 -e 20 -b 32      # the whole lab, one after another
    python train.py --resume latest                                  # continue the newest run
    torchrun --nproc_per_node=4 train.py -m ResNet50 -b 64           # several GPUs (-b is per GPU)
"""
from __future__ import annotations

import argparse
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from common.choices import ARCHITECTURES, LAYOUTS, SPLIT_METHODS, display_name
from common.errors import run_cli
from core.cli import model_name
from core.training.config import (AUGMENT_POLICIES, COMPILE_MODES, DEFAULT_LR, DEFAULT_WD, REFERENCE_BATCH,
                                  RESUME_OVERRIDES, TrainConfig, check_config)

if TYPE_CHECKING:
    import data


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", nargs="+", type=model_name, default=["resnet18"], metavar="MODEL",
                   help="one or more of " + ", ".join(display_name(n) for n in ARCHITECTURES) + " (default ResNet18)")
    p.add_argument("-e", "--epochs", type=int, help="number of epochs (default 20)")
    p.add_argument("-b", "--batch_size", type=int,
                   help="batch size per process (default 32; on a GPU 256, with the learning rate scaled to it)")
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
    p.add_argument("--layout", default="auto", choices=("auto", *LAYOUTS),
                   help="data layout (default: detected)")
    p.add_argument("--split", default="patient", choices=SPLIT_METHODS,
                   help="how to split train/valid when the layout has no valid list (default patient)")
    p.add_argument("--folds", type=int, default=0, metavar="K",
                   help="k-fold cross-validation: pool train+valid into K folds (by patient where known), "
                        "train one run per fold under <run>/fold_<k>/, summarise in cv_summary.csv")
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
    p.add_argument("--augment", choices=AUGMENT_POLICIES,
                   help="rotate: any angle + flips (cells, fundus); upright: +-10 degrees, no flips (images with "
                        "an up); none: resize + normalise only (default: rotate for the lab, Kaggle and retina "
                        "layouts, upright for CSV and folder-per-class)")
    p.add_argument("--ema", action="store_true",
                   help="evaluate and save best.pt with an exponential moving average of the weights")
    p.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay per step (default 0.999)")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic GPU kernels: the same seed gives the same history on CUDA (slower)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--workers", type=int, default=-1, help="loader processes (default: 0 on CPU, 4 on GPU)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, help="mixed precision (default: on for CUDA)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="channels_last memory format (default: on for CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (slow start, faster steps)")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default="default",
                   help="torch.compile mode (implies --compile): default, reduce-overhead (CUDA graphs), "
                        "max-autotune (longest start)")
    p.add_argument("--sync-bn", action="store_true", help="synchronise BatchNorm statistics across GPUs (torchrun)")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="train without the images that cannot be decoded (listed in <run>/unreadable.csv) "
                        "instead of stopping with their names")
    p.add_argument("--no-cache", dest="cache", action="store_false",
                   help="decode images on every access instead of the decode-once cache in <out>/cache/")
    p.add_argument("--out", default="storage", help="where run folders go (default storage/)")
    p.add_argument("--name", help="run folder name (default <Model>-<date>-<time>)")
    p.add_argument("--resume", metavar="RUN", help="continue a run: its folder, a checkpoint, or 'latest'")
    p.add_argument("--accept-data-change", action="store_true",
                   help="with --resume: continue although the data changed since the run started (its saved "
                        "train/valid lists are kept; added images stay unused); without it such a resume stops")
    p.add_argument("--save-every", type=int, default=0, metavar="N",
                   help="also write last.pt every N steps (default: at each epoch's end)")
    p.add_argument("--save-minutes", type=float, default=10.0, metavar="M",
                   help="also write last.pt when M minutes passed since the last save (default 10; 0 = off)")
    p.add_argument("--tensorboard", action="store_true",
                   help="log losses, learning rate and confusion matrices to <run>/tensorboard/ "
                        "(view: tensorboard --logdir storage/; needs requirements-extras.txt)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Fill the optimizer-dependent defaults and check ranges (UserError on a bad value)."""
    cfg = TrainConfig(
        models=tuple(dict.fromkeys(args.model)), epochs=20 if args.epochs is None else args.epochs,
        batch_size=args.batch_size or REFERENCE_BATCH, optimizer=args.optimizer,
        learning_rate=DEFAULT_LR[args.optimizer] if args.learning_rate is None else args.learning_rate,
        momentum=args.momentum,
        weight_decay=DEFAULT_WD[args.optimizer] if args.weight_decay is None else args.weight_decay,
        scheduler=args.scheduler, warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
        data=args.data, layout=args.layout, split=args.split, image_size=args.image_size, head=args.head,
        zero_init_residual=args.zero_init_residual, seed=args.seed, device=args.device, workers=args.workers,
        amp=args.amp, channels_last=args.channels_last, compile=args.compile or args.compile_mode != "default",
        compile_mode=args.compile_mode, sync_bn=args.sync_bn,
        cache=args.cache, out=args.out, name=args.name, save_every=args.save_every,
        save_minutes=args.save_minutes, pretrained=args.pretrained,
        freeze_epochs=args.freeze_epochs, backbone_lr_scale=args.backbone_lr_scale,
        class_weights=args.class_weights, balanced_sampler=args.balanced_sampler, folds=args.folds,
        tensorboard=args.tensorboard, augment=args.augment, ema=args.ema, ema_decay=args.ema_decay,
        deterministic=args.deterministic)
    check_config(cfg)
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    from core import distributed
    from core.checkpoint import load_checkpoint, resolve_checkpoint
    from core.hardware import pick_device
    from core.runs import pick_run
    from core.training import cv
    from core.training.gpu_defaults import cuda_defaults
    from core.training.resume import elastic_cv_dir, elastic_resume, restart_note
    from core.training.run_folder import run_dir_for
    from core.training.trainer import Resume, check_writable, fit

    # A CV run (--folds K) resumes as a whole, also when one of its folds is named.
    run = pick_run(args.resume, Path(args.out)) if args.resume else None  # 'latest' -> a run folder, said once
    cv_dir = cv.cv_folder(run, folds_too=True) if run else None
    resume = resolve_checkpoint(run, prefer="last.pt") if run and not cv_dir else None
    ckpt = load_checkpoint(resume) if resume else None
    if cv_dir:
        cfg = cv.resumed_config(cv_dir, resume_changes(args))
    elif ckpt:
        cfg = checkpoint_config(ckpt, args, resume)
    else:
        cfg = config_from_args(args)
    if cfg.tensorboard:
        from core.training.tensorboard import require_tensorboard

        require_tensorboard()  # before any data is read: a missing package is one line, at once
    from core.training.determinism import deterministic_errors, make_deterministic

    make_deterministic(cfg.deterministic)  # before anything touches CUDA
    device = pick_device(cfg.device)
    note = None
    if device.type == "cuda" and args.batch_size is None and not ckpt and not cv_dir:
        cfg, note = cuda_defaults(cfg, lr_given=args.learning_rate is not None)
    dist, device = distributed.init_distributed(device)
    try:
        if dist.is_main:
            for line in (note, restart_note(cfg.name, bool(run))):
                if line:
                    print(line)
            check_writable(Path(cfg.out))
        source = open_source(cfg, run_folder(resume) if ckpt else None, args.accept_data_change,
                             args.skip_unreadable, dist)
        if dist.is_main:
            print(f"data: {source.root} ({source.layout} layout, {len(source.splits['train'])} train / "
                  f"{len(source.splits['valid'])} valid images, classes {', '.join(source.classes)})"
                  + (f"; {source.note}" if source.note else ""))
        for arch in cfg.models:
            with deterministic_errors():
                if cfg.folds:
                    cv.run_cv(arch, cfg, source, device, dist, cv_dir or elastic_cv_dir(run_dir_for(cfg, arch)))
                else:
                    here = Resume(ckpt, run_folder(resume)) if ckpt else \
                        elastic_resume(run_dir_for(cfg, arch), dist) if cfg.name else None
                    restarted = here is not None and not ckpt  # a torchrun restart: read its lists like --resume
                    fit(arch, cfg, open_source(cfg, here.run_dir, args.accept_data_change) if restarted else source,
                        device, dist, here)
    finally:
        distributed.shutdown(dist)
    return 0


def screen_on_main_process(source: data.DataSource, cfg: TrainConfig, skip: bool, dist: Any) -> data.DataSource:
    """Every unreadable train/valid image named at once, before any long work (the main process decodes)."""
    from common.progress import progress
    from core import distributed
    from data.scan import screen_unreadable as screen

    found = None
    if dist.is_main:
        bar = lambda total: progress(total, "checking images", "img")  # noqa: E731
        found = screen(source, Path(cfg.out) / "cache" if cfg.cache else None, skip, bar)
    return distributed.broadcast_object(found, dist)


def open_source(cfg: TrainConfig, run_dir: Path | None, accept_change: bool, skip_unreadable: bool | None = None,
                dist: Any = None) -> data.DataSource:
    """The data, every unreadable image named (or left out; None: not checked here); for a resumed run its
    own train/valid lists (splits.csv), not a split re-made from the data as it is now."""
    import data

    source = data.open_data(cfg.data, cfg.layout, cfg.split, seed=cfg.seed)
    if skip_unreadable is not None:  # a run that left unreadable images out (unreadable.csv) resumes without them
        skip = skip_unreadable or bool(run_dir and (run_dir / "unreadable.csv").is_file())
        source = screen_on_main_process(source, cfg, skip, dist)
    return data.splits_for_resume(source, run_dir, accept_change).source if run_dir else source


def run_folder(checkpoint: Path) -> Path:
    """The run a checkpoint belongs to, by its real name (storage/latest is only a link)."""
    real = checkpoint.resolve().parent
    try:
        return real.relative_to(Path.cwd())
    except ValueError:
        return real


def checkpoint_config(ckpt: dict[str, Any], args: argparse.Namespace, path: Path) -> TrainConfig:
    """The run's own settings; only the flags in RESUME_OVERRIDES given now replace them."""
    from core.checkpoint import CheckpointError, check_fields

    if "config" not in ckpt or "arch" not in ckpt:
        raise CheckpointError(f"{path} holds weights only, not a training state; it cannot be resumed")
    defaults = get_args_parser().parse_args([])
    if args.model != defaults.model and args.model[:1] != [ckpt["arch"]]:
        got = display_name(ckpt["arch"]) if str(ckpt["arch"]) in ARCHITECTURES else repr(ckpt["arch"])
        raise CheckpointError(f"{path} is a {got} checkpoint but "
                              f"{display_name(args.model[0])} was asked for (-m); drop -m to resume it")
    check_fields(ckpt, path, training=True)
    saved = {f.name: ckpt["config"][f.name] for f in fields(TrainConfig) if f.name in ckpt["config"]}
    saved.setdefault("augment", "rotate")  # runs from before --augment were all trained with rotate
    cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    for f in fields(TrainConfig):  # a damaged config must fail here, not deep inside training
        value, default = getattr(cfg, f.name), f.default
        kinds = {bool: (bool,), int: (int,), float: (int, float), str: (str,), tuple: (tuple,)}.get(
            type(default), (bool, str, type(None)))
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise CheckpointError(f"{path}: setting '{f.name}' = {value!r} is invalid; the file is damaged")
    cfg = replace(cfg, models=(ckpt["arch"],), **resume_changes(args))
    check_config(cfg)
    return cfg


def resume_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The RESUME_OVERRIDES flags given on this command line, with their values."""
    defaults = get_args_parser().parse_args([])
    given = config_from_args(args)
    return {k: getattr(given, k) for k in RESUME_OVERRIDES
            if getattr(args, k, None) not in (None, getattr(defaults, k, None))}


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
