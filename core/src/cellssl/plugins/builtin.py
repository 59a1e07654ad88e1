"""The core's own components, registered as an internal plugin through the same hooks as any other.

This module stays import-light: each hook imports the modules it registers from when it is called
(once, on first use of the registries).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cellssl.plugins.hookspecs import hookimpl
from cellssl.plugins.registry import Registrar


@hookimpl
def cellssl_register_datasets(registry: Registrar) -> None:
    """``synthetic_cells`` and the generic ``table`` dataset."""
    from cellssl.data.synthetic import SyntheticCellsConfig, build_synthetic_cells
    from cellssl.data.table import TableDatasetConfig, build_table_dataset

    registry.add("synthetic_cells", build_synthetic_cells, SyntheticCellsConfig,
                 "procedural multi-channel cells with four known phenotypes (seeded; no files needed)")
    registry.add("table", build_table_dataset, TableDatasetConfig,
                 "metadata CSV/Parquet + image files (multi-page/OME TIFF, one file per channel, PNG/JPEG, tapes)")


@hookimpl
def cellssl_register_channel_strategies(registry: Registrar) -> None:
    """``fixed``, ``bag_of_channels`` and ``per_channel_concat``."""
    from cellssl.channels.bag import BagOfChannelsConfig, build_bag_of_channels
    from cellssl.channels.fixed import FixedChannelsConfig, build_fixed
    from cellssl.channels.per_channel import PerChannelConcatConfig, build_per_channel_concat

    registry.add("fixed", build_fixed, FixedChannelsConfig,
                 "one backbone over all C channels; channel set and order fixed at training time")
    registry.add("bag_of_channels", build_bag_of_channels, BagOfChannelsConfig,
                 "1-channel backbone on every (image, channel) pair; channels folded into the batch at inference")
    registry.add("per_channel_concat", build_per_channel_concat, PerChannelConcatConfig,
                 "1-channel backbone; per-channel embeddings concatenated in a named channel order")


def _arch_config(base: type, arch: str) -> type:
    """A subclass of the dataclass ``base`` whose ``arch`` defaults to ``arch``."""
    return dataclasses.make_dataclass(
        f"{base.__name__}_{arch}", [("arch", str, dataclasses.field(default=arch))], bases=(base,),
    )


def _fixed_arch_factory(builder: Any, arch: str) -> Any:
    from cellssl.errors import ConfigError

    def factory(config: Any, in_chans: int) -> Any:
        if config.arch != arch:
            raise ConfigError("backbone.arch", f"is '{config.arch}' but the backbone name is '{arch}'; "
                                               "drop `arch` or change `name`.")
        return builder(config, in_chans)

    return factory


@hookimpl
def cellssl_register_backbones(registry: Registrar) -> None:
    """Vision Transformers (DINOv2 layout) and torchvision ResNets with any ``in_chans``."""
    from cellssl.models.resnet import RESNET_ARCHS, ResNetConfig, build_resnet
    from cellssl.models.vit import ARCHS, ViTConfig, build_vit

    for arch, (dim, depth, heads) in ARCHS.items():
        registry.add(arch, _fixed_arch_factory(build_vit, arch), _arch_config(ViTConfig, arch),
                     f"Vision Transformer, DINOv2 layout (dim {dim}, depth {depth}, {heads} heads)")
    for arch in RESNET_ARCHS:
        registry.add(arch, _fixed_arch_factory(build_resnet, arch), _arch_config(ResNetConfig, arch),
                     f"torchvision {arch} with any number of input channels, no classifier")


@hookimpl
def cellssl_register_objectives(registry: Registrar) -> None:
    """``dino`` (DINO v1) and ``dinov2`` (DINO + iBOT + KoLeo)."""
    from cellssl.objectives.dino import DINOConfig, build_dino
    from cellssl.objectives.dinov2 import DINOv2Config, build_dinov2

    registry.add("dino", build_dino, DINOConfig,
                 "DINO v1: multi-crop self-distillation with an EMA teacher (any backbone returning (B, D))")
    registry.add("dinov2", build_dinov2, DINOv2Config,
                 "DINOv2: DINO + iBOT masked-patch loss (ViT) + KoLeo, Sinkhorn-Knopp targets")


@hookimpl
def cellssl_register_evaluators(registry: Registrar) -> None:
    """The faiss kNN evaluator."""
    from cellssl.eval.knn_evaluator import KNNEvaluatorConfig, build_knn_evaluator

    registry.add("knn", build_knn_evaluator, KNNEvaluatorConfig,
                 "faiss kNN classification (cosine/L2, weighted or majority votes, k sweep, multi-label, few-shot)")

    from cellssl.eval.cross_validation import CrossValidationConfig, build_cross_validation
    from cellssl.eval.linear_evaluator import LinearEvaluatorConfig, build_linear_evaluator

    registry.add("linear", build_linear_evaluator, LinearEvaluatorConfig,
                 "linear probe: grid of heads (lr x wd) trained at once, chosen on a validation split, CE or BCE")
    registry.add("cross_validation", build_cross_validation, CrossValidationConfig,
                 "k-fold (stratified or grouped) of classifier evaluators: F1, recall, precision, balanced acc")

    from cellssl.eval.attention_maps import AttentionMapsConfig, build_attention_maps
    from cellssl.eval.channel_attribution import ChannelAttributionConfig, build_channel_attribution
    from cellssl.eval.nsc import NSCConfig, build_nsc_nscb
    from cellssl.eval.retrieval_map import RetrievalMAPConfig, build_retrieval_map
    from cellssl.eval.umap_plot import UMAPConfig, build_umap

    registry.add("retrieval_map", build_retrieval_map, RetrievalMAPConfig,
                 "mAP of retrieving same-label profiles against negative controls, null p-values per group")
    registry.add("nsc_nscb", build_nsc_nscb, NSCConfig,
                 "cosine 1-NN MoA accuracy, not-same-compound and not-same-compound-or-batch, on profiles")
    registry.add("umap", build_umap, UMAPConfig,
                 "seeded 2-D UMAP of the embeddings, one PNG per metadata column it is coloured by")
    registry.add("attention_maps", build_attention_maps, AttentionMapsConfig,
                 "ViT last-block CLS/register attention per head (per channel for 1-channel models), PNG grids")
    registry.add("channel_attribution", build_channel_attribution, ChannelAttributionConfig,
                 "per-channel contribution: embedding-block importance and drop-one-channel score change")


@hookimpl
def cellssl_cli_commands() -> list[Any]:
    """``cellssl data download NAME --to DIR``: fetch a dataset registered under kind ``download``."""
    from cellssl.data.download_cli import download_cli_command

    return [download_cli_command()]
