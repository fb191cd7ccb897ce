"""Check a data set before training: unreadable files, the same picture in two splits (exact or a
resized, re-encoded, brighter or darker copy), one picture with two labels, patients in two splits,
and per split the classes, image sizes, modes, bit depths and EXIF orientations.

    python audit.py                                  # new_dataset/ (any layout train.py reads)
    python audit.py --data C-NMC_Leukemia --json storage/audit.json

Exit status: 1 when it finds something that breaks training or inflates results, 0 when not,
2 on a usage error. Each file is decoded once; the scan is remembered in <cache-dir> per file
(size and mtime), so a second audit of an unchanged data set decodes nothing.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from common.choices import LAYOUTS, SPLIT_METHODS
from common.errors import run_cli


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="new_dataset", help="data root (default new_dataset/)")
    p.add_argument("--layout", default="auto", choices=("auto", *LAYOUTS), help="data layout (default: detected)")
    p.add_argument("--split", default="patient", choices=SPLIT_METHODS,
                   help="how train.py splits train/valid when the layout has no valid list (default patient)")
    p.add_argument("--seed", type=int, default=0, help="the split's seed, as given to train.py (default 0)")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the full report as JSON")
    p.add_argument("--montage", type=Path, default=Path("storage/audit/duplicates.png"),
                   help="PNG of the duplicate pairs found (default storage/audit/duplicates.png)")
    p.add_argument("--cache-dir", type=Path, default=Path("storage/cache"),
                   help="where the per-file scan is remembered (default storage/cache/)")
    p.add_argument("--no-cache", dest="cache", action="store_false", help="decode every file, remember nothing")
    p.add_argument("--no-near", dest="near", action="store_false", help="skip the near-copy search")
    p.add_argument("--workers", type=int, default=0, help="decoding processes (default: one per CPU core)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    from common.progress import progress
    from data import open_data  # loads torch (the data package's __init__)
    from data.audit import audit
    from data.audit_report import draw_montage, summary_text
    from data.scan import memory_file, scan

    source = open_data(args.data, args.layout, args.split, seed=args.seed)
    paths = list(dict.fromkeys(p for split in source.splits.values() for p in split.paths))
    memory = memory_file(args.cache_dir, source.root) if args.cache else None
    with progress(len(paths), "reading images", "img") as bar:
        facts = scan(paths, memory, args.workers or None, bar.update)
    report = audit(source, facts, near=args.near)
    montage = draw_montage(report, args.montage)
    print(summary_text(report, montage))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
