"""Listing model_store entries, resolving ``name[/version]``, the one version order, sha256 verification and
pinned digests.

Layout: ``<store>/<name>/<version>/manifest.json`` (schema in :mod:`modelstore.manifest`) next to the
files it lists. Raises :class:`modelstore.errors.ModelStoreError`; imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from modelstore.errors import ModelStoreError
from modelstore.manifest import MANIFEST_NAME, Manifest, read_manifest, sha256_file


@dataclass(frozen=True)
class ModelEntry:
    """One model_store entry: its folder and parsed manifest."""

    path: Path
    manifest: Manifest

    @property
    def ref(self) -> str:
        """``name/version``, the id used in headers, metrics labels and Redis stream names."""
        return f"{self.manifest.name}/{self.manifest.version}"


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key for versions like ``0.1.0`` or ``1.2.0-rc1``: numeric parts compare as numbers."""
    parts = re.split(r"[.\-+]", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def version_dirs(store: Path, name: str) -> list[Path]:
    """The folders ``<store>/<name>/<version>/`` holding a manifest.json, lowest to highest version
    (:func:`version_key` of the folder name)."""
    root = store / name
    return sorted(
        (d for d in root.glob("*") if (d / MANIFEST_NAME).is_file()), key=lambda d: version_key(d.name)
    )


def list_entries(store: Path, task: str | None = None) -> list[ModelEntry]:
    """Every readable entry under ``store`` (optionally only ``task``), sorted by name then version.

    Folders without a manifest are skipped; a malformed manifest raises ``ModelStoreError``.
    """
    entries: list[ModelEntry] = []
    if not store.is_dir():
        return entries
    for manifest_path in sorted(store.glob(f"*/*/{MANIFEST_NAME}")):
        try:
            manifest = read_manifest(manifest_path.parent)
        except (ValidationError, ValueError) as exc:
            raise ModelStoreError(f"malformed manifest {manifest_path}: {exc}") from exc
        if task is None or manifest.task == task:
            entries.append(ModelEntry(manifest_path.parent, manifest))
    entries.sort(key=lambda e: (e.manifest.name, version_key(e.manifest.version)))
    return entries


def resolve_entry(store: Path, spec: str, task: str) -> ModelEntry:
    """The entry named by ``spec`` (``name`` -> highest version, or ``name/version``) with task ``task``.

    An empty ``spec`` picks the first entry of that task (highest version of the first name).
    """
    entries = list_entries(store, task)
    name, _, version = spec.partition("/")
    matching = [e for e in entries if not name or e.manifest.name == name]
    if version:
        matching = [e for e in matching if e.manifest.version == version]
    if not matching:
        have = ", ".join(e.ref for e in entries) or "none"
        raise ModelStoreError(f"no {task} entry {spec or '(any)'} under {store} (entries for {task}: {have})")
    if not name:
        first = matching[0].manifest.name
        matching = [e for e in matching if e.manifest.name == first]
    return matching[-1]


def check_pin(entry_dir: Path, manifest: Manifest, pins: Mapping[str, str] | None) -> None:
    """With pins (``DIR_PINNED_DIGESTS``: ``name/version`` -> sha256 of its ``manifest.json``), refuse an
    entry that is not pinned or whose manifest's digest differs from its pin.

    The manifest lists the sha256 of every file of the entry, so its pinned digest covers them all: a
    manifest rewritten in place with new file digests (a swapped model) no longer matches. Raises
    ``ModelStoreError`` naming the entry, both digests and the setting.
    """
    if not pins:
        return
    ref = f"{manifest.name}/{manifest.version}"
    pinned = pins.get(ref)
    if pinned is None:
        raise ModelStoreError(
            f"{ref} ({entry_dir}) is not pinned: DIR_PINNED_DIGESTS lists only {', '.join(sorted(pins))}; "
            "refusing to load it"
        )
    actual = sha256_file(entry_dir / MANIFEST_NAME)
    if actual != pinned.lower():
        raise ModelStoreError(
            f"{entry_dir / MANIFEST_NAME}: sha256 {actual} differs from the digest DIR_PINNED_DIGESTS pins "
            f"for {ref} ({pinned.lower()}): the manifest changed after it was pinned; refusing to load {ref}"
        )


def verify_files(entry_dir: Path, manifest: Manifest, pins: Mapping[str, str] | None = None) -> None:
    """Check the entry's pin (:func:`check_pin`), then every file the manifest lists against its sha256; the
    ONNX file (and the guide graph's, when the manifest has one) must be listed.

    Shared by the restoration and detector loaders. Raises ``ModelStoreError`` naming the file, the expected
    and the actual digest.
    """
    check_pin(entry_dir, manifest, pins)
    graphs = [manifest.onnx_file] + ([manifest.guide.onnx_file] if manifest.guide else [])
    for graph in graphs:
        if manifest.file_sha256(graph) is None:
            raise ModelStoreError(f"{entry_dir}: manifest records no sha256 for {graph}; refusing it")
    for f in manifest.files:
        target = entry_dir / f.path
        if not target.is_file():
            raise ModelStoreError(f"{entry_dir}: file {f.path} listed in the manifest is missing")
        actual = sha256_file(target)
        if actual != f.sha256:
            raise ModelStoreError(
                f"{target}: sha256 mismatch: the file's sha256 {actual} does not match the manifest's "
                f"{f.sha256}; refusing to load it"
            )


def verify_entry(entry: ModelEntry, pins: Mapping[str, str] | None = None) -> None:
    """:func:`verify_files` for a resolved entry."""
    verify_files(entry.path, entry.manifest, pins)


def verified_sha256(entry_dir: Path, manifest: Manifest, name: str) -> str:
    """sha256 of the file ``entry_dir/name``, checked against the manifest where it records one; raises
    ``ModelStoreError`` when the file is missing or its digest differs."""
    path = entry_dir / name
    if not path.is_file():
        raise ModelStoreError(f"{entry_dir}: file {name} not found")
    digest = sha256_file(path)
    expected = manifest.file_sha256(name)
    if expected is not None and digest != expected:
        raise ModelStoreError(
            f"sha256 of {path} does not match its manifest (the file's {digest}, recorded {expected})"
        )
    return digest
