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
import json
import math
import multiprocessing
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from errors import UserError, run_cli

GENERATOR_VERSION = 1  # bump when the drawing changes, so that an old demo set is seen as stale
MARKER = "DEMO.txt"
TASKS = ("leukemia", "retinopathy")
DEFAULT_OUT = {"leukemia": "new_dataset", "retinopathy": "new_dataset_retina"}
# Defaults are sized for a CPU demo: one ResNet18 epoch at 64 px in about 10 s on 2 cores.
DEFAULT_COUNTS = {"leukemia": (800, 200, 200), "retinopathy": (400, 0, 100)}
LEUKEMIA_FRACTIONS = (0.32, 0.68)  # normal, blast: the C-NMC training balance (3,389 / 7,272)
RETINOPATHY_FRACTIONS = (0.73, 0.07, 0.15, 0.025, 0.025)  # the Kaggle DR training balance
SPLIT_IDS = {"train": 1, "valid": 2, "test": 3}  # mixed into the seeds: each split draws its own images
TASK_IDS = {"leukemia": 11, "retinopathy": 12}
LEUKEMIA_TEST_CSVS = ("resnet_18_test.csv", "resnet_50_test.csv", "resnet_152_test.csv")
# Everything the generator writes; --force removes these (and nothing else) before writing.
GENERATED = ("train", "valid", "test", "images", "train.csv", "valid.csv", "test_labels.csv",
             *LEUKEMIA_TEST_CSVS, "train_img.csv", "train_label.csv", "test_img.csv",
             "test_label.csv", MARKER)


@dataclass(frozen=True)
class Settings:
    """What to generate; everything but ``out``, ``force`` and ``workers`` is recorded in DEMO.txt."""

    task: str
    seed: int
    image_size: int
    train: int
    valid: int
    test: int
    out: Path
    force: bool
    workers: int

    def recorded(self) -> dict:
        """The settings that decide the images' bytes (what DEMO.txt stores and compares)."""
        return {"task": self.task, "seed": self.seed, "image_size": self.image_size,
                "train": self.train, "valid": self.valid, "test": self.test,
                "generator_version": GENERATOR_VERSION}


