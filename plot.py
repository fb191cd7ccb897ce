"""Compare runs: train/valid accuracy (or loss) per epoch, and their confusion matrices.

    python plot.py -f storage/                     # every run under storage/
    python plot.py -f storage/ResNet18-* storage/ResNet50-* --metric loss --format pdf
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from common.errors import run_cli


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-f", "--folder", nargs="+", default=["storage"],
                   help="run folders, or folders that hold them (default storage/)")
    p.add_argument("--metric", choices=("accuracy", "loss"), default="accuracy", help="default accuracy")
    p.add_argument("--format", choices=("png", "pdf"), default="png", help="default png")
    p.add_argument("--output", help="output folder (default: the first --folder)")
    p.add_argument("--title", help="figure title")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    # matplotlib loads here, after parsing
    from core.reporting.plots import confusion_panels, plot_confusions, plot_curves, runs_table
    from core.runs import find_runs, output_folder

    runs = find_runs([Path(f) for f in args.folder])
    out = output_folder(args.output, args.folder, runs)
    table = runs_table(runs)
    print(table.to_string(index=False, formatters={"best valid": "{:.2%}".format, "last train": "{:.2%}".format}))
    curves = out / f"{args.metric}.{args.format}"
    plot_curves(runs, args.metric, args.title, curves)
    print(f"{args.metric} curves -> {curves}")
    matrices = out / f"confusion_matrices.{args.format}"
    panels = confusion_panels(runs)
    for panel in (p for p in panels if p.stale):
        print(f"{panel.run}: valid evaluation is stale ({panel.stale}); refresh: {panel.refresh}")
    if panels:
        plot_confusions(panels, matrices)
        print(f"confusion matrices -> {matrices}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
