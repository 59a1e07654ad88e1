"""Entry point of the ``cellssl-chammi`` distribution (group ``cellssl``, name ``chammi``).

Import-light: only the standard library and the plugin's config dataclasses are imported here; datasets,
the evaluator and the download spec import pandas / torch / faiss when their factories are called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cellssl.api import hookimpl
from cellssl_chammi.config import (
    ChammiDatasetConfig,
    ChammiDownloadConfig,
    ChammiEvaluatorConfig,
    ChammiSubsetConfig,
)
from cellssl_chammi.subsets import SUBSETS

if TYPE_CHECKING:
    from cellssl.api import CliCommand, Registrar


def _subset_factory(key: str) -> Any:
    def build(config: ChammiSubsetConfig) -> Any:
        from cellssl_chammi.dataset import build_chammi_dataset

        return build_chammi_dataset(config, key)

    build.__doc__ = f"Factory of dataset ``chammi_{key}``."
    return build


def build_chammi(config: ChammiDatasetConfig) -> Any:
    """Factory of dataset ``chammi``: the subset named by ``config.subset``."""
    from cellssl_chammi.dataset import build_chammi_dataset

    return build_chammi_dataset(config, config.subset)


def build_evaluator(config: ChammiEvaluatorConfig) -> Any:
    """Factory of evaluator ``chammi``."""
    from cellssl_chammi.evaluator import build_chammi_evaluator

    return build_chammi_evaluator(config)


def build_download(config: ChammiDownloadConfig) -> Any:
    """Factory of download ``chammi``."""
    from cellssl_chammi.download import chammi_download_spec

    return chammi_download_spec(config)


@hookimpl
def cellssl_register_datasets(registry: Registrar) -> None:
    """``chammi_wtc``, ``chammi_hpa``, ``chammi_cp`` and ``chammi`` (a subset chosen by ``subset``)."""
    for key, subset in SUBSETS.items():
        registry.add(f"chammi_{key}", _subset_factory(key), ChammiSubsetConfig,
                     f"CHAMMI {subset.title}: {len(subset.channels)}-channel tapes ({', '.join(subset.channels)}), "
                     f"enriched_meta.csv labels and task splits")
    registry.add("chammi", build_chammi, ChammiDatasetConfig,
                 "one CHAMMI subset chosen by `subset` (wtc, hpa or cp); data.root is the CHAMMI folder")


@hookimpl
def cellssl_register_evaluators(registry: Registrar) -> None:
    """``chammi``: the benchmark's nine-task table (1-NN and linear, macro F1)."""
    registry.add("chammi", build_evaluator, ChammiEvaluatorConfig,
                 "CHAMMI protocol: WTC T1-T2, HPA T1-T3, CP T1-T4 macro F1 (1-NN / linear), novel classes leave-one-"
                 "group-out")


@hookimpl
def cellssl_register_downloads(registry: Registrar) -> None:
    """``chammi``: the archive of the public Zenodo record."""
    registry.add("chammi", build_download, ChammiDownloadConfig,
                 "CHAMMI benchmark archive from Zenodo record 7988357 (resumable; checksum saved beside it)")


@hookimpl
def cellssl_cli_commands() -> list[CliCommand]:
    """``cellssl chammi-table RUN_DIR...``."""
    from cellssl_chammi.cli import chammi_table_command

    return [chammi_table_command()]
