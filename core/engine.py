"""The training and evaluation loops: one step, one epoch, one evaluation pass.

Hot-loop rules: no host sync per step (sums stay on the device and are read once per
log interval), ``zero_grad(set_to_none=True)``, non-blocking copies, autocast when asked.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from common.progress import progress, track
from core.tta import mean_logits

LOG_EVERY = 50  # steps between the (syncing) finite-loss check and progress-bar update


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int, what: str = "the training loss") -> None:
        super().__init__(f"{what} became NaN/inf at epoch {epoch}, step {step}")
        self.epoch, self.step = epoch, step


@dataclass(frozen=True)
class Runtime:
    """How batches are run on the hardware."""

    device: torch.device
    amp_dtype: torch.dtype | None = None  # bfloat16 / float16 under autocast, None for float32
    channels_last: bool = False

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def inputs(self, images: torch.Tensor, transform: torch.nn.Module) -> torch.Tensor:
        """uint8 CPU batch -> transformed float batch on the device, in the chosen memory format."""
        x = transform(images.to(self.device, non_blocking=True))
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


@dataclass
class EpochSums:
    """Running sums of an epoch, on the device; also saved in mid-epoch checkpoints.

    ``loss`` is plain cross-entropy, on the same footing as the validation loss; ``objective`` is what
    was optimised (with label smoothing and class weights, if any).
    """

    loss: torch.Tensor
    correct: torch.Tensor
    seen: torch.Tensor
    bad_step: torch.Tensor  # first step with a non-finite loss, -1 if none
    seconds: float = 0.0
    step: int = 0  # steps done in this epoch
    objective: torch.Tensor | None = None

    COUNTED = ("loss", "objective", "correct", "seen")  # what adds up over steps and over ranks

    def add(self, objective: torch.Tensor, loss: torch.Tensor, correct: torch.Tensor, seen: int, step: int) -> None:
        """Count one step's summed objective, summed cross-entropy and number correct (no host sync)."""
        self.objective += objective
        self.loss += loss
        self.correct += correct
        self.seen += seen
        self.bad_step = torch.where((self.bad_step < 0) & ~torch.isfinite(objective), step, self.bad_step)
        self.step = step + 1

    def __post_init__(self) -> None:
        if self.objective is None:  # sums saved before the objective was counted apart
            self.objective = self.loss.clone()

    @classmethod
    def zeros(cls, device: torch.device) -> "EpochSums":
        z = lambda dtype: torch.zeros((), dtype=dtype, device=device)  # noqa: E731
        return cls(z(torch.float64), z(torch.int64), z(torch.int64), torch.full((), -1, device=device),
                   objective=z(torch.float64))

    def state_dict(self) -> dict:
        return {"loss": self.loss.cpu(), "objective": self.objective.cpu(), "correct": self.correct.cpu(),
                "seen": self.seen.cpu(), "bad_step": self.bad_step.cpu(), "seconds": self.seconds}

    @classmethod
    def from_state(cls, state: dict, device: torch.device, step: int) -> "EpochSums":
        """The sums saved by ``state_dict`` after ``step`` steps of the epoch."""
        objective = state["objective"].to(device) if "objective" in state else None
        return cls(*(state[k].to(device) for k in ("loss", "correct", "seen", "bad_step")), seconds=state["seconds"],
                   step=step, objective=objective)


@dataclass(frozen=True)
class Learner:
    """What a training step needs: the model to train and how it learns."""

    model: torch.nn.Module  # possibly DDP-wrapped and/or compiled
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    transform: torch.nn.Module  # uint8 batch -> augmented, normalised float batch on the device
    rt: Runtime
    show_progress: bool = True  # the progress bar (only the main process shows one)


