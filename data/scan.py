"""One pass over the files: what each one holds (decodable? pixels' digest, perceptual signature,
size, mode, bit depth, EXIF orientation), in worker processes, remembered per file between runs.

``scan`` feeds audit.py; ``find_unreadable`` is the cheap pass train.py makes before any long work.
"""
from __future__ import annotations

import functools
import hashlib
import multiprocessing
import os
import uuid
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import numpy as np

from data.phash import THUMB_SIDE, WEAK_BITS, signature
from data.preprocess import decode
from data.sources import DataError, DataSource, Split

LISTED = 20  # unreadable files named in train.py's message; the rest are counted

SCAN_VERSION = 1  # bump when a field's meaning changes: old remembered scans are then ignored
_CHUNK = 32  # files per worker task
Progress = Callable[[int], None]  # called with the number of files just finished


@dataclass
class Facts:
    """Column arrays, one row per file (``path`` order); ``error`` is "" for a readable file."""

    path: np.ndarray  # str
    size: np.ndarray  # int64 bytes on disk   } the file's identity: a changed file is scanned again
    mtime: np.ndarray  # int64 ns              }
    error: np.ndarray  # str
    digest: np.ndarray  # str: hash of the decoded, upright RGB pixels and their shape
    hash: np.ndarray  # uint64 perceptual hash (data.phash)
    weak: np.ndarray  # uint8 N x WEAK_BITS
    detail: np.ndarray  # float16 N x THUMB_SIDE x THUMB_SIDE
    width: np.ndarray  # int32, as stored
    height: np.ndarray  # int32
    mode: np.ndarray  # str, PIL mode as stored
    bits: np.ndarray  # int16 bits per sample
    orientation: np.ndarray  # int16 EXIF orientation, 0 = no tag

    def __len__(self) -> int:
        return len(self.path)

    def take(self, rows: np.ndarray | list[int]) -> "Facts":
        return Facts(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    @staticmethod
    def concat(parts: Sequence["Facts"]) -> "Facts":
        return Facts(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Facts)})


_COLUMNS = {  # Facts field: (dtype, its value for an unreadable file)
    "path": (str, ""), "size": (np.int64, 0), "mtime": (np.int64, 0), "error": (str, ""), "digest": (str, ""),
    "hash": (np.uint64, 0), "weak": (np.uint8, np.zeros(WEAK_BITS)),
    "detail": (np.float16, np.zeros((THUMB_SIDE, THUMB_SIDE))), "width": (np.int32, 0), "height": (np.int32, 0),
    "mode": (str, ""), "bits": (np.int16, 0), "orientation": (np.int16, 0),
}


def _rows(records: list[dict]) -> Facts:
    """Facts from the per-file dicts the workers return."""
    columns = {}
    for name, (dtype, missing) in _COLUMNS.items():
        values = np.array([r.get(name, missing) for r in records], dtype=dtype)
        columns[name] = values.reshape(len(records), *np.shape(missing))
    return Facts(**columns)


def _identity(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError:
        return -1, -1
    return stat.st_size, stat.st_mtime_ns


def _reason(exc: DataError) -> str:
    """The decoder's own words, without the path (the report names the path beside it)."""
    cause = exc.__cause__
    return f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)


def scan_file(path: Path) -> dict:
    """Everything audit.py needs from one file (decoded once)."""
    size, mtime = _identity(path)
    record = {"path": str(path), "size": size, "mtime": mtime}
    try:
        decoded = decode(path)
    except DataError as exc:
        return {**record, "error": _reason(exc)}
    code, weak, detail = signature(decoded.rgb)
    return {**record, "digest": pixel_digest(np.asarray(decoded.rgb)), "hash": code, "weak": weak, "detail": detail,
            "width": decoded.size[0], "height": decoded.size[1], "mode": decoded.mode, "bits": decoded.bits,
            "orientation": decoded.orientation or 0}


@functools.lru_cache(maxsize=4)
def _multipliers(words: int) -> np.ndarray:
    """2 x ``words`` random odd 64-bit numbers, the same in every process (fixed seed)."""
    rng = np.random.default_rng(20260523)
    return rng.integers(0, 2 ** 63, (2, words), dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1)


def pixel_digests(images: np.ndarray) -> list[str]:
    """A 128-bit digest of each image (N x ...) with its shape: two multilinear hashes of its 64-bit words
    (mod 2^64, random odd multipliers). Distinct images collide with probability about 2^-64 per
    hash; ~20x faster than blake2b, which matters at every training start (train.py hashes its caches)."""
    raw = np.ascontiguousarray(images).reshape(len(images), -1).view(np.uint8)
    if raw.shape[1] % 8:
        raw = np.concatenate([raw, np.zeros((len(raw), 8 - raw.shape[1] % 8), np.uint8)], axis=1)
    words = raw.view(np.uint64)
    keys = _multipliers(words.shape[1])
    first, second = (words * keys[0]).sum(axis=1, dtype=np.uint64), (words * keys[1]).sum(axis=1, dtype=np.uint64)
    shape = "x".join(map(str, images.shape[1:]))
    return [f"{int(a):016x}{int(b):016x}-{shape}" for a, b in zip(first, second)]


def pixel_digest(pixels: np.ndarray) -> str:
    """``pixel_digests`` of one image."""
    return pixel_digests(pixels[None])[0]


def _scan_chunk(paths: Sequence[Path]) -> list[dict]:
    return [scan_file(p) for p in paths]


def _check_chunk(paths: Sequence[Path]) -> list[tuple[str, str]]:
    failed = []
    for path in paths:
        try:
            decode(path, draft_side=64)  # a JPEG's whole stream is still read at 1/8 scale
        except DataError as exc:
            failed.append((str(path), _reason(exc)))
    return failed


