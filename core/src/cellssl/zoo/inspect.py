"""``cellssl weights inspect FILE``: what a checkpoint holds and the ``backbone:`` block that loads it.

:func:`inspect_weights` reads a checkpoint in any layout :mod:`cellssl.models.checkpoint` loads (DINOv2 hub
state dicts, block-chunked ones, registers, DINO v1, DINOv2 / DINO v1 training checkpoints with teacher and
student, cellssl's own ``teacher_backbone.pt`` and ``checkpoints/*.pt``, safetensors), picks the backbone
exactly as the loader does, and infers the architecture from the tensor shapes:

- width from ``cls_token``, patch size and ``in_chans`` from ``patch_embed.proj.weight``, depth from the block
  indices, the stored positional-embedding grid (hence ``img_size``) from ``pos_embed``, registers from
  ``register_tokens``, LayerScale from ``ls1.gamma``, ``qkv_bias`` and ``mlp_ratio`` from the block tensors;
- the number of heads is not stored in a state dict: it is read from the checkpoint's own description when
  there is one (the ``config.yaml`` of the cellssl run directory holding the file, or the metadata of a file
  written by ``cellssl weights export``), else it is the DINO / DINOv2 convention of 64 channels per head (every
  released DINO, DINOv2 and cell ViT follows it) and reported as assumed.

The model is built at the stored grid (``img_size`` = grid x patch), so loading resizes nothing; inputs of
other sizes are interpolated at forward time, as the reference code does.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellssl.errors import CheckpointError

logger = logging.getLogger(__name__)

BACKBONE_METADATA_KEY = "cellssl.backbone"
_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.")
_REQUIRED = ("cls_token", "pos_embed", "patch_embed.proj.weight")
HEAD_DIM = 64
_ARCH_KEYS = ("embed_dim", "depth", "num_heads")


@dataclass
class Inspection:
    """What :func:`inspect_weights` found.

    :ivar path: the file. :ivar layout: what the file is, one phrase per fact (outermost first).
    :ivar selected: where the backbone's tensors sit in the file (dotted prefix; ``""``: top level).
    :ivar candidates: every prefix under which a ViT backbone was found (teacher, student, ...).
    :ivar backbone: the ``backbone:`` block that builds this architecture (only non-default keys).
    :ivar in_chans: input channels of the patch embedding.
    :ivar embed_dim, depth, num_heads, patch_size, img_size, num_register_tokens: the architecture.
    :ivar layerscale: whether the blocks have LayerScale. :ivar qkv_bias: whether qkv has a bias.
    :ivar mlp_ratio: hidden / embed_dim of the MLP. :ivar num_tensors, num_params: sizes of the backbone.
    :ivar heads_from: where ``num_heads`` came from (``config.yaml``, ``safetensors metadata``, ``assumed``).
    :ivar notes: anything a user should know (assumptions, disagreements).
    :ivar automatic: whether the loader picks :attr:`selected` without a ``key_prefix``.
    """

    path: Path
    layout: list[str]
    selected: str
    candidates: list[str]
    backbone: dict[str, Any]
    in_chans: int
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    img_size: int
    num_register_tokens: int
    layerscale: bool
    qkv_bias: bool
    mlp_ratio: float
    num_tensors: int
    num_params: int
    heads_from: str
    notes: list[str] = field(default_factory=list)
    automatic: bool = True

    def as_dict(self) -> dict[str, Any]:
        """Plain data (``--json``)."""
        out = dict(self.__dict__)
        out["path"] = str(self.path)
        return out

    def text(self) -> str:
        """A human-readable report ending with the block to paste into a run config."""
        import yaml

        grid = self.img_size // self.patch_size
        lines = [
            f"file: {self.path}",
            f"layout: {'; '.join(self.layout)}",
            f"backbone tensors under: {self.selected or '(top level)'}"
            + (f"  (also found under: {', '.join(c or '(top level)' for c in self.candidates if c != self.selected)})"
               if len(self.candidates) > 1 else ""),
            f"architecture: ViT, embed_dim {self.embed_dim}, depth {self.depth}, {self.num_heads} heads "
            f"({self.heads_from}), patch {self.patch_size}, in_chans {self.in_chans}",
            f"stored grid: {grid}x{grid} (img_size {self.img_size}); registers: {self.num_register_tokens}; "
            f"LayerScale: {'yes' if self.layerscale else 'no'}; qkv bias: {'yes' if self.qkv_bias else 'no'}; "
            f"mlp_ratio: {self.mlp_ratio:g}",
            f"parameters: {self.num_params:,} in {self.num_tensors} tensors",
        ]
        lines += [f"note: {note}" for note in self.notes]
        block = yaml.safe_dump({"backbone": self.backbone}, sort_keys=False, default_flow_style=False)
        weights = {"weights": str(self.path)} if self.automatic else {
            "weights": {"path": str(self.path), "key_prefix": self.selected}}
        lines += ["", "# paste into a run config:", block.rstrip(),
                  yaml.safe_dump(weights, sort_keys=False).rstrip()]
        return "\n".join(lines)


def _flat(obj: Any) -> dict[str, Any]:
    """Tensors of nested mappings by dotted path (:func:`cellssl.models.checkpoint.flatten_tensors`)."""
    from cellssl.models.checkpoint import flatten_tensors

    return flatten_tensors(obj) if isinstance(obj, Mapping) else {}


def _candidates(flat: Mapping[str, Any]) -> list[str]:
    """Prefixes (``teacher.backbone.``, ``""``) under which a ViT's ``cls_token`` and ``patch_embed`` sit."""
    found = []
    for key in flat:
        if key == "cls_token" or key.endswith(".cls_token"):
            prefix = key[: -len("cls_token")]
            if f"{prefix}patch_embed.proj.weight" in flat:
                found.append(prefix)
    return sorted(found, key=lambda p: (p.count("."), p))


