"""The decode-once cache: every split decoded into a memory-mapped uint8 array, and the Dataset over it."""
from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from common.progress import progress
from data.preprocess import Preprocess, load_image
from data.sources import UNLABELLED, Split

CACHE_VERSION = 3  # bump when load_image changes the pixels it produces (3: EXIF orientation, 12-bit and float scale)
_CHUNK = 64  # images per cache-building task


def digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _fill_cache(array_path: Path, start: int, paths: Sequence[Path], prep: Preprocess) -> int:
    """Decode ``paths`` into rows ``start...`` of the .npy at ``array_path`` (runs in a worker)."""
    array = np.load(array_path, mmap_mode="r+")
    for offset, path in enumerate(paths):
        array[start + offset] = load_image(path, prep)
    array.flush()
    return len(paths)


def build_cache(paths: Sequence[Path], prep: Preprocess, target: Path, workers: int | None = None,
                desc: str = "caching") -> None:
    """Decode every file into an N x H x W x 3 uint8 .npy at ``target``, atomically.

    Worker processes each fill their slice of a memory-mapped temporary file, which is renamed
    to ``target`` only once complete: a crash never leaves a half cache that looks finished.
    """
    size = prep.image_size
    workers = min(workers or os.cpu_count() or 1, 8, math.ceil(len(paths) / _CHUNK))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.npy")
    np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3)).flush()
    chunks = [(start, list(paths[start:start + _CHUNK])) for start in range(0, len(paths), _CHUNK)]
    try:
        with progress(len(paths), desc, "img") as bar:
            if workers <= 1:
                for start, part in chunks:
                    bar.update(_fill_cache(tmp, start, part, prep))
            else:
                context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
                with ProcessPoolExecutor(workers, mp_context=context) as pool:
                    futures = [pool.submit(_fill_cache, tmp, start, part, prep) for start, part in chunks]
                    try:
                        for future in as_completed(futures):
                            bar.update(future.result())
                    except BaseException:
                        pool.shutdown(wait=True, cancel_futures=True)
                        raise
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


class ImageDataset(Dataset):
    """Preprocessed images as uint8 3xHxW tensors, read from a memory-mapped cache when given.

    With ``cache_dir`` the split is decoded once (in ``build_workers`` processes) into
    ``cache_dir/pixels-<size>px-<key>.npy``; the key covers the file list, each file's size and
    mtime, and the pixel settings of ``prep``, so a changed data set or size builds a new one.
    Without it every access decodes the file with the same ``load_image``.
    """

    def __init__(self, split: Split, prep: Preprocess, cache_dir: Path | None = None,
                 build_workers: int | None = None) -> None:
        self.split = split
        self.prep = prep
        labels = split.labels if split.labels is not None else (UNLABELLED,) * len(split.paths)
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.cache_path: Path | None = None
        self._array: np.ndarray | None = None
        if cache_dir is not None:
            key = digest({"version": CACHE_VERSION, "files": split.fingerprint(), **prep.pixel_key()})
            self.cache_path = Path(cache_dir) / f"pixels-{prep.image_size}px-{key}.npy"
            if not self._cache_is_valid():
                build_cache(split.paths, prep, self.cache_path, build_workers,
                            desc=f"caching {split.name} ({len(split)} images)")

    def _cache_is_valid(self) -> bool:
        if not self.cache_path.is_file():
            return False
        try:
            array = np.load(self.cache_path, mmap_mode="r")
        except (OSError, ValueError):
            return False
        size = self.prep.image_size
        return array.dtype == np.uint8 and array.shape == (len(self.split), size, size, 3)

    @property
    def pixels(self) -> np.ndarray | None:
        """The N x H x W x 3 uint8 memory map (opened lazily, once per process), None uncached."""
        if self._array is None and self.cache_path is not None:
            self._array = np.load(self.cache_path, mmap_mode="r")
        return self._array

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_array"] = None  # each worker process maps the file itself
        return state

    def __len__(self) -> int:
        return len(self.split.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.pixels is not None:
            image = np.array(self.pixels[index])
        else:
            image = load_image(self.split.paths[index], self.prep)
        return torch.from_numpy(image).permute(2, 0, 1), int(self.labels[index])

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch (uint8 Nx3xHxW, a channels-last view of the cache's NHWC, int64 N) in the given order."""
        wanted = np.asarray(indices, dtype=np.int64)
        if self.pixels is not None:
            order = np.argsort(wanted, kind="stable")
            images = np.empty((len(wanted), *self.pixels.shape[1:]), dtype=np.uint8)
            images[order] = self.pixels[wanted[order]]  # one read, in file order
        else:
            images = np.stack([load_image(self.split.paths[i], self.prep) for i in wanted])
        return torch.from_numpy(images).permute(0, 3, 1, 2), self.labels[torch.from_numpy(wanted)]
