"""bench.py's sections, machine description and the issue's targets."""
from __future__ import annotations

import datetime
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torchvision

from common.errors import UserError
from core.bench.audit import CNMC_IMAGES, CNMC_SIDE, benchmark_audit
from core.bench.audit import format_audit_row
from core.bench.lab import benchmark_lab, format_lab
from core.bench.models import benchmark_models, format_model_speeds
from core.bench.pipeline import benchmark_pipeline, format_pipeline_speeds
from core.bench.train import (LAB_TEST_IMAGES, LAB_TRAIN_IMAGES, BenchData, benchmark_predict, benchmark_training,
                              open_bench_data, write_demo_data)
from core.engine import Runtime
from core.training.config import TrainConfig
from models import MODELS, display_name

RATIO_TARGET = 0.97  # ours / torchvision, every architecture
GPU_TARGETS_PX = 224  # the GPU targets are for one H100 at this size
PIPELINE_TARGET = 0.10  # CPU: loader + BatchTransform under this share of step time


@dataclass(frozen=True)
class Sizes:
    """How much work each section does; a device kind's defaults, any of them overridden by flags."""

    image_size: int
    models: tuple[str, ...]  # models section
    model_batch_size: int
    model_steps: int
    model_warmup: int
    repeats: int
    train_models: tuple[str, ...]  # train, eval and memory sections
    batch_size: int
    epochs: int  # timed, after one warm-up epoch
    train_images: int
    valid_images: int
    originals: int  # side of the generated demo images (C-NMC: 450)
    eval_passes: int
    pipeline_images: int
    pipeline_batch_size: int
    pipeline_epochs: int
    seeds_images: int
    seeds_workers: tuple[int, ...]
    audit_images: int = CNMC_IMAGES  # audit section: synthetic cells audited cold and remembered ...
    audit_side: int = CNMC_SIDE
    audit_hashes: int = 100_000  # ... and the near-copy search over this many hashes (and a tenth of it)


SIZES = {
    "cpu": Sizes(224, tuple(MODELS), 8, 1, 1, 3, ("resnet18",), 32, 2, 128, 64, 450, 2, 600, 64, 3, 256, (0, 2)),
    "cuda": Sizes(224, tuple(MODELS), 256, 10, 3, 5, ("resnet18", "resnet50"), 256, 3, LAB_TRAIN_IMAGES,
                  LAB_TEST_IMAGES, 450, 3, 600, 64, 3, 256, (0, 2)),
    "quick": Sizes(32, ("resnet18", "resnet34"), 4, 1, 1, 1, ("resnet18",), 8, 1, 32, 16, 64, 1, 32, 8, 1, 16, (0,),
                   audit_images=48, audit_side=64, audit_hashes=5000),
}


@dataclass(frozen=True)
class BenchConfig:
    sections: tuple[str, ...]
    device: str
    sizes: Sizes
    data: Path | None
    workers: int
    compile: bool
    threads: int | None
    json: Path
    work_dir: Path | None


def plain(value: Any) -> Any:
    """Dataclass fields as JSON values: paths as strings, tuples as lists."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_info(device: torch.device) -> dict[str, Any]:
    """Where and when the numbers were taken: the basis for comparing two runs."""
    cuda = device.type == "cuda"
    return {"device": str(device), "device_name": torch.cuda.get_device_name(device) if cuda else cpu_name(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "load_average_start": os.getloadavg()}


def describe_machine(m: dict[str, Any]) -> str:
    return (f"{m['device']} ({m['device_name']}), torch {m['torch']}, {m['threads']} threads, {m['cpus']} CPUs, "
            f"load average {', '.join(f'{x:.2f}' for x in m['load_average_start'])}, {m['date']}")


def timed_section(run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The section's results plus its wall time and the load average before and after (others' work)."""
    before, start = os.getloadavg(), time.perf_counter()
    result = run()
    return {**result, "seconds": round(time.perf_counter() - start, 1), "load_average": [before, os.getloadavg()]}


