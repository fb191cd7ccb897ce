"""--deterministic: the same seed gives the same history on a GPU too (at some cost in speed).

On the CPU our runs are reproducible anyway. On CUDA, cuDNN's autotuner picks kernels by timing
(so they differ run to run) and some kernels add in a non-deterministic order (atomics); cuBLAS
needs a fixed workspace. This module switches all of that off, and turns PyTorch's error for an
operation that has no deterministic version into one line naming it.
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from typing import Iterator

import torch

from common.errors import UserError

CUBLAS_WORKSPACE = ":4096:8"  # what the CUDA docs ask for to make cuBLAS reproducible
_NO_DETERMINISTIC = re.compile(r"^(\S+) does not have a deterministic implementation")


def make_deterministic(on: bool) -> None:
    """Deterministic algorithms everywhere when ``on``; call before the first CUDA operation."""
    if not on:
        return
    # read by cuBLAS when it creates its handle, i.e. at the first matmul on the GPU: set it before
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)


@contextmanager
def deterministic_errors() -> Iterator[None]:
    """Turn "X does not have a deterministic implementation" into a one-line UserError naming X."""
    try:
        yield
    except RuntimeError as exc:
        found = _NO_DETERMINISTIC.search(str(exc).strip())
        if found is None:
            raise
        raise UserError(f"--deterministic: the operation {found[1]} has no deterministic version on this device; "
                        f"train without --deterministic, or on the CPU (--device cpu)") from None
