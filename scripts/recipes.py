"""Compare training recipes by measurement: best valid accuracy (mean +- std over seeds) and stability.

    python scripts/recipes.py --data new_dataset --image-size 48 -e 8              # the demo set
    python scripts/recipes.py --digits storage/digits --image-size 32 -e 8          # real handwritten digits
    python scripts/recipes.py --digits storage/digits --recipe base "--ema" --augment rotate upright none

Each recipe is a string of extra train.py flags; each runs once per seed. "drop" is the largest fall of
valid accuracy between consecutive epochs after epoch 3 (0 = it never fell): the zig-zag a user sees.
--digits writes scikit-learn's bundled 8x8 handwritten digits (1,797 real scans, no download) as
32 px PNGs in the folder-per-class layout first; digits have an "up", unlike cells.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"base": "", "ema": "--ema", "zero-init": "--zero-init-residual",
           "ema+zero-init": "--ema --zero-init-residual"}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="a data set train.py reads (e.g. new_dataset from demo_data.py)")
    p.add_argument("--digits", metavar="DIR", help="write the scikit-learn digits to DIR and use them")
    p.add_argument("--recipe", nargs="+", default=list(RECIPES),
                   help=f"names ({', '.join(RECIPES)}) or strings of train.py flags (default: all named)")
    p.add_argument("--augment", nargs="+", default=[None], help="also vary --augment over these policies")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("-m", "--model", default="ResNet18")
    p.add_argument("-e", "--epochs", type=int, default=8)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--extra", default="", help="flags added to every run (e.g. '-b 64')")
    return p


def write_digits(folder: Path, valid_every: int = 5) -> Path:
    """sklearn's 8x8 digits as 32 px grey PNGs: train/<digit>/ and valid/<digit>/ (every 5th image validates)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    if (folder / "train").is_dir():
        return folder
    digits = load_digits()
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        split = "valid" if i % valid_every == 0 else "train"
        (folder / split / str(label)).mkdir(parents=True, exist_ok=True)
        image = Image.fromarray((pixels * 255 / 16).astype(np.uint8)).resize((32, 32), Image.BILINEAR)
        image.save(folder / split / str(label) / f"{i}.png")
    return folder


def train_once(data: str, flags: list[str], out: Path) -> list[float]:
    """One train.py run in this process (output swallowed); its valid accuracy per epoch."""
    import pandas as pd

    import train as train_script

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = train_script.main(["--data", data, "--out", str(out), "--name", "r", "--workers", "0", *flags])
    if code != 0:
        raise SystemExit(f"train.py {shlex.join(flags)} failed")
    return pd.read_csv(out / "r" / "history.csv")["valid_acc"].tolist()


def summarise(curves: list[list[float]]) -> dict[str, float]:
    """Mean and std of the best valid accuracy, mean final accuracy, and the worst drop after epoch 3."""
    import numpy as np

    best = np.array([max(c) for c in curves])
    drops = [max([a - b for a, b in zip(c[2:], c[3:])] + [0.0]) for c in curves]
    return {"best": best.mean(), "std": best.std(), "final": float(np.mean([c[-1] for c in curves])),
            "drop": max(drops)}


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    sys.path.insert(0, str(ROOT))
    data = str(write_digits(Path(args.digits))) if args.digits else args.data
    if not data:
        raise SystemExit("give --data DIR or --digits DIR")
    print(f"{args.model}, {args.epochs} epochs, {args.image_size} px, seeds {args.seeds}, data {data}")
    print("| recipe | augment | best valid acc (mean +- std) | final | largest drop after epoch 3 | curves |")
    print("|---|---|---|---|---|---|")
    for recipe in args.recipe:
        for augment in args.augment:
            curves = []
            for seed in args.seeds:
                flags = [*shlex.split(RECIPES.get(recipe, recipe)), *shlex.split(args.extra), "-m", args.model,
                         "-e", str(args.epochs), "--image-size", str(args.image_size), "--seed", str(seed)]
                flags += ["--augment", augment] if augment else []
                with tempfile.TemporaryDirectory() as out:
                    curves.append(train_once(data, flags, Path(out)))
            s = summarise(curves)
            shown = " / ".join(" ".join(f"{100 * a:.0f}" for a in c) for c in curves)
            print(f"| {recipe or 'base'} | {augment or 'default'} | {100 * s['best']:.1f} +- {100 * s['std']:.1f} | "
                  f"{100 * s['final']:.1f} | {100 * s['drop']:.1f} | {shown} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
