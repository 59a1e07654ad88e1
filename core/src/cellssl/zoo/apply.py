"""``model: NAME`` in a run config: the card's sections become defaults under the user's own.

:func:`apply_model_card` runs in :func:`cellssl.config.compose.load_run_config` after the overrides, so that
every key the user wrote (in the YAML or as ``key=value``) wins. It imports no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cellssl.errors import CellsslError, ConfigError
from cellssl.zoo.card import ModelCard, get_card, weights_path

#: Sections whose block names a component: a user block naming another component replaces the card's.
COMPONENT_SECTIONS = ("backbone", "channels")


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def model_name(raw: Any) -> str | None:
    """The card name of a ``model:`` value (a name, or ``{name: NAME}``); ``None`` when unset.

    :raises ConfigError: naming ``model`` for any other value.
    """
    raw = _plain(raw)
    if raw is None or raw == "":
        return None
    if isinstance(raw, Mapping) and set(raw) == {"name"}:
        raw = raw["name"]
    if not isinstance(raw, str):
        raise ConfigError("model", f"must be the name of a model card (see `cellssl models list`), got {raw!r}")
    return raw


def apply_model_card(config: DictConfig) -> ModelCard | None:
    """Fill ``backbone``, ``channels``, ``normalize``, ``embed`` and ``weights`` of ``config`` (in place)
    from the card ``config.model`` names; the user's keys win, and a ``backbone`` / ``channels`` block
    naming another component than the card's is kept whole.

    ``weights:`` defaults to the card's file in the cache (:func:`cellssl.zoo.card.weights_path`). For a
    fixed-channel card, ``data.use_channels`` defaults to the card's channel names, so the dataset's channels
    are selected and reordered by name (a missing one is an error naming it).

    :return: the card, or ``None`` when ``model:`` is not set.
    :raises ConfigError: naming ``model`` when the card's weights file is not in the cache (the message says
        where to download it, its licence and where to put it).
    :raises cellssl.errors.UnknownNameError: for an unknown card (closest name suggested).
    """
    name = model_name(config.get("model"))
    if name is None:
        return None
    try:
        card = get_card(name)
    except CellsslError as exc:
        raise type(exc)(f"config key 'model': {exc}") from None
    for section, defaults in card.sections().items():
        user = _plain(config.get(section))
        if user is not None and not isinstance(user, Mapping):
            continue  # reported by the section's own validation
        if (section in COMPONENT_SECTIONS and isinstance(user, Mapping) and "name" in user
                and user["name"] != defaults["name"]):
            continue
        config[section] = OmegaConf.merge(OmegaConf.create(defaults), OmegaConf.create(dict(user or {})))
    data = _plain(config.get("data"))
    fixed = _plain(config.get("channels")) or {}
    if (card.channel_names and fixed.get("name") == "fixed" and isinstance(data, Mapping)
            and data.get("use_channels") is None):
        config.data.use_channels = list(card.channel_names)  # selected and ordered by name, aliases mapped
    config.model = name
    if _plain(config.get("weights")) in (None, ""):
        path = weights_path(card)
        if not path.is_file():
            raise ConfigError("model", card.how_to_get(path))
        config.weights = {"path": str(path), "key_prefix": card.key_prefix} if card.key_prefix else str(path)
    return card