def _layout(obj: Any, flat: Mapping[str, Any], state: Mapping[str, Any], path: Path, safetensors: bool,
            metadata: Mapping[str, str], candidates: list[str], selected: str) -> list[str]:
    facts = []
    if safetensors:
        facts.append("safetensors" + (" written by cellssl weights export" if BACKBONE_METADATA_KEY in metadata
                                      else ""))
    elif isinstance(obj, Mapping) and "objective" in obj and "optimizer" in obj:
        facts.append("cellssl training checkpoint (objective with teacher and student)")
    elif isinstance(obj, Mapping) and isinstance(obj.get("teacher"), Mapping) and isinstance(obj.get("student"),
                                                                                             Mapping):
        facts.append("DINO v1 training checkpoint (teacher and student)"
                     + (", DistributedDataParallel 'module.' names" if any(".module." in f".{k}" for k in flat)
                        else ""))
    elif isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping) and any(
            c.startswith("model.teacher.") for c in candidates):
        facts.append("DINOv2 training checkpoint (model with teacher and student)")
    elif isinstance(obj, Mapping) and isinstance(obj.get("teacher"), Mapping):
        facts.append("DINOv2 teacher checkpoint (teacher_checkpoint.pth)")
    elif selected == "" and (path.parent / "config.yaml").is_file() and path.name == "teacher_backbone.pt":
        facts.append("cellssl teacher_backbone.pt of a run directory")
    elif selected == "":
        facts.append("bare backbone state dict")
    else:
        facts.append(f"state dict nested under {selected!r}")
    if any(_CHUNKED.match(k[len(selected):]) for k in flat if k.startswith(selected)):
        chunks = {int(m.group(1)) for k in flat if k.startswith(selected) and (m := _CHUNKED.match(k[len(selected):]))}
        facts.append(f"block_chunks={len(chunks)} (blocks.<chunk>.<i>.)")
    facts.append("DINOv2 layout (mask_token)" if "mask_token" in state else "no mask_token (DINO v1 style)")
    if "register_tokens" in state:
        facts.append(f"{state['register_tokens'].shape[1]} register tokens")
    return facts


def _described_config(path: Path, safetensors: bool, metadata: Mapping[str, str]) -> tuple[dict[str, Any], str]:
    """The backbone block a file's own description gives (cellssl export metadata or the run's config.yaml)."""
    if safetensors and BACKBONE_METADATA_KEY in metadata:
        try:
            block = json.loads(metadata[BACKBONE_METADATA_KEY])
        except json.JSONDecodeError:
            return {}, ""
        return (block, "safetensors metadata") if isinstance(block, dict) else ({}, "")
    for folder in (path.parent, path.parent.parent):
        config = folder / "config.yaml"
        if config.is_file():
            import yaml

            try:
                data = yaml.safe_load(config.read_text())
            except (yaml.YAMLError, OSError):
                return {}, ""
            block = data.get("backbone") if isinstance(data, dict) else None
            if isinstance(block, dict):
                return dict(block), f"{config}"
    return {}, ""


