"""Writing a synthetic demo data set: settings, the DEMO.txt marker, the lab layouts, parallel drawing."""
from __future__ import annotations

import json
import multiprocessing
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from common.choices import DEMO_TASKS
from common.errors import UserError
from common.progress import progress
from data.demo.cells import render_cell, sample_cell
from data.demo.fundus import render_fundus, sample_fundus

GENERATOR_VERSION = 1  # bump when the drawing changes, so that an old demo set is seen as stale
MARKER = "DEMO.txt"
TASKS = DEMO_TASKS
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
        raise UserError(f"{out} holds a demo set made with other settings ({describe_settings(previous)}); "
                        f"add --force to replace it")
    for name in GENERATED:  # an interrupted run (complete: false) is ours to clean without --force
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    return True


def describe_settings(recorded: dict) -> str:
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
    bar = progress(len(jobs), desc, "img")
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
