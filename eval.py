"""Evaluate saved weights: metrics with 95% intervals, per patient, operating point, calibration, Kaggle CSV.

    python eval.py -m storage/latest                       # valid metrics + this model's test CSV
    python eval.py -m storage/ResNet50-.../best.pt --split resnet_50_test
    python eval.py -m storage/latest --split valid --tta   # TTA as the training policy allows -> <run>/eval-tta/
    python eval.py -m storage/latest/last.pt               # the last epoch's weights -> <run>/eval-last/
    python eval.py -m storage/latest --threshold youden --calibrate
    python eval.py -m storage/ResNet18-... storage/ResNet50-...   # an ensemble
    python eval.py -m storage/ResNet18-cv5-...             # a CV run: its fold models averaged
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from common.choices import display_name
from common.errors import UserError, run_cli
from core.cli import cam_count, positive_int

if TYPE_CHECKING:
    import numpy as np

    import data


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model_path", required=True, nargs="+",
                   help="checkpoint (.pt), run folder (uses best.pt) or 'latest'; several: an ensemble that "
                        "averages their probabilities (same classes; each keeps its own preprocessing)")
    p.add_argument("--data", help="data root (default: the one the (first) model was trained on)")
    p.add_argument("--split", nargs="+", default=["auto"],
                   help="valid, test (in the lab layout: this architecture's test list), a test CSV such as "
                        "resnet_18_test.csv, or 'all'; default: valid and this architecture's test list")
    p.add_argument("-b", "--batch_size", type=positive_int, default=64, help="default 64")
    p.add_argument("-c", "--use_cpu", action="store_true", help="run on the CPU")
    p.add_argument("-d", "--use_device", help="device: a GPU number (0, 1, ...) or cpu/cuda:N/mps")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation as the run's --augment policy allows: rotate: the 8 flips and "
                        "90-degree turns; upright/none: none (the model never saw a flip)")
    p.add_argument("--output", help="output folder (default, keyed by what is evaluated: <run>/eval/ for best.pt, "
                                    "<run>/eval-last/ for last.pt, '-tta' appended with --tta; an ensemble: "
                                    "storage/ensemble-<run1>+<run2>...[-tta])")
    p.add_argument("--bootstrap", type=int, default=2000, metavar="N",
                   help="bootstrap resamples for the 95%% intervals (default 2000; 0: off); patients are "
                        "resampled where file names carry patient ids, images otherwise")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument("--threshold", metavar="RULE",
                   help="two classes: youden, sens=0.95 or a probability, chosen on valid, saved in the output "
                        "folder with what it was chosen on, and applied to every split and the Kaggle CSV (later "
                        "runs reuse it while it still fits the checkpoint, TTA and temperature, else choose the "
                        "saved rule again; default 0.5)")
    p.add_argument("--positive-class", metavar="NAME",
                   help="two classes: the class the threshold, sensitivity and PPV are about, by name or index "
                        "(default: class index 1, the second class of the checkpoint: label 1 for 0/1 labels; "
                        "saved with the operating point, used by predict.py and export.py)")
    p.add_argument("--calibrate", action="store_true",
                   help="fit a temperature on valid, save it, and apply it to the probabilities written "
                        "(arg-max unchanged; a saved threshold rule is chosen again on the calibrated "
                        "probabilities; later runs reuse it while it fits the checkpoint and TTA)")
    p.add_argument("--cam", type=cam_count, default=0, metavar="N",
                   help="also save <split>_gradcam.png per labelled split: Grad-CAM of the N most confident "
                        "mistakes and N correct images per class (default 0: off; single models only)")
    p.add_argument("--folds-separately", action="store_true",
                   help="for a cross-validation run (train.py --folds K): evaluate each fold model alone "
                        "into <run>/fold_<k>/eval/ instead of their ensemble")
    p.add_argument("--no-cache", dest="cache", action="store_false", help="decode images without the cache")
    p.add_argument("--workers", type=int, default=0, help="loader processes (default 0)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.bootstrap < 0:
        raise UserError(f"--bootstrap must be 0 (off) or a number of resamples (got {args.bootstrap})")
    import data
    from core.checkpoint import CheckpointError
    from core.evaluation import calibration, fitted, threshold
    from core.evaluation.ensemble import (SplitPredictOptions, default_output, member_records, ensemble_name,
                                          ensemble_tta, load_members, predict_split)
    from core.evaluation.evaluate import EvalSettings, write_split
    from core.hardware import make_runtime, pick_device
    from core.runs import pick_run, staged_folder, write_json
    from core.training import cv

    specs = [pick_run(p) for p in args.model_path]  # 'latest' or a folder of runs -> one run, said once
    cv_dir = cv.cv_folder(specs[0]) if len(specs) == 1 else None
    if cv_dir and args.folds_separately:
        return evaluate_folds(cv_dir, args, list(sys.argv[1:] if argv is None else argv))
    if args.folds_separately:
        raise UserError(f"--folds-separately needs one cross-validation run (train.py --folds K); "
                        f"{' '.join(args.model_path)} is not one")
    rule = threshold.check_rule(args.threshold) if args.threshold else None
    if cv_dir and (rule or args.calibrate):
        raise UserError("--threshold and --calibrate are fitted on valid, which a CV run pools into its folds; "
                        "use them with --folds-separately")
    device = pick_device("cpu" if args.use_cpu else device_name(args.use_device))
    rt = make_runtime(device, amp=None, channels_last=None)
    members = load_members(cv.fold_checkpoints(cv_dir) if cv_dir else specs, rt)
    first, classes = members[0], members[0].classes
    name = cv_dir.name if cv_dir else ensemble_name(members)
    config = first.config
    source = data.open_data(args.data or config.get("data", "new_dataset"), config.get("layout", "auto"),
                            config.get("split", "patient"), seed=config.get("seed", 0))
    trained_on = {}
    if not cv_dir:  # the run's own train/valid lists (splits.csv), not a split re-made from the data as it is now
        restored = data.restore_splits(source, first.path.parent, [m.path.parent for m in members[1:]])
        source, trained_on = restored.source, restored.trained_on
        if restored.note:
            print(f"data: {restored.note}")
    source = cv.fold_view(first.path, source) if len(members) == 1 else source  # a fold model: its own fold
    if len(source.classes) != len(classes):
        raise CheckpointError(f"{first.path} predicts {len(classes)} classes ({', '.join(classes)}) but the data "
                              f"at {source.root} has {len(source.classes)} ({', '.join(source.classes)})")
    positive = positive_index(args.positive_class, rule, classes)
    out = Path(args.output) if args.output else \
        cv_dir / ("eval-tta" if args.tta else "eval") if cv_dir else default_output(members, args.tta)
    out.mkdir(parents=True, exist_ok=True)
    options = SplitPredictOptions(args.batch_size, args.workers, args.tta,
                                  Path(config.get("out", "storage")) / "cache" if args.cache else None)
    title = display_name(first.arch) if len(members) == 1 else \
        f"{display_name(first.arch)} {len(members)}-fold ensemble" if cv_dir else name
    tta = ensemble_tta(members, args.tta)
    print(f"{title} from {', '.join(str(m.path) for m in members)} (epoch "
          f"{', '.join(str(m.epoch) for m in members)}) on {device}; {tta_line(tta, members)}; outputs in {out}/")
    splits = choose_splits(source, args.split, first.arch)
    if cv_dir:  # train and valid are pooled into the folds: every image there trained K-1 of the models
        splits = [s for s in splits if s.name not in ("train", "valid")]
        if not splits:
            raise UserError(f"{source.root} has no test list to ensemble the folds on; the out-of-fold scores are "
                            f"in {cv_dir / 'oof_metrics.json'}, each fold's in {cv_dir / 'cv_summary.csv'} "
                            f"(or use --folds-separately)")
    if not cv_dir:
        splits = with_valid(splits, source, out, bool(args.calibrate or rule))
    predicted = {s.name: predict_split(members, s, options, rt) for s in splits}
    checkpoints = fitted.checkpoint_records([(m.path, m.epoch) for m in members])
    temperature, point = fitted_settings(source, predicted, out, classes, checkpoints, tta, args.calibrate, rule,
                                         positive)
    with staged_folder(out) as stage:  # a failure leaves the earlier outputs in ``out`` as they were
        if len(members) > 1:
            write_json(stage / "ensemble.json", {"name": name, "members": member_records(members)})
        settings = EvalSettings(stage, classes, name, title, point, temperature, args.bootstrap, args.seed,
                                {"checkpoints": checkpoints, "tta": tta, "temperature": temperature}, trained_on)
        for split in splits:
            probs, labels = predicted[split.name]
            if temperature:
                probs = calibration.scale(probs, temperature)
            write_split(split, probs, labels, settings)
            if args.cam and split.labels is not None:
                cam_grid(members, split, probs, args.cam, options.cache_dir, stage)
    print(f"outputs -> {out}/")
    return 0


def positive_index(name: str | None, rule: str | None, classes: tuple[str, ...]) -> int | None:
    """--positive-class as a class index (None: not given); UserError unless the model has two classes."""
    from core.evaluation.threshold import class_index

    if (rule or name is not None) and len(classes) != 2:
        raise UserError(f"--threshold and --positive-class need two classes; this model has {len(classes)} "
                        f"(the arg-max decides)")
    return None if name is None else class_index(name, classes, "--positive-class")


def with_valid(splits: list[data.Split], source: data.DataSource, out: Path, fit: bool) -> list[data.Split]:
    """``splits`` plus valid, first, where a temperature or operating point is fitted there or saved in ``out``
    (a saved one is checked against valid, and fitted again there if it no longer holds)."""
    from core.evaluation import calibration, threshold

    saved = any((out / f).is_file() for f in (calibration.FILE, threshold.FILE))
    if (fit or saved) and "valid" in source.splits and "valid" not in [s.name for s in splits]:
        return [source.splits["valid"], *splits]
    return splits


def fitted_settings(source: data.DataSource, predicted: dict, out: Path, classes: tuple[str, ...],
                    checkpoints: list[dict], tta: str | None, calibrate: bool, rule: str | None, positive: int | None):
    """(temperature, operating point): fitted on, or checked against, the valid predictions (core.evaluation.fitted)."""
    from core.evaluation import fitted

    split = source.splits.get("valid")
    labelled = split is not None and split.labels is not None and "valid" in predicted
    now = fitted.provenance(checkpoints, tta, None, "valid", split.fingerprint() if split is not None else None)
    return fitted.operating_settings(fitted.Fitting(out, classes, now, predicted["valid"] if labelled else None),
                                     calibrate, rule, positive)


def tta_line(tta: str | None, members: list) -> str:
    """What the console says about TTA: off, the views used, or why there are none."""
    if tta is None:
        return "no TTA"
    if tta == "none":
        return f"TTA none: --augment {members[0].config.get('augment')} saw no flips or turns in training"
    return f"TTA {tta}"


def evaluate_folds(cv_dir: Path, args: argparse.Namespace, argv: list[str]) -> int:
    """--folds-separately: eval.py on each fold model of a CV run, each validated on its own fold."""
    from core.training import cv

    rest = [a for a in argv if a != "--folds-separately"]  # a later -m/--output wins in argparse
    for path in cv.fold_checkpoints(cv_dir):
        main([*rest, "-m", str(path), *(["--output", str(Path(args.output) / path.parent.name)]
                                          if args.output else [])])
    return 0


def cam_grid(members: list, split: data.Split, probs: np.ndarray, count: int, cache_dir: Path | None,
             out: Path) -> None:
    """Grad-CAM of a single model (an ensemble has no single map to show)."""
    import data
    from core.evaluation.gradcam import save_cam_grid

    if len(members) > 1:
        print(f"{split.name}: no Grad-CAM for an ensemble; run eval.py --cam on each member")
        return
    member = members[0]
    dataset = data.ImageDataset(split, member.prep, cache_dir)
    grid = save_cam_grid(member.model, dataset, probs, member.classes, count,
                         out / f"{split.name}_gradcam.png", f"{display_name(member.arch)} - {split.name}")
    print(f"{split.name}: Grad-CAM grid {grid.name}")


def device_name(use_device: str | None) -> str:
    """'-d 1' means cuda:1 as in the seeds; anything else is a device name."""
    if use_device is None:
        return "auto"
    return f"cuda:{use_device}" if use_device.isdigit() else use_device


def choose_splits(source: data.DataSource, wanted: list[str], arch: str) -> list[data.Split]:
    """The splits to evaluate; 'auto' = valid + this architecture's test list (or every test list)."""
    if wanted == ["all"]:
        return [s for name, s in source.splits.items() if name != "train"]
    own_name = f"resnet_{arch.removeprefix('resnet')}_test"
    if wanted != ["auto"]:
        # In the lab layout "test" means this architecture's own list (resnet_18_test.csv for ResNet18).
        own_test = lambda n: own_name if n == "test" and "test" not in source.splits and own_name in source.splits \
            else n  # noqa: E731
        return [source.split(own_test(name)) for name in wanted]
    tests = [s for name, s in source.splits.items() if name not in ("train", "valid")]
    own = [s for s in tests if s.name == own_name]
    return [source.splits["valid"], *(own or tests)]


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
