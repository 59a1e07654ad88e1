"""Fingerprints: short digests of what an output was computed from, so stale outputs are recognised.

- :func:`embedding_fingerprint`: data (block, rows, table content, channels), channel strategy, backbone,
  weights (file digest; the seed for a random initialisation), feature recipe, input size, precision (with the
  bf16 mode: autocast or weights cast) and normalisation. Stored in an embedding set's manifest; readers compare
  it with the run's config.
- :func:`stats_fingerprint`: what channel statistics were computed from (tables, rows, channels, data
  blocks with their bit depth, normalisation settings, seed). Stored in ``channel_stats.json``.

The digests themselves (canonical JSON, files, tables, a dataset's identity, statistics inputs) are in
:mod:`cellssl.data.digests`, re-exported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cellssl.data.digests import dataset_identity, digest, file_sha256, plain, stats_fingerprint, table_digest
from cellssl.plan.model import RunPlan

__all__ = ["dataset_identity", "digest", "embedding_fingerprint", "embedding_numerics", "embedding_parts",
           "file_sha256", "stats_fingerprint", "table_digest", "weights_identity"]


def weights_identity(plan: RunPlan, weights: Path | None) -> dict[str, Any]:
    """The weights part of a fingerprint: the checkpoint's digest (and key prefix), or the init seed."""
    if weights is None:
        return {"random_init_seed": plan.run.seed}
    prefix = plan.weights.key_prefix if plan.weights is not None and plan.weights.path == weights else None
    return {"sha256": file_sha256(weights), "key_prefix": prefix}


def embedding_parts(plan: RunPlan, dataset: Any, weights: Path | None) -> dict[str, Any]:
    """Everything an embedding set depends on, as plain data (stored in the manifest beside its digest)."""
    normalize = plain(plan.normalize)
    if plan.normalize.mode == "dataset" and plan.normalize.stats_path:
        normalize["stats_sha256"] = file_sha256(plan.normalize.stats_path)
    assert plan.data is not None and plan.backbone is not None
    return {
        "data": dataset_identity(plan.data.as_dict(), dataset),
        "strategy": plan.channels.as_dict(),
        "backbone": plan.backbone.as_dict(),
        "weights": weights_identity(plan, weights),
        "features": plain(plan.embed.features),
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
