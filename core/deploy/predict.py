"""Classify new images with one or more trained runs: what predict.py does.

    inputs (files, folders, globs, CSVs) -> image paths          collect_images
    run folders / checkpoints            -> Members (model + its preprocessing)   core.evaluation.ensemble.load_members
    paths, batch by batch                -> probabilities (averaged over members), decisions, Grad-CAM overlays

An image that cannot be read gets a row with an error message and no prediction; the others
are still predicted. The pixels go through the same ``load_image`` and ``BatchTransform`` as
eval.py's, so the probabilities are the same.
"""
from __future__ import annotations

import glob
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator, Sequence

import matplotlib
import numpy as np
import pandas as pd
import torch
from PIL import Image

from core.evaluation import calibration

from common.errors import UserError
from common.progress import track
from core import engine
from core.evaluation.ensemble import Member, default_output, ensemble_tta, member_tta
from core.evaluation.fitted import checkpoint_records, saved_for_inference
from core.evaluation.gradcam import OVERLAY, heat_maps
from core.evaluation.threshold import FILE as OPERATING_POINT_FILE
from core.evaluation.threshold import OperatingPoint, decide
from data import BatchTransform, DataError, Preprocess, load_image
from data.sources import IMAGE_EXTENSIONS, column, is_image, natural_key, read_csv, resolve_path

GLOB_CHARS = set("*?[")
DECODE_THREADS = min(8, os.cpu_count() or 1)  # decoding, not the model, limits prediction on a GPU


@dataclass(frozen=True)
class Item:
    """One image to classify: the path to open, or why there is none."""

    path: str  # as the user will recognise it (as given, or as resolved from a CSV)
    error: str = ""


@dataclass(frozen=True)
class PredictOptions:
    batch_size: int = 64
    tta: bool = False  # as each member's augmentation policy allows (core.tta)
    threshold: OperatingPoint | None = None
    cam_dir: Path | None = None  # write one Grad-CAM overlay PNG per image here
    temperature: float | None = None  # eval.py --calibrate's, applied as eval.py applies it


# ------------------------------------------------------------------------------------ inputs


def collect_images(inputs: Sequence[str]) -> list[Item]:
    """Files, folders (recursively), globs and CSVs with a path column -> items, in the order given.

    A named file that does not exist becomes an item with an error (it is reported, not dropped);
    a glob or folder that matches no image is a UserError (most likely a typo).
    """
    items: list[Item] = []
    for text in inputs:
        path = Path(text)
        if path.suffix.lower() == ".csv" and path.is_file():
            items += items_from_csv(path)
        elif path.is_dir():
            found = sorted((p for p in path.rglob("*") if is_image(p)), key=lambda p: (p.parent, natural_key(p)))
            if not found:
                raise UserError(f"{path} holds no images ({', '.join(IMAGE_EXTENSIONS)}), in any sub-folder")
            items += [Item(str(p)) for p in found]
        elif path.exists():
            items.append(Item(str(path)))
        elif GLOB_CHARS & set(text):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True))
            images = [p for p in found if is_image(p)] + [q for p in found if p.is_dir()
                                                               for q in sorted(p.rglob("*")) if is_image(q)]
            if not images:
                raise UserError(f"no image matches {text!r}")
            items += [Item(str(p)) for p in images]
        else:
            items.append(Item(str(path), f"image {path} not found"))
    if not items:
        raise UserError("no images to classify")
    return items


def items_from_csv(csv: Path) -> list[Item]:
    """One item per row of a CSV's path column (any case); relative paths are resolved as in the lab CSVs."""
    frame = read_csv(csv)
    (name,) = column(frame, csv, ["path"])
    items = []
    for line, written in enumerate(frame[name].tolist(), start=2):  # line 1 is the header
        try:
            items.append(Item(str(resolve_path(written, csv, line, [csv.parent, csv.parent.parent]))))
        except DataError as exc:
            items.append(Item(written, str(exc)))
    return items


# ------------------------------------------------------------------------------------ threshold


def read_fitted(members: Sequence[Member], tta: bool) -> tuple[OperatingPoint | None, float | None]:
    """The operating point and temperature eval.py saved for these checkpoints and this TTA (in the folder
    eval.py writes them to: ``<run>/eval/``, ``eval-last/``, ``eval-tta/``, an ensemble's folder); UserError
    if they were fitted on other checkpoints or another TTA."""
    folder, plain = default_output(members, tta), default_output(members)
    temperature, point = saved_for_inference(folder, checkpoint_records([(m.path, m.epoch) for m in members]),
                                             ensemble_tta(members, tta), members[0].classes)
    if tta and point is None and temperature is None and (plain / OPERATING_POINT_FILE).is_file():
        print(f"no operating point for TTA in {folder}/ (the one in {plain}/ was chosen without TTA): the larger "
              f"probability decides; eval.py --tta --threshold RULE chooses one")
    return point, temperature


# ------------------------------------------------------------------------------------ prediction


Decoded = tuple[torch.Tensor, list[int], dict[int, str]]  # images, their chunk positions, failures by position


def decode_items(items: Sequence[Item], prep: Preprocess, pool: ThreadPoolExecutor | None = None) -> Decoded:
    """Decode the readable items: uint8 N x 3 x H x W, their indices in ``items``, and the failures' messages.

    With ``pool`` the files are decoded in its threads (PIL releases the GIL while decoding and resizing).
    """
    pixels, ok, failed = [], [], {}
    results = (pool.map if pool else map)(partial(load_or_error, prep=prep), items)
    for i, result in enumerate(results):
        if isinstance(result, str):
            failed[i] = result
        else:
            pixels.append(result)
            ok.append(i)
    size = prep.image_size
    images = np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8)
    return torch.from_numpy(images).permute(0, 3, 1, 2), ok, failed


