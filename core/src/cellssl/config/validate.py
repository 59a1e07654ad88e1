"""Validation of config blocks against dataclasses, with errors that name the full key path."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from cellssl.errors import CellsslError, ConfigError

if TYPE_CHECKING:
    from cellssl.plugins import Entry

T = TypeVar("T")


def _join(prefix: str, key: str | None) -> str:
    if not key:
        return prefix
    if key.startswith("["):
        return f"{prefix}{key}"
    return f"{prefix}.{key}" if prefix else key


def validate_block(block: Mapping[str, Any] | DictConfig | None, config_cls: type[T], key_path: str) -> T:
    """Validate ``block`` against the dataclass ``config_cls`` and return an instance.

    :param block: the YAML block (without its ``name`` key), or ``None`` for all defaults.
    :param config_cls: a dataclass; field types are enforced (values convertible by omegaconf are
        converted, e.g. ``"3"`` for an ``int``), unknown keys are rejected, required fields must be set,
        and the dataclass's ``__post_init__`` checks run.
    :param key_path: where the block sits in the run config (``"data"``, ``"eval[0]"``), for messages.
    :return: an instance of ``config_cls``.
    :raises ConfigError: naming the full key path (``data.bit_depth``) and what is wrong.
    """
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"{config_cls!r} is not a dataclass")
    if block is None:
        block = {}
    if isinstance(block, DictConfig):
        block = OmegaConf.to_container(block, resolve=True)
    if not isinstance(block, Mapping):
        raise ConfigError(key_path, f"expected a mapping of parameters, got {type(block).__name__} {block!r}")
    allowed = ", ".join(f.name for f in dataclasses.fields(config_cls)) or "(none)"
    try:
        merged = OmegaConf.merge(OmegaConf.structured(config_cls), dict(block))
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except ConfigKeyError as exc:
        raise ConfigError(
            _join(key_path, exc.full_key), f"unknown key. Allowed keys here: {allowed}."
        ) from None
    except MissingMandatoryValue as exc:
        raise ConfigError(_join(key_path, exc.full_key), "is required but not set.") from None
    except ValidationError as exc:
        detail = str(exc).splitlines()[0]
        raise ConfigError(_join(key_path, exc.full_key), f"wrong type: {detail}.") from None
    except OmegaConfBaseException as exc:
        detail = str(exc).splitlines()[0]
        raise ConfigError(_join(key_path, getattr(exc, "full_key", None)), detail) from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(key_path, str(exc)) from None


def resolve_entry(block: Mapping[str, Any] | DictConfig | None, kind: str, key_path: str) -> tuple[Entry, Any]:
    """Look up the registered entry a block names and validate its parameters.

    :param block: a mapping with a ``name`` key and the entry's parameters.
    :param kind: component kind (``"dataset"``, ``"channel_strategy"``, ...).
    :param key_path: the block's key path in the run config.
    :return: ``(entry, validated config instance)``.
    :raises ConfigError: when ``name`` is missing or a parameter is invalid.
    :raises cellssl.errors.UnknownNameError: when no plugin registers the name (the message lists the
        available names, the closest match and the distribution to install).
    """
    if isinstance(block, DictConfig):
        block = OmegaConf.to_container(block, resolve=True)
    if not isinstance(block, Mapping) or "name" not in block:
        raise ConfigError(
            _join(key_path, "name"),
            f"is required: say which {kind.replace('_', ' ')} to use, e.g. `{key_path}: {{name: ...}}`.",
        )
    from cellssl.plugins import get_registry  # the registry is built on first use, not when this module loads

    params = {k: v for k, v in block.items() if k != "name"}
    try:
        entry = get_registry(kind).get(str(block["name"]))
    except CellsslError as exc:
        raise type(exc)(f"config key '{_join(key_path, 'name')}': {exc}") from None
    return entry, validate_block(params, entry.config_cls, key_path)


def build_component(block: Mapping[str, Any] | DictConfig | None, kind: str, key_path: str, **context: Any) -> Any:
    """Validate a ``{name: ..., <params>}`` block and call its entry's factory.

    :param context: extra keyword arguments of the kind's factory contract (``in_chans`` for backbones).
    :return: what the factory returns.
    """
    entry, config = resolve_entry(block, kind, key_path)
    return entry.factory(config, **context)
