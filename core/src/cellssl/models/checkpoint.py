"""Loading backbone weights from the checkpoints users already have, and atomic state-dict saving.

Accepted files (always read with ``torch.load(weights_only=True)``):

- a bare state dict (``{"cls_token": ..., "blocks.0.norm1.weight": ...}``);
- a dict nesting it under ``"teacher"``, ``"model"``, ``"state_dict"``, ``"student"`` or ``"objective"``
  (searched in that order, repeatedly: DINO v1 checkpoints, DINOv2 ``teacher_checkpoint.pth``, training
  checkpoints ``{"model": {...}, "optimizer": ...}`` and cellssl's own ``checkpoints/{last,final}.pt``);
- keys prefixed ``teacher.backbone.`` (preferred), ``student.backbone.``, ``backbone.`` or ``module.``
  (stripped repeatedly, so ``module.backbone.`` works too);
- ``key_prefix`` picks another part explicitly: it is matched against the full dotted paths of the
  nested dicts first (``student.module.backbone.`` in a DINO v1 checkpoint; ``student.backbone.`` too,
  since the ``module.`` of DistributedDataParallel may be left out), then against the keys of the
  automatically chosen state dict (``student.backbone.`` inside DINOv2's ``model`` entry);
- DINOv2 ``block_chunks`` layout ``blocks.<chunk>.<i>.`` (un-nested to ``blocks.<i>.``, ``i`` global);
- a ``.safetensors`` file (read with :func:`safetensors.torch.load_file`, never unpickled), e.g. one written by
  ``cellssl weights export``; its keys go through the same prefix stripping and un-chunking.

A ``pos_embed`` whose grid differs from the model's is resized with the model's own interpolation.
A checkpoint that lacks only ``mask_token`` (DINO v1 models) loads with the model's zero mask token.

:func:`read_checkpoint_file` is the one reader: an empty, truncated or damaged file, or one that stores
Python objects ``weights_only=True`` refuses, is a :class:`~cellssl.errors.CheckpointError` naming the file,
what is wrong with it (the refused global, e.g. ``numpy.core.multiarray._reconstruct``) and what to do.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import re
from collections.abc import Mapping, Sequence
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
DDP_SEGMENT = "module"
_CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_SHOW = 5


def _first(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f", ... ({len(keys) - _SHOW} more)" if len(keys) > _SHOW else "")


def _is_state_dict(obj: Mapping[str, Any]) -> bool:
    return any(isinstance(v, torch.Tensor) for v in obj.values())


def flatten_tensors(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Tensors of nested mappings keyed by their dotted path (``{"a": {"b": t}}`` -> ``{"a.b": t}``)."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        path = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            out[path] = value
        elif isinstance(value, Mapping):
            out.update(flatten_tensors(value, f"{path}."))
    return out


def _without_ddp(path: str) -> str:
    """``path`` without its ``module`` segments (the DistributedDataParallel wrapper)."""
    return ".".join(part for part in path.split(".") if part != DDP_SEGMENT)


def _select_prefix(state: Mapping[str, Any], key_prefix: str) -> dict[str, Any]:
    return {k[len(key_prefix) :]: v for k, v in state.items() if k.startswith(key_prefix)}


def _select_nested_prefix(obj: Any, key_prefix: str) -> dict[str, Any]:
    """Tensors whose full dotted path starts with ``key_prefix`` (literally, else ignoring ``module.``)."""
    if not isinstance(obj, Mapping):
        return {}
    flat = flatten_tensors(obj)
    selected = _select_prefix(flat, key_prefix)
    if selected:
        return selected
    trailing = key_prefix.endswith(".")
    bare = _without_ddp(key_prefix[:-1] if trailing else key_prefix) + ("." if trailing else "")
    selected = {}
    for path, value in flat.items():
        plain = _without_ddp(path)
        if plain.startswith(bare):
            rest = plain[len(bare) :]
            if rest in selected:
                return {}  # ambiguous without module. (both wrapped and unwrapped copies): not a match
            selected[rest] = value
    return selected


def extract_state_dict(obj: Any, *, key_prefix: str | None = None, source: str = "checkpoint") -> dict[str, Any]:
    """The backbone's state dict inside a loaded checkpoint object (see the module docstring).

    :param obj: what ``torch.load`` returned.
    :param key_prefix: if given, keep only the tensors under it and strip it: it is matched against the
        full dotted paths of the nested dicts (``student.module.backbone.``; ``module.`` segments may be
        left out), else against the keys of the state dict found by un-nesting. Automatic prefix stripping
        is then skipped.
    :param source: name of the file, for error messages.
    :return: tensors keyed by the model's parameter / buffer names (non-tensor entries dropped).
    :raises CheckpointError: if no state dict is found or no key has ``key_prefix``.
    """
    if key_prefix is not None:
        nested = _select_nested_prefix(obj, key_prefix)
        if nested:
            logger.debug("%s: using the %d tensors under %r", source, len(nested), key_prefix)
            return unnest_block_chunks(nested, source=source)
    original = obj
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
        selected = _select_prefix(state, key_prefix)
        if not selected:
            paths = sorted(flatten_tensors(original)) if isinstance(original, Mapping) else sorted(state)
            raise CheckpointError(
                f"{source}: no key starts with key_prefix {key_prefix!r}; keys look like {_first(paths)}. "
                "Set key_prefix to the part of these keys before the backbone's own names (ending with '.')"
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


def _refused_globals(path: Path, message: str, allowed: Sequence[Any]) -> list[str]:
    """The globals ``weights_only=True`` refuses in ``path``: the one torch names first, then any others
    (except the ``allowed`` ones)."""
    names = _REFUSED_GLOBAL.findall(message)
    try:
        names += torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # an old torch, or a file the scan cannot read: the message's name is enough
        logger.debug("%s: could not list the unsafe globals", path, exc_info=True)
    skip = {f"{getattr(g, '__module__', '')}.{getattr(g, '__qualname__', '')}" for g in allowed}
    return [name for name in dict.fromkeys(names) if name not in skip]


def describe_load_error(exc: BaseException) -> str:
    """One line saying why ``torch.load`` failed: the ``WeightsUnpickler`` reason or the first sentence of
    the message, without terminal escape codes, prefixed with the exception type (never empty)."""
    text = _ANSI.sub("", str(exc)).strip()
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text[text.index(marker) + len(marker) :].strip()
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    line = re.split(r"(?<=\.)\s", line, maxsplit=1)[0].rstrip(".")  # its first sentence
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def read_checkpoint_file(
    path: str | os.PathLike[str], *, remedy: str, safe_globals: Sequence[Any] = (), what: str = "checkpoint"
) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors a user can act on.

    :param path: the file.
    :param remedy: what the user should do with a damaged file (one sentence, ends the message).
    :param safe_globals: extra globals to allow (plain attribute bags such as ``argparse.Namespace``).
    :param what: what the file is, for the messages (``checkpoint``, ``training checkpoint``).
    :return: the loaded object.
    :raises CheckpointError: one paragraph naming ``path``: missing, empty (0 bytes), truncated or damaged
        (its size and torch's reason), or storing a Python object that ``weights_only=True`` refuses (the
        refused globals by name, e.g. ``numpy.core.multiarray._reconstruct``, ``__main__.Config``).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} file not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(
            f"{path}: the {what} is empty (0 bytes): the write or copy that produced it did not finish. {remedy}"
        )
    if is_safetensors(path):
        return read_safetensors_file(path, remedy=remedy, what=what)
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _refused_globals(path, _ANSI.sub("", str(exc)), safe_globals)
        if refused:
            raise CheckpointError(
                f"{path}: cannot be read with torch.load(weights_only=True): the {what} stores the Python "
                f"object(s) {', '.join(refused)}, which cellssl does not unpickle (that could run arbitrary "
                "code). Only tensors and plain containers are accepted: load the file where that class exists, "
                "keep the tensors (e.g. `torch.save(checkpoint['model'], 'weights.pt')`) and point cellssl at "
                "the new file."
            ) from None
        reason = describe_load_error(exc)
    except Exception as exc:
        reason = describe_load_error(exc)
    raise CheckpointError(
        f"{path}: cannot be read with torch.load(weights_only=True) ({reason}): the {what} ({size} bytes) is "
        f"truncated or damaged (e.g. an interrupted copy or download), or not a file written by torch.save. {remedy}"
    )


SAFETENSORS_SUFFIX = ".safetensors"


def is_safetensors(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a safetensors file (by its ``.safetensors`` suffix)."""
    return Path(path).suffix.lower() == SAFETENSORS_SUFFIX


