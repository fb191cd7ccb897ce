"""Test-time augmentation follows the augmentation policy: the views it averages, and what they give."""
from __future__ import annotations

import torch

from core import tta


def test_rotate_tta_averages_the_eight_flips_and_turns_so_its_output_ignores_them() -> None:
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    views = list(tta.views(x, tta.FLIPS_ROT90))
    assert len(views) == 8 and torch.equal(views[0], x)
    assert all(not torch.equal(a, b) for i, a in enumerate(views) for b in views[i + 1:])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 6, 2))  # sees orientation
    mean = tta.mean_logits(model, x, tta.FLIPS_ROT90)
    for moved in (torch.rot90(x, 1, (2, 3)), torch.flip(x, (3,)), torch.flip(x, (2,))):
        torch.testing.assert_close(tta.mean_logits(model, moved, tta.FLIPS_ROT90), mean)
    assert not torch.allclose(model(x), mean)


def test_upright_and_none_policies_allow_no_flip() -> None:
    assert tta.tta_for({"augment": "rotate"}) == tta.tta_for({}) == tta.FLIPS_ROT90  # runs before --augment rotated
    assert tta.tta_for({"augment": "upright"}) == tta.tta_for({"augment": "none"}) == tta.NONE
    x = torch.randn(1, 3, 4, 4)
    assert [v is x for v in tta.views(x, tta.NONE)] == [True]
