"""The public surface for plugin authors: everything a plugin may import from cellssl, in one place.

``from cellssl.api import X`` works for every name in :data:`__all__`; a plugin imports nothing else from
``cellssl`` (its tests may also use :mod:`cellssl.testing`). Importing this module is cheap: it imports no
torch, pandas or model code. Each name is resolved on first access (PEP 562 module ``__getattr__``), so an
import-light entry-point module can say ``from cellssl.api import Registrar, hookimpl`` at module level and
import torch-backed names (``CellDataset``, ``ChannelStrategy``) inside its factories.

Plugin hooks
    ``hookimpl``: decorator marking a plugin's hook implementations (``cellssl_register_datasets(registry)``
    and the other hooks of :mod:`cellssl.plugins.hookspecs`).
    ``Registrar``: what a registration hook receives; ``registry.add(name, factory, config_cls, summary)``
    registers one component (``config_cls`` a dataclass; raises ``DuplicateNameError`` for a taken name).
    ``lazy("package.module:function")``: a factory that imports its module on first call, so registering
    costs no heavy import.
    ``CliCommand(name, help, add_arguments, run, group=None)``: a ``cellssl`` subcommand returned by
    ``cellssl_cli_commands()``; ``run(args) -> int`` raises ``CellsslError`` for user mistakes.
    ``DownloadSpec(name, files, ...)`` / ``DownloadFile(url, path, size, sha256, unpack)``: what
    ``cellssl data download NAME`` fetches (returned by a download factory).
    ``check_data_root(root, required, dataset=, how_to_get=)``: the root folder as a path, or a
    ``DataError`` naming what is missing and how to get it.

Datasets and samples
    ``CellDataset``: map-style dataset of ``CellSample``; a subclass sets ``metadata`` (DataFrame, one row
    per sample, index ``0..N-1``), ``channel_names`` (canonical names) and ``label_columns``, and implements
    ``load_image(index) -> float32 (C, H, W)``. Indexing out of range raises ``IndexError``.
    ``subset_metadata(metadata, indices)``: rows ``indices`` with a fresh ``0..n-1`` index.
    ``CellSample(image, channels, index, meta)``: ``image`` float32 ``(C, H, W)``, ``channels`` the ``C``
    names, ``meta`` the metadata row as a dict; ``select_channels(indices)`` keeps some channels.
    ``TableDataset(config, frame=..., root=...)`` / ``TableDatasetConfig``: a dataset from a metadata table
    and image files, validated row by row (errors name the row and the file); ``read_table(path)`` reads a
    CSV or Parquet table (``DataError`` naming the file otherwise).

Images, bit depth and channel names
    ``read_image(path)`` -> ``ImageData`` (``.array`` ``(C, H, W)``, ``.channel_names`` from OME metadata or
    ``None``), ``read_tiff``, ``read_pil``, ``read_channel_files(paths)`` (one file per channel),
    ``split_tape(array, channel_width)`` (CHAMMI tapes ``(H, W*C)`` -> ``(C, H, W)``),
    ``SUPPORTED_SUFFIXES`` / ``TIFF_SUFFIXES`` / ``PIL_SUFFIXES``. Unreadable or missing files raise
    ``DataError`` naming the file.
    ``BitDepth`` / ``parse_bit_depth(value)`` (``"uint8"``, ``"uint16"``, ``"float"``, ``"dtype"`` or a bit
    count) / ``scale_to_unit(array, bit_depth, source=)`` (float32 scaled by the declared depth; a value
    above the depth's maximum is a ``DataError`` naming ``source``).
    ``canonical_channel_name(name)``: the shared vocabulary's name (``"Hoechst"`` -> ``"dna"``), or the
    lower-cased free name; ``CANONICAL_CHANNELS``: the vocabulary.

Labels
    ``parse_flags(series, what)``: a boolean array from ``True/False``, ``1/0``, ``yes/no`` cells
    (``DataError`` naming ``what`` and the bad value). ``labels_from_metadata(...)`` -> ``EvalLabels``: the
    label matrix of a single-label, separator-joined or boolean-columns label layout.

Channel strategies
    ``ChannelStrategy``: ``in_chans(names)``, ``training_dataset(dataset)``, ``embed(backbone, images,
    names) -> (B, out_dim)``, ``block_names(names)`` (``out_dim = embed_dim * len(block_names)``), optional
    ``check_channels(names)`` (raise ``DataError``) and ``input_order(names)``.
    ``ChannelSampleDataset(datasets)``: the N x C single-channel samples (index ``i`` -> image ``i // C``,
    channel ``i % C``). ``embed_channels_folded(backbone, images)``: ``(B, C, H, W)`` -> ``(B, C, D)`` in one
    forward pass of ``(B*C, 1, H, W)``; ``embed_channels_one_by_one``: the same, one pass per channel.

Backbones
    ``Backbone``: the contract a backbone factory ``factory(config, in_chans)`` returns: an ``nn.Module``
    whose ``forward`` maps ``(N, in_chans, H, W)`` float images to ``(N, D)`` embeddings, with integer
    attributes ``embed_dim`` (``D``) and ``in_chans``; it must run under ``torch.autocast`` (bf16) on CPU and
    GPU and never call ``.cuda()``. ``isinstance(module, Backbone)`` checks the attributes.

Objectives and evaluators
    ``Objective``: the SSL objective base class (an ``nn.Module`` whose ``forward(batch, teacher_temp=)``
    returns ``ObjectiveOutput``; see :mod:`cellssl.objectives.base`).
    ``Evaluator``: ``evaluate(table, context) -> dict`` with ``metrics`` (flat name -> number), split sizes
    and ``config``; ``EvalContext``: run directory, label columns, identity, model and dataset loaders.
    ``to_jsonable(value)``: numpy, paths, tuples and dataclasses as plain JSON (non-finite floats -> None);
    ``write_result_json(result, run_dir, name)``: ``<run_dir>/eval/<name>.json``, atomically.
    ``Embedder``: what ``EvalContext.embedder()`` returns, the run's embedding path (preprocessing, strategy,
    weights, feature recipe): ``embed_rows(dataset, rows)``, ``embed_images(images, names)``,
    ``for_dataset(dataset, stats_dir, data_block=)`` (the same model with the run's preprocessing rebuilt for a
    dataset with other channels), ``fingerprint(dataset, data_block)`` and ``cached_export(dataset, folder,
    data_block=)`` (an embedding set reused while its fingerprint is unchanged).
    ``EmbeddingTable`` (``metadata``, ``embeddings`` ``(N, D)`` float32, ``manifest``) /
    ``read_embeddings(path)`` (a complete embedding folder or one shard; ``DataError`` otherwise) /
    ``EMBEDDING_COLUMN``.
    ``knn_classify`` / ``fit_linear_probe`` (with ``DEFAULT_LEARNING_RATES`` / ``DEFAULT_WEIGHT_DECAYS``):
    the core's kNN and linear-probe engines; ``aggregate_profiles`` / ``normalize_profiles`` /
    ``require_columns``: well- or treatment-level profiles; ``average_precisions`` / ``group_map_pvalues``:
    mean average precision with permutation p-values.

Augmentations (for plugins shipping a recipe)
    ``AugmentConfig`` and its blocks (``CropConfig``, ``FlipConfig``, ``Rot90Config``,
    ``IntensityRescaleConfig``, ``BrightnessContrastConfig``, ``BlurConfig``, ``NoiseConfig``,
    ``ChannelDropConfig``), ``MultiCropConfig``, ``NormalizeConfig``: the dataclasses of the ``train:``
    augmentation and ``normalize:`` blocks.

Runs (for workflow plugins that plan, execute and combine whole runs, e.g. one run per plate)
    ``load_run_config(path, overrides)``: a YAML run config with ``key=value`` overrides applied
    (``ConfigError`` for a missing file, bad YAML or an unknown top-level key).
    ``build_run_plan(config, stages=None)`` -> ``RunPlan``: every section and every ``eval[i]`` validated,
    nothing read but the ``weights:`` file's existence (``ConfigError`` naming the full key path). A plan's
    typed sections: ``run``, ``stages``, ``data`` (``.component.name`` / ``.component.config``), ``channels``,
    ``backbone``, ``objective``, ``weights``, ``embed``, ``normalize``, ``evaluators`` (``.name``, ``.key``,
    ``.build()``), ``launcher`` (``.name``, ``.settings``) and ``run_dir``; ``.as_dict()`` of a block gives it
    with every default. ``plan_dataset(plan)``: the dataset the plan's checks built (``use_channels`` applied),
    built on first use. ``launch(config_or_plan, stages=None, restart=False)`` -> ``.run_dir``, ``.outputs``
    (stage -> output, e.g. ``outputs["embed"]`` the embedding folder) and ``.job``: the plan handed to its
    ``launcher:`` (``local`` runs it in this process).
    ``run_channel_stats(plan)``: the ``channel_stats.json`` the plan's stages normalise with
    (``normalize.mode: dataset``), computed into the run directory unless it is current.
    ``EmbeddingWriter(folder, fingerprint=, expected_rows=, info=, overwrite=)``: writes rows
    (``writer.write(metadata, embeddings)``) as a sharded embedding set whose manifest is written last, so
    ``read_embeddings`` accepts it only once complete.
    ``SlurmLauncherConfig``: the ``slurm`` launcher's settings; ``submit_job_array(settings, run_dir, tasks,
    parallel=None)``: one submitit job per picklable callable, as one job array (``cluster: local`` runs them
    on this machine); returns the jobs (``.result()``, ``.job_id``, ``.paths.folder``).

Errors
    ``CellsslError`` (base; the CLI prints its message and exits 2), ``ConfigError(key, message)`` (names
    the config key), ``DataError`` (names the file / row and what to do), ``UnknownNameError``,
    ``DuplicateNameError``, ``CheckpointError``, ``TrainingDivergedError``.

Atomic writers
    ``atomic_open(path, mode)`` (context manager; the file appears complete or not at all),
    ``atomic_write_text(path, text)``, ``atomic_write_json(path, obj)``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import Tensor


@runtime_checkable
class Backbone(Protocol):
    """The backbone contract: an ``nn.Module`` mapping ``(N, in_chans, H, W)`` to ``(N, embed_dim)``.

    :ivar embed_dim: ``D``, the size of one embedding.
    :ivar in_chans: the number of input channels the module was built for.
    """

    embed_dim: int
    in_chans: int

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_chans, H, W)`` float images -> ``(N, embed_dim)`` embeddings."""
        ...