def load_or_error(item: Item, prep: Preprocess) -> np.ndarray | str:
    """The item's pixels (H x W x 3 uint8), or why it cannot be read."""
    if item.error:
        return item.error
    try:
        return load_image(Path(item.path), prep)
    except DataError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - one odd file must not stop the others
        return f"cannot read image {item.path}: {type(exc).__name__}: {exc}"


def batches(items: Sequence[Item], size: int) -> Iterator[tuple[int, Sequence[Item]]]:
    for start in range(0, len(items), size):
        yield start, items[start:start + size]


def predict_items(members: Sequence[Member], items: Sequence[Item], options: PredictOptions,
                  rt: engine.Runtime) -> pd.DataFrame:
    """One row per item: path, prediction, one probability column per class, error (and cam with a cam folder)."""
    classes = members[0].classes
    probs = np.full((len(items), len(classes)), np.nan)
    errors, cams = [""] * len(items), [""] * len(items)
    transforms = [BatchTransform(m.prep, train=False).to(rt.device) for m in members]
    preps = {pixel_key(m.prep): m.prep for m in members}  # members with the same pixel settings share a decoding
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        chunks = list(batches(items, options.batch_size))
        for start, chunk in track(chunks, len(chunks), "predict", "batch", per_step=options.batch_size):
            decoded = {key: decode_items(chunk, prep, pool) for key, prep in preps.items()}
            for _, _, failed in decoded.values():
                for i, message in failed.items():
                    errors[start + i] = message
            good = [i for i in range(len(chunk)) if not errors[start + i]]
            rows = [start + i for i in good]
            if not good:
                continue
            views = [(m, transform, pixels_of(decoded[pixel_key(m.prep)], good))
                     for m, transform in zip(members, transforms)]
            probs[rows] = np.mean([engine.predict(m.model, [(images, torch.zeros(len(good), dtype=torch.long))],
                                                  transform, rt, member_tta(m, options.tta), show=False)[0]
                                   for m, transform, images in views], axis=0)
            if options.temperature:  # the operating point was chosen on these calibrated probabilities
                probs[rows] = calibration.scale(probs[rows], options.temperature)
            if options.cam_dir is not None:  # explains the first member's view of the final decision
                paths = [options.cam_dir / f"{row + 1:05d}_{Path(items[row].path).stem}.png" for row in rows]
                save_overlays(*views[0], decide(probs[rows], options.threshold), paths)
                for row, path in zip(rows, paths):
                    cams[row] = str(path)
    return results_table(items, probs, errors, classes, options.threshold, cams if options.cam_dir else None)


def pixel_key(prep: Preprocess) -> tuple:
    return tuple(sorted(prep.pixel_key().items()))


def pixels_of(decoded: Decoded, wanted: Sequence[int]) -> torch.Tensor:
    """The decoded images of the chunk positions ``wanted`` (all of them decoded), in that order."""
    images, ok, _ = decoded
    return images[torch.tensor([ok.index(i) for i in wanted], dtype=torch.long)]


def results_table(items: Sequence[Item], probs: np.ndarray, errors: list[str], classes: Sequence[str],
                  threshold: OperatingPoint | None, cams: list[str] | None) -> pd.DataFrame:
    """The predictions CSV: failed rows keep their path and error, with no prediction and no probabilities."""
    ok = ~np.isnan(probs).any(axis=1)
    preds = np.full(len(items), "", dtype=object)
    if ok.any():
        preds[ok] = [classes[k] for k in decide(probs[ok], threshold)]
    table = pd.DataFrame({"path": [item.path for item in items], "prediction": preds,
                          **{f"prob_{c}": probs[:, k] for k, c in enumerate(classes)}, "error": errors})
    if cams is not None:
        table["cam"] = cams
    return table


def save_overlays(member: Member, transform: torch.nn.Module, images: torch.Tensor, preds: np.ndarray,
                  paths: Sequence[Path]) -> None:
    """Grad-CAM of the predicted class blended over each uint8 image (N x 3 x H x W), one PNG per path."""
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    maps = heat_maps(member.model, images, transform, torch.from_numpy(np.asarray(preds)))
    cmap = matplotlib.colormaps[OVERLAY["cmap"]]
    for image, heat, path in zip(images, maps, paths):
        colour = cmap(heat.numpy())[..., :3] * 255
        base = image.permute(1, 2, 0).numpy().astype(np.float64)
        blended = (1 - OVERLAY["alpha"]) * base + OVERLAY["alpha"] * colour
        Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8)).save(path)


def prediction_summary(table: pd.DataFrame, classes: Sequence[str], shown: int = 5) -> str:
    """A few lines: how many were predicted, per class, and every failure (the first ``shown`` by name)."""
    failed = table[table["error"] != ""]
    lines = [f"{len(table) - len(failed)} of {len(table)} images predicted"
             + (f", {len(failed)} failed" if len(failed) else "")]
    counts = table.loc[table["error"] == "", "prediction"].value_counts()
    lines.append("  " + ", ".join(f"{c}: {int(counts.get(c, 0))}" for c in classes))
    for message in failed["error"].head(shown):
        lines.append(f"  failed: {message}")
    if len(failed) > shown:
        lines.append(f"  ... and {len(failed) - shown} more failures (see the error column)")
    return "\n".join(lines)