def train_step(learner: Learner, images: torch.Tensor,
               labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimisation step; returns the batch's summed objective, summed plain cross-entropy and
    number correct (device tensors)."""
    rt = learner.rt
    x, y = rt.inputs(images, learner.transform), labels.to(rt.device, non_blocking=True)
    with rt.autocast():
        logits = learner.model(x)
        loss = learner.loss_fn(logits, y)
    learner.optimizer.zero_grad(set_to_none=True)
    learner.scaler.scale(loss).backward()
    learner.scaler.step(learner.optimizer)
    learner.scaler.update()
    logits = logits.detach()
    plain = F.cross_entropy(logits.float(), y, reduction="sum").double()
    return loss.detach().double() * y.numel(), plain, (logits.argmax(1) == y).sum()


def train_one_epoch(learner: Learner, loader: Iterable, epoch: int, sums: EpochSums,
                    lr_at: Callable[[int], float], after_step: Callable[[int, EpochSums], bool]) -> bool:
    """Train for the rest of epoch ``epoch`` (1-based) from step ``sums.step``; False if stopped early.

    ``loader`` has ``len(loader)`` batches an epoch and yields those from ``sums.step`` on. ``lr_at(step_in_epoch)`` gives the learning rate;
    ``after_step(steps_done, sums)`` runs after every step (checkpoints, signals) and returns
    True to stop.
    """
    learner.model.train()
    steps, start = len(loader), sums.step
    t0 = time.perf_counter() - sums.seconds
    so_far = lambda: {"loss": f"{sums.loss.item() / max(sums.seen.item(), 1):.4f}"}  # noqa: E731 (a host sync)
    with progress(steps, f"epoch {epoch}", "step", show=learner.show_progress, transient=True, initial=start,
                  per_step=batch_size(loader), status=so_far) as bar:
        for step, (images, labels) in enumerate(loader, start=start):
            for group in learner.optimizer.param_groups:
                group["lr"] = lr_at(step) * group.get("lr_scale", 1.0)
            objective, loss, correct = train_step(learner, images, labels)
            sums.add(objective, loss, correct, labels.numel(), step)
            bar.update()
            if (step + 1) % LOG_EVERY == 0 or step + 1 == steps:
                check_loss_finite(sums, epoch)
                bar.set_postfix(loss=f"{sums.loss.item() / max(sums.seen.item(), 1):.4f}",
                                acc=f"{sums.correct.item() / max(sums.seen.item(), 1):.2%}")
            sums.seconds = time.perf_counter() - t0
            if after_step(step + 1, sums):
                return False
    return True


def batch_size(loader: Iterable) -> int | None:
    """Images in a full batch of ``loader`` (a BatchLoader or DataLoader), if it says."""
    sampler = getattr(loader, "sampler", None)
    return getattr(loader, "batch_size", None) or getattr(sampler, "batch_size", None)


def check_loss_finite(sums: EpochSums, epoch: int) -> None:
    """Raise NonFiniteLoss naming the first bad step (a host sync: call it rarely)."""
    bad = int(sums.bad_step.item())
    if bad >= 0:
        raise NonFiniteLoss(epoch, bad + 1)


def forward(model: torch.nn.Module, x: torch.Tensor, rt: Runtime, tta: str | None) -> torch.Tensor:
    """Float32 logits; with ``tta`` (core.tta: ``flips+rot90``, ``none``) averaged over its views."""
    with rt.autocast():
        return mean_logits(model, x, tta)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Iterable, transform: torch.nn.Module, rt: Runtime, tta: str | None = None,
             confusion: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed cross-entropy, number correct and number seen over ``loader`` (device tensors).

    ``confusion`` (C x C int64 on the device), if given, gets each (true, predicted) pair counted in.
    """
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=rt.device)
    correct = torch.zeros((), dtype=torch.int64, device=rt.device)
    seen = torch.zeros((), dtype=torch.int64, device=rt.device)
    for images, labels in loader:
        y = labels.to(rt.device, non_blocking=True)
        logits = forward(model, rt.inputs(images, transform), rt, tta)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        seen += y.numel()
        if confusion is not None:
            n = confusion.shape[0]
            confusion += torch.bincount(y * n + logits.argmax(1), minlength=n * n).view(n, n)
    return loss_sum, correct, seen


@torch.no_grad()
def predict(model: torch.nn.Module, loader: Iterable, transform: torch.nn.Module, rt: Runtime,
            tta: str | None = None, show: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities (N x C) and the loader's labels, in loader order."""
    model.eval()
    probs, labels = [], []
    for images, y in track(loader, len(loader), "predict", "batch", show=show, per_step=batch_size(loader)):
        probs.append(forward(model, rt.inputs(images, transform), rt, tta).softmax(1).cpu())
        labels.append(y)
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


def lr_schedule(kind: str, base_lr: float, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """A pure function step -> learning rate: 'cosine' (linear warm-up then cosine to 0), 'step', 'none'."""
    def cosine(step: int) -> float:
        if step < warmup_steps:
            return base_lr * (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def stepwise(step: int) -> float:
        # /10 at half and at three quarters of training, the classic ResNet recipe shape.
        return base_lr * (0.1 ** sum(step >= total_steps * f for f in (0.5, 0.75)))

    return {"cosine": cosine, "step": stepwise, "none": lambda step: base_lr}[kind]


def make_optimizer(model: torch.nn.Module, name: str, lr: float, momentum: float, weight_decay: float,
                   device: torch.device, backbone_lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """SGD (Nesterov), Adam or AdamW; no weight decay on BatchNorm and biases (1-D tensors).

    Each parameter group carries ``lr_scale`` (the backbone's share of the learning rate when
    fine-tuning); the loop sets ``lr = schedule(step) * lr_scale``. Fused kernels on CUDA.
    """
    head = {id(p) for p in model.fc.parameters()}
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for p in model.parameters():
        groups.setdefault((id(p) in head, p.ndim > 1), []).append(p)
    param_groups = [{"params": ps, "weight_decay": weight_decay if decay else 0.0,
                     "lr_scale": 1.0 if is_head else backbone_lr_scale}
                    for (is_head, decay), ps in sorted(groups.items())]
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, nesterov=momentum > 0, **fast)
    if name == "adam":
        return torch.optim.Adam(param_groups, lr=lr, **fast)
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, **fast)
    raise ValueError(f"unknown optimizer {name!r}; choose sgd, adam or adamw")
