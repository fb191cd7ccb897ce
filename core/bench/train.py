"""End-to-end training and evaluation speed through the functions train.py and eval.py use.

Run through ``python bench.py --sections train,eval,memory``. The data goes the same way as in
``train.fit``: open_data -> fit_preprocess -> ImageDataset (decode-once cache) -> make_loader ->
BatchTransform on the device -> engine.train_one_epoch with make_runtime's Runtime. The first
epoch warms up (allocator, cuDNN autotuning, torch.compile, page cache) and is not counted.
"""
from __future__ import annotations

import resource
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch

import data
from core import engine
from core.bench.pipeline import memory_mib
from data import demo
from models import build_model

LAB_TRAIN_IMAGES = 7_995  # C-NMC training images: one lab epoch
LAB_TEST_IMAGES = 1_067  # the lab's test set
LEARNING_RATE = 1e-3  # train.py's AdamW defaults; speed does not depend on them
WEIGHT_DECAY = 0.05
LABEL_SMOOTHING = 0.1


def synchronize(device: torch.device) -> None:
    # GPU work is queued: without this a clock stops before the work is done.
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def write_demo_data(folder: Path, originals: int, train: int, valid: int, workers: int) -> Path:
    """A synthetic lab-layout cell data set drawn by demo_data.py at ``originals`` px; returns ``folder``."""
    settings = demo.make_settings("leukemia", folder, seed=0, image_size=originals,
                                       counts=(train, valid, 1), force=False, workers=workers)
    demo.generate(settings)
    return folder


def first(split: data.Split, count: int | None) -> data.Split:
    """The first ``count`` images of ``split`` (all of them when None)."""
    if count is None or count >= len(split):
        return split
    labels = split.labels[:count] if split.labels is not None else None
    return replace(split, paths=split.paths[:count], labels=labels, ids=split.ids[:count])


@dataclass(frozen=True)
class BenchData:
    """The opened data set, as train.fit prepares it."""

    num_classes: int
    prep: data.Preprocess
    train_set: data.ImageDataset
    valid_set: data.ImageDataset
    cache_seconds: float  # measuring the crop and statistics plus building both caches


def open_bench_data(root: Path, image_size: int, cache_dir: Path, train_images: int | None = None,
                    valid_images: int | None = None) -> BenchData:
    """Open ``root`` (any layout), keep the first images of train/valid, fit preprocessing and build the caches."""
    source = data.open_data(root)
    train_split = first(source.splits["train"], train_images)
    valid_split = first(source.splits["valid"], valid_images)
    mode = "fundus" if source.task == "retinopathy" else "center"
    start = time.perf_counter()
    prep = data.fit_preprocess(train_split, image_size, mode, cache_dir=cache_dir)
    train_set = data.ImageDataset(train_split, prep, cache_dir)
    valid_set = data.ImageDataset(valid_split, prep, cache_dir)
    return BenchData(len(source.classes), prep, train_set, valid_set, time.perf_counter() - start)


class Stopwatch:
    """Seconds accumulated over many timed intervals."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0

    def timed(self, work: Callable[[], Any]) -> Any:
        synchronize(self.device)
        start = time.perf_counter()
        result = work()
        synchronize(self.device)
        self.seconds += time.perf_counter() - start
        return result


class TimedLoader:
    """A loader whose waits for the next batch are added to ``clock``."""

    def __init__(self, loader: data.BatchLoader, clock: Stopwatch) -> None:
        self.loader, self.clock = loader, clock

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = iter(self.loader)
        while True:
            try:
                yield self.clock.timed(lambda: next(batches))
            except StopIteration:
                return


class TimedTransform(torch.nn.Module):
    """A BatchTransform whose calls are added to ``clock`` (the host-to-device copy is not included)."""

    def __init__(self, transform: torch.nn.Module, clock: Stopwatch) -> None:
        super().__init__()
        self.transform, self.clock = transform, clock

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.clock.timed(lambda: self.transform(images))


class MemoryWatch:
    """Resident memory (MiB) sampled after every training step (engine's ``after_step`` hook).

    ``start`` is the (anonymous, file-backed) RSS when created, ``peak`` the highest total since;
    ``steady_*`` are the peaks since ``mark_steady`` above the RSS at that moment.
    """

    def __init__(self) -> None:
        anon, file = memory_mib()
        self.start, self.peak = anon + file, anon + file
        self.mark_steady()

    def mark_steady(self) -> None:
        self.anon, self.file = memory_mib()
        self.steady_anon, self.steady_file = self.anon, self.file

    def after_step(self, done: int, sums: engine.EpochSums) -> bool:
        anon, file = memory_mib()
        self.peak = max(self.peak, anon + file)
        self.steady_anon, self.steady_file = max(self.steady_anon, anon), max(self.steady_file, file)
        return False  # never asks the loop to stop


@dataclass
class Trainer:
    """One model with its optimizer, loss and data, built as train.fit builds them."""

    learner: engine.Learner
    loader: data.BatchLoader
    schedule: Callable[[int], float]

    def epoch(self, epoch: int, memory: MemoryWatch, clock: Stopwatch | None = None) -> float:
        """Seconds for one training epoch; with ``clock`` the loader and transform are timed into it."""
        loader: Iterable = self.loader if clock is None else TimedLoader(self.loader, clock)
        learner = self.learner if clock is None else replace(
            self.learner, transform=TimedTransform(self.learner.transform, clock))
        steps = len(self.loader)
        self.loader.set_epoch(epoch)
        device = learner.rt.device
        sums = engine.EpochSums.zeros(device)
        synchronize(device)
        start = time.perf_counter()
        engine.train_one_epoch(learner, loader, epoch + 1, sums, lambda s: self.schedule(epoch * steps + s),
                               memory.after_step)
        synchronize(device)
        return time.perf_counter() - start


def build_on_device(arch: str, num_classes: int, rt: engine.Runtime,
               compile: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the model to run, the raw module) on the device, in the Runtime's memory format."""
    memory_format = torch.channels_last if rt.channels_last else torch.preserve_format
    raw = build_model(arch, num_classes).to(rt.device, memory_format=memory_format)
    return (torch.compile(raw) if compile else raw), raw


def make_trainer(arch: str, bench: BenchData, rt: engine.Runtime, batch_size: int, workers: int,
                 compile: bool, total_epochs: int) -> Trainer:
    """train.fit's objects with its defaults (AdamW, cosine schedule, label smoothing 0.1)."""
    model, raw = build_on_device(arch, bench.num_classes, rt, compile)
    cuda = rt.device.type == "cuda"
    loader = data.make_loader(bench.train_set, batch_size, data.Sampling(shuffle=True, drop_last=True),
                              workers=workers, pin_memory=cuda)
    optimizer = engine.make_optimizer(raw, "adamw", LEARNING_RATE, 0.9, WEIGHT_DECAY, rt.device)
    steps = len(loader)
    learner = engine.Learner(model, torch.nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING), optimizer,
                             torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16),
                             data.BatchTransform(bench.prep, train=True).to(rt.device), rt, show_progress=False)
    return Trainer(learner=learner, loader=loader,
                   schedule=engine.lr_schedule("cosine", LEARNING_RATE, total_epochs * steps, steps))


