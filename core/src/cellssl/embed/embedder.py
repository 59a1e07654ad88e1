"""The one embedding path: dataset -> preprocessing -> channel strategy -> backbone and feature recipe.

:class:`Embedder` holds the pieces of a run's embedding (built from the run plan by
:func:`cellssl.pipeline.run_embedder`) and offers them at three sizes: a batch of preprocessed images
(:meth:`Embedder.embed_images`), chosen dataset rows in memory (:meth:`Embedder.embed_rows`), and a whole
dataset (or one rank's share) written as a sharded, resumable embedding set (:meth:`Embedder.export`). The
embed stage, and evaluators that need fresh embeddings (``EvalContext.embedder``), use the same object, so
their numbers come from the same preprocessing, weights and feature recipe.

For data with other channels than the run's (the CHAMMI subsets), :meth:`Embedder.for_dataset` returns an
embedder with the same model and the run's preprocessing rebuilt for that dataset; :meth:`Embedder.fingerprint`
digests what its embeddings of a dataset depend on (data, strategy, backbone, weights, feature recipe, input size,
precision, normalisation), and :meth:`Embedder.cached_export` keeps an embedding set on disk that is reused while
that fingerprint is unchanged.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from cellssl.data.digests import dataset_identity, digest
from cellssl.embed.fast import eager, prepare_for_inference

if TYPE_CHECKING:
    from cellssl.embed.store import EmbeddingTable

logger = logging.getLogger(__name__)

Preprocess = Callable[[torch.Tensor, Sequence[str]], torch.Tensor]
# (dataset, stats_dir, data_block) -> (preprocess, normalisation identity); see
# cellssl.data.preprocess.DatasetPreprocessFactory
PreprocessFactory = Callable[[Any, Path, Mapping[str, Any]], tuple[Preprocess, dict[str, Any]]]
MANIFEST_FILE = "manifest.json"


class Embedder:
    """A channel strategy, a backbone (with its feature recipe) and the preprocessing, on one device.

    :param strategy: the run's :class:`~cellssl.channels.base.ChannelStrategy`.
    :param backbone: maps ``(N, in_chans, H, W)`` to ``(N, D)`` (the feature wrapper included); put in eval mode.
    :param preprocess: ``(image (C, H, W), channel names) -> image`` (resize and normalise).
    :param precision: ``bf16`` or ``fp32``. :param bf16: how bf16 runs (``auto``, ``cast``: weights cast once,
        ``autocast``); :param compile: ``torch.compile`` the backbone (see :mod:`cellssl.embed.fast`).
    :param device: where the backbone runs.
    :param batch_size: images per forward pass. :param num_workers: DataLoader workers of :meth:`export`.
    :param shard_rows: rows per Parquet shard of :meth:`export` (unless the call names another).
    :param identity: what the embeddings depend on besides the data (strategy, backbone, weights, features,
        img_size, precision, normalize: the parts of :func:`cellssl.plan.fingerprint.embedding_parts` but
        ``data``); needed by :meth:`fingerprint`. ``None``: unknown.
    :param preprocess_factory: rebuilds the preprocessing for another dataset (needed by :meth:`for_dataset`).
    """

    def __init__(self, strategy: Any, backbone: nn.Module, preprocess: Preprocess, *, precision: str = "bf16",
                 device: torch.device | str = "cpu", batch_size: int = 64, num_workers: int = 0,
                 bf16: str = "auto", compile: bool = False,
                 shard_rows: int = 50_000, identity: Mapping[str, Any] | None = None,
                 preprocess_factory: PreprocessFactory | None = None) -> None:
        self.strategy = strategy
        self.device = torch.device(device)
        self.backbone = backbone.to(self.device).eval()
        self.preprocess = preprocess
        self.precision = precision
        self.inference = prepare_for_inference(self.backbone, precision, bf16, compile, self.device)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.shard_rows = int(shard_rows)
        self.identity = dict(identity) if identity is not None else None
        self.preprocess_factory = preprocess_factory

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor, channel_names: Sequence[str], *,
                     precision: str | None = None) -> torch.Tensor:
        """Embeddings ``(B, D_out)`` (float32, on the CPU) of preprocessed ``images`` ``(B, C, H, W)``.

        :param precision: override the embedder's precision for this call.
        :raises cellssl.errors.DataError: if the channels do not fit the strategy.
        """
        use = self.inference if precision in (None, self.precision) else eager(self.backbone, precision, self.device)
        with use.context():
            out = self.strategy.embed(use.module, use.inputs(images), tuple(channel_names))
        return out.float().cpu()

    def preprocessed(self, dataset: Any, rows: Sequence[int]) -> tuple[torch.Tensor, tuple[str, ...]]:
        """The preprocessed images ``(len(rows), C, H, W)`` of dataset ``rows`` and their channel names."""
        samples = [dataset[int(i)] for i in rows]
        return torch.stack([self.preprocess(s.image, s.channels) for s in samples]).float(), tuple(samples[0].channels)

    def embed_rows(self, dataset: Any, rows: Sequence[int]) -> np.ndarray:
        """Embeddings ``(len(rows), D_out)`` of dataset ``rows``, in memory, in batches of ``batch_size``."""
        parts = []
        for start in range(0, len(rows), self.batch_size):
            images, names = self.preprocessed(dataset, rows[start : start + self.batch_size])
            parts.append(self.embed_images(images, names).numpy())
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    def export(self, dataset: Any, out_dir: str | Path, **writer: Any) -> Path:
        """Write the embeddings of ``dataset`` as a sharded set (see :func:`cellssl.embed.export.export_embeddings`
        for ``writer``: ``shard_rows``, ``indices``, ``shard_prefix``, ``fingerprint``, ``manifest_info``, ...)."""
        from cellssl.embed.export import export_embeddings

        writer.setdefault("shard_rows", self.shard_rows)
        return export_embeddings(dataset, self.strategy, self.backbone, out_dir, preprocess=self.preprocess,
                                 batch_size=self.batch_size, num_workers=self.num_workers, precision=self.precision,
                                 device=self.device, inference=self.inference, **writer)

    def for_dataset(self, dataset: Any, stats_dir: str | Path, *,
                    data_block: Mapping[str, Any] | None = None) -> Embedder:
        """An embedder for ``dataset`` (whose channels may differ from the run's): the same strategy, backbone
        (weights and feature recipe, not copied), precision, device and batch size, with the run's preprocessing
        rebuilt for ``dataset`` by the preprocessing factory (resize to ``embed.img_size``; ``normalize:`` with,
        in ``dataset`` mode, statistics computed on ``dataset`` and stored in ``stats_dir`` when neither
        ``normalize.stats_path`` nor the run's statistics cover its channels).

        :param stats_dir: folder for statistics computed on ``dataset`` (reused while ``dataset`` is unchanged).
        :param data_block: the options ``dataset`` was read with (bit depth, ...), recorded in its statistics'
            fingerprint and in :meth:`fingerprint`.
        :raises cellssl.errors.DataError: when the strategy does not take the dataset's channels (its own error,
            e.g. a ``fixed`` model given other channels), or the backbone was built for another number of input
            channels than the strategy needs for them.
        :raises ValueError: when this embedder was built without a preprocessing factory.
        """
        from cellssl.errors import DataError

        if self.preprocess_factory is None:
            raise ValueError("this Embedder was built without a preprocessing factory, so it cannot embed another "
                             "dataset; use the run's embedder (cellssl.pipeline.run_embedder / EvalContext.embedder)")
        names = tuple(dataset.channel_names)
        self.strategy.check_channels(names)
        needed, built = self.strategy.in_chans(names), getattr(self.backbone, "in_chans", None)
        if isinstance(built, int) and needed != built:
            raise DataError(
                f"the run's backbone takes {built} input channel(s) but its '{self.strategy.name}' channel strategy "
                f"needs {needed} for the {len(names)} channels {list(names)} of {dataset.describe()}; embed data "
                "with the channels the model was trained on, or use a channel-adaptive strategy "
                "(bag_of_channels, per_channel_concat)")
        preprocess, normalisation = self.preprocess_factory(dataset, Path(stats_dir), dict(data_block or {}))
        other = copy.copy(self)  # shares the prepared backbone: nothing is rebuilt or re-cast
        other.preprocess = preprocess
        if self.identity is not None:
            other.identity = {**self.identity, "normalize": normalisation}
        return other

    def fingerprint_parts(self, dataset: Any, data_block: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What this embedder's embeddings of ``dataset`` depend on, as plain data: ``data`` (block, rows, table
        digest, channels) and the embedder's identity (strategy, backbone, weights, features, img_size,
        precision, normalize). For the run's own data and block it equals the embed stage's
        :func:`~cellssl.plan.fingerprint.embedding_parts`.

        :raises ValueError: when this embedder was built without an identity.
        """
        if self.identity is None:
            raise ValueError("this Embedder was built without an identity (what its embeddings depend on), so it "
                             "has no fingerprint; use the run's embedder (cellssl.pipeline.run_embedder)")
        return {"data": dataset_identity(dict(data_block or {}), dataset), **self.identity}

    def fingerprint(self, dataset: Any, data_block: Mapping[str, Any] | None = None) -> str:
        """SHA-256 digest of :meth:`fingerprint_parts` (what an embedding set's manifest records)."""
        return digest(self.fingerprint_parts(dataset, data_block))

    def cached_export(self, dataset: Any, out_dir: str | Path, *, data_block: Mapping[str, Any] | None = None,
                      reuse: bool = True, manifest_info: Mapping[str, Any] | None = None) -> EmbeddingTable:
        """The embeddings of ``dataset`` kept in ``out_dir``: the complete set already there when its fingerprint
        is :meth:`fingerprint` of ``dataset`` (nothing is embedded again), else a fresh :meth:`export` (which
        resumes an interrupted export with the same fingerprint), read back.

        :param reuse: ``False`` embeds again even when the set there is current.
        :param manifest_info: extra entries of the manifest's ``info`` (the fingerprint's parts are added).
        :raises ValueError: when this embedder has no identity. Errors of :meth:`export` propagate.
        """
        from cellssl.embed.store import read_embeddings
        from cellssl.errors import DataError
        out_dir = Path(out_dir)
        parts = self.fingerprint_parts(dataset, data_block)  # hashes the dataset's table once
        fingerprint = digest(parts)
        if reuse and (out_dir / MANIFEST_FILE).is_file():
            try:
                table = read_embeddings(out_dir, expected_fingerprint=fingerprint, expected_parts=parts)
            except DataError as err:  # another model, preprocessing or data: the writer drops the stale shards
                logger.info("embedding %s again: %s", out_dir, err)
            else:
                logger.info("reusing the embeddings in %s (fingerprint %s)", out_dir, fingerprint[:12])
                return table
        elif not reuse:  # no resume either: every shard is written again
            for stale in [*out_dir.glob("part-*.parquet"), out_dir / MANIFEST_FILE]:
                stale.unlink(missing_ok=True)
        self.export(dataset, out_dir, fingerprint=fingerprint,
                    manifest_info={**dict(manifest_info or {}), "fingerprint_parts": parts})
        return read_embeddings(out_dir, expected_fingerprint=fingerprint)