# public name -> "module:attribute" it is re-exported from (imported on first access).
_EXPORTS: dict[str, str] = {
    # plugin hooks
    "hookimpl": "cellssl.plugins.hookspecs:hookimpl",
    "Registrar": "cellssl.plugins.registry:Registrar",
    "CliCommand": "cellssl.plugins.registry:CliCommand",
    "lazy": "cellssl.plugins.builtin:lazy",
    "DownloadSpec": "cellssl.data.download:DownloadSpec",
    "DownloadFile": "cellssl.data.download:DownloadFile",
    "check_data_root": "cellssl.data.download:check_data_root",
    # datasets and samples
    "CellDataset": "cellssl.data.dataset:CellDataset",
    "subset_metadata": "cellssl.data.dataset:subset_metadata",
    "CellSample": "cellssl.data.sample:CellSample",
    "TableDataset": "cellssl.data.table:TableDataset",
    "TableDatasetConfig": "cellssl.data.table_config:TableDatasetConfig",
    "read_table": "cellssl.data.table:read_table",
    # images, bit depth, channel names
    "ImageData": "cellssl.data.readers:ImageData",
    "read_image": "cellssl.data.readers:read_image",
    "read_tiff": "cellssl.data.readers:read_tiff",
    "read_pil": "cellssl.data.readers:read_pil",
    "read_channel_files": "cellssl.data.readers:read_channel_files",
    "split_tape": "cellssl.data.readers:split_tape",
    "SUPPORTED_SUFFIXES": "cellssl.data.readers:SUPPORTED_SUFFIXES",
    "TIFF_SUFFIXES": "cellssl.data.readers:TIFF_SUFFIXES",
    "PIL_SUFFIXES": "cellssl.data.readers:PIL_SUFFIXES",
    "BitDepth": "cellssl.data.bitdepth:BitDepth",
    "parse_bit_depth": "cellssl.data.bitdepth:parse_bit_depth",
    "scale_to_unit": "cellssl.data.bitdepth:scale_to_unit",
    "canonical_channel_name": "cellssl.data.vocabulary:canonical_channel_name",
    "CANONICAL_CHANNELS": "cellssl.data.vocabulary:CANONICAL_CHANNELS",
    # labels
    "parse_flags": "cellssl.data.labels:parse_flags",
    "EvalLabels": "cellssl.data.labels:EvalLabels",
    "labels_from_metadata": "cellssl.data.labels:labels_from_metadata",
    # channel strategies
    "ChannelStrategy": "cellssl.channels.base:ChannelStrategy",
    "ChannelSampleDataset": "cellssl.channels.single_channel:ChannelSampleDataset",
    "embed_channels_folded": "cellssl.channels.single_channel:embed_channels_folded",
    "embed_channels_one_by_one": "cellssl.channels.single_channel:embed_channels_one_by_one",
    # objectives and evaluators
    "Objective": "cellssl.objectives.base:Objective",
    "ObjectiveOutput": "cellssl.objectives.base:ObjectiveOutput",
    "Evaluator": "cellssl.eval.base:Evaluator",
    "EvalContext": "cellssl.eval.base:EvalContext",
    "to_jsonable": "cellssl.eval.base:to_jsonable",
    "write_result_json": "cellssl.eval.base:write_result_json",
    "EmbeddingTable": "cellssl.embed.store:EmbeddingTable",
    "read_embeddings": "cellssl.embed.store:read_embeddings",
    "EMBEDDING_COLUMN": "cellssl.embed.store:EMBEDDING_COLUMN",
    "knn_classify": "cellssl.eval.engines.knn:knn_classify",
    "fit_linear_probe": "cellssl.eval.engines.linear_probe:fit_linear_probe",
    "DEFAULT_LEARNING_RATES": "cellssl.eval.engines.linear_probe:DEFAULT_LEARNING_RATES",
    "DEFAULT_WEIGHT_DECAYS": "cellssl.eval.engines.linear_probe:DEFAULT_WEIGHT_DECAYS",
    "aggregate_profiles": "cellssl.eval.engines.profiles:aggregate_profiles",
    "normalize_profiles": "cellssl.eval.engines.profiles:normalize_profiles",
    "require_columns": "cellssl.eval.engines.profiles:require_columns",
    "average_precisions": "cellssl.eval.engines.average_precision:average_precisions",
    "group_map_pvalues": "cellssl.eval.engines.average_precision:group_map_pvalues",
    # augmentation and normalisation blocks
    "AugmentConfig": "cellssl.data.augment_config:AugmentConfig",
    "CropConfig": "cellssl.data.augment_config:CropConfig",
    "FlipConfig": "cellssl.data.augment_config:FlipConfig",
    "Rot90Config": "cellssl.data.augment_config:Rot90Config",
    "IntensityRescaleConfig": "cellssl.data.augment_config:IntensityRescaleConfig",
    "BrightnessContrastConfig": "cellssl.data.augment_config:BrightnessContrastConfig",
    "BlurConfig": "cellssl.data.augment_config:BlurConfig",
    "NoiseConfig": "cellssl.data.augment_config:NoiseConfig",
    "ChannelDropConfig": "cellssl.data.augment_config:ChannelDropConfig",
    "MultiCropConfig": "cellssl.data.multicrop_config:MultiCropConfig",
    "NormalizeConfig": "cellssl.data.normalize_config:NormalizeConfig",
    # runs, for workflow plugins
    "load_run_config": "cellssl.config.compose:load_run_config",
    "build_run_plan": "cellssl.plan.build:build_plan",
    "RunPlan": "cellssl.plan.model:RunPlan",
    "plan_dataset": "cellssl.plan.checks:plan_dataset",
    "launch": "cellssl.launch.launcher:launch",
    "run_channel_stats": "cellssl.pipeline:run_channel_stats",
    "EmbeddingWriter": "cellssl.embed.store:EmbeddingWriter",
    "SlurmLauncherConfig": "cellssl.launch.slurm_config:SlurmLauncherConfig",
    "submit_job_array": "cellssl.launch.slurm:submit_job_array",
    # errors
    "CellsslError": "cellssl.errors:CellsslError",
    "ConfigError": "cellssl.errors:ConfigError",
    "DataError": "cellssl.errors:DataError",
    "UnknownNameError": "cellssl.errors:UnknownNameError",
    "DuplicateNameError": "cellssl.errors:DuplicateNameError",
    "CheckpointError": "cellssl.errors:CheckpointError",
    "TrainingDivergedError": "cellssl.errors:TrainingDivergedError",
    # atomic writers
    "atomic_open": "cellssl.atomic:atomic_open",
    "atomic_write_text": "cellssl.atomic:atomic_write_text",
    "atomic_write_json": "cellssl.atomic:atomic_write_json",
    # the run's embedder (EvalContext.embedder)
    "Embedder": "cellssl.embed.embedder:Embedder",
}

__all__ = sorted(["Backbone", *_EXPORTS])


def __getattr__(name: str) -> Any:
    """Resolve a public name on first access (PEP 562) and cache it in the module.

    :raises AttributeError: for a name that is not part of the public API.
    """
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'cellssl.api' has no attribute {name!r}; the public names are listed in "
                             "cellssl.api.__all__")
    module_name, _, attribute = target.partition(":")
    value = getattr(importlib.import_module(module_name), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
