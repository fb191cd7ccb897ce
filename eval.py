"""Evaluate saved weights: metrics, confusion matrix, and the Kaggle submission CSV.

    python eval.py -m storage/latest                       # valid metrics + this model's test CSV
    python eval.py -m storage/ResNet50-.../best.pt --split resnet_50_test
    python eval.py -m storage/latest --split valid --tta   # average over flips
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import data
from core.cli import cam_count
from core.errors import UserError, run_cli
from models import display_name

if TYPE_CHECKING:
    import numpy as np


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model_path", required=True,
                   help="checkpoint (.pt), run folder (uses best.pt) or 'latest'")
    p.add_argument("--data", help="data root (default: the one the model was trained on)")
    p.add_argument("--split", nargs="+", default=["auto"],
                   help="valid, test, a test CSV such as resnet_18_test.csv, or 'all'; default: valid and "
                        "the test list for this architecture (resnet_18_test.csv for ResNet18, ...)")
    p.add_argument("-b", "--batch_size", type=int, default=64, help="default 64")
    p.add_argument("-c", "--use_cpu", action="store_true", help="run on the CPU")
    p.add_argument("-d", "--use_device", help="device: a GPU number (0, 1, ...) or cpu/cuda:N/mps")
    p.add_argument("--tta", action="store_true", help="average predictions over the three flips")
    p.add_argument("--output", help="output folder (default <run folder>/eval/)")
    p.add_argument("--cam", type=cam_count, default=0, metavar="N",
                   help="also save <split>_gradcam.png per labelled split: Grad-CAM of the N most confident "
                        "mistakes and N correct images per class (default 0: off)")
    p.add_argument("--folds-separately", action="store_true",
                   help="for a cross-validation run (train.py --folds K): evaluate each fold model alone "
                        "into <run>/fold_<k>/eval/ instead of their ensemble")
    p.add_argument("--no-cache", dest="cache", action="store_false", help="decode images without the cache")
    p.add_argument("--workers", type=int, default=0, help="loader processes (default 0)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"-b/--batch_size must be at least 1 (got {args.batch_size})")
    import torch  # after parsing, so that --help is instant

    from core import cv, engine
    from core.checkpoint import (CheckpointError, load_checkpoint, model_from_checkpoint,
                                 preprocess_from_checkpoint, resolve_checkpoint)
    from core.gradcam import save_cam_grid
    from core.hardware import make_runtime, pick_device
    from core.runs import pick_run

    run = pick_run(args.model_path)  # 'latest' or a folder of runs -> one run, said once
    cv_dir = cv.cv_folder(run)  # a CV run: its fold models averaged, or one by one
    if cv_dir is not None:
        return evaluate_cv(cv_dir, args, list(sys.argv[1:] if argv is None else argv))
    if args.folds_separately:
        raise UserError(f"--folds-separately needs a cross-validation run (train.py --folds K); "
                        f"{args.model_path} is not one")
    path = resolve_checkpoint(run, prefer="best.pt")
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, path)
    prep = preprocess_from_checkpoint(ckpt, path)
    config = ckpt.get("config", {})
    classes = tuple(map(str, ckpt.get("classes") or range(ckpt["num_classes"])))
    source = data.open_data(args.data or config.get("data", "new_dataset"), config.get("layout", "auto"),
                            config.get("split", "patient"), seed=config.get("seed", 0))
    source = cv.fold_view(path, source)  # a fold model of a CV run validates on its own fold
    if len(source.classes) != len(classes):
        raise CheckpointError(f"{path} predicts {len(classes)} classes ({', '.join(classes)}) but the data at "
                              f"{source.root} has {len(source.classes)} ({', '.join(source.classes)})")
    device = pick_device("cpu" if args.use_cpu else device_name(args.use_device))
    rt = make_runtime(device, amp=None, channels_last=None)
    model = model.to(device, memory_format=torch.channels_last if rt.channels_last else torch.preserve_format)
    out = Path(args.output) if args.output else path.parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(config.get("out", "storage")) / "cache" if args.cache else None
    name = display_name(ckpt["arch"])
    print(f"{name} from {path} (epoch {ckpt.get('epoch', '?')}) on {device}; outputs in {out}/")
    for split in choose_splits(source, args.split, ckpt["arch"]):
        loader = data.make_loader(data.ImageDataset(split, prep, cache_dir), args.batch_size, shuffle=False,
                                  workers=args.workers, pin_memory=device.type == "cuda")
        probs, labels = engine.predict(model, loader, data.BatchTransform(prep, train=False).to(device), rt, args.tta)
        write_outputs(out, split, probs, labels, classes, f"{name} - {split.name}")
        if args.cam and split.labels is not None:
            grid = save_cam_grid(model, loader.dataset, prep, probs, classes, args.cam,
                                 out / f"{split.name}_gradcam.png", f"{name} - {split.name}")
            print(f"{split.name}: Grad-CAM grid -> {grid}")
    return 0


def evaluate_cv(cv_dir: Path, args: argparse.Namespace, argv: list[str]) -> int:
    """The K fold models of a CV run: averaged probabilities on the test lists, or each fold alone."""
    from core import cv
    from core.checkpoint import load_checkpoint
    from core.hardware import pick_device

    checkpoints = cv.fold_checkpoints(cv_dir)
    if args.folds_separately:
        rest = [a for a in argv if a != "--folds-separately"]  # a later -m/--output wins in argparse
        for path in checkpoints:
            main([*rest, "-m", str(path), *(["--output", str(Path(args.output) / path.parent.name)]
                                              if args.output else [])])
        return 0
    ckpt = load_checkpoint(checkpoints[0])
    config, classes = ckpt.get("config", {}), tuple(map(str, ckpt.get("classes") or range(ckpt["num_classes"])))
    source = data.open_data(args.data or config.get("data", "new_dataset"), config.get("layout", "auto"),
                            config.get("split", "patient"), seed=config.get("seed", 0))
    # valid and train are pooled into the folds: every image there trained K-1 of the models
    splits = [s for s in choose_splits(source, args.split, ckpt["arch"]) if s.name not in ("train", "valid")]
    if not splits:
        raise UserError(f"{source.root} has no test list to ensemble the folds on; the valid scores of each fold "
                        f"are in {cv_dir / 'cv_summary.csv'} (or use --folds-separately)")
    device = pick_device("cpu" if args.use_cpu else device_name(args.use_device))
    out = Path(args.output) if args.output else cv_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    options = cv.PredictOptions(device, args.batch_size, args.tta,
                                Path(config.get("out", "storage")) / "cache" if args.cache else None, args.workers)
    name = f"{display_name(ckpt['arch'])} {len(checkpoints)}-fold ensemble"
    print(f"{name} from {cv_dir} on {device}; outputs in {out}/")
    for split in splits:
        probs, labels = cv.ensemble_predict(checkpoints, split, options)
        write_outputs(out, split, probs, labels, classes, f"{name} - {split.name}")
    return 0


def device_name(use_device: str | None) -> str:
    """'-d 1' means cuda:1 as in the seeds; anything else is a device name."""
    if use_device is None:
        return "auto"
    return f"cuda:{use_device}" if use_device.isdigit() else use_device


def choose_splits(source: data.DataSource, wanted: list[str], arch: str) -> list[data.Split]:
    """The splits to evaluate; 'auto' = valid + this architecture's test list (or every test list)."""
    if wanted == ["all"]:
        return [s for name, s in source.splits.items() if name != "train"]
    if wanted != ["auto"]:
        return [source.split(name) for name in wanted]
    tests = [s for name, s in source.splits.items() if name not in ("train", "valid")]
    own = [s for s in tests if s.name == f"resnet_{arch.removeprefix('resnet')}_test"]
    return [source.splits["valid"], *(own or tests)]