def run_models(sizes: Sizes, rt: Runtime) -> dict[str, Any]:
    amp = rt.amp_dtype is not None
    settings = {"image_size": sizes.image_size, "batch_size": sizes.model_batch_size, "steps": sizes.model_steps,
                "warmup": sizes.model_warmup, "repeats": sizes.repeats, "channels_last": rt.channels_last,
                "amp_bf16": amp}
    print(f"\nmodels: training step (fwd + bwd + SGD), {sizes.image_size} px, batch {sizes.model_batch_size}, "
          f"channels_last={rt.channels_last}, bf16={amp}, median of {sizes.repeats} alternating runs of "
          f"{sizes.model_steps} step(s)", flush=True)
    rows = benchmark_models(sizes.models, sizes.image_size, sizes.model_batch_size, rt.device, sizes.model_steps,
                            sizes.model_warmup, rt.channels_last, amp, sizes.repeats)
    print(format_model_speeds(rows), flush=True)
    return {"settings": settings, "rows": rows}


def run_pipeline(sizes: Sizes, threads: int | None, work_dir: Path | None) -> dict[str, Any]:
    print(f"\npipeline: images/s to {sizes.image_size} px on the CPU, {sizes.pipeline_images} synthetic 450 px BMPs, "
          f"batch {sizes.pipeline_batch_size}", flush=True)
    rows = benchmark_pipeline(sizes.pipeline_images, sizes.image_size, sizes.pipeline_batch_size, sizes.pipeline_epochs,
                              sizes.seeds_workers, sizes.seeds_images, threads, work_dir)
    print(format_pipeline_speeds(rows), flush=True)
    return {"rows": rows}


def run_audit(sizes: Sizes, work_dir: Path | None) -> dict[str, Any]:
    print(f"\naudit: audit.py's scan and checks on {sizes.audit_images:,} synthetic {sizes.audit_side} px BMPs "
          f"({os.cpu_count()} cores), cold and remembered; near-copy search over {sizes.audit_hashes:,} hashes",
          flush=True)
    row = benchmark_audit(sizes.audit_images, sizes.audit_side, sizes.audit_hashes, work_dir)
    print(format_audit_row(row), flush=True)
    return {"rows": [row]}


def run_end_to_end(cfg: BenchConfig, rt: Runtime) -> dict[str, dict[str, Any]]:
    """The train, eval, memory and lab sections asked for, on one data set opened once."""
    sizes, results = cfg.sizes, {}
    with tempfile.TemporaryDirectory(dir=cfg.work_dir, prefix="bench-") as tmp:
        bench = open_data_for_bench(cfg, Path(tmp))
        if sizes.batch_size > len(bench.train_set):
            raise UserError(f"-b {sizes.batch_size} is larger than the {len(bench.train_set)} training images")
        if {"train", "memory"} & set(cfg.sections):
            print(f"\ntrain: {len(bench.train_set)} images at {sizes.image_size} px, batch {sizes.batch_size}, "
                  f"{cfg.workers} loader workers, AMP {rt.amp_dtype}, channels_last={rt.channels_last}, "
                  f"compile={cfg.compile}; 1 warm-up + {sizes.epochs} timed epoch(s); crop, statistics and "
                  f"caches took {bench.cache_seconds:.1f} s before", flush=True)
            train = timed_section(lambda: {"rows": [
                benchmark_training(arch, bench, rt, sizes.batch_size, sizes.epochs, cfg.workers, cfg.compile)
                for arch in sizes.train_models]})
            train["cache_build_s"] = round(bench.cache_seconds, 2)
            memory_rows = [{"name": row["name"], **row.pop("memory")} for row in train["rows"]]
            if "train" in cfg.sections:
                print(format_train(train["rows"]), flush=True)
                results["train"] = train
            if "memory" in cfg.sections:
                print(f"\nmemory (MiB) during training on {rt.device}\n{format_memory(memory_rows)}", flush=True)
                results["memory"] = {"rows": memory_rows}
        if "eval" in cfg.sections:
            print(f"\neval: engine.predict over {len(bench.valid_set)} valid images, batch {2 * sizes.batch_size}, "
                  f"median of {sizes.eval_passes} pass(es) after a warm-up pass", flush=True)
            results["eval"] = timed_section(lambda: {"rows": [
                benchmark_predict(arch, bench, rt, 2 * sizes.batch_size, sizes.eval_passes, cfg.workers, cfg.compile)
                for arch in sizes.train_models]})
            print(format_eval(results["eval"]["rows"]), flush=True)
        if "lab" in cfg.sections:
            run_cfg = TrainConfig(epochs=sizes.epochs, batch_size=sizes.batch_size, image_size=sizes.image_size,
                                  device=cfg.device, workers=cfg.workers, compile=cfg.compile)
            print(f"\nlab: train.py's fit() for {sizes.epochs} epoch(s), batch {sizes.batch_size}, validation and "
                  f"checkpoints included; per-phase wall time from timing.json", flush=True)
            root = cfg.data or Path(tmp) / "demo"
            results["lab"] = timed_section(lambda: {"rows": benchmark_lab(root, sizes.train_models, run_cfg,
                                                                          rt.device)})
            print(format_lab(results["lab"]["rows"]), flush=True)
    return results


