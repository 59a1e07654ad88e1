"""Entry point of the ``cellssl-jumpcp`` distribution (group ``cellssl``, name ``jumpcp``).

Import-light: only the standard library and the config dataclasses are imported here; the datasets and
the evaluator import pandas, tifffile, scikit-image and torch when their factories are called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cellssl.api import hookimpl
from cellssl_jumpcp.config import JumpCellsConfig, JumpMapConfig, JumpSitesConfig

if TYPE_CHECKING:
    from cellssl.api import CliCommand, Registrar


def build_sites(config: JumpSitesConfig) -> Any:
    """Factory of dataset ``jump_sites``."""
    from cellssl_jumpcp.sites import build_jump_sites

    return build_jump_sites(config)


def build_cells(config: JumpCellsConfig) -> Any:
    """Factory of dataset ``jump_cells``."""
    from cellssl_jumpcp.cells import build_jump_cells

    return build_jump_cells(config)


def build_map(config: JumpMapConfig) -> Any:
    """Factory of evaluator ``jump_map``."""
    from cellssl_jumpcp.evaluator import build_jump_map

    return build_jump_map(config)


@hookimpl
def cellssl_register_datasets(registry: Registrar) -> None:
    """``jump_sites`` (whole sites or tiles) and ``jump_cells`` (crops centred on nuclei)."""
    registry.add("jump_sites", build_sites, JumpSitesConfig,
                 "JUMP Cell Painting sites from load_data.csv: DNA, ER, RNA, AGP, Mito (+ brightfield), 16-bit, "
                 "illumination-corrected, optional tiles")
    registry.add("jump_cells", build_cells, JumpCellsConfig,
                 "JUMP Cell Painting single-cell crops centred on nuclei (CellProfiler locations or DNA segmentation)")


@hookimpl
def cellssl_register_evaluators(registry: Registrar) -> None:
    """``jump_map``: well profiles, per-plate normalisation on negative controls, activity / consistency mAP."""
    registry.add("jump_map", build_map, JumpMapConfig,
                 "JUMP profiling: median well profiles, negcon-fitted normalisation, mAP vs DMSO, fraction retrieved")


@hookimpl
def cellssl_cli_commands() -> list[CliCommand]:
    """``cellssl jump array CONFIG`` (plates as a job array) and ``cellssl jump merge CONFIG``."""
    from cellssl_jumpcp.cli import jump_commands

    return jump_commands()
