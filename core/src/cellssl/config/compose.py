"""Loading a run config from YAML with dotlist overrides, and saving the resolved config."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cellssl.atomic import atomic_write_text
from cellssl.errors import ConfigError

TOP_LEVEL_KEYS = ("run", "data", "model", "channels", "backbone", "weights", "normalize", "objective", "train",
                  "finetune", "embed", "eval", "launcher")


def load_run_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> DictConfig:
    """Read a run config and apply ``key=value`` overrides.

    :param path: YAML file.
    :param overrides: dotlist overrides (``train.epochs=3``, ``eval[0].ks=[1,5]``, ``+run.seed=1``).
    :return: the merged config; ``run.output_dir`` defaults to ``runs/<file stem>``; with ``model: NAME`` the
        card's sections are filled in under the user's (:func:`cellssl.zoo.apply.apply_model_card`).
    :raises ConfigError: if the file is missing or not valid YAML, an override is malformed, or a
        top-level key is unknown.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("", f"config file '{path}' does not exist. Pass the path of a YAML run config "
                              "(see configs/ for examples).")
    try:
        config = OmegaConf.load(path)
    except (yaml.YAMLError, OmegaConfBaseException) as exc:
        raise ConfigError("", f"config file '{path}' is not valid YAML: {exc}") from None
    if not isinstance(config, DictConfig):
        raise ConfigError("", f"config file '{path}' must hold a mapping at the top level")
    for item in overrides:
        apply_override(config, item)
    for key in config:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(str(key), f"unknown top-level key in '{path}'. Allowed: {', '.join(TOP_LEVEL_KEYS)}.")
    if "eval" in config and config.eval is not None and not isinstance(config.eval, ListConfig):
        raise ConfigError("eval", "must be a list of evaluator blocks, e.g. `eval: [{name: knn, label_column: y}]`")
    from cellssl.zoo.apply import apply_model_card

    apply_model_card(config)
    if config.get("run") is None:
        config.run = {}
    if not config.run.get("output_dir"):
        config.run.output_dir = str(Path("runs") / path.name.split(".")[0])
    try:
        OmegaConf.resolve(config)
    except OmegaConfBaseException as exc:
        raise ConfigError("", f"cannot resolve interpolations in '{path}': {exc}") from None
    return config


def apply_override(config: DictConfig, override: str) -> None:
    """Apply one ``key=value`` override in place; the value is parsed as YAML (``[1,5]``, ``true``, ``null``).

    Keys use dots, and list items either ``eval.0.ks`` or ``eval[0].ks``; a leading ``+`` is accepted.

    :raises ConfigError: naming the override when it is malformed or does not fit the config.
    """
    key, sep, raw = override.partition("=")
    key = key.strip().lstrip("+")
    if not sep or not key:
        raise ConfigError(override, "override must look like key=value (for example train.epochs=3)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(key, f"override value {raw!r} is not valid YAML: {exc}") from None
    try:
        OmegaConf.update(config, key, value, merge=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(key, f"cannot apply override {override!r}: {str(exc).splitlines()[0]}") from None


def save_resolved_config(config: DictConfig, run_dir: str | os.PathLike[str]) -> Path:
    """Write ``config`` as ``run_dir/config.yaml`` atomically; the run can be re-run from that file."""
    return atomic_write_text(Path(run_dir) / "config.yaml", OmegaConf.to_yaml(config, resolve=True))