def open_data_for_bench(cfg: BenchConfig, tmp: Path) -> BenchData:
    """--data, or a demo set drawn into ``tmp``; caches always go to ``tmp``."""
    sizes = cfg.sizes
    if cfg.data is not None:
        root = cfg.data
    else:
        print(f"\ndrawing a demo set: {sizes.train_images} train + {sizes.valid_images} valid cells at "
              f"{sizes.originals} px", flush=True)
        root = write_demo_data(tmp / "demo", sizes.originals, sizes.train_images, sizes.valid_images,
                               workers=max(1, min(os.cpu_count() or 1, 16)))
    return open_bench_data(root, sizes.image_size, tmp / "cache", sizes.train_images, sizes.valid_images)


def format_train(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'architecture':<12} {'img/s':>8} {'epoch s':>8} {'images':>7} {'warm-up s':>10} "
             f"{'lab epoch s':>12} {'pipeline':>9}"]
    for r in rows:
        lines.append(f"{display_name(r['name']):<12} {r['images_per_s']:>8.1f} {r['epoch_s']:>8.2f} "
                     f"{r['images_per_epoch']:>7} {r['warmup_epoch_s']:>10.2f} {r['lab_epoch_s']:>12.1f} "
                     f"{r['pipeline_fraction']:>9.1%}")
    return "\n".join(lines) + f"\n(lab epoch: {LAB_TRAIN_IMAGES:,} images at the measured img/s; pipeline: " \
                              f"loader + BatchTransform share of step time)"


def format_eval(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'architecture':<12} {'img/s':>8} {'pass s':>8} {'images':>7} {f'{LAB_TEST_IMAGES:,} images s':>16}"]
    for r in rows:
        lines.append(f"{display_name(r['name']):<12} {r['images_per_s']:>8.1f} {r['pass_s']:>8.2f} "
                     f"{r['images']:>7} {r['lab_test_s']:>16.2f}")
    return "\n".join(lines)


def format_memory(rows: list[dict[str, Any]]) -> str:
    def mib(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f}"

    lines = [f"{'architecture':<12} {'peak RSS':>9} {'RSS growth':>11} {'steady anon':>12} {'steady file':>12} "
             f"{'CUDA max alloc':>15}"]
    for r in rows:
        lines.append(f"{display_name(r['name']):<12} {mib(r['peak_rss_mib']):>9} "
                     f"{mib(r['rss_growth_training_mib']):>11} "
                     f"{mib(r['rss_anon_growth_steady_mib']):>12} {mib(r['rss_file_growth_steady_mib']):>12} "
                     f"{mib(r['cuda_max_allocated_mib']):>15}")
    return "\n".join(lines) + ("\n(peak RSS: whole process so far; RSS growth: from before the model was built; "
                               "steady: growth over the timed epochs, where a leak would show)")


def target_row(target: str, measured: str, verdict: str) -> dict[str, str]:
    return {"target": target, "measured": measured, "verdict": verdict}


def gpu_verdict(value: float | None, ok: bool, missing: str, device_type: str, image_size: int, gpu: str) -> str:
    """A GPU target's verdict; ``missing`` says why ``value`` is None."""
    if device_type != "cuda":
        return "not measured (no GPU)"
    if value is None:
        return f"not measured ({missing})"
    if image_size != GPU_TARGETS_PX:
        return f"not measured (needs --image-size {GPU_TARGETS_PX})"
    verdict = "PASS" if ok else "FAIL"
    return verdict if "H100" in gpu else f"{verdict} (on {gpu}; the target is for an H100)"


