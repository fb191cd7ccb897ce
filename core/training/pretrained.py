"""ImageNet (or any local) weights into our hand-written ResNet.

Our parameter names are torchvision's, so torchvision's published state_dicts load as they are;
only the 1000-class ``fc`` is replaced by a fresh head for our classes.
"""
from __future__ import annotations

import urllib.error
from pathlib import Path

import torch

from common.errors import UserError
from core.checkpoint import CheckpointError, load_checkpoint, state_dict_from
from models import ResNet, display_name

# torchvision's best ImageNet-1K weights for each architecture (acc@1 69.8 / 73.3 / 80.9 / 81.9 / 82.3).
IMAGENET_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-cd907fc2.pth",
    "resnet152": "https://download.pytorch.org/models/resnet152-f82ba261.pth",
}


def imagenet_file(arch: str) -> Path:
    """Where torch.hub keeps (and where a user can put) the ImageNet weights of ``arch``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_URLS[arch].rsplit("/", 1)[1]


def fetch_imagenet(arch: str) -> Path:
    """The local ImageNet weights file, downloaded once if missing; one-line UserError when offline."""
    path = imagenet_file(arch)
    if not path.is_file():
        url = IMAGENET_URLS[arch]
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            print(f"downloading ImageNet weights for {display_name(arch)} from {url}")
            torch.hub.download_url_to_file(url, str(path), progress=True)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise UserError(f"cannot download ImageNet weights for {display_name(arch)} ({exc}); download {url} "
                            f"and put it at {path}, or pass --pretrained PATH") from None
    return path


def load_pretrained(model: ResNet, source: str, arch: str) -> str:
    """Load backbone weights from 'imagenet' or a file into ``model``; returns a one-line summary.

    The classifier is kept only when its shape matches ours; the backbone must match exactly,
    otherwise a CheckpointError names both architectures.
    """
    path = fetch_imagenet(arch) if source == "imagenet" else Path(source)
    if not path.is_file():
        raise UserError(f"--pretrained {source}: no such file; give 'imagenet' or a weights file")
    ckpt = load_checkpoint(path)
    if ckpt.get("arch") not in (None, arch):
        raise CheckpointError(f"{path} holds {display_name(ckpt['arch'])} weights but {display_name(arch)} "
                              f"was asked for")
    weights = state_dict_from(ckpt, path)
    ours = model.state_dict()
    head = {k: v for k, v in weights.items() if k.startswith("fc.")}
    keep_head = set(head) == {k for k in ours if k.startswith("fc.")} and all(
        v.shape == ours[k].shape for k, v in head.items())
    backbone = {k: v for k, v in weights.items() if keep_head or not k.startswith("fc.")}
    found = guess_arch(weights)
    if found and found != arch:
        raise CheckpointError(f"{path} holds {display_name(found)} weights but {display_name(arch)} was asked for")
    try:
        missing, unexpected = model.load_state_dict(backbone, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit {display_name(arch)} ({str(exc).splitlines()[-1].strip()[:160]})") from None
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit {display_name(arch)}: "
                              f"{len(missing)} missing tensors (e.g. {missing[:1]}), "
                              f"{len(unexpected)} unexpected (e.g. {unexpected[:1]}); is it another architecture?")
    return (f"loaded {len(backbone)} tensors from {path}"
            + ("" if keep_head else f"; new {model.fc.__class__.__name__} head for our classes"))


def guess_arch(weights: dict[str, torch.Tensor]) -> str | None:
    """Which of our architectures a ResNet state_dict belongs to, from its block counts (None if unknown)."""
    blocks = [len({k.split(".")[1] for k in weights if k.startswith(f"layer{i}.")}) for i in range(1, 5)]
    bottleneck = "layer1.0.conv3.weight" in weights
    known = {((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), False): "resnet34",
             ((3, 4, 6, 3), True): "resnet50", ((3, 4, 23, 3), True): "resnet101",
             ((3, 8, 36, 3), True): "resnet152"}
    return known.get((tuple(blocks), bottleneck))
