"""Loading backbone weights from the checkpoints users already have, and atomic state-dict saving.

Accepted files (always read with ``torch.load(weights_only=True)``):

- a bare state dict (``{"cls_token": ..., "blocks.0.norm1.weight": ...}``);
- a dict nesting it under ``"teacher"``, ``"model"``, ``"state_dict"``, ``"student"`` or ``"objective"``
  (searched in that order, repeatedly: DINO v1 checkpoints, DINOv2 ``teacher_checkpoint.pth``, training
  checkpoints ``{"model": {...}, "optimizer": ...}`` and cellssl's own ``checkpoints/{last,final}.pt``);
- keys prefixed ``teacher.backbone.`` (preferred), ``student.backbone.``, ``backbone.`` or ``module.``
  (stripped repeatedly, so ``module.backbone.`` works too);
- DINOv2 ``block_chunks`` layout ``blocks.<chunk>.<i>.`` (un-nested to ``blocks.<i>.``, ``i`` global).

A ``pos_embed`` whose grid differs from the model's is resized with the model's own interpolation.
A checkpoint that lacks only ``mask_token`` (DINO v1 models) loads with the model's zero mask token.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cellssl.atomic import atomic_open
from cellssl.errors import CheckpointError

logger = logging.getLogger(__name__)

NESTING_KEYS: tuple[str, ...] = ("teacher", "model", "state_dict", "student", "objective")
PREFIXES: tuple[str, ...] = ("teacher.backbone.", "student.backbone.", "backbone.", "module.")
OPTIONAL_KEYS: frozenset[str] = frozenset({"mask_token"})
_CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")
_SHOW = 5


def _first(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f", ... ({len(keys) - _SHOW} more)" if len(keys) > _SHOW else "")


def _is_state_dict(obj: Mapping[str, Any]) -> bool:
    return any(isinstance(v, torch.Tensor) for v in obj.values())


def extract_state_dict(obj: Any, *, key_prefix: str | None = None, source: str = "checkpoint") -> dict[str, Any]:
    """The backbone's state dict inside a loaded checkpoint object (see the module docstring).

    :param obj: what ``torch.load`` returned.
    :param key_prefix: if given, keep only keys starting with it (after un-nesting) and strip it;
        automatic prefix stripping is then skipped.
    :param source: name of the file, for error messages.
    :return: tensors keyed by the model's parameter / buffer names (non-tensor entries dropped).
    :raises CheckpointError: if no state dict is found or no key has ``key_prefix``.
    """
    while isinstance(obj, Mapping) and not _is_state_dict(obj):
        nested = next((k for k in NESTING_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            raise CheckpointError(
                f"{source}: no state dict found; top-level keys are {_first(sorted(map(str, obj)))}. "
                f"Expected tensors, or a dict nesting them under one of {list(NESTING_KEYS)}"
            )
        logger.debug("%s: using nested entry %r", source, nested)
        obj = obj[nested]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors, found {type(obj).__name__}")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}

    if key_prefix is not None:
        selected = {k[len(key_prefix) :]: v for k, v in state.items() if k.startswith(key_prefix)}
        if not selected:
            raise CheckpointError(
                f"{source}: no key starts with key_prefix {key_prefix!r}; keys look like {_first(sorted(state))}"
            )
        state = selected
    else:
        stripped = True
        while stripped:
            stripped = False
            for prefix in PREFIXES:
                selected = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
                if selected:
                    logger.debug("%s: using keys under %r", source, prefix)
                    state, stripped = selected, True
                    break
    return unnest_block_chunks(state, source=source)


def unnest_block_chunks(state: dict[str, Any], *, source: str = "checkpoint") -> dict[str, Any]:
    """Rename DINOv2 ``blocks.<chunk>.<i>.<rest>`` keys to ``blocks.<i>.<rest>`` (``i`` is global).

    :raises CheckpointError: if two keys map to the same name.
    """
    if not any(_CHUNKED.match(k) for k in state):
        return state
    out: dict[str, Any] = {}
    for key, value in state.items():
        match = _CHUNKED.match(key)
        new = f"blocks.{match.group(2)}.{match.group(3)}" if match else key
        if new in out:
            raise CheckpointError(f"{source}: key {key!r} and another key both become {new!r} after un-chunking")
        out[new] = value
    logger.info("%s: un-nested block_chunks layout (blocks.<chunk>.<i>. -> blocks.<i>.)", source)
    return out


def _resize_pos_embed(model: nn.Module, state: dict[str, Any], source: str) -> None:
    target = model.state_dict().get("pos_embed")
    given = state.get("pos_embed")
    if target is None or given is None or given.shape == target.shape:
        return
    if given.dim() != 3 or given.shape[-1] != target.shape[-1]:
        return  # reported as a shape mismatch
    from cellssl.models.pos_embed import interpolate_pos_embed

    side = round((target.shape[1] - 1) ** 0.5)
    try:
        state["pos_embed"] = interpolate_pos_embed(
            given,
            side,
            side,
            offset=float(getattr(model, "interpolate_offset", 0.1)),
            antialias=bool(getattr(model, "interpolate_antialias", False)),
        )
    except ValueError as exc:
        raise CheckpointError(f"{source}: cannot resize pos_embed {tuple(given.shape)}: {exc}") from exc
    logger.info(
        "%s: resized pos_embed from %s to %s (grid %dx%d)",
        source,
        tuple(given.shape),
        tuple(target.shape),
        side,
        side,
    )


def load_state_dict_checked(
    model: nn.Module, state: dict[str, Any], *, strict: bool = True, source: str = "checkpoint"
) -> None:
    """Load ``state`` into ``model`` after resizing ``pos_embed``, with errors that name the keys.

    :param strict: if True, missing keys (other than ``mask_token``) or unexpected keys raise;
        if False they are logged as warnings.
    :raises CheckpointError: for missing / unexpected keys (strict) or shape mismatches (always).
    """
    _resize_pos_embed(model, state, source)
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if mismatched:
        raise CheckpointError(
            f"{source}: {len(mismatched)} tensors have the wrong shape ({'; '.join(mismatched[:_SHOW])}). "
            "Build the model with the checkpoint's architecture, patch size and in_chans"
        )
    blocking = [k for k in missing if k not in OPTIONAL_KEYS]
    if strict and (blocking or unexpected):
        parts = []
        if blocking:
            parts.append(f"{len(blocking)} missing keys ({_first(blocking)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
        raise CheckpointError(
            f"{source}: checkpoint does not match the model: {' and '.join(parts)}. Check the backbone "
            "config (arch, depth, registers, layerscale_init), pass key_prefix, or load with strict=False"
        )
    if missing:
        logger.warning("%s: %d keys missing, left as initialised: %s", source, len(missing), _first(missing))
    if unexpected:
        logger.warning("%s: %d unexpected keys ignored: %s", source, len(unexpected), _first(unexpected))
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)


def load_backbone_weights(
    model: nn.Module, path: str | os.PathLike[str], *, key_prefix: str | None = None, strict: bool = True
) -> None:
    """Load backbone weights from ``path`` into ``model`` (in place).

    :param model: the backbone (e.g. a :class:`cellssl.models.vit.VisionTransformer`).
    :param path: a checkpoint in one of the layouts of the module docstring.
    :param key_prefix: select keys under this prefix (e.g. ``"student.backbone."``) instead of the
        automatic choice (teacher first).
    :param strict: see :func:`load_state_dict_checked`.
    :raises CheckpointError: if the file is missing or unreadable with ``weights_only=True``, or does
        not match the model; the message names the file and the offending keys.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        # DINO v1 / Dino4Cells checkpoints store their argparse.Namespace: a plain attribute bag.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: cannot be read with torch.load(weights_only=True): {str(exc).splitlines()[0]}. "
            "Only tensors and plain containers are accepted; re-save the state dict with torch.save"
        ) from exc
    state = extract_state_dict(obj, key_prefix=key_prefix, source=str(path))
    load_state_dict_checked(model, state, strict=strict, source=str(path))
    logger.info("loaded %d tensors from %s", len(state), path)


def save_state_dict_atomic(state: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``state`` with :func:`torch.save` so that ``path`` is either the old file or the complete
    new one (see :func:`cellssl.atomic.atomic_open`). The parent folder is created if needed."""
    with atomic_open(path, "wb") as handle:
        torch.save(dict(state), handle)
