"""Input pipeline speed: the seeds' per-item PIL Dataset against our cache + batch loader + BatchTransform.

    python -m benchmarks.pipeline --json storage/bench/pipeline.json

Writes synthetic 450x450 BMP cells (discs on black) into a temporary folder and measures images/s
to 224 px on the CPU:
  (a) the seeds' way: PIL open + torchvision CenterCrop(350), Resize, RandomRotation, flips,
      ToTensor, Normalize per item, through a DataLoader with 0 and 2 workers (one epoch each);
  (b) ours: ImageDataset with a memory-mapped cache (its build timed on its own), make_loader,
      and BatchTransform(train=True) run on the CPU here; steady-state epochs, median reported.
Memory while iterating (b) is sampled from /proc/self/status: anonymous RSS (the process's own
memory, which must stay flat) and file-backed RSS (cache pages mapped in; the kernel can drop them).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import data  # noqa: E402
from common.errors import UserError, run_cli  # noqa: E402

SOURCE_SIDE = 450  # the C-NMC image size
SEEDS_CROP = 350  # the seeds' CenterCrop


def write_cells(folder: Path, num_images: int, seed: int = 0) -> data.Split:
    """``num_images`` 450x450 BMPs of a purple disc (random size, place, colour) on black."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths, labels = [], []
    for i in range(num_images):
        image = Image.new("RGB", (SOURCE_SIDE, SOURCE_SIDE))
        draw = ImageDraw.Draw(image)
        cx, cy = rng.integers(200, 251, size=2)
        radius = int(rng.integers(60, 140))
        colour = tuple(int(v) for v in rng.integers((110, 40, 150), (190, 110, 230)))
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
        nucleus = radius // 2
        draw.ellipse((cx - nucleus, cy - nucleus, cx + nucleus, cy + nucleus), fill=(70, 20, 120))
        path = folder / f"{i}.bmp"
        image.save(path)
        paths.append(path)
        labels.append(i % 2)
    return data.Split("train", tuple(paths), tuple(labels), tuple(p.name for p in paths), str(folder))


class SeedsDataset(Dataset):
    """The seeds' Dataset: every item opens the file and runs the PIL transforms again."""

    def __init__(self, split: data.Split, image_size: int) -> None:
        self.split = split
        self.transform = transforms.Compose([
            transforms.CenterCrop(SEEDS_CROP),
            transforms.Resize(image_size),
            transforms.RandomRotation(180),
            transforms.RandomHorizontalFlip(),
            transforms.RandomVerticalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(data.IMAGENET_MEAN, data.IMAGENET_STD),
        ])

    def __len__(self) -> int:
        return len(self.split.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.split.paths[index]) as image:
            return self.transform(image.convert("RGB")), self.split.labels[index]


def memory_mib() -> tuple[float, float]:
    """(anonymous, file-backed) resident memory of this process in MiB (Linux; zeros elsewhere)."""
    fields = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("RssAnon", "RssFile"):
                fields[name] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return fields.get("RssAnon", 0.0), fields.get("RssFile", 0.0)


def time_epoch(batches: Iterable, step: Callable[[torch.Tensor], torch.Tensor] | None = None
               ) -> tuple[float, int, float, float]:
    """Seconds for one pass, images seen, and the peak growth of (anonymous, file) RSS during it."""
    anon0, file0 = memory_mib()
    peak_anon, peak_file, seen = anon0, file0, 0
    start = time.perf_counter()
    for images, _ in batches:
        out = step(images) if step else images
        seen += out.shape[0]
        anon, file = memory_mib()
        peak_anon, peak_file = max(peak_anon, anon), max(peak_file, file)
    return time.perf_counter() - start, seen, peak_anon - anon0, peak_file - file0


def seeds_row(split: data.Split, image_size: int, batch_size: int, workers: int, max_images: int) -> dict:
    dataset = Subset(SeedsDataset(split, image_size), range(min(max_images, len(split.paths))))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    seconds, seen, _, _ = time_epoch(loader)
    return {"variant": f"seeds: PIL + torchvision per item, workers={workers}", "images": seen,
            "seconds": round(seconds, 3), "images_per_s": round(seen / seconds, 1)}


