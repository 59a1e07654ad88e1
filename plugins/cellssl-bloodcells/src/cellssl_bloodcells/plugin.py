"""Entry point of the ``cellssl-bloodcells`` distribution (group ``cellssl``, name ``bloodcells``).

Import-light: nothing heavier than the standard library is imported here; the dataset module (pandas,
torch through cellssl's data layer) is imported when the factory is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cellssl.api import hookimpl
from cellssl_bloodcells.config import BloodCellsConfig

if TYPE_CHECKING:
    from cellssl.api import Registrar


def build_bloodcells(config: BloodCellsConfig) -> Any:
    """Factory of dataset ``bloodcells``: see :func:`cellssl_bloodcells.dataset.build_bloodcells_dataset`."""
    from cellssl_bloodcells.dataset import build_bloodcells_dataset

    return build_bloodcells_dataset(config)


@hookimpl
def cellssl_register_datasets(registry: Registrar) -> None:
    """Register dataset ``bloodcells``."""
    registry.add(
        "bloodcells",
        build_bloodcells,
        BloodCellsConfig,
        "RGB blood-cell images in a folder of class folders (Barcelona PBC, BCCD), stratified hold-out",
    )