def _run_chunks(task: Callable, paths: Sequence[Path], workers: int | None, on_done: Progress | None) -> list:
    """``task`` over chunks of ``paths`` in ``workers`` processes; the results in chunk order."""
    chunks = [list(paths[start:start + _CHUNK]) for start in range(0, len(paths), _CHUNK)]
    workers = max(1, min(workers or os.cpu_count() or 1, 8, len(chunks)))
    results = []
    if workers == 1:
        for chunk in chunks:
            results.append(task(chunk))
            if on_done:
                on_done(len(chunk))
        return results
    context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        for chunk, result in zip(chunks, pool.map(task, chunks)):
            results.append(result)
            if on_done:
                on_done(len(chunk))
    return results


def find_unreadable(paths: Sequence[Path], workers: int | None = None,
                    on_done: Progress | None = None) -> list[tuple[str, str]]:
    """(path, reason) for every file of ``paths`` that cannot be decoded, in order."""
    return [item for part in _run_chunks(_check_chunk, paths, workers, on_done) for item in part]


def _load_remembered(memory: Path | None) -> Facts | None:
    if memory is None or not memory.is_file():
        return None
    try:
        with np.load(memory, allow_pickle=False) as saved:
            if int(saved["version"]) != SCAN_VERSION:
                return None
            return Facts(**{f.name: saved[f.name] for f in fields(Facts)})
    except (OSError, ValueError, KeyError):
        return None  # a damaged memory is only a slower scan


def _remember(memory: Path, facts: Facts) -> None:
    memory.parent.mkdir(parents=True, exist_ok=True)
    tmp = memory.with_name(f".{memory.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.npz")
    try:
        np.savez(tmp, version=SCAN_VERSION, **{f.name: getattr(facts, f.name) for f in fields(facts)})
        os.replace(tmp, memory)
    finally:
        tmp.unlink(missing_ok=True)


def scan(paths: Sequence[Path], memory: Path | None = None, workers: int | None = None,
         on_done: Progress | None = None) -> Facts:
    """Facts for each of ``paths`` (distinct), in order; files unchanged since ``memory`` was written
    (same size and mtime) are not decoded again. ``memory`` (an .npz) is rewritten with the result."""
    remembered = _load_remembered(memory)
    known: dict[str, int] = {}
    if remembered is not None:
        known = {p: i for i, p in enumerate(remembered.path.tolist())}
    reuse, fresh = [], []
    for path in paths:
        row = known.get(str(path))
        size, mtime = _identity(path)
        if row is not None and remembered.size[row] == size and remembered.mtime[row] == mtime:
            reuse.append((str(path), row))
        else:
            fresh.append(path)
    if on_done and reuse:
        on_done(len(reuse))
    records = [r for part in _run_chunks(_scan_chunk, fresh, workers, on_done) for r in part]
    parts = [_rows(records)] if records else []
    if reuse:
        parts.append(remembered.take([row for _, row in reuse]))
    facts = Facts.concat(parts) if parts else _rows([])
    position = {p: i for i, p in enumerate(facts.path.tolist())}
    facts = facts.take([position[str(p)] for p in paths])
    if memory is not None and fresh:
        _remember(memory, facts)
    return facts


def memory_file(cache_dir: Path, root: Path) -> Path:
    """Where the scan of the data set under ``root`` is remembered."""
    key = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"audit-scan-{key}.npz"


def screen_unreadable(source: DataSource, cache_dir: Path | None, skip: bool,
                      bar: Callable[[int], ContextManager[Any]] | None = None) -> DataSource:
    """Decode every train and valid image once, before any long work; all unreadable ones in one DataError.

    With ``skip`` the source is returned without them (``source.unreadable`` lists them). A clean
    result is remembered in ``cache_dir`` (keyed by the files' sizes and mtimes), so the next start
    of the same data decodes nothing here. ``bar(total)``: a progress bar with ``update(n)``.
    """
    splits = [source.splits["train"], source.splits["valid"]]
    marker = None
    if cache_dir is not None:
        key = hashlib.sha256("".join(s.fingerprint() for s in splits).encode()).hexdigest()[:16]
        marker = Path(cache_dir) / f"readable-{key}.ok"
        if marker.is_file():
            return source
    paths = list(dict.fromkeys(p for split in splits for p in split.paths))
    with (bar(len(paths)) if bar else nullcontext()) as progress:
        failed = find_unreadable(paths, on_done=progress.update if progress else None)
    if not failed:
        if marker is not None:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("every train and valid image decoded\n")
        return source
    if not skip:
        named = "; ".join(f"{path} ({reason})" for path, reason in failed[:LISTED])
        more = f"; and {len(failed) - LISTED} more" if len(failed) > LISTED else ""
        raise DataError(f"{len(failed)} image{'s' if len(failed) > 1 else ''} cannot be decoded: {named}{more}. "
                        f"Replace or remove them (python audit.py lists every problem), "
                        f"or train without them: --skip-unreadable")
    bad = {path for path, _ in failed}
    kept = {name: _without(split, bad) for name, split in source.splits.items() if name in ("train", "valid")}
    note = f"{source.note}; " if source.note else ""
    return replace(source, splits={**source.splits, **kept}, unreadable=tuple(failed),
                   note=f"{note}{len(failed)} unreadable images left out (--skip-unreadable)")


def _without(split: Split, bad: set[str]) -> Split:
    keep = [i for i, p in enumerate(split.paths) if str(p) not in bad]
    if not keep:
        raise DataError(f"split {split.name!r} has no readable image left ({split.source})")
    pick = lambda values: None if values is None else tuple(values[i] for i in keep)  # noqa: E731
    return replace(split, paths=pick(split.paths), labels=pick(split.labels), ids=pick(split.ids),
                   patients=pick(split.patients))