def benchmark_training(arch: str, bench: BenchData, rt: engine.Runtime, batch_size: int, epochs: int,
                       workers: int, compile: bool = False) -> dict[str, Any]:
    """Training images/s over ``epochs`` timed epochs after one warm-up epoch, the input pipeline's
    share of step time, projected lab epoch time and memory.

    On CUDA the pipeline share is measured in one extra epoch, because timing it needs syncs that
    would stall the GPU's queue; on the CPU every op is synchronous, so the timed epochs carry it.
    """
    if batch_size > len(bench.train_set):
        raise ValueError(f"batch size {batch_size} is larger than the {len(bench.train_set)} training images")
    torch.manual_seed(0)
    memory = MemoryWatch()
    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(rt.device)
    separate = int(rt.device.type != "cpu")  # 1: one extra, profiled epoch
    trainer = make_trainer(arch, bench, rt, batch_size, workers, compile, 1 + epochs + separate)
    warmup = trainer.epoch(0, memory)
    memory.mark_steady()  # from here on, growth would be a leak
    clock = Stopwatch(rt.device)
    timed = [trainer.epoch(1 + e, memory, None if separate else clock) for e in range(epochs)]
    profiled = trainer.epoch(1 + epochs, memory, clock) if separate else sum(timed)
    images = len(trainer.loader) * batch_size  # drop_last: every step sees a full batch
    seconds = statistics.median(timed)
    img_s = images / seconds
    return {"name": arch, "batch_size": batch_size, "steps_per_epoch": len(trainer.loader),
            "images_per_epoch": images, "warmup_epoch_s": round(warmup, 3),
            "epoch_runs_s": [round(t, 3) for t in timed],
            "epoch_s": round(seconds, 3), "images_per_s": round(img_s, 1),
            "lab_epoch_s": round(LAB_TRAIN_IMAGES / img_s, 2),
            "pipeline_s": round(clock.seconds, 3), "pipeline_fraction": round(clock.seconds / profiled, 4),
            "memory": memory_row(rt.device, memory)}


def memory_row(device: torch.device, memory: MemoryWatch) -> dict[str, float | None]:
    """MiB: process peak RSS, its growth over the training run, steady-state growth, CUDA peaks."""
    cuda = device.type == "cuda"
    return {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # KiB on Linux
            "rss_growth_training_mib": round(memory.peak - memory.start, 1),
            "rss_anon_growth_steady_mib": round(memory.steady_anon - memory.anon, 1),
            "rss_file_growth_steady_mib": round(memory.steady_file - memory.file, 1),
            "cuda_max_allocated_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if cuda else None,
            "cuda_max_reserved_mib": round(torch.cuda.max_memory_reserved(device) / 2**20, 1) if cuda else None}


def benchmark_predict(arch: str, bench: BenchData, rt: engine.Runtime, batch_size: int, passes: int,
                      workers: int, compile: bool = False) -> dict[str, Any]:
    """engine.predict images/s over the valid split (median of ``passes`` after one warm-up pass)."""
    torch.manual_seed(0)
    model, _ = build_on_device(arch, bench.num_classes, rt, compile)
    loader = data.make_loader(bench.valid_set, batch_size, workers=workers, pin_memory=rt.device.type == "cuda")
    transform = data.BatchTransform(bench.prep, train=False).to(rt.device)
    engine.predict(model, loader, transform, rt, show=False)
    runs = []
    for _ in range(passes):
        start = time.perf_counter()
        engine.predict(model, loader, transform, rt, show=False)  # ends with .cpu(): already synced
        runs.append(time.perf_counter() - start)
    seconds = statistics.median(runs)
    img_s = len(bench.valid_set) / seconds
    return {"name": arch, "batch_size": batch_size, "images": len(bench.valid_set),
            "pass_runs_s": [round(t, 3) for t in runs], "pass_s": round(seconds, 3),
            "images_per_s": round(img_s, 1), "lab_test_s": round(LAB_TEST_IMAGES / img_s, 2)}
