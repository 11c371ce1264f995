"""Config validation: every bad input is a clear ConfigError/DataError before any training starts."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml

from training.errors import ConfigError, DataError
from training.train.align.config import NAME_PREFIX as ALIGN_PREFIX
from training.train.align.config import align_config_from_dict, align_config_to_dict, load_align_config
from training.train.config import CONFIG_DIR, config_from_dict, config_to_dict, load_config
from training.train.data import list_images
from training.train.loop import train_stage
from training.train.schedule import lr_at, prior_scale_at


@pytest.mark.parametrize(
    "name", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if not p.stem.startswith(ALIGN_PREFIX))
)
def test_shipped_configs_are_valid_and_round_trip(name: str) -> None:
    cfg = load_config(name)
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIG_DIR.glob(f"{ALIGN_PREFIX}*.yaml")))
def test_shipped_align_configs_are_valid_and_round_trip(name: str) -> None:
    """``dir-train align``'s configs (their own schema) load and round-trip."""
    cfg = load_align_config(name)
    assert align_config_from_dict(align_config_to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"nope": 1}, r"unknown key\(s\) \['nope'\]"),
        ({"data": {"patch_sise": 64}}, r"config\.data: unknown key"),
        ({"seed": "zero"}, r"config\.seed: expected int, got str 'zero'"),
        ({"stage1": {"lr": "fast"}}, r"config\.stage1\.lr: expected a number, got str 'fast'"),
        ({"amp": 1}, r"config\.amp: expected bool"),
        ({"model": {"widths": [8, 8]}}, r"config\.model\.widths: expected a list of 3 values"),
        ({"data": {"patch_size": 50}}, r"multiple of 4"),
        ({"data": {"batch_size": 1}}, r"batch_size must be >= 2"),
        ({"stage2": {"lr": 1e-4, "lr_min": 1e-3}}, r"lr_min <= lr"),
        ({"data": {"train_dir": "cset14"}}, r"evaluation set"),
        ({"data": "bsds"}, r"config\.data: expected a mapping"),
        ({"data": {"preset": "train+nope"}}, r"data\.preset 'train\+nope': unknown preset\(s\) \['nope'\]"),
        ({"data": {"val_preset": "ablation+lowlight"}}, r"held-out images use one preset"),
    ],
)
def test_bad_configs_are_rejected_with_the_offending_key(raw: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        config_from_dict(raw)


def test_unknown_config_name_lists_the_named_ones() -> None:
    with pytest.raises(ConfigError, match="tiny"):
        load_config("no-such-config")


def test_invalid_yaml_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def _cfg_for(folder: Path) -> Any:
    return config_from_dict(
        {"data": {"train_dir": str(folder), "val_images": 0}, "run_dir": str(folder / "run")}
    )


def test_missing_empty_and_foreign_data_folders_fail_before_training(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        train_stage(_cfg_for(tmp_path / "missing"), "stage1", progress=False)
    assert not (tmp_path / "run").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "SOURCE.md").write_text("provenance")
    with pytest.raises(DataError, match="holds no images"):
        train_stage(_cfg_for(empty), "stage1", progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "weights.npy").write_bytes(b"\x00")
    with pytest.raises(DataError, match=r"non-image file\(s\): weights\.npy"):
        list_images(foreign)


def test_config_yaml_is_written_and_reloadable(tmp_path: Path) -> None:
    cfg = load_config("tiny")
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(config_to_dict(cfg)))
    assert load_config(p) == cfg


def test_lr_schedule_is_warmup_then_cosine() -> None:
    cfg = load_config("tiny").stage1
    assert lr_at(0, cfg) == pytest.approx(cfg.lr / cfg.warmup_steps)
    assert lr_at(cfg.warmup_steps, cfg) == pytest.approx(cfg.lr)
    assert lr_at(cfg.steps - 1, cfg) == pytest.approx(cfg.lr_min)
    lrs = [lr_at(s, cfg) for s in range(cfg.warmup_steps, cfg.steps)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))


def test_prior_warmup_ramps_to_one() -> None:
    loss = load_config("tiny").loss
    assert 0.0 < prior_scale_at(0, loss) < prior_scale_at(10, loss) < 1.0
    assert prior_scale_at(loss.kl_warmup_steps, loss) == 1.0


def test_exponent_literals_without_a_dot_are_numbers() -> None:
    cfg = config_from_dict(yaml.safe_load("stage1: {lr: 1e-3, lr_min: 1e-5}"))
    assert cfg.stage1.lr == 1e-3 and cfg.stage1.lr_min == 1e-5


def test_several_training_folders_hold_out_images_of_the_first(tmp_path: Path) -> None:
    """``train_dir: a+b``: every image of both folders is read (COCO-style label .txt and config.yaml beside
    them are allowed), the held-out images are the last of the first folder, and evaluation sets are
    refused anywhere in the list."""
    from PIL import Image

    from training.train.data import load_store

    for folder, names in (("a", ["1.png", "2.png", "3.png"]), ("b/images", ["x.jpg", "y.jpg"])):
        (tmp_path / folder).mkdir(parents=True)
        for name in names:
            Image.new("RGB", (40, 40), (10, 20, 30)).save(tmp_path / folder / name)
    (tmp_path / "b" / "config.yaml").write_text("names: []")
    (tmp_path / "b" / "images" / "x.txt").write_text("0 0.5 0.5 0.1 0.1")
    cfg = config_from_dict({"data": {"train_dir": f"{tmp_path / 'a'}+{tmp_path / 'b'}", "val_images": 1}})
    assert cfg.data_paths() == [tmp_path / "a", tmp_path / "b"]
    store = load_store(cfg.data_paths(), 1, 32)
    assert [p.name for p in store.val_files] == ["3.png"]
    assert sorted(p.name for p in store.train_files) == ["1.png", "2.png", "x.jpg", "y.jpg"]
    with pytest.raises(ConfigError, match="evaluation set"):
        config_from_dict({"data": {"train_dir": "bsds500_train+cset14"}})
