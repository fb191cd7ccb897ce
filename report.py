"""One report for a folder of runs: report.md and a self-contained report.html (images embedded).

    python report.py -f storage/demo                        # -> storage/demo/report.md, report.html
    python report.py -f storage/ResNet18-* storage/ResNet50-* --output reports/

It lists each run's settings and best valid accuracy (history.csv), the metrics eval.py wrote
(eval/<split>_metrics.json; an ensemble's from its own folder, e.g. storage/demo/ensemble-...),
the accuracy curves and confusion matrices (drawn by plot.py), Grad-CAM grids (eval.py --cam N)
and the commands that reproduce each run.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Sequence

from common.errors import UserError, run_cli


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-f", "--folder", nargs="+", default=["storage"],
                   help="run folders, or folders that hold them (default storage/)")
    p.add_argument("--output", help="output folder (default: the first --folder)")
    p.add_argument("--title", help="report title (default: Training report - <folder>)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    from core.reporting.evalfolder import describe_ensemble, find_ensembles
    from core.reporting.report import describe_run, draw_figures, to_html, to_markdown  # after parsing: fast --help
    from core.runs import find_runs, output_folder, write_text_atomic

    runs = find_runs([Path(f) for f in args.folder])
    out = output_folder(args.output, args.folder, runs)
    reports = [describe_run(run) for run in runs]
    ensembles = [describe_ensemble(folder) for folder in find_ensembles([Path(f) for f in args.folder])]
    figures = draw_figures(runs, out)
    title = args.title or f"Training report - {', '.join(args.folder)}"
    date = time.strftime("%Y-%m-%d %H:%M")
    for name, text in (("report.md", to_markdown(title, date, reports, figures, out, ensembles)),
                       ("report.html", to_html(title, date, reports, figures, ensembles))):
        try:
            write_text_atomic(out / name, text)
        except OSError as exc:
            raise UserError(f"cannot write {out / name} ({exc.strerror or exc}); choose another --output") from None
    print(f"report on {len(runs)} run(s){' and ' + str(len(ensembles)) + ' ensemble(s)' if ensembles else ''} -> "
          f"{out / 'report.md'}, {out / 'report.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
