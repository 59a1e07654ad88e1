"""pytest fixtures shared by the core's and the plugins' tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def find_shared_data(start: Path) -> Path | None:
    """The real-data folder: ``$CELLSSL_TEST_DATA``, else ``<ancestor>/../shared/data`` of ``start``."""
    if os.environ.get("CELLSSL_TEST_DATA"):
        return Path(os.environ["CELLSSL_TEST_DATA"]).resolve()
    for parent in [start, *start.parents]:
        candidate = parent.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate.resolve()
    return None


@pytest.fixture(scope="session")
def shared_data(request: pytest.FixtureRequest) -> Path:
    """Root of the read-only real microscopy samples (``../shared/data``).

    Skips when the folder is absent on a user's machine; fails when ``CI=true``, where its absence is
    an error.
    """
    found = find_shared_data(Path(str(request.config.rootpath)).resolve())
    if found is not None and found.is_dir():
        return found
    where = os.environ.get("CELLSSL_TEST_DATA") or "../shared/data beside the checkout"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but the shared microscopy data is missing (looked for {where})")
    pytest.skip(f"the shared microscopy data is not available (looked for {where}; set CELLSSL_TEST_DATA)")
