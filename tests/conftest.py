"""Shared fixtures of the core test suite (``shared_data`` comes from cellssl's pytest plugin)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_torch() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
