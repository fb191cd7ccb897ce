"""Export a trained run to ONNX, check it against PyTorch with onnxruntime, and describe its preprocessing.

    python export.py -m storage/latest --format onnx   # <run>/export/<arch>.onnx + <arch>.json

The ONNX graph takes float32 N x 3 x H x W images, already preprocessed (see the JSON), with any
batch size N, and returns logits N x C. The JSON also carries what eval.py fitted for this
checkpoint without TTA (core.evaluation.fitted): probabilities are softmax(logits / temperature), and the
operating point calls ``positive_class`` where its probability reaches ``threshold.value``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.errors import UserError
from core.evaluation.ensemble import Member, default_output
from core.evaluation.fitted import checkpoint_records, saved_for_inference
from core.extras import require
from core.runs import write_json

TOLERANCE = 1e-4  # largest |onnxruntime - PyTorch| accepted on the logits
INPUT_NAME, OUTPUT_NAME = "input", "logits"


class ExportError(UserError):
    """The exported model does not reproduce PyTorch's outputs."""


@dataclass(frozen=True)
class Exported:
    model_path: Path
    preprocess_path: Path
    max_abs_diff: float
    opset: int


def export_onnx(member: Member, path: Path, seed: int = 0) -> Exported:
    """Write ``path`` (.onnx, dynamic batch) and its preprocessing JSON beside it; verify with onnxruntime.

    ExportError if onnxruntime's logits differ from PyTorch's by more than TOLERANCE on random input.
    """
    for module in ("onnx", "onnxscript", "onnxruntime"):  # onnxscript: torch.onnx's exporter is written with it
        require(module, "export.py --format onnx")
    model = member.model.to("cpu", memory_format=torch.contiguous_format).float().eval()
    size = member.prep.image_size
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (example,), path, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False, verbose=False)
    opset = onnx_opset(path)
    diff = verify(model, path, size, seed)
    if diff > TOLERANCE:
        raise ExportError(f"{path}: onnxruntime's logits differ from PyTorch's by up to {diff:.2e} "
                          f"(more than {TOLERANCE:g}); the export is not faithful")
    info = preprocess_info(member, opset)
    preprocess_path = path.with_suffix(".json")
    write_json(preprocess_path, info)
    return Exported(path, preprocess_path, diff, opset)


def onnx_opset(path: Path) -> int:
    onnx = require("onnx", "export.py --format onnx")
    return next((o.version for o in onnx.load(str(path), load_external_data=False).opset_import if o.domain == ""), 0)


def verify(model: torch.nn.Module, path: Path, size: int, seed: int) -> float:
    """Largest |onnxruntime - PyTorch| over the logits of random batches of 1 and 3 images."""
    ort = require("onnxruntime", "export.py --format onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed + 1)
    worst = 0.0
    for batch in (1, 3):  # neither is the export's example batch of 2: the batch size is really free
        x = torch.randn(batch, 3, size, size, generator=generator)
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def preprocess_info(member: Member, opset: int) -> dict[str, Any]:
    """What another program needs to feed the ONNX model the pixels the run was trained on."""
    prep = member.prep
    records = checkpoint_records([(member.path, member.epoch)])
    temperature, point = saved_for_inference(default_output([member]), records, None, member.classes)
    return {
        "input": INPUT_NAME, "output": OUTPUT_NAME, "output_kind": "logits (softmax gives probabilities)",
        "layout": "N x 3 x H x W float32, RGB",
        "image_size": prep.image_size,
        "crop": prep.crop,
        "crop_mode": prep.mode,
        "crop_rule": ("center: keep the centred square of side crop x the shorter side" if prep.mode == "center"
                      else "fundus: the square around the retina disk (data/preprocess.py fundus_box)"),
        "resize": "bicubic (antialiased) to image_size x image_size",
        "scale": 1 / 255,
        "mean": list(prep.mean), "std": list(prep.std),
        "normalise": "x = (pixel / 255 - mean) / std, per channel",
        "classes": list(member.classes),
        "temperature": temperature,
        "probabilities": "softmax(logits / temperature) (temperature null: softmax(logits))",
        "threshold": None if point is None else {"value": point.threshold, "positive_index": point.positive,
                                                 "positive_class": member.classes[point.positive]},
        "decision": "threshold null: the largest probability; else positive_index where its probability >= value, "
                    "else the other class",
        "arch": member.arch, "checkpoint": str(member.path), "opset": opset,
    }
