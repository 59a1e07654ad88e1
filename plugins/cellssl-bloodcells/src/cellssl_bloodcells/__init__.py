"""cellssl plugin for blood-cell image folders (one folder per class), such as Barcelona PBC and BCCD.

The entry point is :mod:`cellssl_bloodcells.plugin`; the dataset lives in :mod:`cellssl_bloodcells.dataset`.
"""

__version__ = "0.1.0"
