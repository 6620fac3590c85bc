"""Shared test fixtures: paths to ../shared/data, skipping cleanly when a clone has none."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs the real face data at {path} (../shared/data beside the project root; CI has it)")
    return path


@pytest.fixture
def helen_dir() -> Path:
    return shared_data("300w", "test-helen")


@pytest.fixture
def w300_train_dir() -> Path:
    return shared_data("300w", "train")


@pytest.fixture
def celebm_val_dir() -> Path:
    return shared_data("celebamask-hq", "val")


@pytest.fixture
def celebm_train_dir() -> Path:
    return shared_data("celebamask-hq", "train")