def read_safetensors_file(path: str | os.PathLike[str], *, remedy: str, what: str = "checkpoint") -> dict[str, Any]:
    """The tensors of a ``.safetensors`` file (on the CPU), with errors a user can act on.

    :raises CheckpointError: naming ``path`` when the file is missing, truncated or not safetensors.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} file not found: {path}")
    try:
        return dict(load_file(str(path), device="cpu"))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = describe_load_error(exc)
        raise CheckpointError(
            f"{path}: cannot be read as safetensors ({reason}): the {what} ({path.stat().st_size} bytes) is "
            f"truncated or damaged, or not a safetensors file. {remedy}"
        ) from None


def read_safetensors_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``__metadata__`` strings of a safetensors file's header (empty when there are none).

    Reads only the header, not the tensors.

    :raises CheckpointError: naming ``path`` when the header cannot be read.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot read the safetensors header ({describe_load_error(exc)})") from None


def save_safetensors_atomic(
    state: Mapping[str, Any], path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None
) -> None:
    """Write the tensors of ``state`` (contiguous CPU copies) as safetensors, atomically, with string
    ``metadata`` in the header. Tensors sharing memory are written as separate copies."""
    from safetensors.torch import save

    tensors = {str(k): v.detach().to("cpu").contiguous().clone() for k, v in state.items()
               if isinstance(v, torch.Tensor)}
    blob = save(tensors, metadata={str(k): str(v) for k, v in (metadata or {}).items()})
    with atomic_open(path, "wb") as handle:
        handle.write(blob)


def load_backbone_weights(
    model: nn.Module, path: str | os.PathLike[str], *, key_prefix: str | None = None, strict: bool = True
) -> None:
    """Load backbone weights from ``path`` into ``model`` (in place).

    :param model: the backbone (e.g. a :class:`cellssl.models.vit.VisionTransformer`).
    :param path: a checkpoint in one of the layouts of the module docstring.
    :param key_prefix: select the tensors under this prefix (e.g. ``"student.backbone."``) instead of the
        automatic choice (teacher first); see :func:`extract_state_dict`.
    :param strict: see :func:`load_state_dict_checked`.
    :raises CheckpointError: if the file is missing, empty, damaged or unreadable with ``weights_only=True``
        (see :func:`read_checkpoint_file`), or does not match the model; the message names the file and
        the offending keys.
    """
    path = Path(path)
    # DINO v1 / Dino4Cells checkpoints store their argparse.Namespace: a plain attribute bag.
    obj = read_checkpoint_file(
        path,
        safe_globals=[argparse.Namespace],
        remedy="Download or export the weights again, or point `weights:` at another checkpoint.",
    )
    state = extract_state_dict(obj, key_prefix=key_prefix, source=str(path))
    load_state_dict_checked(model, state, strict=strict, source=str(path))
    logger.info("loaded %d tensors from %s", len(state), path)


def save_state_dict_atomic(state: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``state`` with :func:`torch.save` so that ``path`` is either the old file or the complete
    new one (see :func:`cellssl.atomic.atomic_open`). The parent folder is created if needed."""
    with atomic_open(path, "wb") as handle:
        torch.save(dict(state), handle)
