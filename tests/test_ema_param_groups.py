"""Teacher EMA with foreach kernels, and AdamW parameter groups on a tiny ViT-shaped module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cellssl.objectives.heads import DINOHead
from cellssl.train.ema import momentum_update, momentum_update_modules
from cellssl.train.param_groups import param_groups
from cellssl.train.schedules import ScheduleSet

# ---------------------------------------------------------------- EMA


def test_foreach_update_equals_explicit_loop() -> None:
    shapes = [(3, 4), (5,), (2, 2, 2), ()]
    student = [torch.randn(s) for s in shapes]
    teacher = [torch.randn(s) for s in shapes]
    expected = [0.9 * t + 0.1 * s for s, t in zip(student, teacher)]
    student_before = [s.clone() for s in student]
    momentum_update(student, teacher, 0.9)
    for got, want in zip(teacher, expected):
        torch.testing.assert_close(got, want)
    for s, before in zip(student, student_before):
        assert torch.equal(s, before)


def test_module_update_and_extremes() -> None:
    student, teacher = nn.Linear(3, 2), nn.Linear(3, 2)
    w_t = teacher.weight.detach().clone()
    momentum_update_modules(student, teacher, 1.0)
    assert torch.equal(teacher.weight, w_t)
    momentum_update_modules(student, teacher, 0.0)
    assert torch.equal(teacher.weight, student.weight) and torch.equal(teacher.bias, student.bias)
    assert teacher.weight.grad_fn is None


def test_ema_errors() -> None:
    with pytest.raises(ValueError, match=r"EMA momentum must be in \[0, 1\], got 1.5"):
        momentum_update([torch.zeros(1)], [torch.zeros(1)], 1.5)
    with pytest.raises(ValueError, match="student has 2 tensors but teacher has 1"):
        momentum_update([torch.zeros(1), torch.zeros(1)], [torch.zeros(1)], 0.5)
    with pytest.raises(ValueError, match=r"tensor 0: student shape \(2,\) != teacher shape \(3,\)"):
        momentum_update([torch.zeros(2)], [torch.zeros(3)], 0.5)
    with pytest.raises(ValueError, match="student and teacher parameters differ"):
        momentum_update_modules(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)), 0.5)


# ---------------------------------------------------------------- parameter groups


class _Attention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)


class _LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 1e-5))


class _Mlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)


class _Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1, self.attn, self.ls1 = nn.LayerNorm(dim), _Attention(dim), _LayerScale(dim)
        self.norm2, self.mlp, self.ls2 = nn.LayerNorm(dim), _Mlp(dim), _LayerScale(dim)


class _PatchEmbed(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(2, dim, kernel_size=4, stride=4)


class _TinyViT(nn.Module):
    """Parameter names as in DINOv2's ViT (the real one lives in cellssl.models.vit)."""

    def __init__(self, dim: int = 8, depth: int = 2) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, 2, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.patch_embed = _PatchEmbed(dim)
        self.blocks = nn.ModuleList(_Block(dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)


def _model() -> nn.Module:
    return nn.ModuleDict({"backbone": _TinyViT(), "dino_head": DINOHead(8, 6, hidden_dim=8, bottleneck_dim=4)})


def _lookup(groups: list[dict]) -> dict[str, dict]:
    out = {}
    for group in groups:
        for name in group["param_names_list"]:
            assert name not in out, f"{name} in two groups"
            out[name] = group
    return out


def test_no_weight_decay_set() -> None:
    model = _model()
    groups = _lookup(param_groups(model, weight_decay=0.05))
    decayed = {n for n, g in groups.items() if g["wd_multiplier"] == 1.0}
    assert decayed == {
        "backbone.patch_embed.proj.weight",
        *(f"backbone.blocks.{i}.{m}.weight" for i in range(2) for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")),
        "dino_head.mlp.0.weight",
        "dino_head.mlp.2.weight",
        "dino_head.mlp.4.weight",
        "dino_head.last_layer.weight_v",
    }
    for name in (
        "backbone.cls_token",
        "backbone.pos_embed",
        "backbone.register_tokens",
        "backbone.mask_token",
        "backbone.blocks.0.ls1.gamma",
        "backbone.blocks.1.norm2.weight",
        "backbone.norm.bias",
        "backbone.patch_embed.proj.bias",
    ):
        assert groups[name]["wd_multiplier"] == 0.0 and groups[name]["weight_decay"] == 0.0, name
    assert groups["backbone.blocks.0.attn.qkv.weight"]["weight_decay"] == 0.05
    # the fixed weight-norm gain does not train, so it is not in any group
    assert "dino_head.last_layer.weight_g" not in groups
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(groups) == trainable


def test_layerwise_lr_decay_by_hand() -> None:
    groups = _lookup(param_groups(_model(), weight_decay=0.05, layerwise_decay=0.5, patch_embed_lr_mult=0.2))
    # 2 blocks: patch_embed / tokens = layer 0 -> 0.5**3, block i -> 0.5**(2 - i), rest -> 1
    expected = {
        "backbone.cls_token": 0.125,
        "backbone.mask_token": 0.125,
        "backbone.register_tokens": 0.125,
        "backbone.pos_embed": 0.125,
        "backbone.patch_embed.proj.weight": 0.125 * 0.2,
        "backbone.patch_embed.proj.bias": 0.125 * 0.2,
        "backbone.blocks.0.attn.qkv.weight": 0.25,
        "backbone.blocks.0.ls2.gamma": 0.25,
        "backbone.blocks.1.mlp.fc2.bias": 0.5,
        "backbone.norm.weight": 1.0,
        "dino_head.mlp.0.weight": 1.0,
        "dino_head.last_layer.weight_v": 1.0,
    }
    for name, mult in expected.items():
        assert groups[name]["lr_multiplier"] == pytest.approx(mult), name
    assert groups["dino_head.last_layer.weight_v"]["is_last_layer"]
    assert not groups["dino_head.mlp.0.weight"]["is_last_layer"]


def test_num_layers_override_and_non_vit_module() -> None:
    groups = _lookup(param_groups(_TinyViT(), weight_decay=0.1, layerwise_decay=0.5, num_layers=4))
    assert groups["blocks.1.attn.qkv.weight"]["lr_multiplier"] == pytest.approx(0.5**3)
    assert groups["cls_token"]["lr_multiplier"] == pytest.approx(0.5**5)
    plain = param_groups(nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)), weight_decay=0.1, layerwise_decay=0.5)
    assert {g["lr_multiplier"] for g in plain} == {1.0}
    assert [g["param_names_list"] for g in plain] == [["0.weight"], ["0.bias", "1.weight", "1.bias"]]
    with pytest.raises(ValueError, match=r"layerwise_decay must be in \(0, 1\], got 1.5"):
        param_groups(_TinyViT(), weight_decay=0.1, layerwise_decay=1.5)


def test_groups_drive_adamw_with_schedules() -> None:
    model = _model()
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay=0.04, layerwise_decay=0.5), lr=0.0)
    sched = ScheduleSet(10, lr=1e-3, warmup_steps=2, freeze_last_layer_steps=3)
    values = sched.apply(optimizer, sched.values(2))
    for group in optimizer.param_groups:
        want = 0.0 if group["is_last_layer"] else values.lr * group["lr_multiplier"]
        assert group["lr"] == pytest.approx(want)
        assert group["weight_decay"] == pytest.approx(values.weight_decay * group["wd_multiplier"])
    out = model["dino_head"](torch.randn(3, 8))
    (out.sum() + model["backbone"].cls_token.sum()).backward()
    optimizer.step()  # the groups are valid AdamW groups
