"""The ``chammi`` download: the CHAMMI archive from its public Zenodo record.

Known facts: CHAMMI is published on Zenodo, record 7988357 (linked from the benchmark's repository,
broadinstitute/MorphEm), as one zip archive whose top-level folder ``CHAMMI/`` holds ``Allen/``, ``HPA/``
and ``CP/``. Not verified here (no network at build time): the archive's exact file name, size and
checksum. The default URL therefore assumes the file name ``CHAMMI.zip``, and no checksum is built in:
the computed sha256 is saved beside the archive (``CHAMMI.zip.sha256``) so it can be compared with the
md5/sha listed on the record page, and a trusted sha256 can be passed (``sha256=...``) to enforce it.
"""

from __future__ import annotations

from cellssl.api import DownloadFile, DownloadSpec
from cellssl_chammi.config import ZENODO_RECORD, ChammiDownloadConfig

NOTE = (
    "the archive name (CHAMMI.zip), size and checksum could not be verified when this plugin was written; no "
    f"checksum is enforced unless you pass sha256=... . If the URL fails, open {ZENODO_RECORD}, copy the "
    "archive's link and pass it as url=... . After unpacking, set data.root to DIR/CHAMMI."
)


def chammi_download_spec(config: ChammiDownloadConfig) -> DownloadSpec:
    """The download spec of CHAMMI (see the module docstring)."""
    return DownloadSpec(
        name="chammi",
        files=(DownloadFile(url=config.url, path="CHAMMI.zip", size=config.size, sha256=config.sha256,
                            unpack=config.unpack),),
        description="CHAMMI: 220,284 single-cell images in three subsets (WTC-11, HPA, Cell Painting) with 3, 4 "
                    "and 5 channels, one zip archive of several gigabytes.",
        homepage=ZENODO_RECORD,
        note=NOTE,
    )
