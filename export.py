"""Export a trained run for programs that do not use this code: ONNX with its preprocessing as JSON.

    python export.py -m storage/latest --format onnx                 # <run>/export/<arch>.onnx and <arch>.json
    python export.py -m storage/ResNet50-... --format onnx -o model.onnx

After writing, the ONNX file is run with onnxruntime on random input and compared with PyTorch
(the largest absolute difference of the logits is printed; above 1e-4 is an error). Needs the
optional packages in requirements-extras.txt.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from common.errors import run_cli

FORMATS = ("onnx",)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model_path", required=True, help="run folder (its best.pt), checkpoint or 'latest'")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="default onnx")
    p.add_argument("-o", "--output", help="model file (default <run>/export/<arch>.onnx); the JSON goes beside it")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    import torch

    from core.deploy.export import TOLERANCE, export_onnx
    from core.engine import Runtime
    from core.evaluation.ensemble import load_member
    from models import display_name

    member = load_member(args.model_path, Runtime(torch.device("cpu")))
    output = Path(args.output) if args.output else member.path.parent / "export" / f"{member.arch}.onnx"
    print(f"{display_name(member.arch)} from {member.path} -> {output} (dynamic batch size)")
    result = export_onnx(member, output)
    print(f"onnxruntime vs PyTorch on random input: max abs difference {result.max_abs_diff:.2e} "
          f"(limit {TOLERANCE:g}); opset {result.opset}")
    print(f"preprocessing (image size, crop, mean, std, classes) -> {result.preprocess_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
