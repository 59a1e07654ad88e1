"""The core's own components, registered as an internal plugin through the same hooks as any other.

This module stays import-light, and so does registering: each hook imports only the config dataclasses
(modules that do not import torch) when it is called, and every factory imports the module that builds
the component on its first call (:func:`lazy`). Listing plugins or validating a config needs no torch.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

from cellssl.plugins.hookspecs import hookimpl
from cellssl.plugins.registry import Registrar


def lazy(target: str) -> Callable[..., Any]:
    """A factory that imports ``"package.module:function"`` when first called and forwards to it.

    Registration then costs only the import of the (light) config dataclasses; torch and the modules that
    build the components load when a component is built.
    """
    module_name, _, attr = target.partition(":")

    def factory(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module_name), attr)(*args, **kwargs)

    factory.__name__ = factory.__qualname__ = attr
    factory.__doc__ = f"Builds the component with :func:`{module_name}.{attr}` (imported on first call)."
    return factory


@hookimpl
def cellssl_register_datasets(registry: Registrar) -> None:
    """``synthetic_cells`` and the generic ``table`` dataset."""
    from cellssl.data.synthetic_config import SyntheticCellsConfig
    from cellssl.data.table_config import TableDatasetConfig

    registry.add("synthetic_cells", lazy("cellssl.data.synthetic:build_synthetic_cells"), SyntheticCellsConfig,
                 "procedural multi-channel cells with four known phenotypes (seeded; no files needed)")
    registry.add("table", lazy("cellssl.data.table:build_table_dataset"), TableDatasetConfig,
                 "metadata CSV/Parquet + image files (multi-page/OME TIFF, one file per channel, PNG/JPEG, tapes)")


@hookimpl
def cellssl_register_channel_strategies(registry: Registrar) -> None:
    """``fixed``, ``bag_of_channels`` and ``per_channel_concat``."""
    from cellssl.channels.configs import BagOfChannelsConfig, FixedChannelsConfig, PerChannelConcatConfig

    registry.add("fixed", lazy("cellssl.channels.fixed:build_fixed"), FixedChannelsConfig,
                 "one backbone over all C channels; channel set and order fixed at training time")
    registry.add("bag_of_channels", lazy("cellssl.channels.bag:build_bag_of_channels"), BagOfChannelsConfig,
                 "1-channel backbone on every (image, channel) pair; channels folded into the batch at inference")
    registry.add("per_channel_concat", lazy("cellssl.channels.per_channel:build_per_channel_concat"),
                 PerChannelConcatConfig,
                 "1-channel backbone; per-channel embeddings concatenated in a named channel order")


def _arch_config(base: type, arch: str) -> type:
    """A subclass of the dataclass ``base`` whose ``arch`` defaults to ``arch``."""
    return dataclasses.make_dataclass(
        f"{base.__name__}_{arch}", [("arch", str, dataclasses.field(default=arch))], bases=(base,),
    )


def _fixed_arch_factory(builder: str, arch: str) -> Any:
    from cellssl.errors import ConfigError

    build = lazy(builder)

    def factory(config: Any, in_chans: int) -> Any:
        if config.arch != arch:
            raise ConfigError("backbone.arch", f"is '{config.arch}' but the backbone name is '{arch}'; "
                                               "drop `arch` or change `name`.")
        return build(config, in_chans)

    return factory


@hookimpl
def cellssl_register_backbones(registry: Registrar) -> None:
    """Vision Transformers (DINOv2 layout) and torchvision ResNets with any ``in_chans``."""
    from cellssl.models.resnet_config import RESNET_ARCHS, ResNetConfig
    from cellssl.models.vit_config import ARCHS, ViTConfig

    for arch, (dim, depth, heads) in ARCHS.items():
        registry.add(arch, _fixed_arch_factory("cellssl.models.vit:build_vit", arch), _arch_config(ViTConfig, arch),
                     f"Vision Transformer, DINOv2 layout (dim {dim}, depth {depth}, {heads} heads)")
    for arch in RESNET_ARCHS:
        registry.add(arch, _fixed_arch_factory("cellssl.models.resnet:build_resnet", arch),
                     _arch_config(ResNetConfig, arch),
                     f"torchvision {arch} with any number of input channels, no classifier")


@hookimpl
def cellssl_register_objectives(registry: Registrar) -> None:
    """``dino`` (DINO v1) and ``dinov2`` (DINO + iBOT + KoLeo)."""
    from cellssl.objectives.dino_config import DINOConfig
    from cellssl.objectives.dinov2_config import DINOv2Config

    registry.add("dino", lazy("cellssl.objectives.dino:build_dino"), DINOConfig,
                 "DINO v1: multi-crop self-distillation with an EMA teacher (any backbone returning (B, D))")
    registry.add("dinov2", lazy("cellssl.objectives.dinov2:build_dinov2"), DINOv2Config,
                 "DINOv2: DINO + iBOT masked-patch loss (ViT) + KoLeo, Sinkhorn-Knopp targets")


@hookimpl
def cellssl_register_evaluators(registry: Registrar) -> None:
    """kNN, linear probe, logistic regression, cross-validation, retrieval mAP, NSC/NSCB, regression, UMAP,
    attention maps, channel attribution."""
    from cellssl.eval.attention_maps_config import AttentionMapsConfig
    from cellssl.eval.channel_attribution import ChannelAttributionConfig
    from cellssl.eval.cross_validation import CrossValidationConfig
    from cellssl.eval.knn import KNNEvaluatorConfig
    from cellssl.eval.linear_config import LinearEvaluatorConfig
    from cellssl.eval.logistic_regression import LogisticRegressionConfig
    from cellssl.eval.nsc_nscb import NSCConfig
    from cellssl.eval.regression_config import RegressionConfig
    from cellssl.eval.retrieval_map import RetrievalMAPConfig
    from cellssl.eval.umap import UMAPConfig

    registry.add("knn", lazy("cellssl.eval.knn:build_knn_evaluator"), KNNEvaluatorConfig,
                 "faiss kNN classification (cosine/L2, weighted or majority votes, k sweep, multi-label, few-shot)")
    registry.add("linear", lazy("cellssl.eval.linear:build_linear_evaluator"), LinearEvaluatorConfig,
                 "linear probe: grid of heads (lr x wd) trained at once, chosen on a validation split, CE or BCE")
    registry.add("logistic_regression", lazy("cellssl.eval.logistic_regression:build_logistic_regression"),
                 LogisticRegressionConfig, "scikit-learn logistic regression (one-vs-rest or multinomial)")
    registry.add("cross_validation", lazy("cellssl.eval.cross_validation:build_cross_validation"),
                 CrossValidationConfig,
                 "k-fold (stratified or grouped) of classifier evaluators: F1, recall, precision, balanced acc")
    registry.add("retrieval_map", lazy("cellssl.eval.retrieval_map:build_retrieval_map"), RetrievalMAPConfig,
                 "mAP of retrieving same-label profiles against negative controls, null p-values per group")
    registry.add("nsc_nscb", lazy("cellssl.eval.nsc_nscb:build_nsc_nscb"), NSCConfig,
                 "cosine 1-NN MoA accuracy, not-same-compound and not-same-compound-or-batch, on profiles")
    registry.add("regression", lazy("cellssl.eval.regression:build_regression"), RegressionConfig,
                 "cross-validated ridge / kNN / random-forest regression of continuous targets: R², Pearson, Spearman")
    registry.add("umap", lazy("cellssl.eval.umap:build_umap"), UMAPConfig,
                 "seeded 2-D UMAP of the embeddings, one PNG per metadata column it is coloured by")
    registry.add("attention_maps", lazy("cellssl.eval.attention_maps:build_attention_maps"), AttentionMapsConfig,
                 "ViT last-block CLS/register attention per head (per channel for 1-channel models), PNG grids")
    registry.add("channel_attribution", lazy("cellssl.eval.channel_attribution:build_channel_attribution"),
                 ChannelAttributionConfig,
                 "per-channel contribution: embedding-block importance and drop-one-channel score change")


@hookimpl
def cellssl_register_launchers(registry: Registrar) -> None:
    """``local`` (this process, or one rank under torchrun) and ``slurm`` (a job through submitit)."""
    from cellssl.launch.launcher_config import LocalLauncherConfig
    from cellssl.launch.slurm_config import SlurmLauncherConfig

    registry.add("local", lazy("cellssl.launch.launcher:build_local_launcher"), LocalLauncherConfig,
                 "run in this process (one rank under torchrun)")
    registry.add("slurm", lazy("cellssl.launch.slurm:build_slurm_launcher"), SlurmLauncherConfig,
                 "submit the run as a SLURM job through submitit (checkpoint, requeue and resume on preemption)")


@hookimpl
def cellssl_register_models(registry: Registrar) -> None:
    """The first-party model cards (:mod:`cellssl.zoo.cards`)."""
    from cellssl.zoo.card import add_card
    from cellssl.zoo.cards import CARDS

    for card in CARDS:
        add_card(registry, card)


@hookimpl
def cellssl_cli_commands() -> list[Any]:
    """``cellssl data download NAME --to DIR``: fetch a dataset registered under kind ``download``."""
    from cellssl.data.download_cli import download_cli_command

    return [download_cli_command()]
