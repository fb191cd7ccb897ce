"""Grad-CAM (Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391) and the example grid eval.py saves.

    python eval.py -m storage/latest --cam 4    # writes <output>/<split>_gradcam.png per labelled split

The heat map of an image for class c: the target layer's activations A (K x h x w), weighted per
channel by the spatial mean of d logit_c / dA, summed, ReLU'd, upsampled to the input and scaled to [0, 1].
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import data

CAM_BATCH = 8  # images per forward: the backward needs every activation kept, ~0.3 GB per image for ResNet152
OVERLAY = {"cmap": "jet", "alpha": 0.45, "vmin": 0.0, "vmax": 1.0}


def grad_cam(model: nn.Module, x: Tensor, target_layer: nn.Module,
             target: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Heat maps (N x H x W, each scaled to [0, 1]) and logits (N x C) for a batch ``x`` (N x 3 x H x W).

    ``target`` holds the class to explain for each image (default: the predicted one). The model
    runs in eval mode and gets its mode back; parameters' ``.grad`` are not touched and the hook is
    removed even on error.
    """
    saved: list[Tensor] = []
    handle = target_layer.register_forward_hook(lambda module, args, output: saved.append(output))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            # An input that requires grad puts the activations in the graph even if the weights are frozen.
            logits = model(x.detach().float().requires_grad_())
            target = logits.argmax(1) if target is None else target.to(logits.device)
            # In eval mode the images do not interact, so d(sum of the N scores)/dA_i = d score_i / dA_i.
            score = logits.gather(1, target.view(-1, 1)).sum()
            (grads,) = torch.autograd.grad(score, saved[-1])
    finally:
        handle.remove()
        model.train(was_training)
    acts = saved[-1].detach()
    weights = grads.mean(dim=(2, 3), keepdim=True)  # N x K x 1 x 1
    cam = F.relu((weights * acts).sum(dim=1, keepdim=True))  # N x 1 x h x w
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return scale_to_unit(cam), logits.detach()


def scale_to_unit(maps: Tensor) -> Tensor:
    """Min-max each map (N x H x W) to [0, 1]; a flat map becomes all zeros."""
    low = maps.amin(dim=(1, 2), keepdim=True)
    high = maps.amax(dim=(1, 2), keepdim=True)
    span = high - low
    # Rounding in the upsampling makes a flat map (e.g. a 1 x 1 layer4 at 32 px) differ by ~1e-7: not a peak.
    flat = span <= 1e-5 * high.abs().clamp_min(1e-12)
    return torch.where(flat, torch.zeros_like(maps), (maps - low) / span.clamp_min(1e-12))


def select_tiles(probs: np.ndarray, labels: np.ndarray, n: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Indices of the ``n`` most confident mistakes, and of each class's ``n`` most confident correct images.

    Confidence is the probability of the predicted class; each list is ordered most confident first.
    """
    preds = probs.argmax(1)
    confidence = probs.max(1)

    def top(mask: np.ndarray) -> np.ndarray:
        candidates = np.flatnonzero(mask)
        return candidates[np.argsort(-confidence[candidates], kind="stable")[:n]]

    mistakes = top(preds != labels)
    correct = [top((preds == labels) & (labels == c)) for c in range(probs.shape[1])]
    return mistakes, correct


def heat_maps(model: nn.Module, images: Tensor, transform: nn.Module, target: Tensor,
              batch_size: int = CAM_BATCH) -> Tensor:
    """Grad-CAM on ``model.layer4[-1]`` for uint8 images (N x 3 x H x W) -> N x H x W in [0, 1] (CPU)."""
    device = next(model.parameters()).device
    maps = [grad_cam(model, transform(images[i:i + batch_size].to(device)), model.layer4[-1],
                     target[i:i + batch_size])[0].cpu()
            for i in range(0, len(images), batch_size)]
    return torch.cat(maps) if maps else torch.zeros(0, *images.shape[-2:])


def save_cam_grid(model: nn.Module, dataset: data.ImageDataset, probs: np.ndarray, classes: Sequence[str], n: int,
                  path: Path, title: str) -> Path:
    """Grad-CAM grid of a labelled split: a row of mistakes, then a row of correct images per class.

    ``probs`` (N x C) are the split's predictions in dataset order; each map explains the predicted class.
    """
    labels = dataset.labels.numpy()
    mistakes, correct = select_tiles(probs, labels, n)
    rows = [("most confident mistakes", mistakes)] + [(f"correct: {c}", idx) for c, idx in zip(classes, correct)]
    chosen = np.concatenate([idx for _, idx in rows]).astype(np.int64)
    images = torch.stack([dataset[int(i)][0] for i in chosen]) if len(chosen) else torch.zeros(0, 3, 1, 1)
    preds = probs.argmax(1)
    transform = data.BatchTransform(dataset.prep, train=False).to(next(model.parameters()).device)
    maps = heat_maps(model, images, transform, torch.from_numpy(preds[chosen]))
    tiles = dict(zip(chosen.tolist(), zip(images, maps)))

    fig, axes = plt.subplots(len(rows), n, figsize=(2.3 * n + 1.2, 2.55 * len(rows)), squeeze=False,
                             layout="constrained")
    for ax_row, (name, idx) in zip(axes, rows):
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_frame_on(False)
        ax_row[0].set_ylabel(name, fontsize=10)
        if not len(idx):
            ax_row[0].text(0.05, 0.5, "none in this split", transform=ax_row[0].transAxes, fontsize=10, color="grey")
        for ax, i in zip(ax_row, idx.tolist()):
            image, heat = tiles[i]
            ax.imshow(image.permute(1, 2, 0).numpy())
            overlay = ax.imshow(heat.numpy(), **OVERLAY)
            wrong = preds[i] != labels[i]
            ax.set_title(f"true {classes[labels[i]]}\npred {classes[preds[i]]} ({probs[i, preds[i]]:.1%})",
                         fontsize=8.5, color="firebrick" if wrong else "darkgreen")
    if len(chosen):
        fig.colorbar(overlay, ax=axes, shrink=0.5, label="Grad-CAM (layer4[-1], predicted class)")
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110, metadata={"Description": f"eval.py --cam {n}"})
    plt.close(fig)
    return path
