"""Checkpoints: one plain dict, written atomically, read with ``weights_only=True``.

A checkpoint holds everything eval.py needs to rebuild the model and its preprocessing
with no flags (``arch``, ``model_options``, ``classes``, ``preprocess``), and everything
train.py needs to continue the run exactly (optimizer, RNG states, epoch and step,
history, the partial sums of an interrupted epoch).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.errors import UserError
from core.runs import default_mode, pick_run

FORMAT = "resnet-suite/1"


class CheckpointError(UserError):
    """A checkpoint that cannot be used: missing, corrupt, unsafe or of another model."""


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` so that a crash at any moment leaves the old file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # The rename itself must reach the disk, or a power cut can bring back the old name.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def resolve_checkpoint(path: str | Path, prefer: str = "best.pt", storage: Path = Path("storage")) -> Path:
    """Turn a checkpoint file, a run folder, a folder of runs or ``latest`` into a checkpoint file path.

    ``latest`` (or ``<folder>/latest``) and a folder that holds runs mean the run train.py wrote
    last under that folder, at any depth; the choice is printed.
    """
    p = pick_run(path, storage)
    if p.is_dir():
        for name in (prefer, "best.pt", "last.pt"):
            if (p / name).is_file():
                return p / name
        raise CheckpointError(f"{p} holds no best.pt or last.pt yet (the run stopped before its first save); "
                              f"start it again, or give another run folder or checkpoint")
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    return p


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely: tensors and plain values only, never arbitrary objects."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} is not a safe checkpoint: it holds Python objects that would run code when "
            f"loaded ({str(exc).splitlines()[0][:120]}); refusing to load it") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a folder, not a checkpoint") from None
    except Exception as exc:  # weights_only loading runs no code: any failure means a broken file
        detail = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"{path} is not a readable checkpoint ({detail})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not a checkpoint of this suite (it holds a {type(ckpt).__name__})")
    return ckpt


def checkpoint_digest(path: Path) -> str:
    """A short content hash of a checkpoint file: what an evaluation records to know later whether
    it still belongs to the run's current ``best.pt`` (epochs repeat across resumes; bytes do not)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


def state_dict_from(ckpt: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The model weights in a checkpoint of ours, a torchvision state_dict, or a {'state_dict': ...} file.

    A last.pt of an ``--ema`` run holds both: the averaged weights are the ones it validated (history.csv,
    best.pt), so eval, predict, export and ``--pretrained`` read those; only resuming reads the raw ones.
    """
    for key in ("ema", "model", "state_dict", "model_state_dict"):
        if isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    weights = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in ckpt.items()
               if isinstance(v, torch.Tensor)}
    if not weights:
        raise CheckpointError(f"{path} holds no model weights")
    return weights


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch and CUDA generator states as weights_only-loadable values."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {"bit_generator": np_state["bit_generator"], "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"], "has_gauss": n["has_gauss"], "gauss": n["gauss"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]}})
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# What train.py writes, with the type each field must have; checked before anything is used.
MODEL_FIELDS = {"arch": str, "num_classes": int, "model": dict, "preprocess": dict}
OPTIONAL_FIELDS = {"classes": list, "model_options": dict, "config": dict, "epoch": int}
TRAINING_FIELDS = {"optimizer": dict, "scaler": dict, "rng": dict, "epoch": int, "step": int, "history": list,
                   "best_acc": (int, float), "best_epoch": int, "config": dict}


def check_fields(ckpt: dict[str, Any], path: Path, training: bool = False) -> None:
    """CheckpointError naming the first field that is missing or of the wrong type."""
    missing = [k for k in MODEL_FIELDS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; it was not written by train.py "
                              f"(plain weights go to train.py --pretrained)")
    wanted = {**MODEL_FIELDS, **{k: t for k, t in OPTIONAL_FIELDS.items() if k in ckpt}}
    if training:
        absent = [k for k in TRAINING_FIELDS if k not in ckpt]
        if absent:
            raise CheckpointError(f"{path} lacks {', '.join(absent)}: it is not a complete training state "
                                  f"and cannot be resumed")
        wanted.update(TRAINING_FIELDS)
    for key, kind in wanted.items():
        if not isinstance(ckpt[key], kind) or isinstance(ckpt[key], bool):
            raise CheckpointError(f"{path}: field '{key}' is a {type(ckpt[key]).__name__}, which train.py "
                                  f"never writes; the file is damaged or crafted")
    if ckpt["num_classes"] < 1 or len(ckpt.get("classes", [None] * ckpt["num_classes"])) != ckpt["num_classes"]:
        raise CheckpointError(f"{path}: num_classes {ckpt['num_classes']} does not match its class names")


def preprocess_from_checkpoint(ckpt: dict[str, Any], path: Path):
    """The checkpoint's dataloader.Preprocess; CheckpointError if the stored settings are invalid."""
    from data import Preprocess

    try:
        prep = Preprocess.from_dict(ckpt["preprocess"])
        if not (isinstance(prep.image_size, int) and 8 <= prep.image_size <= 4096 and len(prep.mean) == 3
                and len(prep.std) == 3 and 0 < float(prep.crop) <= 1 and min(prep.std) > 0):
            raise ValueError(f"out-of-range values {ckpt['preprocess']}")
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: invalid preprocessing settings ({exc})") from None
    return prep


def model_from_checkpoint(ckpt: dict[str, Any], path: Path) -> torch.nn.Module:
    """Rebuild the architecture a checkpoint names and load its weights strictly."""
    from models import (
        build_model,  # here, so that reading a checkpoint does not need the models
    )

    check_fields(ckpt, path)
    try:
        model = build_model(ckpt["arch"], ckpt["num_classes"], **ckpt.get("model_options", {}))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild its model ({exc})") from None
    try:
        model.load_state_dict(state_dict_from(ckpt, path))
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {ckpt['arch']} with {ckpt['num_classes']} classes "
                              f"({str(exc).splitlines()[0][:160]})") from None
    return model