@dataclass(frozen=True)
class Job:
    """One image to draw and where to save it (plain values: it crosses process boundaries)."""

    path: str
    task: str
    label: int
    size: int
    seed: tuple[int, ...]
    right_eye: bool = False  # retina only: decides the side of the optic disc


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Write a synthetic demo data set (drawn cells or retina photos) in the lab layout.")
    parser.add_argument("--task", choices=TASKS, default="leukemia",
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
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags, check the output folder and write the data set."""
    args = get_args_parser().parse_args(argv)
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


def generate(settings: Settings) -> str | None:
    """Write the data set under ``settings.out``; a summary, or None when it is already there."""
    if not prepare_out(settings.out, settings.recorded(), settings.force):
        return None
    write_marker(settings.out, settings.recorded(), complete=False)
    writer = write_leukemia if settings.task == "leukemia" else write_retinopathy
    summary = writer(settings)
    write_marker(settings.out, settings.recorded(), complete=True, summary=summary)
    return summary


def make_settings(task: str, out: Path | None, seed: int, image_size: int,
                  counts: tuple[int | None, int | None, int | None], force: bool, workers: int) -> Settings:
    """Fill in the task's defaults and check the values; UserError names a bad flag."""
    if not 32 <= image_size <= 2048:
        raise UserError(f"--image-size {image_size} is out of range; use 32 to 2048 px")
    if workers < 1:
        raise UserError(f"--workers {workers} must be at least 1")
    if task == "retinopathy" and counts[1] is not None:
        raise UserError("the retinopathy layout has no validation split; drop --valid")
    train, valid, test = (given if given is not None else default
                          for given, default in zip(counts, DEFAULT_COUNTS[task]))
    minimum_valid = 1 if task == "leukemia" else 0
    for flag, count, minimum in (("--train", train, 1), ("--valid", valid, minimum_valid), ("--test", test, 1)):
        if count < minimum:
            raise UserError(f"{flag} {count} must be at least {minimum}")
    return Settings(task=task, seed=seed, image_size=image_size, train=train, valid=valid, test=test,
                    out=out if out is not None else Path(DEFAULT_OUT[task]), force=force, workers=workers)


# ---------------------------------------------------------------------------------------------
# The output folder: refuse real data, skip an identical demo set, replace a stale one on --force.


def read_marker(out: Path) -> dict | None:
    """The settings recorded in ``out/DEMO.txt`` (with ``complete``); None unless it is our marker."""
    marker = out / MARKER
    if not marker.is_file():
        return None
    for line in marker.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("settings: "):
            try:
                settings = json.loads(line[len("settings: "):])
            except json.JSONDecodeError:
                return None
            return settings if isinstance(settings, dict) and "task" in settings else None
    return None


def prepare_out(out: Path, recorded: dict, force: bool) -> bool:
    """Make ``out`` ready for writing; False when it already holds the requested demo set.

    Raises UserError when ``out`` holds files that are not ours, or an older demo set without --force.
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    visible = [p for p in out.iterdir() if not p.name.startswith(".")] if out.exists() else []
    if not visible:
        out.mkdir(parents=True, exist_ok=True)
        return True
    previous = read_marker(out)
    if previous is None:
        raise UserError(f"refusing to write into {out}: it holds files but no {MARKER} from this script, "
                        f"so it may be real data; choose another --out")
    complete = previous.pop("complete", False)
    if previous == recorded and complete and not force:
        return False
    if complete and not force:
        raise UserError(f"{out} holds a demo set made with other settings ({describe(previous)}); "
                        f"add --force to replace it")
    for name in GENERATED:  # an interrupted run (complete: false) is ours to clean without --force
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    return True


def describe(recorded: dict) -> str:
    """Recorded settings in words, for messages."""
    keys = ("task", "seed", "image_size", "train", "valid", "test", "generator_version")
    return ", ".join(f"{k} {recorded[k]}" for k in keys if k in recorded)


def write_marker(out: Path, recorded: dict, complete: bool, summary: str = "") -> None:
    """Write DEMO.txt: a plain-words warning, the command to rebuild it and the settings as JSON."""
    flags = (f"--task {recorded['task']} --seed {recorded['seed']} --image-size {recorded['image_size']} "
             f"--train {recorded['train']} --test {recorded['test']}")
    if recorded["task"] == "leukemia":
        flags += f" --valid {recorded['valid']}"
    text = (
        "SYNTHETIC DEMO DATA - procedurally drawn by demo_data.py, not images of real patients.\n"
        "Use it to see the suite run end to end; scores on it say nothing about real data.\n"
        f"Rebuild: python demo_data.py --out {out} {flags} --force\n"
        f"Contents: {summary or 'incomplete (generation was interrupted)'}\n"
        f"settings: {json.dumps({**recorded, 'complete': complete}, sort_keys=True)}\n"
    )
    (out / MARKER).write_text(text, encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Splits, labels and writing the images.


def class_counts(n: int, fractions: Sequence[float], minimum: int) -> list[int]:
    """Split ``n`` images over classes by ``fractions``, each class at least ``minimum`` (if n allows)."""
    minimum = min(minimum, n // len(fractions))
    counts = [max(minimum, round(n * f)) for f in fractions]
    largest = int(np.argmax(fractions))
    counts[largest] += n - sum(counts)  # the rounding error and the minimums come out of the largest class
    return counts


def split_labels(n: int, fractions: Sequence[float], minimum: int, rng: np.random.Generator) -> np.ndarray:
    """Exactly ``class_counts`` labels in a random order."""
    counts = class_counts(n, fractions, minimum)
    labels = np.repeat(np.arange(len(counts)), counts)
    return rng.permutation(labels)


def write_images(jobs: Sequence[Job], workers: int, desc: str) -> None:
    """Draw and save every job, in ``workers`` processes when that helps, with a progress bar."""
    bar = tqdm(total=len(jobs), desc=desc, unit="img", file=sys.stderr)
    if workers > 1 and len(jobs) >= 64:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for _ in pool.imap_unordered(save_job, jobs, chunksize=16):
                bar.update()
    else:
        for job in jobs:
            save_job(job)
            bar.update()
    bar.close()


def save_job(job: Job) -> None:
    """Draw one image and save it (BMP for cells, JPEG for retina); the worker entry point."""
    rng = np.random.default_rng(list(job.seed))
    if job.task == "leukemia":
        pixels = render_cell(sample_cell(rng, job.label), job.size, rng)
        Image.fromarray(pixels, "RGB").save(job.path, format="BMP")
    else:
        pixels = render_fundus(sample_fundus(rng, job.label, job.right_eye), job.size, rng)
        Image.fromarray(pixels, "RGB").save(job.path, format="JPEG", quality=90)


def write_leukemia(settings: Settings) -> str:
    """Write the three splits, the CSVs of the lab and the hidden test labels; return a summary."""
    out, folder = settings.out, settings.out.resolve().name  # resolve: --out . has no name
    jobs, tables = [], {}
    for split, n in (("train", settings.train), ("valid", settings.valid), ("test", settings.test)):
        base = (settings.seed, TASK_IDS["leukemia"], SPLIT_IDS[split])
        labels = split_labels(n, LEUKEMIA_FRACTIONS, 1, np.random.default_rng(list(base)))
        (out / split).mkdir()
        jobs += [Job(str(out / split / f"{i}.bmp"), "leukemia", int(label), settings.image_size, (*base, i))
                 for i, label in enumerate(labels)]
        tables[split] = pd.DataFrame({"Path": [f"./{folder}/{split}/{i}.bmp" for i in range(n)], "label": labels})
    write_images(jobs, settings.workers, "drawing cells")
    tables["train"].to_csv(out / "train.csv", index=False)
    tables["valid"].to_csv(out / "valid.csv", index=False)
    for name in LEUKEMIA_TEST_CSVS:
        tables["test"][["Path"]].to_csv(out / name, index=False)
    tables["test"].to_csv(out / "test_labels.csv", index=False)
    return ", ".join(f"{split} {len(t)} ({int(t.label.sum())} blast)" for split, t in tables.items())


def write_retinopathy(settings: Settings) -> str:
    """Write the images and the four header-less CSVs of the retinopathy lab; return a summary."""
    out = settings.out
    (out / "images").mkdir()
    jobs, summary, first = [], [], 0
    for split, n in (("train", settings.train), ("test", settings.test)):
        base = (settings.seed, TASK_IDS["retinopathy"], SPLIT_IDS[split])
        labels = split_labels(n, RETINOPATHY_FRACTIONS, 5, np.random.default_rng(list(base)))
        # Kaggle names: <patient>_left / <patient>_right, numbered on across the splits.
        names = [f"{(first + i) // 2 + 1}_{'left' if (first + i) % 2 == 0 else 'right'}" for i in range(n)]
        first += n
        jobs += [Job(str(out / "images" / f"{name}.jpeg"), "retinopathy", int(label), settings.image_size,
                     (*base, i), name.endswith("_right")) for i, (name, label) in enumerate(zip(names, labels))]
        pd.Series(names).to_csv(out / f"{split}_img.csv", index=False, header=False)
        pd.Series(labels).to_csv(out / f"{split}_label.csv", index=False, header=False)
        summary.append(f"{split} {n} (grades 0-4: {'/'.join(str(c) for c in np.bincount(labels, minlength=5))})")
    write_images(jobs, settings.workers, "drawing retinas")
    return ", ".join(summary)


# ---------------------------------------------------------------------------------------------
# Shared drawing helpers. Lengths are fractions of the image side unless named *_px.


def smooth_noise(rng: np.random.Generator, size: int, sigma_px: float) -> np.ndarray:
    """Gaussian-filtered white noise of unit standard deviation, ``size`` x ``size`` float32."""
    white = rng.standard_normal((size, size)).astype(np.float32)
    freq = np.fft.fftfreq(size).astype(np.float32)
    kernel = np.exp(-2.0 * (math.pi * sigma_px) ** 2 * (freq[:, None] ** 2 + freq[None, :] ** 2))
    field = np.fft.irfft2(np.fft.rfft2(white) * kernel[:, : size // 2 + 1], s=(size, size)).astype(np.float32)
    return field / (field.std() + 1e-8)


def soft_inside(signed_px: np.ndarray) -> np.ndarray:
    """Anti-aliased inside-mask from a signed distance in pixels (positive inside)."""
    return np.clip(signed_px + 0.5, 0.0, 1.0)


def polar_radius(theta: np.ndarray, radius: float, harmonics: Sequence[tuple[int, float, float]]) -> np.ndarray:
    """r(theta) = radius * (1 + sum a cos(k theta + phase)) for (k, a, phase) in ``harmonics``."""
    wobble = np.zeros_like(theta)
    for k, amplitude, phase in harmonics:
        wobble += amplitude * np.cos(k * theta + phase)
    return radius * (1.0 + wobble)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] floats to rounded, clipped uint8."""
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# White blood cells (C-NMC look: one segmented cell, purple nucleus, pale cytoplasm, black around).

# Optical density per unit stain: Giemsa-like purple nucleus and pale blue-lilac cytoplasm.
NUCLEUS_OD = (1.05, 1.45, 0.55)
CYTOPLASM_OD = (0.28, 0.40, 0.12)


@dataclass(frozen=True)
class Cell:
    """Random parameters of one cell; lengths are fractions of the image side."""

    label: int
    offset: tuple[float, float]
    radius: float
    aspect: float
    angle: float
    membrane: tuple[tuple[int, float, float], ...]
    nucleus_ratio: float  # nucleus radius / cell radius (the N:C ratio's square root)
    nucleus_shift: tuple[float, float]  # eccentricity as a fraction of the rim, and its direction
    nucleus_shape: tuple[tuple[int, float, float], ...]
    clefts: tuple[tuple[float, float, float], ...]  # (angle, depth, width) notches in the nucleus
    chromatin_density: float
    chromatin_contrast: float
    chromatin_grain: float  # clump size as a fraction of the nucleus radius
    rim_condensation: float  # extra density along the nuclear membrane
    nucleoli: tuple[tuple[float, float, float], ...]  # (distance, angle, radius) in nucleus radii
    cytoplasm_density: float
    stain_nucleus: tuple[float, float, float]
    stain_cytoplasm: tuple[float, float, float]
    illumination: tuple[float, float, float]
    gradient: tuple[float, float]
    blur: float
    noise: float


def sample_cell(rng: np.random.Generator, label: int) -> Cell:
    """Draw the parameters of a normal lymphocyte (0) or a lymphoblast (1)."""
    blast = label == 1
    u = rng.uniform
    radius = float(np.clip(rng.normal(0.265 if blast else 0.235, 0.035), 0.15, 0.36))
    harmonics = tuple((k, float(u(0.0, 0.025)), float(u(0, 2 * math.pi))) for k in (2, 3, 4, 5))
    if blast:
        shape = tuple((k, float(u(0.02, 0.075)), float(u(0, 2 * math.pi))) for k in (2, 3, 4, 5))
        n_clefts = int(rng.choice([0, 1, 1, 2, 2, 3]))
        clefts = tuple((float(u(0, 2 * math.pi)), float(u(0.12, 0.32)), float(u(0.12, 0.3)))
                       for _ in range(n_clefts))
        n_nucleoli = int(rng.choice([0, 1, 2, 2, 3, 3, 4], p=[0.06, 0.2, 0.22, 0.14, 0.16, 0.12, 0.10]))
        nucleoli = tuple((float(u(0.0, 0.55)), float(u(0, 2 * math.pi)), float(u(0.1, 0.17)))
                         for _ in range(n_nucleoli))
    else:
        shape = tuple((k, float(u(0.0, 0.03)), float(u(0, 2 * math.pi))) for k in (2, 3, 4))
        clefts = ((float(u(0, 2 * math.pi)), float(u(0.05, 0.15)), float(u(0.2, 0.4))),) if u() < 0.2 else ()
        nucleoli = ((float(u(0.0, 0.5)), float(u(0, 2 * math.pi)), float(u(0.06, 0.1))),) if u() < 0.12 else ()
    hue = rng.normal(0.0, 0.12, 3)  # per-channel stain variation, shared by nucleus and cytoplasm
    stain = float(u(0.75, 1.25))
    return Cell(
        label=label,
        offset=(float(rng.normal(0, 0.015)), float(rng.normal(0, 0.015))),
        radius=radius,
        aspect=float(u(1.0, 1.18)),
        angle=float(u(0, 2 * math.pi)),
        membrane=harmonics,
        nucleus_ratio=float(u(0.8, 0.92) if blast else u(0.7, 0.84)),
        nucleus_shift=(float(u(0.0, 0.9)), float(u(0, 2 * math.pi))),
        nucleus_shape=shape,
        clefts=clefts,
        chromatin_density=float(u(0.65, 0.85) if blast else u(0.9, 1.15)) * stain,
        chromatin_contrast=float(u(0.06, 0.14) if blast else u(0.25, 0.4)),
        chromatin_grain=float(u(0.03, 0.05) if blast else u(0.09, 0.14)),
        rim_condensation=float(u(0.0, 0.1) if blast else u(0.15, 0.35)),
        nucleoli=nucleoli,
        cytoplasm_density=float(u(0.7, 1.6)) * stain,
        stain_nucleus=tuple(float(c) for c in np.array(NUCLEUS_OD) * np.exp(hue + rng.normal(0, 0.05, 3))),
        stain_cytoplasm=tuple(float(c) for c in np.array(CYTOPLASM_OD) * np.exp(hue + rng.normal(0, 0.08, 3))),
        illumination=tuple(float(c) for c in u(0.82, 1.0) * np.exp(rng.normal(0, 0.04, 3))),
        gradient=(float(rng.normal(0, 0.15)), float(rng.normal(0, 0.15))),
        blur=float(u(0.002, 0.007)),
        noise=float(u(0.006, 0.018)),
    )


def render_cell(cell: Cell, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``cell`` as a ``size`` x ``size`` x 3 uint8 image, exactly black outside the cell."""
    grid = (np.arange(size, dtype=np.float32) + 0.5) - size / 2
    x = grid[None, :] - cell.offset[0] * size
    y = grid[:, None] - cell.offset[1] * size
    # The cell's own frame: rotated, then stretched along u (area kept) so the cell is a bit oval.
    cos, sin, stretch = math.cos(cell.angle), math.sin(cell.angle), math.sqrt(cell.aspect)
    u = (x * cos + y * sin) / stretch
    v = (-x * sin + y * cos) * stretch
    radius_px = cell.radius * size
    membrane = polar_radius(np.arctan2(v, u), radius_px, cell.membrane)
    inside_cell = soft_inside(membrane - np.hypot(u, v))

    nucleus_px = radius_px * cell.nucleus_ratio
    shift = cell.nucleus_shift[0] * (radius_px - nucleus_px)
    nu = u - shift * math.cos(cell.nucleus_shift[1])
    nv = v - shift * math.sin(cell.nucleus_shift[1])
    theta, r = np.arctan2(nv, nu), np.hypot(nu, nv)
    boundary = polar_radius(theta, nucleus_px, cell.nucleus_shape)
    for angle, depth, width in cell.clefts:
        gap = np.angle(np.exp(1j * (theta - angle)))  # wrapped to [-pi, pi]
        boundary = boundary - depth * nucleus_px * np.exp(-0.5 * (gap / width) ** 2)
    inside_nucleus = soft_inside(boundary - r) * inside_cell

    grain_px = max(cell.chromatin_grain * nucleus_px, 0.6)
    chromatin = 1.0 + cell.chromatin_contrast * np.tanh(1.5 * smooth_noise(rng, size, grain_px))
    edge = np.clip(1.0 - (boundary - r) / (0.18 * nucleus_px), 0.0, 1.0)  # 1 at the membrane
    density = cell.chromatin_density * (chromatin + cell.rim_condensation * edge ** 2)
    for distance, angle, radius in cell.nucleoli:
        d = np.hypot(nu - distance * nucleus_px * math.cos(angle), nv - distance * nucleus_px * math.sin(angle))
        body = np.clip(1.5 - 1.5 * d / (radius * nucleus_px), 0.0, 1.0)  # soft-edged, paler than chromatin
        ring = np.exp(-0.5 * ((d - radius * nucleus_px) / max(0.03 * nucleus_px, 0.5)) ** 2)
        density = density * (1.0 - 0.35 * body) + 0.15 * cell.chromatin_density * ring

    texture = 1.0 + 0.08 * smooth_noise(rng, size, max(0.05 * radius_px, 0.6))
    cytoplasm = cell.cytoplasm_density * texture * (inside_cell - inside_nucleus)
    optical_density = (inside_nucleus * density)[..., None] * np.array(cell.stain_nucleus, np.float32) \
        + cytoplasm[..., None] * np.array(cell.stain_cytoplasm, np.float32)
    light = 1.0 + cell.gradient[0] * x / size + cell.gradient[1] * y / size
    image = light[..., None] * np.array(cell.illumination, np.float32) * np.exp(-optical_density)

    # Optics first (blur, sensor noise), then the segmentation mask: the background stays exactly 0.
    image = np.asarray(Image.fromarray(to_uint8(image), "RGB").filter(
        ImageFilter.GaussianBlur(cell.blur * size)), dtype=np.float32) / 255.0
    image = image + rng.normal(0.0, cell.noise, image.shape).astype(np.float32)
    return to_uint8(image * (inside_cell >= 0.5)[..., None])


# ---------------------------------------------------------------------------------------------
# Retina photos (Kaggle DR look: orange-red fundus disk on black, optic disc, vessels, lesions).


@dataclass(frozen=True)
class Fundus:
    """Random parameters of one fundus photo; lengths are fractions of the image side."""

    grade: int
    right_eye: bool
    center: tuple[float, float]
    radius: float
    colour: tuple[float, float, float]
    brightness: float
    gradient: tuple[float, float]
    vignetting: float
    disc: tuple[float, float, float]  # x, y offset from the centre, radius
    macula: tuple[float, float]
    microaneurysms: int
    haemorrhages: int
    exudate_clusters: int
    cotton_wool: int
    neovascular_tufts: int
    large_haemorrhages: int
    blur: float


def sample_fundus(rng: np.random.Generator, grade: int, right_eye: bool) -> Fundus:
    """Draw the parameters of a fundus photo of DR ``grade`` 0-4; lesions grow with the grade."""
    u, side = rng.uniform, 1.0 if right_eye else -1.0
    radius = float(u(0.41, 0.48))
    disc_x = side * float(u(0.26, 0.34)) * radius / 0.45

    def count(low: int, high: int, from_grade: int) -> int:
        return int(rng.integers(low, high + 1)) if grade >= from_grade else 0

    return Fundus(
        grade=grade,
        right_eye=right_eye,
        center=(float(0.5 + rng.normal(0, 0.015)), float(0.5 + rng.normal(0, 0.015))),
        radius=radius,
        colour=(float(u(0.78, 0.95)), float(u(0.3, 0.45)), float(u(0.1, 0.2))),
        brightness=float(u(0.7, 1.1)),
        gradient=(float(rng.normal(0, 0.2)), float(rng.normal(0, 0.2))),
        vignetting=float(u(0.35, 0.65)),
        disc=(disc_x, float(rng.normal(0, 0.02)), float(u(0.05, 0.065))),
        macula=(-disc_x * float(u(0.05, 0.2)), float(rng.normal(0, 0.015))),
        microaneurysms=count(3, 10, 1) + count(6, 14, 2),
        haemorrhages=count(3, 8, 2) + count(6, 14, 3),
        exudate_clusters=count(2, 5, 3),
        cotton_wool=count(1, 4, 3),
        neovascular_tufts=count(1, 3, 4),
        large_haemorrhages=count(1, 3, 4),
        blur=float(u(0.0008, 0.002)),
    )


def vessel_tree(rng: np.random.Generator, start: tuple[float, float], angle: float, turn: float,
                length: float, width: float, depth: int) -> list[tuple[list[tuple[float, float]], float]]:
    """A random-walk vessel with branches: a list of (polyline, width) in canvas pixels."""
    steps = min(max(int(length / (2.5 * max(width, 1.0))), 6), 40)
    step = length / steps
    points, (x, y) = [start], start
    branches: list[tuple[list[tuple[float, float]], float]] = []
    for i in range(steps):
        angle += turn + rng.normal(0, 0.08)
        x, y = x + step * math.cos(angle), y + step * math.sin(angle)
        points.append((x, y))
        if depth > 0 and 0.15 < i / steps < 0.85 and rng.uniform() < 2.2 / steps:
            fork = angle + rng.choice([-1, 1]) * rng.uniform(0.5, 1.0)
            branches += vessel_tree(rng, (x, y), fork, rng.normal(0, 0.03), length * rng.uniform(0.3, 0.55),
                                    width * 0.65, depth - 1)
    return [(points, width)] + branches


def draw_paths(canvas: Image.Image, paths: Iterable[tuple[list[tuple[float, float]], float]],
               taper: float = 0.5) -> None:
    """Draw polylines that thin towards their ends by ``taper``, with round joints."""
    draw = ImageDraw.Draw(canvas)
    for points, width in paths:
        for i in range(len(points) - 1):
            w = max(width * (1.0 - taper * i / len(points)), 1.0)
            draw.line([points[i], points[i + 1]], fill=255, width=int(round(w)))
            (px, py), half = points[i + 1], w / 2
            draw.ellipse([px - half, py - half, px + half, py + half], fill=255)


def point_in_disk(rng: np.random.Generator, cx: float, cy: float, radius: float) -> tuple[float, float]:
    """A uniformly random point in the disk of ``radius`` around (cx, cy)."""
    angle, distance = rng.uniform(0, 2 * math.pi), radius * math.sqrt(rng.uniform())
    return cx + distance * math.cos(angle), cy + distance * math.sin(angle)


def blobs(draw: ImageDraw.ImageDraw, rng: np.random.Generator, x: float, y: float, radius: float,
          parts: int) -> None:
    """An irregular blob: a few overlapping ellipses around (x, y)."""
    for _ in range(parts):
        cx, cy = x + rng.normal(0, 0.35 * radius), y + rng.normal(0, 0.35 * radius)
        rx, ry = radius * rng.uniform(0.5, 1.0), radius * rng.uniform(0.5, 1.0)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)


def mask_array(canvas: Image.Image, blur_px: float, size: int) -> np.ndarray:
    """A drawn mask, box-downsampled to ``size`` and softened by ``blur_px`` canvas pixels: size x size x 1."""
    if canvas.getbbox() is None:  # nothing drawn (a healthy eye has no lesions)
        return np.zeros((size, size, 1), np.float32)
    small = canvas.resize((size, size), Image.Resampling.BOX)
    small = small.filter(ImageFilter.GaussianBlur(blur_px * size / canvas.width))
    return np.asarray(small, dtype=np.float32)[..., None] / 255.0


@dataclass(frozen=True)
class FundusLayout:
    """Where the eye lies on the drawing canvas, in canvas pixels (the canvas is twice the image)."""

    scale: int  # canvas side
    cx: float
    cy: float
    radius: float
    disc_x: float
    disc_y: float
    disc_r: float
    macula_x: float
    macula_y: float

    @classmethod
    def of(cls, eye: Fundus, scale: int) -> "FundusLayout":
        cx, cy = eye.center[0] * scale, eye.center[1] * scale
        return cls(scale=scale, cx=cx, cy=cy, radius=eye.radius * scale,
                   disc_x=cx + eye.disc[0] * scale, disc_y=cy + eye.disc[1] * scale, disc_r=eye.disc[2] * scale,
                   macula_x=cx + eye.macula[0] * scale, macula_y=cy + eye.macula[1] * scale)


# How each drawn lesion mask is blended in: (blur as a fraction of the canvas, opacity, RGB colour).
LESION_LOOKS = {
    "new_vessels": (0.001, 0.6, (0.5, 0.08, 0.06)),
    "red": (0.002, 0.85, (0.38, 0.06, 0.04)),  # microaneurysms, haemorrhages
    "exudates": (0.0015, 0.9, (1.0, 0.88, 0.45)),
    "cotton_wool": (0.012, 0.55, (0.95, 0.82, 0.7)),
}


def render_fundus(eye: Fundus, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``eye`` as a ``size`` x ``size`` x 3 uint8 image, black outside the fundus disk.

    Vessels and lesions are drawn on a canvas twice the size and box-downsampled (anti-aliasing).
    """
    at = FundusLayout.of(eye, 2 * size)
    centres = 2.0 * (np.arange(size, dtype=np.float32) + 0.5)  # output pixel centres on the canvas
    x, y = centres[None, :] - at.cx, centres[:, None] - at.cy
    image = fundus_background(eye, at, x, y, rng)
    veins, arteries = draw_vessels(rng, at, eye.right_eye)
    # Vessels absorb green and blue more than red: they look dark red on the orange background.
    image = image * (1 - mask_array(veins, 0.6, size) * np.array((0.45, 0.75, 0.6), np.float32))
    image = image * (1 - mask_array(arteries, 0.6, size) * np.array((0.25, 0.55, 0.4), np.float32))
    lesions = draw_lesions(rng, eye, at)
    for name, (blur, opacity, colour) in LESION_LOOKS.items():
        mask = opacity * mask_array(lesions[name], blur * at.scale, size)
        image = image * (1 - mask) + mask * np.array(colour, np.float32) * eye.brightness

    # The camera: soft focus, sensor noise, and the round field stop (exactly black outside).
    photo = Image.fromarray(to_uint8(image), "RGB").filter(ImageFilter.GaussianBlur(eye.blur * size))
    photo = np.asarray(photo, dtype=np.float32) / 255.0 + rng.normal(0, 0.01, image.shape).astype(np.float32)
    field = soft_inside((at.radius - np.hypot(x, y)) / 2.0)[..., None]
    return to_uint8(photo * field)


def fundus_background(eye: Fundus, at: FundusLayout, x: np.ndarray, y: np.ndarray,
                      rng: np.random.Generator) -> np.ndarray:
    """Orange-red fundus, darker to the rim, uneven light, choroid texture, dark macula, yellow disc."""
    size = x.shape[1]
    shade = eye.brightness * (1.0 - eye.vignetting * (np.hypot(x, y) / at.radius) ** 3)
    shade = shade * (1.0 + (eye.gradient[0] * x + eye.gradient[1] * y) / at.scale)
    shade = shade * (1.0 + 0.05 * smooth_noise(rng, size, 0.02 * size))
    to_macula = np.hypot(x + at.cx - at.macula_x, y + at.cy - at.macula_y)
    shade = shade * (1.0 - 0.35 * np.exp(-0.5 * (to_macula / (0.06 * at.scale)) ** 2))
    image = shade[..., None] * np.array(eye.colour, np.float32)
    to_disc = np.hypot(x + at.cx - at.disc_x, y + at.cy - at.disc_y)
    glow = np.exp(-0.5 * (to_disc / (1.4 * at.disc_r)) ** 2)[..., None]
    disc = np.clip((at.disc_r - to_disc) / (0.15 * at.disc_r), 0, 1)[..., None]
    image = image + 0.25 * glow * np.array((0.9, 0.6, 0.2), np.float32)
    return image * (1 - disc) + disc * np.array((1.0, 0.86, 0.55), np.float32) * (0.85 + 0.15 * eye.brightness)


def draw_vessels(rng: np.random.Generator, at: FundusLayout, right_eye: bool) -> tuple[Image.Image, Image.Image]:
    """Vein and artery masks: temporal arcades leave the disc and bend round the macula, nasal ones fan out."""
    side = 1.0 if right_eye else -1.0  # the disc sits on the right in a right eye
    veins, arteries = Image.new("L", (at.scale, at.scale)), Image.new("L", (at.scale, at.scale))
    for vertical in (-1.0, 1.0):
        for canvas, width, spread in ((veins, 0.011, 0.0), (arteries, 0.008, 0.15)):
            temporal = math.atan2(vertical * 0.95, -side * (0.3 + spread))
            bend = vertical * side * 0.07
            draw_paths(canvas, vessel_tree(rng, (at.disc_x, at.disc_y), temporal, bend, 1.15 * at.radius,
                                           width * at.scale, 3))
            nasal = math.atan2(vertical * (0.8 + spread), side * 0.6)
            draw_paths(canvas, vessel_tree(rng, (at.disc_x, at.disc_y), nasal, rng.normal(0, 0.02),
                                           0.7 * at.radius, 0.8 * width * at.scale, 2))
    return veins, arteries


def draw_lesions(rng: np.random.Generator, eye: Fundus, at: FundusLayout) -> dict[str, Image.Image]:
    """Lesion masks named as in LESION_LOOKS; how many of each the eye's grade decided."""
    masks = {name: Image.new("L", (at.scale, at.scale)) for name in LESION_LOOKS}
    red, exudates, wool = (ImageDraw.Draw(masks[name]) for name in ("red", "exudates", "cotton_wool"))
    scale = at.scale
    for _ in range(eye.microaneurysms):
        px, py = point_in_disk(rng, at.cx, at.cy, 0.75 * at.radius)
        rr = max(rng.uniform(0.004, 0.007) * scale, 1.2)
        red.ellipse([px - rr, py - rr, px + rr, py + rr], fill=255)
    for _ in range(eye.haemorrhages):
        px, py = point_in_disk(rng, at.cx, at.cy, 0.8 * at.radius)
        blobs(red, rng, px, py, rng.uniform(0.01, 0.025) * scale, int(rng.integers(2, 5)))
    for _ in range(eye.exudate_clusters):  # hard exudates gather in rings near the macula
        ox, oy = at.macula_x + rng.normal(0, 0.12 * at.radius), at.macula_y + rng.normal(0, 0.12 * at.radius)
        ring = rng.uniform(0.02, 0.07) * scale
        for _ in range(int(rng.integers(6, 16))):
            a, stretch = rng.uniform(0, 2 * math.pi), rng.uniform(0.7, 1.2)
            blobs(exudates, rng, ox + ring * stretch * math.cos(a), oy + ring * stretch * math.sin(a),
                  max(rng.uniform(0.003, 0.009) * scale, 1.0), 2)
    for _ in range(eye.cotton_wool):
        px, py = point_in_disk(rng, at.cx, at.cy, 0.6 * at.radius)
        blobs(wool, rng, px, py, rng.uniform(0.015, 0.03) * scale, 3)
    for _ in range(eye.neovascular_tufts):  # tangles of fine new vessels, on the disc or elsewhere
        ox, oy = (at.disc_x, at.disc_y) if rng.uniform() < 0.5 else point_in_disk(rng, at.cx, at.cy, 0.6 * at.radius)
        loops = [vessel_tree(rng, (ox + rng.normal(0, 0.02 * scale), oy + rng.normal(0, 0.02 * scale)),
                             rng.uniform(0, 2 * math.pi), rng.normal(0, 0.5), 0.05 * scale, 0.0035 * scale, 1)
                 for _ in range(int(rng.integers(8, 16)))]
        draw_paths(masks["new_vessels"], [path for loop in loops for path in loop], taper=0.2)
    for _ in range(eye.large_haemorrhages):
        px, py = point_in_disk(rng, at.cx, at.cy, 0.6 * at.radius)
        rx, ry = rng.uniform(0.04, 0.08) * scale, rng.uniform(0.03, 0.06) * scale
        if rng.uniform() < 0.5:  # preretinal bleed: boat-shaped, flat on top
            red.chord([px - rx, py - ry, px + rx, py + ry], start=0, end=180, fill=255)
        else:
            blobs(red, rng, px, py, rx, 4)
    return masks


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
