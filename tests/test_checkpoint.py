"""Tests of backbone checkpoint loading and atomic saving (cellssl.models.checkpoint)."""

from __future__ import annotations

import argparse
import fractions
import logging
import os

import pytest
import torch

from cellssl.errors import CheckpointError
from cellssl.models.checkpoint import (
    extract_state_dict,
    load_backbone_weights,
    save_state_dict_atomic,
)
from cellssl.models.vit import VisionTransformer, ViTConfig, build_vit


def tiny(img_size: int = 16, in_chans: int = 3, **overrides) -> VisionTransformer:
    params = dict(
        arch="vit_small", patch_size=4, img_size=img_size, embed_dim=16, depth=4, num_heads=2, layerscale_init=1.0
    )
    params.update(overrides)
    return build_vit(ViTConfig(**params), in_chans).eval()


def chunked(state: dict[str, torch.Tensor], depth: int, chunks: int) -> dict[str, torch.Tensor]:
    """DINOv2 ``block_chunks`` layout: ``blocks.<i>.`` -> ``blocks.<chunk>.<i>.``."""
    size = depth // chunks
    out = {}
    for key, value in state.items():
        if key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            key = f"blocks.{int(index) // size}.{index}.{rest}"
        out[key] = value
    return out


def perturbed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v + 0.5 for k, v in state.items()}


def test_chunked_training_checkpoint_with_teacher_prefix_reproduces_outputs(tmp_path):
    source = tiny()
    x = torch.randn(2, 3, 16, 12)
    teacher = chunked(source.state_dict(), depth=4, chunks=2)
    assert "blocks.1.3.attn.qkv.weight" in teacher  # really the nested layout
    model_entry = {f"teacher.backbone.{k}": v for k, v in teacher.items()}
    model_entry |= {f"student.backbone.{k}": v for k, v in perturbed(teacher).items()}
    model_entry["teacher.dino_head.last_layer.weight"] = torch.randn(8, 16)
    path = tmp_path / "model_0001249.rank_0.pth"
    torch.save({"model": model_entry, "optimizer": {"state": {}}, "iteration": 1249}, path)

    target = tiny()
    assert not torch.equal(target(x), source(x))
    load_backbone_weights(target, path)
    assert torch.equal(target(x), source(x))
    assert torch.equal(target.forward_features(x)["x_prenorm"], source.forward_features(x)["x_prenorm"])

    student = tiny()
    load_backbone_weights(student, path, key_prefix="student.backbone.")
    assert torch.equal(student.blocks[3].ls1.gamma, source.blocks[3].ls1.gamma + 0.5)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
        lambda sd: {"teacher": {f"backbone.{k}": v for k, v in sd.items()} | {"dino_head.w": torch.ones(2)}},
        lambda sd: {"model": {f"module.backbone.{k}": v for k, v in sd.items()}},
    ],
    ids=["bare", "state_dict+module", "teacher_checkpoint", "model+module.backbone"],
)
def test_supported_nestings_and_prefixes(tmp_path, wrap):
    source = tiny(num_register_tokens=2)
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(source.state_dict()), path)
    target = tiny(num_register_tokens=2)
    load_backbone_weights(target, path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_dino_v1_checkpoint_with_namespace_and_no_mask_token(tmp_path):
    source = tiny(layerscale_init=None)
    teacher = {f"backbone.{k}": v for k, v in source.state_dict().items() if k != "mask_token"}
    student = {f"module.backbone.{k}": v for k, v in perturbed(source.state_dict()).items()}
    obj = {"student": student, "teacher": teacher, "epoch": 3, "args": argparse.Namespace(arch="vit_small")}
    path = tmp_path / "checkpoint.pth"
    torch.save(obj, path)
    target = tiny(layerscale_init=None)
    with torch.no_grad():
        target.mask_token.fill_(3.0)
    load_backbone_weights(target, path)
    x = torch.randn(1, 3, 16, 16)
    assert torch.equal(target(x), source(x))
    assert torch.equal(target.mask_token, torch.full((1, 16), 3.0))  # kept as it was


def test_mismatching_checkpoint_names_missing_and_unexpected_keys(tmp_path):
    state = tiny().state_dict()
    for key in [k for k in state if k.startswith("blocks.3.")]:
        del state[key]
    state["head.weight"] = torch.zeros(3)
    path = tmp_path / "wrong.pth"
    torch.save(state, path)
    target = tiny()
    with pytest.raises(CheckpointError, match=r"wrong\.pth.*14 missing keys \(blocks\.3\.attn\.proj\.bias") as err:
        load_backbone_weights(target, path)
    assert "1 unexpected keys (head.weight)" in str(err.value)

    before = target.blocks[3].mlp.fc1.weight.clone()
    load_backbone_weights(target, path, strict=False)
    assert torch.equal(target.blocks[0].mlp.fc1.weight, state["blocks.0.mlp.fc1.weight"])
    assert torch.equal(target.blocks[3].mlp.fc1.weight, before)


def test_shape_mismatch_names_the_tensor(tmp_path):
    path = tmp_path / "four_channels.pth"
    torch.save(tiny(in_chans=4).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"patch_embed\.proj\.weight: checkpoint \(16, 4, 4, 4\) vs model"):
        load_backbone_weights(tiny(in_chans=1), path)


def test_pos_embed_grid_is_resized_like_the_model_interpolates(tmp_path, caplog):
    source = tiny(img_size=32)  # 8x8 grid
    path = tmp_path / "big_grid.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in source.state_dict().items()}}, path)
    target = tiny(img_size=16)  # 4x4 grid
    with caplog.at_level(logging.INFO, logger="cellssl.models.checkpoint"):
        load_backbone_weights(target, path)
    assert "resized pos_embed from (1, 65, 16) to (1, 17, 16)" in caplog.text
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(target(x), source(x))  # source interpolates 8x8 -> 4x4 at run time


def test_unreadable_or_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint file not found: .*absent\.pth"):
        load_backbone_weights(tiny(), tmp_path / "absent.pth")
    path = tmp_path / "pickled.pth"
    torch.save({"model": fractions.Fraction(1, 3)}, path)
    with pytest.raises(CheckpointError, match=r"pickled\.pth: cannot be read with torch.load\(weights_only=True\)"):
        load_backbone_weights(tiny(), path)
    torch.save({"epoch": 3, "config": {"lr": 0.1}}, path)
    with pytest.raises(CheckpointError, match="no state dict found; top-level keys are config, epoch"):
        load_backbone_weights(tiny(), path)


def test_key_prefix_without_match_raises():
    state = {"backbone.cls_token": torch.zeros(1, 1, 16)}
    with pytest.raises(CheckpointError, match=r"no key starts with key_prefix 'student\.backbone\.'"):
        extract_state_dict(state, key_prefix="student.backbone.", source="x.pth")


def test_save_state_dict_atomic_writes_and_replaces(tmp_path):
    path = tmp_path / "sub" / "weights.pth"
    save_state_dict_atomic({"a": torch.arange(3)}, path)
    save_state_dict_atomic({"a": torch.arange(5), "step": 7}, path)
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["a"], torch.arange(5)) and loaded["step"] == 7
    assert os.listdir(path.parent) == ["weights.pth"]

    with pytest.raises(Exception, match=r"(?i)pickle|lambda"):
        save_state_dict_atomic({"bad": lambda: 0}, path)
    assert os.listdir(path.parent) == ["weights.pth"]  # no temporary file left behind
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.arange(5))  # old file intact
