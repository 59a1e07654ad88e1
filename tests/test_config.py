"""Config composition and validation: full key paths in every error."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cellssl.config.compose import load_run_config, save_resolved_config
from cellssl.config.validate import build_component, resolve_entry, validate_block
from cellssl.errors import ConfigError, UnknownNameError


@dataclass
class Inner:
    k: int = 1


@dataclass
class Params:
    root: str = "???"
    ks: list[int] = field(default_factory=lambda: [1, 20])
    temperature: float = 0.07
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


def test_valid_block_is_converted_to_the_dataclass() -> None:
    params = validate_block({"root": "/data", "ks": ["1", 5], "inner": {"k": 3}}, Params, "eval[0]")
    assert params == Params(root="/data", ks=[1, 5], inner=Inner(k=3))


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"root": "x", "kss": [1]}, r"config key 'eval\[0\]\.kss': unknown key\. Allowed keys here: root, ks, "),
        ({"root": "x", "ks": ["one"]}, r"config key 'eval\[0\]\.ks\[0\]': wrong type"),
        ({"root": "x", "inner": {"j": 2}}, r"config key 'eval\[0\]\.inner\.j': unknown key"),
        ({}, r"config key 'eval\[0\]\.root': is required but not set"),
        ({"root": "x", "temperature": -1.0}, r"config key 'eval\[0\]': temperature must be > 0, got -1.0"),
        (["not", "a", "mapping"], r"config key 'eval\[0\]': expected a mapping"),
    ],
)
def test_invalid_blocks_name_the_full_key(block: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_block(block, Params, "eval[0]")  # type: ignore[arg-type]


def test_resolve_entry_requires_a_name_and_known_entry() -> None:
    with pytest.raises(ConfigError, match=r"config key 'channels\.name': is required"):
        resolve_entry({"aggregate": "mean"}, "channel_strategy", "channels")
    with pytest.raises(UnknownNameError, match=r"config key 'channels\.name': unknown channel_strategy 'bag_of_channel'"
                                               r"\. Did you mean 'bag_of_channels'\?"):
        resolve_entry({"name": "bag_of_channel"}, "channel_strategy", "channels")
    with pytest.raises(ConfigError, match=r"config key 'channels\.aggregat': unknown key"):
        resolve_entry({"name": "bag_of_channels", "aggregat": "mean"}, "channel_strategy", "channels")
    strategy = build_component({"name": "bag_of_channels", "aggregate": "mean"}, "channel_strategy", "channels")
    assert strategy.config.aggregate == "mean"


def _write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_applies_dotlist_overrides_and_default_output_dir(tmp_path: Path) -> None:
    path = _write(tmp_path, "data: {name: synthetic_cells, num_samples: 10}\neval: [{name: knn, ks: [1]}]\n")
    config = load_run_config(path, ["data.num_samples=32", "eval.0.ks=[1,5]", "+run.seed=3"])
    assert config.data.num_samples == 32
    assert list(config.eval[0].ks) == [1, 5]
    assert config.run.seed == 3
    assert config.run.output_dir == str(Path("runs") / "exp")


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file '.*missing\.yaml' does not exist"):
        load_run_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_run_config(_write(tmp_path, "data: [unclosed\n", "bad.yaml"))
    with pytest.raises(ConfigError, match=r"config key 'dataa': unknown top-level key .* Allowed: run, data"):
        load_run_config(_write(tmp_path, "dataa: {name: table}\n", "typo.yaml"))
    with pytest.raises(ConfigError, match=r"config key 'train\.epochs': override must look like key=value"):
        load_run_config(_write(tmp_path, "data: {name: table}\n", "ok.yaml"), ["train.epochs"])
    with pytest.raises(ConfigError, match=r"config key 'eval': must be a list"):
        load_run_config(_write(tmp_path, "eval: {name: knn}\n", "evalmap.yaml"))


def test_resolved_config_is_saved_atomically_and_reloads(tmp_path: Path) -> None:
    config = OmegaConf.create({"run": {"output_dir": str(tmp_path)}, "data": {"name": "synthetic_cells"}})
    path = save_resolved_config(config, tmp_path)
    assert path == tmp_path / "config.yaml"
    assert OmegaConf.load(path) == config
    assert not list(tmp_path.glob(".config.yaml.*"))
