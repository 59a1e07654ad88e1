"""Fixtures of the cellssl-jumpcp tests: a miniature JUMP source written from ``../shared/data`` once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from jump_fixture import JumpFixture, build_jump_source


@pytest.fixture(autouse=True)
def _deterministic_torch() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def jump(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> JumpFixture:
    """Two plates of one batch built from real BBBC021 crops and the BBBC022 field (see ``jump_fixture``)."""
    return build_jump_source(shared_data, tmp_path_factory.mktemp("jump"))
