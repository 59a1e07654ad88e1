"""Embedding CHAMMI subsets with a run's model, rebuilt from the run directory's saved config.

One run config covers the three subsets although they have 3, 4 and 5 channels: the ``chammi``
evaluator embeds each subset itself with the run's channel strategy and backbone (a channel-adaptive
strategy such as ``bag_of_channels`` handles any channel count; a ``fixed`` model fails with the
strategy's own error). Everything is rebuilt from ``<run_dir>/config.yaml`` (the resolved config every
run saves) through cellssl's public functions, so the embeddings match what ``cellssl embed`` would write
for that subset:

- model: the runner's ``EvalContext.load_model()`` when it provides one (the run's strategy and backbone
  with its weights), else the ``backbone`` block built with the strategy's ``in_chans`` for the subset's
  channels and loaded from ``weights:`` (else the run's trained teacher; else left random, with a
  warning); ``embed.features`` (last blocks, average pooling) is applied as the embed stage does;
- preprocessing: ``embed.img_size`` resize and the ``normalize:`` section. In ``dataset`` mode the
  statistics come from ``normalize.stats_path``, else from ``<run_dir>/channel_stats.json`` when it
  covers the subset's channels (written by training or by the embed stage), else they are computed on
  the subset and stored beside its embeddings;
- output: ``<run_dir>/chammi_embeddings/<subset>/`` (Parquet shards + manifest), reused on a later
  evaluation when the model, the preprocessing and the subset's rows are unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cellssl.api import ConfigError

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from torch import nn

    from cellssl.api import CellDataset, EmbeddingTable

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
MODEL_KEY = "chammi_model"


class RunModel:
    """A run's strategy, backbone(s), weights and preprocessing.

    :param config: the run's resolved config. :param run_dir: the run directory.
    :raises ConfigError: for an invalid ``run`` / ``embed`` / ``normalize`` section or a missing backbone.
    :raises cellssl.errors.CheckpointError: when ``weights:`` names a missing file.
    """

    def __init__(self, config: DictConfig, run_dir: Path, load_model: Callable[[], tuple[Any, Any]] | None = None
                 ) -> None:
        from cellssl.config.schema import EmbedSection, NormalizeSection, RunSection
        from cellssl.config.validate import validate_block
        from cellssl.pipeline import Run, build_strategy, resolve_weights, select_device

        self.config = config
        self.run_dir = Path(run_dir)
        settings = validate_block(config.get("run"), RunSection, "run")
        self.embed = validate_block(config.get("embed"), EmbedSection, "embed")
        self.normalize = validate_block(config.get("normalize"), NormalizeSection, "normalize")
        self.device = select_device(settings.device)
        self.strategy = build_strategy(config)
        self.weights = resolve_weights(Run(config, settings, self.run_dir, self.device))
        self._backbones: dict[int, nn.Module] = {}
        self._load_model = load_model
        self._loaded: nn.Module | None = None

    @classmethod
    def from_run_dir(cls, run_dir: str | Path, load_model: Callable[[], tuple[Any, Any]] | None = None
                     ) -> RunModel:
        """Rebuild from ``<run_dir>/config.yaml``; ``load_model`` (``EvalContext.load_model``) supplies the
        strategy and backbone when given.

        :raises ConfigError: when the file is missing or has no ``backbone``.
        """
        from omegaconf import OmegaConf

        path = Path(run_dir) / CONFIG_FILE
        if not path.is_file():
            raise ConfigError("eval", f"the chammi evaluator embeds the CHAMMI subsets with the run's model, but "
                                      f"{path} (the run's saved config) does not exist; run it with `cellssl run`")
        config = OmegaConf.load(path)
        if config.get("backbone") is None:
            raise ConfigError("backbone", f"{path} names no backbone: the chammi evaluator needs the model "
                                          "that made the embeddings (backbone, channels and weights)")
        return cls(config, Path(run_dir), load_model)

    def identity(self) -> dict[str, Any]:
        """What the embeddings depend on: weights file (path, size, mtime), backbone, channels, embed and
        normalize settings. Stored in the manifest to decide whether cached embeddings can be reused."""
        from dataclasses import asdict

        from omegaconf import OmegaConf

        weights = None
        if self.weights is not None:
            stat = self.weights.stat()
            weights = {"path": str(self.weights.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

        def block(key: str) -> Any:
            value = self.config.get(key)
            return OmegaConf.to_container(value, resolve=True) if value is not None else None

        return {"weights": weights, "backbone": block("backbone"), "channels": block("channels"),
                "embed": asdict(self.embed), "normalize": asdict(self.normalize)}

    def _with_features(self, backbone: nn.Module) -> nn.Module:
        features = getattr(self.embed, "features", None)
        if features is not None and (features.n_last_blocks != 1 or features.avgpool):
            from cellssl.models.features import FeatureExtractor

            return FeatureExtractor(backbone, features.n_last_blocks, features.avgpool)
        return backbone

    def backbone_for(self, channel_names: tuple[str, ...]) -> nn.Module:
        """The backbone for data with ``channel_names``, weights loaded (see the module docstring)."""
        from cellssl.models.checkpoint import load_backbone_weights
        from cellssl.pipeline import build_backbone

        if self._load_model is not None:
            if self._loaded is None:
                self.strategy, backbone = self._load_model()
                self._loaded = self._with_features(backbone)
            return self._loaded
        in_chans = self.strategy.in_chans(channel_names)
        if in_chans not in self._backbones:
            backbone = build_backbone(self.config, self.strategy, channel_names)
            if self.weights is not None:
                load_backbone_weights(backbone, self.weights)
            else:
                logger.warning("chammi: embedding with a randomly initialised backbone (no weights)")
            self._backbones[in_chans] = self._with_features(backbone)
        return self._backbones[in_chans]

    def _normalizer(self, dataset: CellDataset, out_dir: Path) -> Any:
        from cellssl.data.normalize import ChannelStats, build_normalizer
        from cellssl.data.preprocess import CHANNEL_STATS_FILE, resolve_channel_stats

        if self.normalize.mode != "dataset":
            return build_normalizer(self.normalize, None)
        if self.normalize.stats_path:
            return build_normalizer(self.normalize, ChannelStats.load(self.normalize.stats_path))
        run_stats = self.run_dir / CHANNEL_STATS_FILE
        if run_stats.is_file():
            stats = ChannelStats.load(run_stats)
            if set(dataset.channel_names) <= set(stats.mean):
                return build_normalizer(self.normalize, stats)
        stats = resolve_channel_stats(out_dir, None, dataset, self.normalize.stats_samples)
        return build_normalizer(self.normalize, stats)

    def embed_dataset(self, dataset: CellDataset, out_dir: Path, reuse: bool = True) -> EmbeddingTable:
        """Embed ``dataset`` into ``out_dir`` (or reuse what is there) and read the table back."""
        from cellssl.api import read_embeddings
        from cellssl.data.preprocess import EvalPreprocess
        from cellssl.embed.export import export_embeddings
        from cellssl_chammi.dataset import same_rows

        identity = self.identity()
        if reuse and (out_dir / "manifest.json").is_file():
            cached = read_embeddings(out_dir)
            if cached.manifest.get("info", {}).get(MODEL_KEY) == identity and \
                    same_rows(cached.metadata, dataset.metadata):
                logger.info("chammi: reusing the embeddings in %s", out_dir)
                return cached
        channels = tuple(dataset.channel_names)
        backbone = self.backbone_for(channels)
        preprocess = EvalPreprocess(self._normalizer(dataset, out_dir), self.embed.img_size)
        export_embeddings(
            dataset, self.strategy, backbone, out_dir, preprocess=preprocess, batch_size=self.embed.batch_size,
            num_workers=self.embed.num_workers, precision=self.embed.precision, device=self.device,
            shard_rows=self.embed.shard_rows, manifest_info={MODEL_KEY: identity},
        )
        return read_embeddings(out_dir)
