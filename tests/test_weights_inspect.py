"""`cellssl weights inspect`: every checkpoint layout built from the project's own tiny ViT is recognised, the
inferred `backbone:` block rebuilds exactly that architecture (same outputs after loading), and
`backbone: {name: auto}` builds it in a run plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from cellssl.cli import main
from cellssl.errors import CheckpointError, ConfigError
from cellssl.models.checkpoint import load_backbone_weights, save_safetensors_atomic
from cellssl.models.vit import ViTConfig, build_vit
from cellssl.zoo.inspect import inspect_weights

# dim 64 -> one head of 64 channels: the DINO convention, so inspect needs no description to be exact
BASE = {"arch": "vit_small", "patch_size": 8, "img_size": 24, "embed_dim": 64, "depth": 3, "num_heads": 1}


def _vit(in_chans: int = 3, **overrides: Any) -> torch.nn.Module:
    torch.manual_seed(1)
    model = build_vit(ViTConfig(**{**BASE, **overrides}), in_chans).eval()
    with torch.no_grad():  # LayerScale gammas away from their init, so a lost gamma would show in the outputs
        for name, param in model.named_parameters():
            if name.endswith("gamma"):
                param.uniform_(0.5, 1.5)
    return model


def _chunked(state: dict[str, torch.Tensor], chunks: int, depth: int) -> dict[str, torch.Tensor]:
    """DINOv2 block_chunks layout: blocks.<chunk>.<i>. with global indices."""
    per = -(-depth // chunks)
    out = {}
    for key, value in state.items():
        if key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            out[f"blocks.{int(index) // per}.{index}.{rest}"] = value
        else:
            out[key] = value
    return out


def _rebuilt(inspection: Any, path: Path, key_prefix: str | None = None) -> torch.nn.Module:
    block = dict(inspection.backbone)
    model = build_vit(ViTConfig(arch=block.pop("name"), **block), inspection.in_chans).eval()
    load_backbone_weights(model, path, key_prefix=key_prefix)  # strict: every key fits
    return model


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, in_chans: int, size: int = 32) -> None:
    x = torch.randn(2, in_chans, size, size)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
        for fa, fb in zip(a.get_intermediate_layers(x, 2), b.get_intermediate_layers(x, 2)):
            torch.testing.assert_close(fa, fb, rtol=0, atol=0)


LAYOUTS = {
    # name: (ViT overrides, in_chans, wrap(state) -> saved object, expected layout phrase, expected prefix)
    "bare": ({}, 3, lambda s: s, "bare backbone state dict", ""),
    "chunked": ({}, 4, lambda s: _chunked(s, 2, 3), "block_chunks=2", ""),
    "registers": ({"num_register_tokens": 4, "interpolate_offset": 0.0, "interpolate_antialias": True}, 1,
                  lambda s: s, "4 register tokens", ""),
    "dino_v1": ({"layerscale_init": None}, 2,
                lambda s: {"teacher": {f"module.backbone.{k}": v for k, v in s.items() if k != "mask_token"},
                           "student": {f"module.backbone.{k}": v.clone() for k, v in s.items() if k != "mask_token"},
                           "epoch": 3},
                "DINO v1 training checkpoint", "teacher.module.backbone."),
    "dinov2_train": ({}, 5, lambda s: {"model": {**{f"teacher.backbone.{k}": v for k, v in _chunked(s, 3, 3).items()},
                                                 **{f"student.backbone.{k}": v.clone() for k, v in s.items()}},
                                       "optimizer": {}, "iteration": 7},
                     "DINOv2 training checkpoint", "model.teacher.backbone."),
    "dinov2_teacher": ({}, 3, lambda s: {"teacher": {f"backbone.{k}": v for k, v in s.items()}},
                       "DINOv2 teacher checkpoint", "teacher.backbone."),
    "cellssl_train": ({"layerscale_init": None}, 3,
                      lambda s: {"objective": {**{f"teacher.backbone.{k}": v for k, v in s.items()},
                                               **{f"student.backbone.{k}": v.clone() for k, v in s.items()},
                                               "teacher.head.last.weight": torch.zeros(4, 4)},
                                 "optimizer": {}, "step": 3},
                      "cellssl training checkpoint", "objective.teacher.backbone."),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_inspect_recognises_layout_and_rebuilds_the_exact_model(layout: str, tmp_path: Path) -> None:
    overrides, in_chans, wrap, phrase, prefix = LAYOUTS[layout]
    model = _vit(in_chans, **overrides)
    path = tmp_path / f"{layout}.pth"
    torch.save(wrap(model.state_dict()), path)

    inspection = inspect_weights(path)

    assert any(phrase in fact for fact in inspection.layout), inspection.layout
    assert inspection.selected == prefix
    assert (inspection.embed_dim, inspection.depth, inspection.num_heads) == (64, 3, 1)
    assert (inspection.patch_size, inspection.img_size, inspection.in_chans) == (8, 24, in_chans)
    assert inspection.num_register_tokens == overrides.get("num_register_tokens", 0)
    assert inspection.layerscale is ("layerscale_init" not in overrides)
    assert inspection.num_params == sum(v.numel() for k, v in model.state_dict().items()
                                        if layout not in ("dino_v1",) or k != "mask_token")
    expected = {"name": "vit_tiny", "patch_size": 8, "img_size": 24, "embed_dim": 64, "depth": 3, "num_heads": 1}
    assert {k: inspection.backbone[k] for k in expected} == expected
    assert inspection.backbone["layerscale_init"] == (1.0 if inspection.layerscale else None)
    _same_outputs(model, _rebuilt(inspection, path), in_chans)


def test_registers_get_the_reg4_interpolation(tmp_path: Path) -> None:
    model = _vit(1, num_register_tokens=4, interpolate_offset=0.0, interpolate_antialias=True)
    path = tmp_path / "reg.pth"
    torch.save(model.state_dict(), path)
    inspection = inspect_weights(path)
    assert inspection.backbone["num_register_tokens"] == 4
    assert inspection.backbone["interpolate_offset"] == 0.0 and inspection.backbone["interpolate_antialias"] is True
    _same_outputs(model, _rebuilt(inspection, path), 1, size=40)  # 40 px: the grid is interpolated (5x5 from 3x3)


def test_student_selected_with_key_prefix(tmp_path: Path) -> None:
    teacher, student = _vit(2, layerscale_init=None), _vit(2, layerscale_init=None)
    with torch.no_grad():
        student.cls_token.add_(1.0)
    path = tmp_path / "dino.pth"
    torch.save({"teacher": {f"module.backbone.{k}": v for k, v in teacher.state_dict().items()},
                "student": {f"module.backbone.{k}": v for k, v in student.state_dict().items()}}, path)
    inspection = inspect_weights(path, key_prefix="student.backbone.")
    assert inspection.selected == "student.module.backbone."
    assert inspection.candidates == ["student.module.backbone.", "teacher.module.backbone."]
    assert "key_prefix: student.module.backbone." in inspection.text()
    _same_outputs(student, _rebuilt(inspection, path, "student.backbone."), 2)


def test_safetensors_and_heads_from_a_run_config(tmp_path: Path) -> None:
    model = _vit(3, embed_dim=64, num_heads=4, layerscale_init=None)  # 16 channels per head: not the convention
    run = tmp_path / "run"
    run.mkdir()
    torch.save(model.state_dict(), run / "teacher_backbone.pt")
    block = {"name": "vit_tiny", "patch_size": 8, "img_size": 24, "embed_dim": 64, "depth": 3, "num_heads": 4,
             "layerscale_init": None}
    (run / "config.yaml").write_text(yaml.safe_dump({"backbone": block}))

    inspection = inspect_weights(run / "teacher_backbone.pt")
    assert inspection.layout[0] == "cellssl teacher_backbone.pt of a run directory"
    assert inspection.backbone == block
    assert inspection.heads_from.startswith("from ") and str(run / "config.yaml") in inspection.heads_from

    # the same tensors without their description: 64 channels per head is assumed, and said so
    bare = tmp_path / "bare.safetensors"
    save_safetensors_atomic(model.state_dict(), bare)
    guessed = inspect_weights(bare)
    assert guessed.layout[0] == "safetensors" and guessed.num_heads == 1
    assert any("num_heads is not stored" in note for note in guessed.notes)


def test_not_a_vit_is_refused_with_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(2, 8)}, path)
    with pytest.raises(CheckpointError, match=r"resnet\.pt: not a Vision Transformer.*no cls_token.*conv1\.weight"):
        inspect_weights(path)


def test_cli_inspect_prints_the_block_to_paste(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _vit(3)
    path = tmp_path / "hub.pth"
    torch.save(_chunked(model.state_dict(), 3, 3), path)
    assert main(["weights", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    pasted = yaml.safe_load(out.split("# paste into a run config:", 1)[1])
    assert pasted["backbone"] == {"name": "vit_tiny", "patch_size": 8, "img_size": 24, "embed_dim": 64, "depth": 3,
                                  "num_heads": 1, "layerscale_init": 1.0}
    assert pasted["weights"] == str(path)
    assert "block_chunks=3" in out
    assert main(["weights", "inspect", str(tmp_path / "missing.pt")]) == 2


def test_auto_backbone_in_a_run_plan(tmp_path: Path) -> None:
    from cellssl.config.compose import load_run_config
    from cellssl.plan.build import build_plan

    model = _vit(3, layerscale_init=None)
    weights = tmp_path / "w.pt"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in model.state_dict().items()}}, weights)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"name": "synthetic_cells", "num_samples": 4},
                                      "backbone": {"name": "auto", "attention": "math"},
                                      "weights": str(weights)}))
    plan = build_plan(load_run_config(config))
    block = plan.sections()["backbone"]
    assert (block["name"], block["embed_dim"], block["depth"], block["num_heads"]) == ("vit_tiny", 64, 3, 1)
    assert (block["img_size"], block["layerscale_init"], block["attention"]) == (24, None, "math")

    config.write_text(yaml.safe_dump({"data": {"name": "synthetic_cells"}, "backbone": {"name": "auto"}}))
    with pytest.raises(ConfigError, match=r"backbone\.name.*'auto'.*set `weights:`"):
        build_plan(load_run_config(config))