def _closest_arch(dim: int, depth: int, heads: int) -> str:
    from cellssl.models.vit_config import ARCHS

    for name, dims in ARCHS.items():
        if dims == (dim, depth, heads):
            return name
    same_dim = [name for name, (d, _, _) in ARCHS.items() if d == dim]
    if same_dim:
        return same_dim[0]
    return min(ARCHS, key=lambda name: abs(ARCHS[name][0] - dim))


def infer_architecture(state: Mapping[str, Any], *, source: str = "checkpoint") -> dict[str, Any]:
    """Architecture facts of a DINOv2/DINO-layout ViT state dict (keys already un-nested and un-chunked).

    :return: ``embed_dim``, ``depth``, ``patch_size``, ``in_chans``, ``img_size``, ``num_register_tokens``,
        ``layerscale``, ``qkv_bias``, ``mlp_ratio``, ``num_tensors``, ``num_params``.
    :raises CheckpointError: naming ``source`` when the state dict is not such a ViT (missing keys, a
        non-square positional grid).
    """
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        shown = ", ".join(sorted(state)[:5])
        raise CheckpointError(
            f"{source}: not a Vision Transformer in the DINOv2 / DINO layout: no {', '.join(missing)} "
            f"(keys look like {shown}). cellssl infers architectures of ViT checkpoints only; for another "
            "backbone write the `backbone:` block by hand.")
    dim = int(state["cls_token"].shape[-1])
    proj = state["patch_embed.proj.weight"]
    if proj.dim() != 4 or proj.shape[-1] != proj.shape[-2]:
        raise CheckpointError(f"{source}: patch_embed.proj.weight has shape {tuple(proj.shape)}, expected "
                              "(embed_dim, in_chans, patch, patch)")
    indices = {int(m.group(1)) for k in state if (m := _BLOCK.match(k))}
    if not indices:
        raise CheckpointError(f"{source}: no transformer blocks (keys blocks.<i>.*) in the state dict")
    depth = max(indices) + 1
    tokens = int(state["pos_embed"].shape[1]) - 1
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise CheckpointError(f"{source}: pos_embed has {tokens} patch positions, not a square grid")
    patch = int(proj.shape[-1])
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    return {
        "embed_dim": dim,
        "depth": depth,
        "patch_size": patch,
        "in_chans": int(proj.shape[1]),
        "img_size": side * patch,
        "num_register_tokens": int(state["register_tokens"].shape[1]) if "register_tokens" in state else 0,
        "layerscale": "blocks.0.ls1.gamma" in state,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "mlp_ratio": float(fc1.shape[0]) / dim if fc1 is not None else 4.0,
        "num_tensors": len(state),
        "num_params": int(sum(v.numel() for v in state.values())),
    }


