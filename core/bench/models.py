"""Training throughput of our ResNets against torchvision's, measured side by side in one run.

    python -m benchmarks.models --image-size 64 --batch-size 16 --repeats 5 --json storage/bench.json

On a CPU shared with other work, ``--threads 1 --steps 1 --repeats 15`` gives the steadiest ratio:
one thread is not stalled by a preempted sibling, and short alternating runs share the drift.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from common.errors import UserError, run_cli
from models import MODELS, build_model, canonical_name, display_name


def _synchronize(device: torch.device) -> None:
    # CUDA kernels run asynchronously: without this the clock stops before the work is done.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_train_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    amp: bool) -> Callable[[], None]:
    """One SGD step (forward, cross-entropy, backward, update) on a fixed batch, as a closure."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()

    return step


def time_steps(step: Callable[[], None], steps: int, device: torch.device) -> float:
    """Seconds taken by ``steps`` calls of ``step``, with the device drained before and after."""
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _synchronize(device)
    return time.perf_counter() - start


def compare_pair(ours: nn.Module, theirs: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 steps: int, warmup: int, repeats: int, amp: bool) -> dict[str, Any]:
    """Images/s of two models trained alternately; the ratio is the median of per-repeat ratios."""
    device = images.device
    step_ours = make_train_step(ours, images, labels, amp)
    step_theirs = make_train_step(theirs, images, labels, amp)
    for step in (step_ours, step_theirs):
        time_steps(step, warmup, device)

    ours_runs, theirs_runs = [], []
    for repeat in range(repeats):
        # Alternate who goes first so neither always runs right after the other (caches, clocks).
        first_ours = repeat % 2 == 0
        for is_ours in (first_ours, not first_ours):
            seconds = time_steps(step_ours if is_ours else step_theirs, steps, device)
            (ours_runs if is_ours else theirs_runs).append(steps * images.shape[0] / seconds)

    # Pairs measured back to back share the machine's state, so their ratio is robust to drift.
    ratios = [o / t for o, t in zip(ours_runs, theirs_runs)]
    return {
        "ours_img_s": statistics.median(ours_runs),
        "torchvision_img_s": statistics.median(theirs_runs),
        "ratio": statistics.median(ratios),
        "ours_runs": ours_runs,
        "torchvision_runs": theirs_runs,
    }


def benchmark_models(names: Sequence[str], image_size: int, batch_size: int, device: str | torch.device = "cpu",
                     steps: int = 10, warmup: int = 3, channels_last: bool = False, amp: bool = False,
                     repeats: int = 5, num_classes: int = 1000) -> list[dict[str, Any]]:
    """Training images/s (forward + backward + SGD step) of ours vs torchvision's, per architecture.

    Both models start from the same weights and see the same random batch; they are timed in
    alternation ``repeats`` times, ``steps`` steps each. Rows: name, ours_img_s,
    torchvision_img_s (medians), ratio (ours / torchvision, median of the paired ratios) and the
    raw per-repeat runs.
    """
    device = torch.device(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
    images = images.to(device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, num_classes, (batch_size,), generator=generator).to(device)

    rows = []
    for name in names:
        name = canonical_name(name)
        ours = build_model(name, num_classes)
        theirs = getattr(torchvision.models, name)(num_classes=num_classes)
        theirs.load_state_dict(ours.state_dict())
        ours.to(device, memory_format=memory_format).train()
        theirs.to(device, memory_format=memory_format).train()
        result = compare_pair(ours, theirs, images, labels, steps, warmup, repeats, amp)
        rows.append({"name": name, **result})
        del ours, theirs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def format_model_speeds(rows: list[dict[str, Any]]) -> str:
    """The rows as a text table: architecture, both throughputs and their ratio."""
    lines = [f"{'architecture':<12} {'ours img/s':>11} {'torchvision img/s':>18} {'ratio':>6}"]
    for row in rows:
        lines.append(f"{display_name(row['name']):<12} {row['ours_img_s']:>11.1f} "
                     f"{row['torchvision_img_s']:>18.1f} {row['ratio']:>6.3f}")
    return "\n".join(lines)


@dataclass(frozen=True)
class ModelSpeedConfig:
    models: tuple[str, ...]
    image_size: int
    batch_size: int
    device: str
    steps: int
    warmup: int
    repeats: int
    channels_last: bool
    amp: bool
    threads: int | None
    json: Path | None


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.models", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), metavar="NAME", help="default: all")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=3, help="training steps per timed run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per model first")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per model, alternating")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False,
                        help="autocast to bfloat16")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (1 is steadiest on a machine shared with others)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the rows here")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        names = tuple(canonical_name(n) for n in args.models)
        device = torch.device(args.device)
    except (ValueError, RuntimeError) as exc:
        raise UserError(str(exc)) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but CUDA is not available here")
    for flag in ("image_size", "batch_size", "steps", "repeats", "threads"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1")
    config = ModelSpeedConfig(names, args.image_size, args.batch_size, str(device), args.steps, args.warmup,
                    args.repeats, args.channels_last, args.amp, args.threads, args.json)

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    rows = benchmark_models(config.models, config.image_size, config.batch_size, config.device, config.steps,
                            config.warmup, config.channels_last, config.amp, config.repeats)
    print(f"training step, {config.image_size} px, batch {config.batch_size}, {config.device}, "
          f"{torch.get_num_threads()} threads, channels_last={config.channels_last}, amp={config.amp}, "
          f"median of {config.repeats} alternating runs of {config.steps} steps")
    print(format_model_speeds(rows))
    if config.json is not None:
        config.json.parent.mkdir(parents=True, exist_ok=True)
        setup = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}
        report = {"config": setup, "torch": torch.__version__, "torchvision": torchvision.__version__, "rows": rows}
        config.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