def ours_rows(split: data.Split, image_size: int, batch_size: int, epochs: int, cache_dir: Path) -> list[dict]:
    prep = data.Preprocess(image_size=image_size, crop=SEEDS_CROP / SOURCE_SIDE)  # the seeds' crop, for a fair race
    start = time.perf_counter()
    dataset = data.ImageDataset(split, prep, cache_dir)
    build = time.perf_counter() - start
    rows = [{"variant": "ours: cache build (once per data set and size)", "images": len(split),
             "seconds": round(build, 3), "images_per_s": round(len(split) / build, 1)}]
    loader = data.make_loader(dataset, batch_size, data.Sampling(shuffle=True, seed=0))
    augment = data.BatchTransform(prep, train=True)
    for name, step in (("loader only", None), ("loader + BatchTransform(train) on CPU", augment)):
        runs = []
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            with torch.no_grad():
                runs.append(time_epoch(loader, step))
        seconds = statistics.median(r[0] for r in runs)
        rows.append({"variant": f"ours: {name}", "images": runs[0][1], "seconds": round(seconds, 3),
                     "images_per_s": round(runs[0][1] / seconds, 1),
                     "rss_anon_growth_mib": round(max(r[2] for r in runs), 1),
                     "rss_file_growth_mib": round(max(r[3] for r in runs), 1)})
    return rows


def benchmark_pipeline(num_images: int = 600, image_size: int = 224, batch_size: int = 64, epochs: int = 3,
                       seeds_workers: Sequence[int] = (0, 2), seeds_images: int = 256, threads: int | None = None,
                       work_dir: Path | None = None) -> list[dict]:
    """Rows {variant, images, seconds, images_per_s, threads, ...}; ours carry ``speedup_vs_seeds_w0``.

    ``seeds_images`` caps the images the (slow) seeds' variants read; ``threads`` sets torch's
    intra-op threads for the run (None: leave as is) and is restored afterwards.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        with tempfile.TemporaryDirectory(dir=work_dir, prefix="pipeline-bench-") as tmp:
            split = write_cells(Path(tmp) / "images", num_images)
            rows = [seeds_row(split, image_size, batch_size, w, seeds_images) for w in seeds_workers]
            rows += ours_rows(split, image_size, batch_size, epochs, Path(tmp) / "cache")
    finally:
        torch.set_num_threads(previous)
    baseline = rows[0]["images_per_s"]
    for row in rows:
        row["threads"] = threads or previous
        if row["variant"].startswith("ours: loader"):
            row["speedup_vs_seeds_w0"] = round(row["images_per_s"] / baseline, 1)
    return rows


def format_pipeline_speeds(rows: list[dict]) -> str:
    """A plain-text table: one line per row, blanks where a row has no such measurement."""
    def cell(row: dict, key: str, width: int, unit: str = "") -> str:
        return f"{row[key]}{unit}".rjust(width) if key in row else " " * width

    title = f"variant (torch threads: {rows[0]['threads']})"
    lines = [f"{title:<52} {'img/s':>9} {'seconds':>8} {'x seeds':>8} {'RSS anon':>9} {'RSS file':>9}"]
    for row in rows:
        lines.append(f"{row['variant']:<52} {row['images_per_s']:>9.1f} {row['seconds']:>8.2f} "
                     f"{cell(row, 'speedup_vs_seeds_w0', 8)} {cell(row, 'rss_anon_growth_mib', 9, 'M')} "
                     f"{cell(row, 'rss_file_growth_mib', 9, 'M')}")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Measure the input pipeline (seeds' way vs ours) on synthetic BMPs.")
    p.add_argument("--num-images", type=int, default=600, help="synthetic 450x450 images (default 600)")
    p.add_argument("--image-size", type=int, default=224, help="output side in pixels (default 224)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs of ours; the median is reported (default 3)")
    p.add_argument("--seeds-images", type=int, default=256, help="images the seeds' variants read (default 256)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--work-dir", type=Path, default=None, help="where the temporary images go (default: system temp)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.num_images < args.batch_size or args.batch_size < 1 or args.epochs < 1 or (args.threads or 1) < 1:
        raise UserError("need --num-images >= --batch-size >= 1, --epochs >= 1 and --threads >= 1")
    rows = benchmark_pipeline(args.num_images, args.image_size, args.batch_size, args.epochs,
                              seeds_images=args.seeds_images, threads=args.threads, work_dir=args.work_dir)
    print(format_pipeline_speeds(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        machine = {"cpus": os.cpu_count(), "load_average": os.getloadavg(), "torch": torch.__version__}
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
