"""Model zoo: cards registered through the `model` hook, `cellssl models list|show|fetch`, and `model: NAME` in a
run config (card sections under the user's, weights from CELLSSL_HOME, channels matched by name), end to end
on real Jurkat cells with a small card registered by the test."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml

from cellssl.cli import main
from cellssl.config.compose import load_run_config
from cellssl.errors import ConfigError, DataError, UnknownNameError
from cellssl.plan.build import build_plan
from cellssl.plan.checks import check_plan
from cellssl.plugins.hookspecs import hookimpl
from cellssl.plugins.manager import build_plugin_state, use_plugin_state
from cellssl.zoo.card import ModelCard, add_card, get_card, weights_path

TINY = {"name": "vit_tiny", "patch_size": 8, "img_size": 40, "embed_dim": 64, "depth": 2, "num_heads": 1,
        "layerscale_init": None}


def _card(name: str = "tiny_jurkat", channel_names: tuple[str, ...] = ("DAPI", "darkfield", "brightfield"),
          **fields: Any) -> ModelCard:
    return ModelCard(name=name, summary="a tiny test model", backbone=dict(TINY), channels={"name": "fixed"},
                     channel_names=channel_names, normalize={"mode": "per_image", "eps": 1e-7},
                     embed={"img_size": 40, "features": {"n_last_blocks": 2, "avgpool": True}},
                     license="CC0", source="this test", file_name="tiny.pth", citation="none", **fields)


class _TestCards:
    def __init__(self, cards: list[ModelCard]) -> None:
        self.cards = cards

    @hookimpl
    def cellssl_register_models(self, registry: Any) -> None:
        for card in self.cards:
            add_card(registry, card)


@pytest.fixture
def zoo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """A plugin state with the test cards, and CELLSSL_HOME in ``tmp_path``."""
    home = tmp_path / "home"
    monkeypatch.setenv("CELLSSL_HOME", str(home))
    cards = [_card(), _card("tiny_mito", ("dna", "mito")),
             _card("tiny_fetch", download_url=None), ]
    state = build_plugin_state(extra_plugins=[("testcards", "test-cards", _TestCards(cards))],
                               load_entry_points=False)
    with use_plugin_state(state):
        yield SimpleNamespace(home=home, cards={c.name: c for c in cards})


def _place_weights(card: ModelCard) -> tuple[Path, torch.nn.Module]:
    from cellssl.models.vit import ViTConfig, build_vit

    block = dict(card.backbone)
    model = build_vit(ViTConfig(arch=block.pop("name"), **block), 3)
    path = weights_path(card)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"teacher": {f"backbone.{k}": v for k, v in model.state_dict().items()}}, path)
    return path, model


def test_first_party_cards_are_listed_and_shown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("cell_dino_cp_vits8", "cell_dino_hpa_vitl16", "cell_dino_hpa_vitl14", "channel_adaptive_dino_vitl16",
                 "chammi75_morphem", "unidino_vits16", "dino4cells_vits16", "dinov2_vits14", "dinov2_vits14_reg4",
                 "dinov2_vitl14"):
        assert name in out
    assert main(["models", "show", "cell_dino_cp_vits8", "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["backbone"] == {"name": "vit_small", "patch_size": 8, "img_size": 128, "layerscale_init": 1.0,
                                "interpolate_offset": 0.1, "interpolate_antialias": False}
    assert card["channels"] == {"name": "fixed", "channels": ["dna", "er", "rna", "agp", "mito"]}
    assert card["download_url"] is None and "CC-BY-NC" in card["license"]
    assert get_card("dinov2_vits14_reg4").download_url == \
        "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14_reg4/dinov2_vits14_reg4_pretrain.pth"
    assert main(["models", "show", "cell_dino_cp_vit8"]) == 2
    assert "Did you mean 'cell_dino_cp_vits8'?" in capsys.readouterr().err


def test_model_name_fills_sections_under_the_users_keys(zoo: SimpleNamespace, runs: SimpleNamespace,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = _place_weights(zoo.cards["tiny_jurkat"])
    config = runs.config()
    for section in ("backbone", "channels", "normalize", "embed"):
        config.pop(section)
    config["model"] = "tiny_jurkat"
    config["embed"] = {"batch_size": 4, "precision": "fp32"}
    file = runs.write(config)
    plan = build_plan(load_run_config(file, ["backbone.attention=math"]))
    sections = plan.sections()
    assert sections["model"] == "tiny_jurkat"
    assert sections["backbone"]["embed_dim"] == 64 and sections["backbone"]["attention"] == "math"
    assert sections["channels"]["channels"] == ["dna", "darkfield", "brightfield"]
    assert sections["data"]["use_channels"] == ["dna", "darkfield", "brightfield"]
    assert sections["normalize"]["mode"] == "per_image"
    assert sections["embed"]["batch_size"] == 4 and sections["embed"]["img_size"] == 40
    assert sections["embed"]["features"] == {"n_last_blocks": 2, "avgpool": True}
    assert sections["weights"]["path"] == str(path)
    assert main(["config", "show", str(file), "normalize.mode=dataset"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["model"] == "tiny_jurkat" and shown["normalize"]["mode"] == "dataset"


def test_missing_weights_say_where_to_get_them_and_unknown_cards_are_hinted(zoo: SimpleNamespace,
                                                                          runs: SimpleNamespace) -> None:
    file = runs.write({**runs.config(), "model": "tiny_jurkat"})
    expected = weights_path(zoo.cards["tiny_jurkat"])
    with pytest.raises(ConfigError, match=r"config key 'model': The weights of model 'tiny_jurkat' are not in the "
                                          r"cache: get it from this test, licence: CC0\. Put the file at "
                                          + str(expected).replace(".", r"\.")):
        load_run_config(file)
    file = runs.write({**runs.config(), "model": "tiny_jurkatt"})
    with pytest.raises(UnknownNameError, match=r"config key 'model': unknown model 'tiny_jurkatt'\. Did you mean "
                                               r"'tiny_jurkat'\?"):
        load_run_config(file)


def test_fixed_card_refuses_data_without_its_channels(zoo: SimpleNamespace, runs: SimpleNamespace) -> None:
    _place_weights(zoo.cards["tiny_mito"])
    config = {k: v for k, v in runs.config().items() if k not in ("backbone", "channels")}
    file = runs.write({**config, "model": "tiny_mito"})
    with pytest.raises((ConfigError, DataError), match=r"mito"):
        check_plan(build_plan(load_run_config(file)))


def test_model_name_embeds_end_to_end_like_the_explicit_config(zoo: SimpleNamespace, runs: SimpleNamespace) -> None:
    from cellssl.embed.store import read_embeddings

    path, _ = _place_weights(zoo.cards["tiny_jurkat"])
    base = {k: v for k, v in runs.config(per_class=3).items() if k not in ("backbone", "channels", "normalize")}
    by_name = {**base, "model": "tiny_jurkat", "run": {"output_dir": str(runs.tmp / "by_name"), "num_threads": 1}}
    explicit = {**base, "run": {"output_dir": str(runs.tmp / "explicit"), "num_threads": 1},
                "data": {**base["data"], "use_channels": ["dna", "darkfield", "brightfield"]},
                "backbone": dict(TINY), "channels": {"name": "fixed", "channels": ["dna", "darkfield", "brightfield"]},
                "normalize": {"mode": "per_image"},
                "embed": {**base["embed"], "img_size": 40, "features": {"n_last_blocks": 2, "avgpool": True}},
                "weights": str(path)}
    assert main(["embed", str(runs.write(by_name, "by_name.yaml"))]) == 0
    assert main(["embed", str(runs.write(explicit, "explicit.yaml"))]) == 0
    a = read_embeddings(runs.tmp / "by_name" / "embeddings")
    b = read_embeddings(runs.tmp / "explicit" / "embeddings")
    assert a.embeddings.shape == (12, 3 * 64)  # 2 CLS tokens + mean patch token of a 64-d ViT
    assert (a.embeddings == b.embeddings).all()


def test_fetch_downloads_through_the_engine_or_says_why_not(zoo: SimpleNamespace, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import hashlib

    from cellssl.plugins.manager import build_plugin_state, use_plugin_state

    served = tmp_path / "served.pth"
    served.write_bytes(b"weights" * 100)
    digest = hashlib.sha256(served.read_bytes()).hexdigest()
    cards = [_card("tiny_url", download_url=served.as_uri(), sha256=digest),
             _card("tiny_bad", download_url=served.as_uri(), sha256="0" * 64)]
    state = build_plugin_state(extra_plugins=[("testcards", "test-cards", _TestCards(cards))],
                               load_entry_points=False)
    with use_plugin_state(state):
        assert main(["models", "fetch", "tiny_url", "--no-progress"]) == 0
        assert (zoo.home / "models" / "tiny_url" / "tiny.pth").read_bytes() == served.read_bytes()
        assert main(["models", "fetch", "tiny_bad", "--no-progress"]) == 2
        assert not (zoo.home / "models" / "tiny_bad" / "tiny.pth").exists()
        assert main(["models", "fetch", "tiny_url", "--no-progress"]) == 0  # complete: skipped
    assert main(["models", "fetch", "tiny_fetch"]) == 2
    assert "has no public download URL" in capsys.readouterr().err
