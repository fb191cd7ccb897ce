"""Classify new images with a trained run: a CSV of predicted classes and probabilities.

    python predict.py -m storage/latest cells/                    # every image under cells/, recursively
    python predict.py -m storage/latest 'scans/*.bmp' list.csv    # globs, and CSVs with a path column
    python predict.py -m storage/ResNet18-... -m storage/ResNet50-... cells/ --tta --cam   # ensemble, Grad-CAM

An image that cannot be read gets a row with its error and no prediction; the exit status is
then 1 (0 when every image was predicted). When no image at all could be predicted, or the run fails,
nothing is written: an earlier predictions CSV and its Grad-CAM overlays stay as they were.
"""
from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Sequence

from common.errors import UserError, run_cli
from core.cli import positive_int


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model_path", action="append", required=True, metavar="RUN",
                   help="run folder (its best.pt), checkpoint or 'latest'; repeat (-m A -m B) to average "
                        "several runs' probabilities")
    p.add_argument("images", nargs="+", help="image files, folders (searched recursively), globs, or CSVs with a "
                                             "path column")
    p.add_argument("-o", "--output", help="predictions CSV (default <run>/predict/predictions.csv)")
    p.add_argument("-b", "--batch_size", type=positive_int, default=64, help="images per batch (default 64)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation as each run's --augment policy allows (rotate: flips and 90-degree "
                        "turns; upright/none: none), as eval.py --tta")
    p.add_argument("--threshold", type=float,
                   help="two classes: predict the positive class when its probability is at least this "
                        "(default: the operating point eval.py saved for these runs and this TTA, if any, else "
                        "the larger probability)")
    p.add_argument("--positive-class", help="the class --threshold is about, by name or index (default: the "
                                            "operating point's, else class index 1)")
    p.add_argument("--cam", nargs="?", const="", metavar="DIR",
                   help="write a Grad-CAM overlay per image (predicted class) into DIR "
                        "(default <output folder>/gradcam/)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    from core.deploy import predict
    from core.evaluation.ensemble import ensemble_tta, load_members
    from core.hardware import make_runtime, pick_device
    from core.runs import staged_folder, write_text_atomic
    from models import display_name

    rt = make_runtime(pick_device(args.device), amp=None, channels_last=None)
    members = load_members(args.model_path, rt)  # the same models eval.py would build
    classes = members[0].classes
    saved, temperature = predict.read_fitted(members, args.tta)  # what eval.py fitted for these checkpoints
    threshold = operating_point_from_flags(args.threshold, args.positive_class, saved, classes)
    output = Path(args.output) if args.output else members[0].path.parent / "predict" / "predictions.csv"
    cam_dir = None if args.cam is None else Path(args.cam) if args.cam else output.parent / "gradcam"
    items = predict.collect_images(args.images)
    output.parent.mkdir(parents=True, exist_ok=True)
    names = " + ".join(f"{display_name(m.arch)} ({m.path})" for m in members)
    print(f"{names} on {rt.device}: {len(items)} images" + (f", TTA {ensemble_tta(members, True)}" if args.tta else "")
          + (f"; {threshold.source}: {classes[threshold.positive]} if p >= {threshold.threshold:g}"
             if threshold else ""))
    if temperature:
        print(f"calibrated as eval.py: temperature {temperature:.3f}")
    with ExitStack() as stack:  # overlays go to a temporary folder, moved into cam_dir only at the end
        staged = stack.enter_context(staged_folder(cam_dir)) if cam_dir else None
        options = predict.PredictOptions(args.batch_size, args.tta, threshold, staged, temperature)
        table = predict.predict_items(members, items, options, rt)
        print(predict.prediction_summary(table, classes))
        if (table["error"] != "").all():  # nothing predicted: keep the earlier outputs
            print(f"no image could be predicted: nothing written ({output} left as it was)", file=sys.stderr)
            return 1
        if staged:
            table["cam"] = [str(cam_dir / Path(p).name) if p else "" for p in table["cam"]]
    write_text_atomic(output, table.to_csv(index=False))
    print(f"predictions -> {output}" + (f"; Grad-CAM overlays -> {cam_dir}/" if cam_dir else ""))
    return 1 if (table["error"] != "").any() else 0


def operating_point_from_flags(value: float | None, positive_class: str | None, saved, classes: tuple[str, ...]):
    """--threshold, else the operating point eval.py saved (``saved``), else None (the larger probability wins)."""
    from core.evaluation.threshold import OperatingPoint, class_index

    if value is None and positive_class is None:
        return saved
    if len(classes) != 2:
        raise UserError(f"--threshold and --positive-class need a two-class model; this one has {len(classes)} "
                        f"classes ({', '.join(classes)})")
    positive = (class_index(positive_class, classes, "--positive-class") if positive_class is not None
                else saved.positive if saved else 1)
    if value is None and saved and saved.positive != positive:
        raise UserError(f"--positive-class {positive_class}: the saved operating point ({saved.source}) is about "
                        f"{classes[saved.positive]}; give --threshold too, or choose one with eval.py --positive-class")
    cut = value if value is not None else saved.threshold if saved else 0.5
    if not 0 <= cut <= 1:
        raise UserError(f"--threshold must be between 0 and 1 (got {cut})")
    source = "--threshold" if value is not None else saved.source if saved else "--positive-class"
    return OperatingPoint(cut, positive, source)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
