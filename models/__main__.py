"""``python -m models``: parameters and forward FLOPs per image of each architecture."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from common.errors import UserError, run_cli
from models import MODELS, build_model, canonical_name, display_name


@dataclass(frozen=True)
class CountConfig:
    image_size: int
    num_classes: int
    models: tuple[str, ...]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__)
    parser.add_argument("--image-size", type=int, default=224, help="square input side in pixels")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--models", nargs="+", default=list(MODELS), metavar="NAME",
                        help="architectures, e.g. resnet18 ResNet50 (default: all)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return parser


def count_model(name: str, image_size: int, num_classes: int) -> tuple[int, int]:
    """(parameters, forward FLOPs for one image) of ``name``, measured by FlopCounterMode."""
    # On the meta device nothing is allocated or computed, only shapes flow: instant for ResNet152.
    with torch.device("meta"):
        model = build_model(name, num_classes).eval()
        images = torch.empty(1, 3, image_size, image_size)
    params = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(images)
    return params, counter.get_total_flops()


def format_counts(rows: list[tuple[str, int, int]], image_size: int) -> str:
    """Rows of (name, parameters, FLOPs) as a text table with a header that says what is counted."""
    lines = [
        f"Forward pass of one {image_size}x{image_size} image, counted by torch.utils.flop_counter.FlopCounterMode,",
        "which counts a multiply-add as 2 FLOPs (GMACs = GFLOPs / 2, the unit of timm's tables)",
        "and counts convolutions and matrix products only (BatchNorm, ReLU, pooling and adds are not counted).",
        "",
        f"{'architecture':<12} {'parameters':>12} {'GFLOPs':>8} {'GMACs':>8}",
    ]
    for name, params, flops in rows:
        lines.append(f"{display_name(name):<12} {params:>12,} {flops / 1e9:>8.2f} {flops / 2e9:>8.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.image_size < 1:
        raise UserError(f"--image-size must be at least 1, got {args.image_size}")
    if args.num_classes < 1:
        raise UserError(f"--num-classes must be at least 1, got {args.num_classes}")
    try:
        names = tuple(canonical_name(n) for n in args.models)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    config = CountConfig(image_size=args.image_size, num_classes=args.num_classes, models=names)

    rows = [(name, *count_model(name, config.image_size, config.num_classes)) for name in config.models]
    print(format_counts(rows, config.image_size))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
