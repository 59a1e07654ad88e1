"""`cellssl weights export`: safetensors + card.json + README from a run directory; the exported file loads
with plain safetensors, through `weights:` (also with `backbone: {name: auto}`), and embeds real Jurkat cells
exactly as the original checkpoint does."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file

from cellssl.cli import main
from cellssl.errors import CheckpointError
from cellssl.models.checkpoint import load_backbone_weights
from cellssl.models.vit import ViTConfig, build_vit

BLOCK = {"name": "vit_tiny", "patch_size": 8, "img_size": 40, "embed_dim": 32, "depth": 2, "num_heads": 2,
         "layerscale_init": None}


def _run_dir(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(3)
    block = dict(BLOCK)
    model = build_vit(ViTConfig(arch=block.pop("name"), **block), 1)
    run = tmp_path / "trained"
    run.mkdir()
    torch.save(model.state_dict(), run / "teacher_backbone.pt")
    (run / "config.yaml").write_text(yaml.safe_dump({
        "backbone": BLOCK, "channels": {"name": "bag_of_channels", "aggregate": "concat"},
        "normalize": {"mode": "dataset", "stats_path": "/elsewhere/stats.json"}, "embed": {"img_size": 40}}))
    (run / "channel_stats.json").write_text('{"mean": [1.0], "std": [2.0]}')
    return run, model


def test_export_writes_safetensors_card_and_readme(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, model = _run_dir(tmp_path)
    out = tmp_path / "exported"
    assert main(["weights", "export", str(run), "--to", str(out), "--license", "CC-BY-4.0"]) == 0
    assert f"wrote {out / 'model.safetensors'}" in capsys.readouterr().out

    plain = load_file(str(out / "model.safetensors"))  # a plain safetensors user
    original = model.state_dict()
    assert sorted(plain) == sorted(original)
    assert all(torch.equal(plain[k], v) for k, v in original.items())

    card = json.loads((out / "card.json").read_text())
    assert card["backbone"] == BLOCK
    assert card["channels"] == {"name": "bag_of_channels", "aggregate": "concat"}
    assert card["normalize"] == {"mode": "dataset"}  # the run's own stats path is not carried over
    assert card["license"] == "CC-BY-4.0" and card["in_chans"] == 1
    assert card["sha256"] == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    assert card["training_config_sha256"] == hashlib.sha256((run / "config.yaml").read_bytes()).hexdigest()
    assert (out / "channel_stats.json").read_text() == (run / "channel_stats.json").read_text()
    readme = (out / "README.md").read_text()
    assert "**Licence:** CC-BY-4.0" in readme and "load_file(\"model.safetensors\")" in readme

    # the header metadata makes num_heads exact (2 heads of 16 is not the 64-per-head convention)
    assert main(["weights", "inspect", str(out / "model.safetensors")]) == 0
    shown = capsys.readouterr().out
    assert "2 heads (from safetensors metadata)" in shown
    block = dict(BLOCK)
    rebuilt = build_vit(ViTConfig(arch=block.pop("name"), **block), 1)
    load_backbone_weights(rebuilt, out / "model.safetensors")
    x = torch.randn(2, 1, 40, 40)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model.eval()(x))


def test_exported_safetensors_embed_identically(runs: SimpleNamespace) -> None:
    from cellssl.embed.store import read_embeddings

    run, _ = _run_dir(runs.tmp)
    out = runs.tmp / "exported"
    assert main(["weights", "export", str(run), "--to", str(out)]) == 0
    original = runs.config(per_class=3, backbone=dict(BLOCK), weights=str(run / "teacher_backbone.pt"))
    exported = runs.config(per_class=3, backbone={"name": "auto"}, weights=str(out / "model.safetensors"))
    original["run"]["output_dir"] = str(runs.tmp / "a")
    exported["run"]["output_dir"] = str(runs.tmp / "b")
    assert main(["embed", str(runs.write(original, "a.yaml"))]) == 0
    assert main(["embed", str(runs.write(exported, "b.yaml"))]) == 0
    a = read_embeddings(runs.tmp / "a" / "embeddings")
    b = read_embeddings(runs.tmp / "b" / "embeddings")
    assert a.embeddings.shape == (12, 3 * 32)
    assert (a.embeddings == b.embeddings).all()


def test_damaged_safetensors_is_an_error_naming_the_file(tmp_path: Path) -> None:
    run, model = _run_dir(tmp_path)
    assert main(["weights", "export", str(run), "--to", str(tmp_path / "e")]) == 0
    blob = (tmp_path / "e" / "model.safetensors").read_bytes()
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match=r"broken\.safetensors: cannot be read as safetensors"):
        load_backbone_weights(model, broken)
    with pytest.raises(CheckpointError, match=r"no teacher_backbone\.pt in this run directory"):
        from cellssl.zoo.export import export_weights

        export_weights(tmp_path / "e", tmp_path / "f")
