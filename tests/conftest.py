"""Shared fixtures: where the public data lives, skipping with a reason where it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.service.fixture_model import build_entry
from training.paths import data_root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or ``$DIR_DATA_ROOT``); skips the test where the folder is absent."""
    root = data_root()
    if not root.is_dir():
        pytest.skip(f"shared data folder {root} is absent (set DIR_DATA_ROOT to run data-backed tests)")
    return root


@pytest.fixture(scope="session")
def dataset(shared_data: Path):  # type: ignore[no-untyped-def]
    """Factory: ``dataset("cset14")`` -> folder, skipping where that one dataset is absent."""

    def get(name: str) -> Path:
        d = shared_data / name
        if not d.is_dir():
            pytest.skip(f"dataset {name} is absent under {shared_data}")
        return d

    return get


@pytest.fixture(scope="session")
def fixture_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store with the tiny test entry ``dir-restore/0.0.1`` (tiles 64, overlap 16), nothing else."""
    store = tmp_path_factory.mktemp("store")
    build_entry(store)
    return store
