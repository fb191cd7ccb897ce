"""Write a synthetic demo data set in the lab's layout: drawn white blood cells or retina photos.

No real data can be downloaded in the demo, so this script draws it. The images are procedural,
deterministic given ``--seed`` and marked as synthetic by a ``DEMO.txt`` file in the output folder.

    python demo_data.py                          # leukemia cells -> new_dataset/
    python demo_data.py --task retinopathy       # fundus photos  -> new_dataset_retina/
    python demo_data.py --image-size 450 --force # the real C-NMC geometry

Leukemia (C-NMC 2019 lab layout), label 0 = normal cell, 1 = leukemia blast::

    <out>/train.csv, valid.csv                    Path,label
    <out>/resnet_{18,50,152}_test.csv             Path (the same test images in each)
    <out>/test_labels.csv                         Path,label (the hidden labels, to score a Kaggle CSV)
    <out>/{train,valid,test}/<i>.bmp              Path = ./<out folder name>/<split>/<i>.bmp

Retinopathy (diabetic retinopathy lab layout), grades 0-4, CSVs with one column and no header::

    <out>/train_img.csv, train_label.csv, test_img.csv, test_label.csv
    <out>/images/<name>.jpeg                      name like 7_left

The classes differ in morphology (cells: nucleus shape, chromatin texture, nucleoli, N:C ratio;
retina: lesions), while size, stain and illumination vary within each class and overlap, so that
mean colour or cell area alone does not give the answer away.

Safety: the script never writes into a folder that holds anything but hidden files unless that
folder carries our ``DEMO.txt``. A demo set made with the same settings is left as it is (exit 0);
one made with other settings is replaced only with ``--force``.
"""
from __future__ import annotations

import argparse
import multiprocessing
import time
from pathlib import Path
from typing import Sequence

from common.choices import DEMO_TASKS
from common.errors import UserError, run_cli


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Write a synthetic demo data set (drawn cells or retina photos) in the lab layout.")
    parser.add_argument("--task", choices=DEMO_TASKS, default="leukemia",
                        help="leukemia: blast vs normal white blood cells (BMP); "
                             "retinopathy: 5 diabetic retinopathy grades (JPEG) (default: leukemia)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: new_dataset/ or new_dataset_retina/)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default: 0)")
    parser.add_argument("--image-size", type=int, default=128,
                        help="side of the square images in px (default: 128; real data: 450 cells, 512 retina)")
    parser.add_argument("--train", type=int, default=None, help="training images (default: 800 cells, 400 retina)")
    parser.add_argument("--valid", type=int, default=None,
                        help="validation images, leukemia only (default: 200)")
    parser.add_argument("--test", type=int, default=None, help="test images (default: 200 cells, 100 retina)")
    parser.add_argument("--force", action="store_true",
                        help="replace a demo set made with other settings; without it such a set is kept "
                             "(exit 2) and the same settings are a no-op (exit 0); non-demo folders are never touched")
    parser.add_argument("--workers", type=int, default=min(2, multiprocessing.cpu_count()),
                        help="processes drawing images (default: min(2, CPUs))")
    parser.add_argument("--samples-figure", type=Path, metavar="PNG",
                        help="instead of a data set, draw a figure of sample images (docs/demo_samples.png)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags, check the output folder and write the data set."""
    args = get_args_parser().parse_args(argv)
    from data.demo import generate, make_settings  # numpy, pandas, PIL: after parsing, so --help is instant

    if args.samples_figure:
        from data.demo.samples import save_samples_figure

        save_samples_figure(args.samples_figure, args.seed)
        print(f"sample images -> {args.samples_figure}")
        return 0
    settings = make_settings(args.task, args.out, args.seed, args.image_size,
                             (args.train, args.valid, args.test), args.force, args.workers)
    start = time.perf_counter()
    try:
        summary = generate(settings)
    except OSError as exc:  # a full disk or a read-only folder: the user's to fix
        raise UserError(f"cannot write the demo set to {settings.out}: {exc}") from exc
    if summary is None:
        print(f"{settings.out} already holds this demo data set (seed {settings.seed}, "
              f"{settings.image_size} px); nothing to do")
    else:
        print(f"wrote {settings.out} in {time.perf_counter() - start:.1f} s: {summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
