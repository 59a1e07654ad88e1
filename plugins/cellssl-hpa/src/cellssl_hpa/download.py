"""The ``hpa`` download: HPA data has no single public archive URL this plugin can vouch for.

``cellssl data download hpa`` therefore stops with a message that says where each layout is published.
"""

from __future__ import annotations

from typing import Any

from cellssl.api import DataError
from cellssl_hpa.config import HPADownloadConfig
from cellssl_hpa.dataset import CELL_DINO_SOURCE, KAGGLE_SOURCE


def hpa_download_spec(config: HPADownloadConfig) -> Any:
    """Raise :class:`~cellssl.errors.DataError` explaining where to get the HPA data (never returns)."""
    raise DataError(
        "the HPA data cannot be downloaded by cellssl: there is no single public archive with a stable URL and "
        f"checksum. {CELL_DINO_SOURCE} {KAGGLE_SOURCE} Then point data.root of hpa_single_cell / hpa_fov at it."
    )
