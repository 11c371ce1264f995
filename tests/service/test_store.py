"""Model store: version choice, sha256 refusal, and the app refusing to start on a bad entry."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from service.errors import ModelStoreError
from service.manifest import read_manifest, write_manifest
from service.settings import Settings
from service.store import RestoreModel, resolve_entry, verify_entry, version_key
from tests.service.conftest import serve


def copy_store(fixture_store: Path, tmp_path: Path) -> Path:
    store = tmp_path / "store"
    shutil.copytree(fixture_store, store)
    return store


def test_version_order() -> None:
    versions = ["0.1.0", "0.10.0", "0.2.0", "1.0.0-rc1", "1.0.0"]
    assert sorted(versions, key=version_key) == ["0.1.0", "0.2.0", "0.10.0", "1.0.0", "1.0.0-rc1"]


def test_highest_version_is_default_and_pinning_works(fixture_store: Path, tmp_path: Path) -> None:
    store = copy_store(fixture_store, tmp_path)
    shutil.copytree(store / "dir-restore" / "0.0.1", store / "dir-restore" / "0.10.0")
    manifest = read_manifest(store / "dir-restore" / "0.10.0")
    write_manifest(store / "dir-restore" / "0.10.0", manifest.model_copy(update={"version": "0.10.0"}))
    assert resolve_entry(store, "dir-restore", "restore").manifest.version == "0.10.0"
    assert resolve_entry(store, "dir-restore/0.0.1", "restore").manifest.version == "0.0.1"
    with pytest.raises(ModelStoreError, match=r"no restore entry dir-restore/9\.9\.9"):
        resolve_entry(store, "dir-restore/9.9.9", "restore")


def test_sha256_mismatch_is_refused(fixture_store: Path, tmp_path: Path) -> None:
    store = copy_store(fixture_store, tmp_path)
    onnx = store / "dir-restore" / "0.0.1" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"tampered")
    entry = resolve_entry(store, "dir-restore", "restore")
    with pytest.raises(ModelStoreError, match="sha256 mismatch"):
        verify_entry(entry)
    with pytest.raises(ModelStoreError, match="sha256 mismatch"):
        RestoreModel.load(entry, None, 1)


def test_unlisted_onnx_is_refused(fixture_store: Path, tmp_path: Path) -> None:
    store = copy_store(fixture_store, tmp_path)
    entry_dir = store / "dir-restore" / "0.0.1"
    write_manifest(entry_dir, read_manifest(entry_dir).model_copy(update={"files": []}))
    with pytest.raises(ModelStoreError, match="no sha256"):
        verify_entry(resolve_entry(store, "dir-restore", "restore"))


async def test_app_refuses_to_start_on_mismatch(
    fixture_store: Path, tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    store = copy_store(fixture_store, tmp_path)
    onnx = store / "dir-restore" / "0.0.1" / "model.onnx"
    onnx.write_bytes(b"\x00" + onnx.read_bytes()[1:])
    with pytest.raises(ModelStoreError, match="sha256 mismatch"):
        async with serve(make_settings(model_store=store)):
            pass


async def test_app_refuses_to_start_without_entry(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    with pytest.raises(ModelStoreError, match="no restore entry"):
        async with serve(make_settings(model_store=tmp_path)):
            pass
