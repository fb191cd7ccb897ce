"""Exponential moving average of a model's weights (and BatchNorm statistics), for evaluation and best.pt.

Averaging the weights of the last few hundred steps smooths out the step-to-step noise of SGD/AdamW:
validation accuracy stops jumping between epochs, and the averaged model is usually a little better.
"""
from __future__ import annotations

import copy

import torch


class ModelEMA:
    """A frozen copy of ``model`` whose floating-point state follows it as an exponential moving average.

    ``update(model, step)`` after every optimizer step: ``ema = d * ema + (1 - d) * model`` with
    ``d = min(decay, (1 + step) / (10 + step))``. The warm-up keeps the average from holding on to
    the random initial weights in short runs: after t steps it spans roughly the last t/10 of them.
    Parameters and BatchNorm running means/variances are averaged (the statistics then match the
    averaged weights better than the raw model's would); integer buffers (``num_batches_tracked``)
    are copied.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.999) -> None:
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        """Move the average towards ``model`` after optimizer step ``step`` (0-based, counted over the run)."""
        d = min(self.decay, (1 + step) / (10 + step))
        averaged = [(e, m) for e, m in zip(self.module.state_dict().values(), model.state_dict().values())]
        floats = [(e, m) for e, m in averaged if e.is_floating_point()]
        if floats:
            torch._foreach_lerp_([e for e, _ in floats], [m.detach() for _, m in floats], 1.0 - d)
        for e, m in averaged:
            if not e.is_floating_point():
                e.copy_(m)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged model's state_dict: loads into the architecture like any weights."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)

    def rank_buffers(self) -> dict[str, torch.Tensor]:
        """The floating-point buffers (BatchNorm statistics) on the CPU: under DDP each rank averages its
        own batches' statistics until the epoch's end, so a mid-epoch last.pt keeps every rank's."""
        return {name: b.detach().cpu().clone() for name, b in self.module.named_buffers() if b.is_floating_point()}

    def load_rank_buffers(self, buffers: dict[str, torch.Tensor]) -> None:
        """Put back what ``rank_buffers`` returned on this rank."""
        own = dict(self.module.named_buffers())
        with torch.no_grad():
            for name, value in buffers.items():
                own[name].copy_(value)