def backbone_block(facts: Mapping[str, Any], described: Mapping[str, Any] | None = None
                   ) -> tuple[dict[str, Any], str, list[str]]:
    """The ``backbone:`` block for the inferred ``facts`` (see :func:`infer_architecture`).

    :param described: the checkpoint's own backbone block (run config or export metadata), if any: its
        ``num_heads``, name and interpolation settings are used when its shapes agree with ``facts``.
    :return: ``(block with only non-default keys, where num_heads came from, notes)``.
    """
    from cellssl.models.vit_config import ARCHS, ViTConfig

    notes: list[str] = []
    dim, depth = facts["embed_dim"], facts["depth"]
    described = dict(described or {})
    given: ViTConfig | None = None
    if described.get("name") in ARCHS:
        try:
            params = {k: v for k, v in described.items() if k in ViTConfig.__dataclass_fields__}
            given = ViTConfig(**{**params, "arch": described["name"]})
        except (TypeError, ValueError):
            given = None
    if given is not None and given.dims()[:2] != (dim, depth):
        notes.append(f"the checkpoint's description says dims {given.dims()}, the tensors say embed_dim {dim}, "
                     f"depth {depth}: it is ignored")
        given = None
    if given is not None:
        heads, heads_from = given.dims()[2], "from " + str(described.get("_source", "its description"))
    elif dim % HEAD_DIM == 0:
        heads, heads_from = dim // HEAD_DIM, f"assumed: {HEAD_DIM} channels per head"
    else:
        heads = next(h for h in range(max(1, dim // 32), 0, -1) if dim % h == 0)
        heads_from = "assumed"
    if not heads_from.startswith("from"):
        notes.append(f"num_heads is not stored in a state dict; {heads} is {heads_from} (the DINO / DINOv2 "
                     "convention). Set backbone.num_heads if the model was trained otherwise")
    arch = given.arch if given is not None else _closest_arch(dim, depth, heads)
    base_dim, base_depth, base_heads = ARCHS[arch]
    block: dict[str, Any] = {"name": arch, "patch_size": facts["patch_size"], "img_size": facts["img_size"]}
    for key, value, base in (("embed_dim", dim, base_dim), ("depth", depth, base_depth),
                             ("num_heads", heads, base_heads)):
        if value != base:
            block[key] = value
    if facts["num_register_tokens"]:
        block["num_register_tokens"] = facts["num_register_tokens"]
    defaults = ViTConfig()
    if facts["layerscale"]:
        init = given.layerscale_init if given is not None and given.layerscale_init else 1.0
        if init != defaults.layerscale_init:
            block["layerscale_init"] = init
    else:
        block["layerscale_init"] = None
    if not facts["qkv_bias"]:
        block["qkv_bias"] = False
    if abs(facts["mlp_ratio"] - defaults.mlp_ratio) > 1e-9:
        block["mlp_ratio"] = facts["mlp_ratio"]
    if given is not None:
        offset, antialias = given.interpolate_offset, given.interpolate_antialias
    elif facts["num_register_tokens"]:
        offset, antialias = 0.0, True
        notes.append("registers: interpolate_offset 0 with antialias, as the DINOv2 _reg4 models")
    else:
        offset, antialias = defaults.interpolate_offset, defaults.interpolate_antialias
    if offset != defaults.interpolate_offset:
        block["interpolate_offset"] = offset
    if antialias != defaults.interpolate_antialias:
        block["interpolate_antialias"] = antialias
    return block, heads_from, notes


def inspect_weights(path: str | os.PathLike[str], *, key_prefix: str | None = None) -> Inspection:
    """Inspect the checkpoint at ``path`` (see the module docstring).

    :param key_prefix: inspect the tensors under this prefix (as ``weights.key_prefix``), not the loader's
        automatic choice.
    :raises CheckpointError: naming the file when it is unreadable or holds no ViT in a known layout.
    """
    from cellssl.models.checkpoint import (
        extract_state_dict,
        is_safetensors,
        read_checkpoint_file,
        read_safetensors_metadata,
    )

    path = Path(path)
    obj = read_checkpoint_file(path, remedy="Point the command at a backbone checkpoint.")
    safetensors = is_safetensors(path)
    metadata = read_safetensors_metadata(path) if safetensors else {}
    state = extract_state_dict(obj, key_prefix=key_prefix, source=str(path))
    flat = _flat(obj)
    candidates = _candidates(flat)
    cls = state.get("cls_token")
    selected = next((c for c in candidates if flat.get(f"{c}cls_token") is cls), key_prefix or "")
    facts = infer_architecture(state, source=str(path))
    described, source = _described_config(path, safetensors, metadata)
    if described:
        described["_source"] = source
    block, heads_from, notes = backbone_block(facts, described)
    if len(candidates) > 1:
        notes.append(f"the loader uses {selected or '(top level)'} by default; pass weights.key_prefix to pick "
                     "another one")
    inspection = Inspection(
        path=path, layout=_layout(obj, flat, state, path, safetensors, metadata, candidates, selected),
        selected=selected, candidates=candidates, backbone=block, in_chans=facts["in_chans"],
        embed_dim=facts["embed_dim"], depth=facts["depth"],
        num_heads=int(block.get("num_heads") or _arch_heads(block["name"])), patch_size=facts["patch_size"],
        img_size=facts["img_size"], num_register_tokens=facts["num_register_tokens"],
        layerscale=facts["layerscale"], qkv_bias=facts["qkv_bias"], mlp_ratio=facts["mlp_ratio"],
        num_tensors=facts["num_tensors"], num_params=facts["num_params"], heads_from=heads_from, notes=notes,
        automatic=key_prefix is None)
    return inspection


def _arch_heads(arch: str) -> int:
    from cellssl.models.vit_config import ARCHS

    return ARCHS[arch][2]