def write_outputs(out: Path, split: data.Split, probs: np.ndarray, labels: np.ndarray,
                  classes: tuple[str, ...], title: str) -> None:
    """Probabilities CSV always; Kaggle CSV for test lists; metrics and confusion matrix when labelled."""
    import pandas as pd

    from core.metrics import classification_metrics, confusion, format_metrics, save_confusion_png
    from core.runs import write_json, write_text_atomic

    preds = probs.argmax(1)
    table = pd.DataFrame({"ID": split.ids, **{f"prob_{c}": probs[:, i] for i, c in enumerate(classes)},
                          "pred": preds})
    write_text_atomic(out / f"{split.name}_probs.csv", table.to_csv(index=False))
    if split.name not in ("train", "valid"):
        submission = out / f"{split.name}_submission.csv"
        write_text_atomic(submission, pd.DataFrame({"ID": split.ids, "label": preds}).to_csv(index=False))
        print(f"{split.name}: Kaggle submission ({len(preds)} rows) -> {submission}")
    if split.labels is None:
        return
    m = classification_metrics(labels, probs, classes)
    counts, normalised = confusion(labels, preds, len(classes))
    m["confusion"], m["confusion_normalised"] = counts.tolist(), normalised.round(4).tolist()
    write_json(out / f"{split.name}_metrics.json", m)
    frame = pd.DataFrame(counts, index=[f"true {c}" for c in classes], columns=[f"pred {c}" for c in classes])
    write_text_atomic(out / f"{split.name}_confusion.csv", frame.to_csv())
    save_confusion_png(counts, normalised, classes, f"{title} (accuracy {m['accuracy']:.2%})",
                       out / f"{split.name}_confusion.png")
    print(format_metrics(m, f"{split.name}:"))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
