"""Our ResNets: torchvision-compatible weights and outputs, names, heads and init options."""
from __future__ import annotations

from typing import Any, Iterator

import pytest
import torch
import torch.nn as nn
import torchvision
from torch.utils._python_dispatch import TorchDispatchMode

from models import MODELS, build_model, canonical_name, display_name

NAMES = list(MODELS)
TORCHVISION_PARAMETERS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}


@pytest.fixture(autouse=True, scope="module")
def one_cpu_thread() -> Iterator[None]:
    # Inputs this small gain nothing from a second thread, and on a busy machine the threads
    # wait for each other: one thread made this file 3x faster there.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def images(size: int = 64, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def randomize_batchnorms(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine terms, so eval mode exercises them."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                for tensor in (m.weight, m.bias, m.running_mean):
                    tensor.copy_(0.5 * torch.randn(tensor.shape, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=generator))
    return model


class OpLog(TorchDispatchMode):
    """Records every aten operator that runs inside it, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: tuple, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def training_ops(model: nn.Module) -> list[str]:
    """The aten operators of one forward + backward pass, in order."""
    with OpLog() as log:
        model(images(32)).sum().backward()
    return log.ops


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_at_1000_classes_equals_torchvision(name: str) -> None:
    with torch.device("meta"):  # counting needs shapes only
        model = build_model(name, 1000)
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMETERS[name]


@pytest.mark.parametrize("name", NAMES)
def test_torchvision_state_dict_loads_strictly_and_gives_same_logits(name: str) -> None:
    theirs = randomize_batchnorms(getattr(torchvision.models, name)(num_classes=5)).eval()
    ours = build_model(name, 5).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_our_state_dict_loads_strictly_into_torchvision_and_gives_same_logits(name: str) -> None:
    ours = randomize_batchnorms(build_model(name, 5)).eval()
    theirs = getattr(torchvision.models, name)(num_classes=5).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_training_step_runs_the_same_aten_ops_as_torchvision(name: str) -> None:
    # Same kernels in the same order (in-place ReLU and add included): the speed must match too.
    theirs = getattr(torchvision.models, name)(num_classes=5)
    assert training_ops(build_model(name, 5)) == training_ops(theirs)


@pytest.mark.parametrize("name", NAMES)
def test_every_architecture_outputs_batch_by_num_classes_at_64px(name: str) -> None:
    with torch.no_grad():
        logits = build_model(name, 5)(images(64))
    assert logits.shape == (2, 5)


@pytest.mark.parametrize("num_classes", [2, 5])
@pytest.mark.parametrize("size", [64, 224, 450])
def test_output_shape_is_batch_by_num_classes_at_any_input_size(size: int, num_classes: int) -> None:
    # resnet18 stands in for all: the head's shape does not depend on the depth.
    with torch.no_grad():
        logits = build_model("resnet18", num_classes).eval()(images(size, batch=2))
    assert logits.shape == (2, num_classes)


def test_gradients_reach_conv1_weight() -> None:
    model = build_model("resnet18", 2)
    model(images()).sum().backward()
    assert model.conv1.weight.grad is not None
    assert model.conv1.weight.grad.abs().sum() > 0


def test_unknown_name_raises_value_error_listing_valid_names() -> None:
    with pytest.raises(ValueError) as excinfo:
        build_model("resnet19", 2)
    assert str(excinfo.value) == (
        "unknown model 'resnet19'; choose one of: ResNet18, ResNet34, ResNet50, ResNet101, ResNet152"
    )


@pytest.mark.parametrize("variant", ["ResNet18", "resnet18", "resnet-18", "RESNET_18"])
def test_name_variants_map_to_the_registry_key(variant: str) -> None:
    assert canonical_name(variant) == "resnet18"


def test_display_name_is_the_report_spelling() -> None:
    assert [display_name(n) for n in NAMES] == ["ResNet18", "ResNet34", "ResNet50", "ResNet101", "ResNet152"]


@pytest.mark.parametrize("name, last_bn", [("resnet18", "bn2"), ("resnet50", "bn3")])
def test_zero_init_residual_zeroes_the_last_bn_of_every_block(name: str, last_bn: str) -> None:
    model = build_model(name, 2, zero_init_residual=True)
    blocks = [block for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for block in layer]
    assert all(torch.all(getattr(block, last_bn).weight == 0) for block in blocks)
    assert torch.all(model.bn1.weight == 1)  # the other BNs keep scale 1


def test_mlp_head_gives_logits_from_a_hidden_layer() -> None:
    model = build_model("resnet50", 5, head="mlp", hidden=64, dropout=0.1)
    assert [type(m) for m in model.fc] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert model.fc[0].out_features == 64
    with torch.no_grad():
        assert model(images()).shape == (2, 5)


def test_mlp_head_keeps_torchvision_backbone_names() -> None:
    ours = build_model("resnet18", 5, head="mlp")
    backbone = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    missing, unexpected = ours.load_state_dict(backbone, strict=False)
    assert unexpected == []
    assert sorted(missing) == ["fc.0.bias", "fc.0.weight", "fc.3.bias", "fc.3.weight"]


def test_unknown_head_raises_value_error() -> None:
    with pytest.raises(ValueError, match="unknown head 'conv'"):
        build_model("resnet18", 2, head="conv")


def test_channels_last_input_gives_same_output_as_contiguous() -> None:
    model = randomize_batchnorms(build_model("resnet18", 5)).eval()
    x = images()
    with torch.no_grad():
        expected = model(x)
        model.to(memory_format=torch.channels_last)
        actual = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_forward_is_forward_head_of_forward_features() -> None:
    model = build_model("resnet50", 5).eval()
    x = images()
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, 2048, 2, 2)
        torch.testing.assert_close(model.forward_head(features), model(x), atol=0, rtol=0)


def test_reset_classifier_replaces_the_head_and_keeps_the_backbone() -> None:
    model = build_model("resnet18", 1000)
    conv1 = model.conv1.weight.clone()
    model.reset_classifier(3, head="mlp", hidden=32)
    assert model.fc[-1].out_features == 3
    assert torch.equal(model.conv1.weight, conv1)
    with torch.no_grad():
        assert model(images()).shape == (2, 3)


def test_head_and_backbone_parameters_split_all_parameters() -> None:
    model = build_model("resnet18", 5, head="mlp")
    head = {id(p) for p in model.head_parameters()}
    backbone = {id(p) for p in model.backbone_parameters()}
    assert head == {id(p) for p in model.fc.parameters()}
    assert head.isdisjoint(backbone)
    assert head | backbone == {id(p) for p in model.parameters()}


def test_resnet18_compiles_as_one_graph() -> None:
    # backend="eager" runs dynamo's tracing only: graph breaks fail here, without compiling C++.
    model = build_model("resnet18", 2).eval()
    x = images(32)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
