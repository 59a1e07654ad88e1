"""cellssl: self-supervised learning (DINO / DINOv2) for cell microscopy with any number of channels.

The package is a small core of contracts (datasets, channel strategies, backbones, SSL objectives,
evaluators) plus built-in implementations registered as plugins. Importing ``cellssl`` is cheap:
torch and the heavy libraries are imported by the modules that need them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cellssl")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
