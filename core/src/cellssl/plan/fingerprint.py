"""Fingerprints: short digests of what an output was computed from, so stale outputs are recognised.

- :func:`embedding_fingerprint`: data (block, rows, table content, channels), channel strategy, backbone,
  weights (file digest; the seed for a random initialisation), feature recipe, input size, precision (with the
  bf16 mode: autocast or weights cast) and normalisation. Stored in an embedding set's manifest; readers compare
  it with the run's config.
- :func:`stats_fingerprint`: what channel statistics were computed from (tables, rows, channels, data
  blocks with their bit depth, normalisation settings, seed). Stored in ``channel_stats.json``.

Digests are SHA-256 of canonical JSON; file digests are SHA-256 of the bytes (cached per path, size and
modification time within a process).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cellssl.plan.model import RunPlan, _plain

_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def digest(value: Any) -> str:
    """SHA-256 (hex) of ``value`` as canonical JSON (sorted keys; non-JSON values as ``str``)."""
    text = json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        sha = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
        _FILE_DIGESTS[key] = sha.hexdigest()
    return _FILE_DIGESTS[key]


def table_digest(frame: Any) -> str:
    """SHA-256 (hex) of a metadata table's content (column names, values, row order)."""
    import pandas as pd

    sha = hashlib.sha256(json.dumps([str(c) for c in frame.columns]).encode("utf-8"))
    try:
        hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
        sha.update(hashed.tobytes())
    except TypeError:  # unhashable cells (lists): fall back to their text
        sha.update(frame.astype(str).to_csv(index=False).encode("utf-8"))
    return sha.hexdigest()


def dataset_identity(block: dict[str, Any], dataset: Any) -> dict[str, Any]:
    """The data part of a fingerprint: the validated block, row count, table digest and channels."""
    return {"block": block, "rows": len(dataset), "table": table_digest(dataset.metadata),
            "channels": list(dataset.channel_names)}


def weights_identity(plan: RunPlan, weights: Path | None) -> dict[str, Any]:
    """The weights part of a fingerprint: the checkpoint's digest (and key prefix), or the init seed."""
    if weights is None:
        return {"random_init_seed": plan.run.seed}
    prefix = plan.weights.key_prefix if plan.weights is not None and plan.weights.path == weights else None
    return {"sha256": file_sha256(weights), "key_prefix": prefix}


def embedding_parts(plan: RunPlan, dataset: Any, weights: Path | None) -> dict[str, Any]:
    """Everything an embedding set depends on, as plain data (stored in the manifest beside its digest)."""
    normalize = _plain(plan.normalize)
    if plan.normalize.mode == "dataset" and plan.normalize.stats_path:
        normalize["stats_sha256"] = file_sha256(plan.normalize.stats_path)
    assert plan.data is not None and plan.backbone is not None
    return {
        "data": dataset_identity(plan.data.as_dict(), dataset),
        "strategy": plan.channels.as_dict(),
        "backbone": plan.backbone.as_dict(),
        "weights": weights_identity(plan, weights),
        "features": _plain(plan.embed.features),
        "img_size": plan.embed.img_size,
        "precision": embedding_numerics(plan),
        "normalize": normalize,
    }


def embedding_numerics(plan: RunPlan) -> str:
    """The ``precision`` part of an embedding fingerprint: ``fp32``, ``bf16`` (autocast) or ``bf16-cast`` (weights
    cast to bf16), resolving ``embed.bf16: auto`` for the device the run uses (see :mod:`cellssl.embed.fast`).
    ``embed.compile`` is not part of it: compiled and eager forwards agree within float rounding."""
    from cellssl.embed.fast import numerics

    if plan.embed.precision != "bf16":
        return plan.embed.precision
    import torch

    cuda = plan.run.device == "cuda" or (plan.run.device == "auto" and torch.cuda.is_available())
    return numerics(plan.embed.precision, plan.embed.bf16, "cuda" if cuda else "cpu")


def embedding_fingerprint(plan: RunPlan, dataset: Any, weights: Path | None) -> str:
    """Digest of :func:`embedding_parts`."""
    return digest(embedding_parts(plan, dataset, weights))


def stats_fingerprint(blocks: Sequence[dict[str, Any]], datasets: Sequence[Any], normalize: Any, seed: int) -> str:
    """Digest of what dataset channel statistics are computed from.

    :param blocks: the validated data blocks of ``datasets`` (bit depth and every reading option).
    :param normalize: the ``normalize`` section (mode, eps, number of images sampled).
    """
    return digest({
        "datasets": [dataset_identity(b, d) for b, d in zip(blocks, datasets, strict=True)],
        "mode": normalize.mode, "eps": normalize.eps, "stats_samples": getattr(normalize, "stats_samples", None),
        "seed": seed,
    })
