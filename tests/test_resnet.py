"""Tests of the torchvision ResNet backbones (cellssl.models.resnet)."""

from __future__ import annotations

import pytest
import torch
import torch.hub

from cellssl.models.resnet import ResNetConfig, build_resnet


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a weights download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


def test_resnet18_with_five_channels():
    model = build_resnet(ResNetConfig(arch="resnet18"), in_chans=5).eval()
    assert model.embed_dim == 512 and model.in_chans == 5
    assert model.conv1.in_channels == 5 and model.conv1.weight.shape == (64, 5, 7, 7)
    assert isinstance(model.fc, torch.nn.Identity)
    out = model(torch.randn(2, 5, 64, 64))
    assert out.shape == (2, 512)
    assert (out >= 0).all()  # pooled ReLU features, no fc layer after them
    with pytest.raises(RuntimeError):
        model(torch.randn(2, 3, 64, 64))


def test_resnet50_embed_dim_and_single_channel():
    model = build_resnet(ResNetConfig(arch="resnet50"), in_chans=1).eval()
    assert model.embed_dim == 2048
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 2048)


def test_small_stem_keeps_resolution_for_small_crops():
    model = build_resnet(ResNetConfig(arch="resnet18", stem="small"), in_chans=3).eval()
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    feats = {}
    model.layer4.register_forward_hook(lambda mod, inp, out: feats.setdefault("layer4", out))
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 512)
    assert feats["layer4"].shape == (2, 512, 2, 2)  # total stride 8 (the imagenet stem gives 32)


def test_zero_init_residual_and_training_step():
    model = build_resnet(ResNetConfig(arch="resnet34", zero_init_residual=True), in_chans=2)
    assert torch.equal(model.layer1[0].bn2.weight, torch.zeros(64))
    out = model(torch.randn(4, 2, 32, 32))
    out.pow(2).mean().backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("params", "match"),
    [({"arch": "resnet101"}, "unknown ResNet arch 'resnet101'"), ({"stem": "tiny"}, "unknown stem 'tiny'")],
)
def test_config_validation(params, match):
    with pytest.raises(ValueError, match=match):
        ResNetConfig(**params)


def test_in_chans_must_be_positive():
    with pytest.raises(ValueError, match="in_chans must be >= 1, got 0"):
        build_resnet(ResNetConfig(), in_chans=0)
