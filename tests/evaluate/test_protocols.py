"""Protocols: identical degraded inputs on every call, real pairs, clear errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from training.evaluate.errors import DatasetMissingError, ProtocolError, UnknownNameError
from training.evaluate.protocols import dataset_files, get_protocol, protocol_names, real_samples


@pytest.mark.parametrize("protocol", ["ablation", "lowlight"])
def test_synthetic_protocol_is_deterministic(protocol: str, dataset: Callable[[str], Path]) -> None:
    dataset("cset14")
    first = get_protocol(protocol).samples("cset14", 2)
    second = get_protocol(protocol).samples("cset14", 2)
    assert [s.name for s in first] == ["baboon", "barbara"]
    for a, b in zip(first, second, strict=True):
        assert a.seed == b.seed
        assert torch.equal(a.degraded, b.degraded)
        assert a.clean is not None and a.degraded.shape == a.clean.shape
        assert not torch.equal(a.degraded, a.clean)
    assert first[0].seed != first[1].seed


def test_synthetic_seed_is_the_image_own_seed(dataset: Callable[[str], Path]) -> None:
    """The input equals simulate(clean, seed=[stable_seed(preset, dataset, file)]), as in dir-train score."""
    from training.isp import simulate, stable_seed

    (sample,) = get_protocol("ablation").samples("cset14", 1)
    assert sample.seed == stable_seed("ablation", "cset14", "baboon.png")
    assert sample.clean is not None
    again = simulate(sample.clean, preset="ablation", seed=[sample.seed]).degraded
    assert torch.equal(sample.degraded, again.float())


def test_grayscale_image_becomes_three_channels(dataset: Callable[[str], Path]) -> None:
    bridge = [p for p in dataset_files("cset14") if p.name == "bridge.png"]
    assert bridge, "cset14 lacks bridge.png"
    from training.data import load_rgb_batch

    img = load_rgb_batch(bridge[0])
    assert img.shape[:2] == (1, 3)
    assert torch.equal(img[:, 0], img[:, 1])


def test_real_pairs_and_noref(dataset: Callable[[str], Path]) -> None:
    dataset("cc15")
    pairs = real_samples("cc15", 2)
    assert all(s.clean is not None and s.clean.shape == s.degraded.shape for s in pairs)
    assert not pairs[0].name.endswith("_real")
    dataset("rni15")
    assert all(s.clean is None for s in real_samples("rni15", 2))


def test_unknown_protocol_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError, match="valid protocols: ablation, lowlight, clean, real"):
        get_protocol("table9")
    assert protocol_names() == ["ablation", "lowlight", "clean", "real"]


def test_wrong_dataset_kind_is_refused() -> None:
    with pytest.raises(ProtocolError, match="clean images"):
        get_protocol("ablation").samples("cc15", 1)


def test_missing_dataset_folder_names_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIR_DATA_ROOT", str(tmp_path))
    with pytest.raises(DatasetMissingError, match=str(tmp_path / "cset14")):
        dataset_files("cset14")
