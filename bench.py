"""Speed of the suite in one run, with the issue's targets beside the numbers.

    python bench.py                              # every section, with this device's default sizes
    python bench.py --quick                      # tiny sizes: smoke test and CI
    python bench.py --sections train,eval --data new_dataset --train-models ResNet18 ResNet50
    OMP_NUM_THREADS=1 python bench.py            # on a CPU shared with other work

Sections: models (training-step img/s, ours vs torchvision), pipeline (the seeds' PIL way vs our
cache + BatchTransform), train (end-to-end epochs through train.py's functions on a generated demo
set, or --data), eval (engine.predict over the valid split), memory (peak and growth during train),
lab (train.py's fit() with validation and checkpoints; where the wall time goes, from timing.json),
audit (audit.py on 10,661 synthetic 450 px cells, cold and remembered, and its near-copy search over
100,000 hashes; writing the images alone takes minutes on 2 cores: --audit-images N for fewer).
Every result goes to --json with the device, library versions, threads, date and load average.

Default sizes: see SIZES. On the CPU they keep a full run near 10 minutes on 2 cores: 224 px;
model steps at batch 8, 1 step x 3 alternating repeats; ResNet18 trained at batch 32 on 128
images (2 timed epochs); 64 valid images. On CUDA, the issue's: 224 px, batch 256, ResNet18 and
ResNet50, a lab-sized demo set (7,995 train / 1,067 valid images), channels_last + bf16 autocast.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

from typing import TYPE_CHECKING

from common.errors import UserError, run_cli
from core.bench import SECTIONS
from core.cli import model_name

if TYPE_CHECKING:
    from core.bench.suite import BenchConfig


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated, of {','.join(SECTIONS)} (default all)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (32 px, 2 models, few steps) for tests and CI")
    p.add_argument("--json", type=Path, default=Path("storage/bench.json"), help="default storage/bench.json")
    p.add_argument("--image-size", type=int, help="input side in px for every section (default 224; quick 32)")
    p.add_argument("--models", nargs="+", type=model_name, metavar="MODEL", help="models section (default all)")
    p.add_argument("--model-batch-size", type=int, help="models section batch (default: CPU 8, CUDA 256)")
    p.add_argument("--repeats", type=int, help="models section alternating runs (default: CPU 3, CUDA 5)")
    p.add_argument("--train-models", nargs="+", type=model_name, metavar="MODEL",
                   help="train/eval/memory sections (default: CPU ResNet18; CUDA ResNet18 ResNet50)")
    p.add_argument("-b", "--batch-size", type=int, help="training batch (default: CPU 32, CUDA 256); eval uses 2x")
    p.add_argument("--epochs", type=int, help="timed training epochs after the warm-up one (default: CPU 2, CUDA 3)")
    p.add_argument("--train-images", type=int,
                   help="demo training images, or the first N of --data (default: CPU 128, CUDA 7995)")
    p.add_argument("--valid-images", type=int,
                   help="demo valid images, or the first N of --data (default: CPU 64, CUDA 1067)")
    p.add_argument("--audit-images", type=int,
                   help="audit section: synthetic 450 px images (default 10,661, the C-NMC count; quick 48)")
    p.add_argument("--data", type=Path, help="use this data set (any layout train.py reads) instead of a generated one")
    p.add_argument("--workers", type=int, default=-1, help="loader processes (default as train.py: CPU 0, GPU 4)")
    p.add_argument("--compile", action="store_true", help="torch.compile the models in train and eval")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (default: torch's choice, which follows OMP_NUM_THREADS)")
    p.add_argument("--work-dir", type=Path, help="where temporary images and caches go (default: system temp)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return p


def bench_config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Resolve the device and its default sizes, apply the flags given, check ranges (UserError)."""
    from core.bench.suite import SIZES, BenchConfig
    from core.hardware import pick_device

    sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise UserError(f"--sections {args.sections!r}: choose from {','.join(SECTIONS)}")
    device = pick_device(args.device)
    kind = "quick" if args.quick else ("cuda" if device.type == "cuda" else "cpu")
    given = {"image_size": args.image_size, "models": tuple(args.models or ()) or None,
             "model_batch_size": args.model_batch_size, "repeats": args.repeats,
             "train_models": tuple(args.train_models or ()) or None, "batch_size": args.batch_size,
             "epochs": args.epochs, "train_images": args.train_images, "valid_images": args.valid_images,
             "audit_images": args.audit_images}
    sizes = replace(SIZES[kind], **{k: v for k, v in given.items() if v is not None})
    for flag in ("model_batch_size", "repeats", "batch_size", "epochs", "train_images", "valid_images",
                 "audit_images"):
        if getattr(sizes, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1 (got {getattr(sizes, flag)})")
    if not 32 <= sizes.image_size <= 1024:
        raise UserError(f"--image-size must be between 32 and 1024 (got {sizes.image_size})")
    if sizes.batch_size > sizes.train_images:
        raise UserError(f"-b {sizes.batch_size} is larger than --train-images {sizes.train_images}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1 (got {args.threads})")
    workers = args.workers if args.workers >= 0 else (4 if device.type == "cuda" else 0)
    return BenchConfig(sections, str(device), sizes, args.data, workers, args.compile, args.threads,
                       args.json, args.work_dir)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = bench_config_from_args(get_args_parser().parse_args(argv))
    import torch  # after parsing, so that --help is instant

    from core.bench.suite import (check_targets, describe_machine, format_targets, machine_info, plain, run_audit,
                                  run_end_to_end, run_models, run_pipeline, timed_section)
    from core.hardware import enable_fast_kernels, make_runtime, out_of_memory_message
    from core.runs import write_json

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    enable_fast_kernels(device)  # cuDNN autotuning and TF32 on CUDA, as train.py has them
    rt = make_runtime(device, None, None)
    report: dict[str, Any] = {"machine": machine_info(device), "config": plain(asdict(cfg))}
    print(describe_machine(report["machine"]), flush=True)
    try:
        if "models" in cfg.sections:
            report["models"] = timed_section(lambda: run_models(cfg.sizes, rt))
        if "pipeline" in cfg.sections:
            report["pipeline"] = timed_section(lambda: run_pipeline(cfg.sizes, cfg.threads, cfg.work_dir))
        if {"train", "eval", "memory", "lab"} & set(cfg.sections):
            report.update(run_end_to_end(cfg, rt))
        if "audit" in cfg.sections:
            report["audit"] = timed_section(lambda: run_audit(cfg.sizes, cfg.work_dir))
    except torch.OutOfMemoryError:
        raise UserError(out_of_memory_message(cfg.sizes.batch_size, cfg.sizes.image_size)) from None
    report["targets"] = check_targets(report, device.type, cfg.sizes.image_size)
    print("\nissue targets\n" + format_targets(report["targets"]))
    report["machine"]["load_average_end"] = os.getloadavg()
    cfg.json.parent.mkdir(parents=True, exist_ok=True)
    write_json(cfg.json, report)
    print(f"\nwrote {cfg.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
