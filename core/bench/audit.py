"""audit.py's speed: a C-NMC-sized folder of synthetic cells audited cold (every file decoded) and
again with the scan remembered; and the near-copy search over synthetic hashes (not quadratic).

    python -m core.bench.audit --images 2000 --side 450

Cold means no remembered scan; the files were just written, so the OS may still hold them in
memory (dropping its cache needs root): on a disk-bound machine a first audit reads slower.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import data  # noqa: E402
from data.audit import audit  # noqa: E402
from data.phash import candidate_pairs  # noqa: E402
from data.scan import find_unreadable, memory_file, scan  # noqa: E402

CNMC_IMAGES = 10_661  # C-NMC 2019 training data
CNMC_SIDE = 450
VALID_SHARE = 0.2


def draw_cell(index: int, side: int) -> Image.Image:
    """A textured disc with a nucleus on black; the texture (blotches ~1/40 of the side) makes every cell its own."""
    rng = np.random.default_rng(index)
    texture = Image.fromarray(rng.integers(60, 255, (40, 40), dtype=np.uint8)).resize((side, side),
                                                                                     Image.Resampling.BICUBIC)
    colour = np.array(rng.integers((110, 40, 150), (190, 110, 230)), dtype=np.float32)
    shade = np.asarray(texture, dtype=np.float32)[..., None] / 255.0
    mask = Image.new("L", (side, side))
    draw = ImageDraw.Draw(mask)
    cx, cy = rng.integers(int(side * 0.45), int(side * 0.55) + 1, size=2)
    radius = int(rng.integers(side * 0.13, side * 0.31))
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=255)
    nucleus = int(radius * rng.uniform(0.4, 0.7))
    draw.ellipse((cx - nucleus, cy - nucleus, cx + nucleus, cy + nucleus), fill=150)
    inside = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    return Image.fromarray(np.clip(colour * shade * inside, 0, 255).astype(np.uint8))


def _write(task: tuple[Path, Sequence[tuple[int, str]], int]) -> int:
    root, items, side = task
    for index, relative in items:
        draw_cell(index, side).save(root / relative)
    return len(items)


def write_folders(root: Path, images: int, side: int, workers: int) -> None:
    """root/{train,valid}/{hem,all}/<i>.bmp: the folders layout, 80 / 20, two classes."""
    items = []
    for i in range(images):
        split = "valid" if i % round(1 / VALID_SHARE) == 0 else "train"
        items.append((i, f"{split}/{'all' if i % 3 else 'hem'}/{i}.bmp"))
    for split in ("train", "valid"):
        for cls in ("hem", "all"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
    chunks = [(root, items[k:k + 256], side) for k in range(0, len(items), 256)]
    context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        list(pool.map(_write, chunks))


def timed_audit(root: Path, memory: Path) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    source = data.open_data(root)
    paths = list(dict.fromkeys(p for split in source.splits.values() for p in split.paths))
    report = audit(source, scan(paths, memory))
    return time.perf_counter() - start, report


def time_hash_search(count: int, seed: int = 0) -> dict[str, Any]:
    """Random 64-bit hashes with 1% planted near copies (0-3 bits apart): the band search's time and recall."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2 ** 63, count, dtype=np.int64).astype(np.uint64) << np.uint64(1)
    weak = rng.integers(0, 64, (count, 3)).astype(np.uint8)
    planted = count // 100
    for k in range(planted):
        flips = rng.choice(64, size=k % 4, replace=False)
        hashes[count - 1 - k] = hashes[k] ^ np.uint64(sum(1 << int(b) for b in flips))
    start = time.perf_counter()
    pairs = candidate_pairs(hashes, weak)
    seconds = time.perf_counter() - start
    found = {(int(i), int(j)) for i, j in pairs}
    recall = sum((k, count - 1 - k) in found for k in range(planted)) / max(1, planted)
    return {"hashes": count, "seconds": round(seconds, 3), "pairs": len(pairs), "planted_found": recall}


def benchmark_audit(images: int = CNMC_IMAGES, side: int = CNMC_SIDE, hashes: int = 100_000,
                    work_dir: Path | None = None, workers: int | None = None) -> dict[str, Any]:
    """Generate, audit cold, audit warm, search hashes; every time in seconds."""
    workers = workers or os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="bench-audit-", dir=work_dir))
    try:
        start = time.perf_counter()
        write_folders(tmp / "data", images, side, workers)
        generate = time.perf_counter() - start
        memory = memory_file(tmp / "cache", tmp / "data")
        start = time.perf_counter()
        find_unreadable(sorted((tmp / "data").glob("*/*/*.bmp")))  # train.py's check on a first start
        check = time.perf_counter() - start
        cold, report = timed_audit(tmp / "data", memory)
        warm, _ = timed_audit(tmp / "data", memory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    near = sum(g["kind"] == "near" for g in report["duplicates"])
    return {"images": images, "side": side, "cpu_cores": os.cpu_count(), "generate_s": round(generate, 1),
            "cold_s": round(cold, 1), "cold_images_per_s": round(images / cold, 1), "warm_s": round(warm, 2),
            "train_check_s": round(check, 1),
            "duplicate_groups": len(report["duplicates"]), "near_groups": near,
            "search": [time_hash_search(hashes // 10), time_hash_search(hashes)]}


def format_audit_row(row: dict[str, Any]) -> str:
    lines = [f"audit of {row['images']:,} synthetic {row['side']} px BMPs on {row['cpu_cores']} cores: "
             f"cold {row['cold_s']:.1f} s ({row['cold_images_per_s']:.0f} img/s), "
             f"remembered scan {row['warm_s']:.2f} s; train.py's readability check {row['train_check_s']:.1f} s; "
             f"{row['duplicate_groups']} duplicate groups found ({row['near_groups']} near) "
             f"[writing the images took {row['generate_s']:.0f} s]"]
    lines += [f"near-copy search over {s['hashes']:,} hashes (8 probes each): {s['seconds']:.2f} s, "
              f"{s['pairs']:,} pairs, {s['planted_found']:.0%} of the planted copies found" for s in row["search"]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=CNMC_IMAGES)
    p.add_argument("--side", type=int, default=CNMC_SIDE)
    p.add_argument("--hashes", type=int, default=100_000)
    p.add_argument("--work-dir", type=Path)
    args = p.parse_args(argv)
    print(format_audit_row(benchmark_audit(args.images, args.side, args.hashes, args.work_dir)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
