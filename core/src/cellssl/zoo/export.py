"""``cellssl weights export RUN_DIR_OR_FILE --to DIR``: a backbone as safetensors, with its card and README.

:func:`export_weights` writes into ``DIR``:

- ``model.safetensors``: the backbone's tensors under the names cellssl's ViT uses (what plain safetensors users
  load with ``safetensors.torch.load_file``), with the ``backbone:`` block in the header metadata
  (``cellssl.backbone``), so ``weights: DIR/model.safetensors`` with ``backbone: {name: auto}`` rebuilds it;
- ``card.json``: the backbone block, channel strategy and channel names, normalisation, embedding defaults,
  licence, the sha256 of ``model.safetensors`` and of the training config it came from;
- ``README.md``: the same for people, with the licence and how to load the file;
- ``channel_stats.json`` when the run stored its channel statistics (``normalize.mode: dataset``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cellssl.atomic import atomic_write_text
from cellssl.errors import CheckpointError
from cellssl.zoo.inspect import BACKBONE_METADATA_KEY

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
RUN_WEIGHTS = "teacher_backbone.pt"


@dataclass
class ExportResult:
    """The files :func:`export_weights` wrote, and the card it wrote into ``card.json``."""

    weights: Path
    card: Path
    readme: Path
    stats: Path | None
    info: dict[str, Any]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _source(source: Path) -> tuple[Path, Path | None]:
    """``(weights file, config.yaml or None)`` of a run directory or a checkpoint file."""
    if source.is_dir():
        weights = source / RUN_WEIGHTS
        if not weights.is_file():
            raise CheckpointError(f"{source}: no {RUN_WEIGHTS} in this run directory: train the run first, or pass "
                                  "the checkpoint file itself")
        config = source / "config.yaml"
        return weights, config if config.is_file() else None
    if not source.is_file():
        raise CheckpointError(f"{source}: no such run directory or checkpoint file")
    config = source.parent / "config.yaml"
    return source, config if config.is_file() else None


def _readme(info: dict[str, Any]) -> str:
    block = yaml.safe_dump({"backbone": info["backbone"]}, sort_keys=False).rstrip()
    channels = yaml.safe_dump({"channels": info["channels"]}, sort_keys=False).rstrip() if info["channels"] else ""
    normalize = yaml.safe_dump({"normalize": info["normalize"]}, sort_keys=False).rstrip() if info["normalize"] \
        else ""
    return "\n".join([
        f"# {info['name']}",
        "",
        f"A {info['backbone']['name']} backbone exported by cellssl {info['cellssl_version']} from "
        f"`{info['exported_from']}`.",
        "",
        f"**Licence:** {info['license']}",
        "",
        f"- `{WEIGHTS_FILE}` (sha256 `{info['sha256']}`): {info['num_tensors']} tensors, {info['num_params']:,} "
        "parameters, in the DINOv2 ViT key layout.",
        f"- `{CARD_FILE}`: the blocks below as JSON, and the sha256 of the training config "
        f"(`{info['training_config_sha256'] or 'unknown'}`).",
        "",
        "## Use with cellssl",
        "",
        "```yaml",
        f"weights: {WEIGHTS_FILE}",
        block,
        channels,
        normalize,
        "```",
        "",
        "`backbone: {name: auto}` also works: the block is stored in the file's metadata."
        + (" The run's channel statistics are in `channel_stats.json`: set `normalize.stats_path` to it to embed "
           "with the same statistics." if info.get("channel_stats") else ""),
        "",
        "## Use without cellssl",
        "",
        "```python",
        "from safetensors.torch import load_file",
        f'state = load_file("{WEIGHTS_FILE}")  # keys: cls_token, pos_embed, patch_embed.proj.weight, blocks.<i>...',
        "```",
        "",
    ])


def export_weights(source: str | os.PathLike[str], to_dir: str | os.PathLike[str], *, key_prefix: str | None = None,
                   license: str | None = None, name: str | None = None) -> ExportResult:
    """Export the backbone of ``source`` (a run directory, or any checkpoint cellssl loads) into ``to_dir``.

    :param key_prefix: pick the tensors under this prefix (e.g. ``student.backbone.``), as ``weights.key_prefix``.
    :param license: the licence written into the card and README (default: ``unspecified``).
    :param name: the model's name in the card (default: the run directory's or file's name).
    :return: the files written.
    :raises CheckpointError: naming ``source`` when it holds no loadable ViT backbone.
    """
    from cellssl import __version__
    from cellssl.models.checkpoint import extract_state_dict, read_checkpoint_file, save_safetensors_atomic
    from cellssl.zoo.inspect import inspect_weights

    source = Path(source)
    weights, config_path = _source(source)
    inspection = inspect_weights(weights, key_prefix=key_prefix)
    obj = read_checkpoint_file(weights, remedy="Point the command at a backbone checkpoint.")
    state = extract_state_dict(obj, key_prefix=key_prefix, source=str(weights))
    config = yaml.safe_load(config_path.read_text()) if config_path is not None else {}
    config = config if isinstance(config, dict) else {}
    out = Path(to_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / WEIGHTS_FILE
    normalize = {k: v for k, v in (config.get("normalize") or {}).items() if k != "stats_path"}
    embed = config.get("embed") or {}
    info: dict[str, Any] = {
        "name": name or (source.name if source.is_dir() else weights.stem),
        "backbone": inspection.backbone,
        "channels": config.get("channels") or {},
        "in_chans": inspection.in_chans,
        "normalize": normalize,
        "embed": {k: embed[k] for k in ("img_size", "features") if k in embed},
        "model": config.get("model"),
        "license": license or "unspecified (ask the model's authors)",
        "exported_from": str(source),
        "training_config_sha256": _sha256(config_path) if config_path is not None else None,
        "num_tensors": len(state),
        "num_params": int(sum(v.numel() for v in state.values())),
        "cellssl_version": __version__,
    }
    save_safetensors_atomic(state, target, metadata={BACKBONE_METADATA_KEY: json.dumps(inspection.backbone),
                                                     "format": "pt"})
    info["sha256"] = _sha256(target)
    stats = None
    stats_source = (source if source.is_dir() else weights.parent) / "channel_stats.json"
    if stats_source.is_file():
        stats = out / "channel_stats.json"
        shutil.copyfile(stats_source, stats)
        info["channel_stats"] = stats.name
    card = atomic_write_text(out / CARD_FILE, json.dumps(info, indent=2) + "\n")
    readme = atomic_write_text(out / "README.md", _readme(info))
    logger.info("exported %s (%d tensors) to %s", weights, len(state), target)
    return ExportResult(target, Path(card), Path(readme), stats, info)
