"""Entry point of the ``cellssl-hpa`` distribution (group ``cellssl``, name ``hpa``).

Import-light: only the standard library and the config dataclasses are imported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cellssl.api import hookimpl
from cellssl_hpa.config import HPADownloadConfig, HPAFovConfig, HPASingleCellConfig

if TYPE_CHECKING:
    from cellssl.api import Registrar


def build_single_cell(config: HPASingleCellConfig) -> Any:
    """Factory of dataset ``hpa_single_cell``."""
    from cellssl_hpa.dataset import build_hpa_single_cell

    return build_hpa_single_cell(config)


def build_fov(config: HPAFovConfig) -> Any:
    """Factory of dataset ``hpa_fov``."""
    from cellssl_hpa.dataset import build_hpa_fov

    return build_hpa_fov(config)


def build_download(config: HPADownloadConfig) -> Any:
    """Factory of download ``hpa``: raises a DataError saying where the data is published."""
    from cellssl_hpa.download import hpa_download_spec

    return hpa_download_spec(config)


@hookimpl
def cellssl_register_datasets(registry: Registrar) -> None:
    """``hpa_single_cell`` (HPAone) and ``hpa_fov`` (HPA-FoV, Kaggle 2018 layout)."""
    registry.add("hpa_single_cell", build_single_cell, HPASingleCellConfig,
                 "HPA masked single cells (HPAone): 4 channels, 19 localisation classes (multi-label), 29 cell lines")
    registry.add("hpa_fov", build_fov, HPAFovConfig,
                 "HPA fields of view (HPA-FoV or Kaggle 2018 one-PNG-per-channel): 28 classes, 35 cell lines")


@hookimpl
def cellssl_register_downloads(registry: Registrar) -> None:
    """``hpa``: explains where the HPA data is published (it has no archive URL to fetch)."""
    registry.add("hpa", build_download, HPADownloadConfig,
                 "Human Protein Atlas data: prints where HPAone, HPA-FoV and the Kaggle set are published")