def check_targets(report: dict[str, Any], device_type: str, image_size: int) -> list[dict[str, str]]:
    """The issue's targets against this run's numbers: PASS, FAIL or not measured (and why)."""
    models = {r["name"]: r for r in report.get("models", {}).get("rows", [])}
    train = {r["name"]: r for r in report.get("train", {}).get("rows", [])}
    evals = {r["name"]: r for r in report.get("eval", {}).get("rows", [])}
    return (ratio_targets(models) + gpu_targets(train, evals, device_type, image_size, report["machine"]["device_name"])
            + pipeline_targets(train, device_type))


def ratio_targets(models: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    if not models:
        return [target_row(f"ours/torchvision >= {RATIO_TARGET}, every architecture", "-",
                           "not measured (models section not run)")]
    return [target_row(f"ours/torchvision {display_name(name)} >= {RATIO_TARGET}", f"{r['ratio']:.3f}",
                       ratio_verdict(r)) for name, r in models.items()]


def ratio_verdict(row: dict[str, Any]) -> str:
    """PASS/FAIL on the median ratio, flagged when the paired runs fall on both sides of the target."""
    runs = [ours / theirs for ours, theirs in zip(row["ours_runs"], row["torchvision_runs"])]
    verdict = "PASS" if row["ratio"] >= RATIO_TARGET else "FAIL"
    if min(runs) < RATIO_TARGET <= max(runs):
        return f"{verdict} (inconclusive: paired runs {min(runs):.3f} to {max(runs):.3f})"
    return verdict


def gpu_targets(train: dict[str, dict[str, Any]], evals: dict[str, dict[str, Any]], device_type: str,
                image_size: int, gpu: str) -> list[dict[str, str]]:
    where = f"1x H100, {GPU_TARGETS_PX} px"
    checks = [("ResNet50 training >= 3,000 img/s", "train", train, "resnet50", "images_per_s", "img/s", 3000, True),
              ("ResNet18 training >= 10,000 img/s", "train", train, "resnet18", "images_per_s", "img/s", 10000, True),
              (f"ResNet18 lab epoch ({LAB_TRAIN_IMAGES:,} images) <= 2 s", "train", train, "resnet18",
               "lab_epoch_s", "s", 2, False)]
    checks += [(f"{display_name(name)} eval of {LAB_TEST_IMAGES:,} images <= 1 s", "eval", evals, name,
                "lab_test_s", "s", 1, False) for name in (evals or ["resnet18"])]
    rows = []
    for label, section_name, section, name, key, unit, limit, at_least in checks:
        value = section[name][key] if name in section else None
        ok = value is not None and (value >= limit if at_least else value <= limit)
        missing = f"{section_name} section not run" if not section else f"{display_name(name)} not in --train-models"
        rows.append(target_row(f"{label} ({where})", "-" if value is None else f"{value:,.1f} {unit} on {device_type}",
                               gpu_verdict(value, ok, missing, device_type, image_size, gpu)))
    return rows


def pipeline_targets(train: dict[str, dict[str, Any]], device_type: str) -> list[dict[str, str]]:
    if not train:
        return [target_row(f"input pipeline < {PIPELINE_TARGET:.0%} of step time (CPU)", "-",
                           "not measured (train section not run)")]
    rows = []
    for name, r in train.items():
        ok = r["pipeline_fraction"] < PIPELINE_TARGET
        verdict = (("PASS" if ok else "FAIL") if device_type == "cpu"
                   else f"not measured (CPU target; ran on {device_type})")
        rows.append(target_row(f"{display_name(name)} input pipeline < {PIPELINE_TARGET:.0%} of step time (CPU)",
                               f"{r['pipeline_fraction']:.1%}", verdict))
    return rows


def format_targets(rows: list[dict[str, str]]) -> str:
    width = max(len(r["target"]) for r in rows)
    mwidth = max(len("measured"), *(len(r["measured"]) for r in rows))
    lines = [f"{'target':<{width}}  {'measured':>{mwidth}}  verdict"]
    lines += [f"{r['target']:<{width}}  {r['measured']:>{mwidth}}  {r['verdict']}" for r in rows]
    return "\n".join(lines)
