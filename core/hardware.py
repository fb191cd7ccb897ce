"""Choosing the device and the numeric settings that make it fast."""
from __future__ import annotations

import torch

from common.errors import UserError
from core.engine import Runtime


def pick_device(name: str) -> torch.device:
    """'auto' (CUDA, then Apple MPS, then CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'; UserError if absent."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}'; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA GPU is visible to PyTorch; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible (cuda:0..)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: Apple MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unsupported device '{name}'; use auto, cpu, cuda, cuda:N or mps")
    return device


def enable_fast_kernels(device: torch.device) -> None:
    """On CUDA, switch on cuDNN autotuning and TF32 for the whole process; elsewhere do nothing.

    For training and benchmarks only: both trade bit-exact repeatability for speed, so eval.py and
    predict.py leave them as PyTorch set them and give the same outputs for a checkpoint on a device.
    """
    if device.type != "cuda":
        return
    # fixed input sizes: let cuDNN pick the fastest kernels (by timing them: not with --deterministic)
    torch.backends.cudnn.benchmark = not torch.are_deterministic_algorithms_enabled()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def make_runtime(device: torch.device, amp: bool | None, channels_last: bool | None) -> Runtime:
    """AMP and channels_last default to on for CUDA, off elsewhere; bf16 where supported, else fp16.

    Changes no process-wide setting (see enable_fast_kernels).
    """
    cuda = device.type == "cuda"
    amp_dtype = None
    if amp if amp is not None else cuda:
        if cuda:
            amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            amp_dtype = torch.bfloat16  # CPU autocast supports bf16 only
    return Runtime(device=device, amp_dtype=amp_dtype,
                   channels_last=channels_last if channels_last is not None else cuda)


def out_of_memory_message(batch_size: int, image_size: int) -> str:
    return (f"the GPU ran out of memory at batch size {batch_size}, image size {image_size}; "
            f"try a smaller -b (e.g. {max(1, batch_size // 2)}), --amp, or a smaller --image-size")
