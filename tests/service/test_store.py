"""Model store: version choice, sha256 refusal, and the app refusing to start on a bad entry."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelstore.errors import ModelStoreError
from modelstore.manifest import GuideSpec, read_manifest, write_manifest
from modelstore.store import resolve_entry, verify_entry, version_key
from service.errors import InferenceError
from service.queue import DENOISE_GRAPH, GUIDE_GRAPH, GUIDE_SUM, SERVE_GRAPH, WINDOW_INPUT
from service.settings import Settings
from service.store import RestoreModel, choose_graph
from tests.service.conftest import serve
from tests.service.fixture_model import build_entry


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


def test_unlisted_guide_graph_is_refused(fixture_store: Path, tmp_path: Path) -> None:
    store = copy_store(fixture_store, tmp_path)
    entry_dir = store / "dir-restore" / "0.0.1"
    manifest = read_manifest(entry_dir)
    files = [f for f in manifest.files if f.path != "guide.onnx"]
    write_manifest(entry_dir, manifest.model_copy(update={"files": files}))
    with pytest.raises(ModelStoreError, match=r"no sha256 for guide\.onnx"):
        verify_entry(resolve_entry(store, "dir-restore", "restore"))


def test_manifest_schema_versions(fixture_store: Path, tmp_path: Path) -> None:
    """Old manifests (no schema_version: 1, no guide) load single-pass; a newer schema is refused."""
    old_dir = build_entry(tmp_path / "old", two_pass=False, denoise=False)
    raw = json.loads((old_dir / "manifest.json").read_text())
    del raw["schema_version"], raw["guide"]
    (old_dir / "manifest.json").write_text(json.dumps(raw))
    old = resolve_entry(old_dir.parents[1], "dir-restore", "restore")
    assert old.manifest.schema_version == 1 and old.manifest.guide is None
    model = RestoreModel.load(old, None, 1)
    assert model.graphs == ("model",) and model.guide_session is None
    two_pass = RestoreModel.load(resolve_entry(fixture_store, "", "restore"), None, 1)
    assert two_pass.graphs == ("guide", "model", "denoise")
    store = copy_store(fixture_store, tmp_path)
    entry_dir = store / "dir-restore" / "0.0.1"
    raw = (entry_dir / "manifest.json").read_text().replace('"schema_version": 2', '"schema_version": 3')
    (entry_dir / "manifest.json").write_text(raw)
    with pytest.raises(ModelStoreError, match="schema_version"):
        resolve_entry(store, "dir-restore", "restore")


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


async def test_app_refuses_to_start_on_tile_sides_that_do_not_fit(
    make_settings: Callable[..., Settings],
) -> None:
    with pytest.raises(ModelStoreError, match=r"DIR_TILE_SIZES .*tile 66 and overlap 16 must be multiples"):
        async with serve(make_settings(tile_sizes="64,66")):
            pass


async def test_app_refuses_to_start_without_entry(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    with pytest.raises(ModelStoreError, match="no restore entry"):
        async with serve(make_settings(model_store=tmp_path)):
            pass


def test_precision_choice(tmp_path: Path) -> None:
    entry = resolve_entry(build_entry(tmp_path / "a", fp16=True).parents[1], "dir-restore", "restore")
    plain = resolve_entry(build_entry(tmp_path / "b").parents[1], "dir-restore", "restore")
    cpu, cuda = ["CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_graph(entry, "auto", cpu) == ("fp32", "model.onnx")
    assert choose_graph(entry, "auto", cuda) == ("fp16", "model.fp16.onnx")
    assert choose_graph(entry, "fp16", cpu) == ("fp16", "model.fp16.onnx")
    assert choose_graph(entry, "fp32", cuda) == ("fp32", "model.onnx")
    assert choose_graph(plain, "auto", cuda) == ("fp32", "model.onnx")
    with pytest.raises(ModelStoreError, match="has no fp16 graph"):
        choose_graph(plain, "fp16", cpu)


def test_fp16_graph_serves_close_to_fp32(tmp_path: Path) -> None:
    entry = resolve_entry(build_entry(tmp_path, fp16=True).parents[1], "dir-restore", "restore")
    half, full = RestoreModel.load(entry, None, 1, precision="fp16"), RestoreModel.load(entry, None, 1)
    assert (half.precision, full.precision) == ("fp16", "fp32")
    tiles = np.random.default_rng(0).integers(0, 256, (2, 3, 64, 64), dtype=np.uint8)
    feed = {"image": tiles, "guide_mean": np.ones((2, 8), dtype=np.float32)}
    a, b = half.run(feed, ["restored"])["restored"], full.run(feed, ["restored"])["restored"]
    assert a.dtype == np.float32 and a.shape == b.shape
    assert 0 < float(np.abs(a - b).max()) < 2 / 255


def test_unlisted_fp16_graph_is_refused(tmp_path: Path) -> None:
    entry_dir = build_entry(tmp_path, fp16=True)
    manifest = read_manifest(entry_dir)
    files = [f for f in manifest.files if f.path != "model.fp16.onnx"]
    write_manifest(entry_dir, manifest.model_copy(update={"files": files}))
    entry = resolve_entry(tmp_path, "dir-restore", "restore")
    with pytest.raises(ModelStoreError, match=r"no sha256 for model\.fp16\.onnx"):
        RestoreModel.load(entry, None, 1, precision="fp16")


@pytest.mark.parametrize("spinning", [True, False])
def test_spinning_setting_reaches_the_session(tmp_path: Path, spinning: bool) -> None:
    entry = resolve_entry(build_entry(tmp_path).parents[1], "dir-restore", "restore")
    model = RestoreModel.load(entry, None, 1, spinning=spinning)
    assert model.session is not None
    options = model.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == str(int(spinning))
    tiles = np.zeros((1, 3, 64, 64), dtype=np.uint8)
    window = np.array([[0, 16, 0, 16]], dtype=np.uint16)
    sums = model.run({"image": tiles, WINDOW_INPUT: window}, [GUIDE_SUM], GUIDE_GRAPH)[GUIDE_SUM]
    assert sums.shape == (1, 8) and sums.dtype == np.float32
    feed = {"image": tiles, "guide_mean": np.zeros((1, 8), dtype=np.float32)}
    assert model.run(feed, ["restored"])["restored"].shape == (1, 3, 64, 64)


def test_guide_graph_sums_over_the_owned_window_only(tmp_path: Path) -> None:
    """Pass 1 returns (N, K) window sums, never feature maps; owned_window goes with the guide graph alone."""
    entry = resolve_entry(build_entry(tmp_path).parents[1], "dir-restore", "restore")
    model = RestoreModel.load(entry, None, 1)
    assert model.guide is not None and model.guide.scale == 4 and model.guide_session is not None
    assert model.graph_outputs(GUIDE_GRAPH) == [GUIDE_SUM]
    tiles = np.random.default_rng(0).integers(0, 256, (2, 3, 64, 64), dtype=np.uint8)
    windows = np.array([[0, 16, 0, 16], [2, 9, 5, 16]], dtype=np.uint16)
    sums = model.run({"image": tiles, WINDOW_INPUT: windows}, [GUIDE_SUM], GUIDE_GRAPH)[GUIDE_SUM]
    (features,) = model.guide_session.run(None, {"image": tiles.astype(np.float32) / 255})
    expected = [features[0].sum(axis=(1, 2)), features[1, :, 2:9, 5:16].sum(axis=(1, 2))]
    np.testing.assert_allclose(sums, np.stack(expected), rtol=1e-5)
    with pytest.raises(InferenceError, match="owned_window"):
        model.run({"image": tiles}, [GUIDE_SUM], GUIDE_GRAPH)
    with pytest.raises(InferenceError, match="owned_window"):
        feed = {"image": tiles, "guide_mean": np.zeros((2, 8), np.float32), WINDOW_INPUT: windows}
        model.run(feed, ["restored"], SERVE_GRAPH)
    with pytest.raises(InferenceError, match="outside"):
        model.run({"image": tiles, WINDOW_INPUT: windows + 1}, [GUIDE_SUM], GUIDE_GRAPH)


def test_guide_output_without_a_scale_is_refused(fixture_store: Path) -> None:
    guide = read_manifest(fixture_store / "dir-restore" / "0.0.1").guide
    assert guide is not None
    raw = guide.model_dump()
    raw["outputs"][0]["shape"] = ["N", 8, "H/x", "W/x"]
    with pytest.raises(ValueError, match="integer s"):
        GuideSpec.model_validate(raw)


def test_a_batch_runs_in_parts_at_once_with_the_same_result(tmp_path: Path) -> None:
    """``parallel=3`` splits a batch of 5 tiles into parts of 2, 2 and 1 run on one session from three
    threads; every graph's outputs equal those of the whole batch in one run."""
    entry = resolve_entry(build_entry(tmp_path).parents[1], "dir-restore", "restore")
    whole, split = RestoreModel.load(entry, None, 1), RestoreModel.load(entry, None, 1, parallel=3)
    assert split.session is not None
    session = split.session
    calls: list[tuple[int, str]] = []
    run = session.run

    def recording(names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        calls.append((len(feed["image"]), threading.current_thread().name))
        return run(names, feed)

    session.run = recording  # type: ignore[method-assign]
    rng = np.random.default_rng(1)
    tiles = rng.integers(0, 256, (5, 3, 64, 64), dtype=np.uint8)
    feed = {"image": tiles, "guide_mean": rng.random((5, 8), dtype=np.float32)}
    for name in ("restored", "r_plus"):
        np.testing.assert_allclose(
            split.run(feed, [name])[name], whole.run(feed, [name])[name], rtol=1e-5, atol=1e-6
        )
    assert sorted(size for size, _ in calls) == [1, 1, 2, 2, 2, 2]
    assert all(thread.startswith("dir-run") for _, thread in calls)
    windows = np.array([[0, 16, 0, 16]] * 5, dtype=np.uint16)
    guide = {"image": tiles, WINDOW_INPUT: windows}
    np.testing.assert_allclose(
        split.run(guide, [GUIDE_SUM], GUIDE_GRAPH)[GUIDE_SUM],
        whole.run(guide, [GUIDE_SUM], GUIDE_GRAPH)[GUIDE_SUM],
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="parallel must be >= 1, got 0"):
        RestoreModel(entry, None, parallel=0)


def test_parallel_parts_default_to_one_per_core_at_most_max_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Settings, "cores", property(lambda self: 4))
    assert Settings().parallel(gpu=False) == 4 and Settings().run_threads(4) == 1
    assert Settings(max_batch=1).parallel(gpu=False) == 1 and Settings().run_threads(1) == 4
    assert Settings(max_batch=3).parallel(gpu=False) == 3 and Settings().run_threads(3) == 1
    assert Settings().parallel(gpu=True) == 1
    assert Settings(parallel_runs=2).parallel(gpu=True) == 2
    assert Settings(intra_op_threads=3).run_threads(4) == 3 and Settings(intra_op_threads=3).threads == 3


def record_runs(session: Any, name: str, used: list[str]) -> None:
    """Make ``session.run`` append ``name`` to ``used`` on every call."""
    run = session.run

    def recording(names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        used.append(name)
        return list(run(names, feed))

    session.run = recording


def test_a_single_tile_runs_on_the_wide_session(tmp_path: Path) -> None:
    """With parts, a call of one tile runs on the graph's second session (all the parts' threads), not on a
    one-thread part; calls of several tiles keep the parts."""
    entry = resolve_entry(build_entry(tmp_path).parents[1], "dir-restore", "restore")
    model = RestoreModel.load(entry, None, 1, parallel=2)
    wide = model._wide[SERVE_GRAPH]
    assert set(model._wide) == set(model.graphs)
    assert wide is not model.session and model.session is not None
    used: list[str] = []
    record_runs(wide, "wide", used)
    record_runs(model.session, "part", used)
    rng = np.random.default_rng(2)
    one = {
        "image": rng.random((1, 3, 64, 64), dtype=np.float32),
        "guide_mean": rng.random((1, 8), dtype=np.float32),
    }
    model.run(one, ["restored"])
    assert used == ["wide"]
    used.clear()
    two = {name: np.concatenate([a, a]) for name, a in one.items()}
    model.run(two, ["restored"])
    assert used == ["part", "part"]
    assert RestoreModel.load(entry, None, 1)._wide == {}


def test_parts_hold_at_most_max_call_pixels(tmp_path: Path) -> None:
    """The parts running at once hold at most ``max_call_pixels``: eight 512-px tiles under a budget of eight
    256-px tiles run one per part; eight 256-px tiles keep two parts of four."""
    entry = resolve_entry(build_entry(tmp_path).parents[1], "dir-restore", "restore")
    budget = 8 * 256 * 256
    model = RestoreModel(entry, None, parallel=2, max_call_pixels=budget)
    big, small = np.zeros((8, 3, 512, 512), np.uint8), np.zeros((8, 3, 256, 256), np.uint8)
    assert model.parts(8, big) == [(k, k + 1) for k in range(8)]
    assert model.parts(8, small) == [(0, 4), (4, 8)]
    assert model.parts(3, small) == [(0, 2), (2, 3)]
    serial = RestoreModel(entry, None, parallel=1, max_call_pixels=budget)
    assert serial.parts(8, big) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert serial.parts(8, small) == [(0, 8)]
    assert RestoreModel(entry, None, parallel=2).parts(8, big) == [(0, 4), (4, 8)]
    with pytest.raises(ValueError, match="max_call_pixels must be >= 0"):
        RestoreModel(entry, None, max_call_pixels=-1)


def test_call_pixels_follow_the_base_tile(fixture_store: Path) -> None:
    """``from_settings``: the budget is DIR_MAX_BATCH tiles of the base side (the manifest's, or
    DIR_TILE_SIZE)."""
    entry = resolve_entry(fixture_store, "dir-restore", "restore")
    assert entry.manifest.tile is not None and entry.manifest.tile.size == 64
    assert RestoreModel.from_settings(entry, Settings(intra_op_threads=1, max_batch=4)).max_call_pixels == (
        4 * 64 * 64
    )
    settings = Settings(intra_op_threads=1, max_batch=4, tile_size=128, parallel_runs=1)
    assert RestoreModel.from_settings(entry, settings).max_call_pixels == 4 * 128 * 128


def test_warm_up_runs_every_graph_at_every_tile_side_as_batches_run(tmp_path: Path) -> None:
    """Warm-up runs each graph per side once as the largest batch of parts runs (all parts at once, each of
    the most tiles ``max_call_pixels`` allows) and once as a single tile on the wide session."""
    entry = resolve_entry(build_entry(tmp_path).parents[1], "dir-restore", "restore")
    model = RestoreModel.load(entry, None, 1, parallel=2, max_call_pixels=8 * 64 * 64)
    assert set(model.graphs) == {SERVE_GRAPH, GUIDE_GRAPH, DENOISE_GRAPH}
    calls: list[tuple[str, str, int, int]] = []
    for graph in model.graphs:
        for kind, session in (("part", model._graph_session(graph)), ("wide", model._wide[graph])):
            run = session.run  # type: ignore[union-attr]

            def recording(names: list[str], feed: dict[str, np.ndarray], *, g=graph, k=kind, r=run) -> Any:
                calls.append((g, k, *feed["image"].shape[::3]))
                return r(names, feed)

            session.run = recording  # type: ignore[union-attr,method-assign]
    assert model.warm_up((64, 128)) > 0
    for graph in model.graphs:
        mine = sorted((k, n, side) for g, k, n, side in calls if g == graph)
        # 64 px: two parts of four tiles (8 x 64^2 px at once); 128 px: two parts of one tile.
        assert mine == [("part", 1, 128), ("part", 1, 128), ("part", 4, 64), ("part", 4, 64),
                        ("wide", 1, 64), ("wide", 1, 128)]  # fmt: skip


def test_warm_up_without_parts_runs_one_call_per_graph_and_side(tmp_path: Path) -> None:
    entry = resolve_entry(build_entry(tmp_path, denoise=False).parents[1], "dir-restore", "restore")
    model = RestoreModel.load(entry, None, 1)
    used: list[str] = []
    for graph in model.graphs:
        record_runs(model._graph_session(graph), graph, used)
    model.warm_up((64,))
    assert sorted(used) == sorted([GUIDE_GRAPH, SERVE_GRAPH])
    assert RestoreModel(entry, None).warm_up((64,)) == 0.0


async def test_app_warms_up_at_start_when_told_to(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    sides: list[tuple[int, ...]] = []
    monkeypatch.setattr(RestoreModel, "warm_up", lambda self, s: sides.append(tuple(s)) or 0.0)
    async with serve(make_settings(tile_sizes="64,128", warmup="on")):
        pass
    assert sides == [(64, 128)]
    for setting in ("off", "auto"):  # auto: on with CUDA only, and these sessions run on the CPU
        async with serve(make_settings(warmup=setting)):
            pass
    assert sides == [(64, 128)]
    assert Settings(warmup="auto").warms_up(gpu=True) and not Settings(warmup="off").warms_up(gpu=True)


async def test_app_refuses_to_start_when_the_warm_up_fails(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(self: RestoreModel, sides: Any) -> float:
        raise InferenceError("bad graph")

    monkeypatch.setattr(RestoreModel, "warm_up", failing)
    with pytest.raises(ModelStoreError, match="failed its start-up run: bad graph"):
        async with serve(make_settings(warmup="on")):
            pass


@pytest.mark.parametrize("arena", [True, False])
def test_cpu_arena_setting_reaches_every_session(
    tmp_path: Path, arena: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = resolve_entry(build_entry(tmp_path).parents[1], "dir-restore", "restore")
    monkeypatch.setenv("DIR_ORT_CPU_ARENA", str(arena).lower())
    model = RestoreModel.from_settings(
        entry, Settings(model_store=tmp_path, intra_op_threads=1, parallel_runs=2)
    )
    built = [model.session, model.guide_session, model.denoise_session, *model._wide.values()]
    sessions = [s for s in built if s is not None]
    assert len(sessions) >= 4, "serving and guide sessions, and their single-tile twins"
    assert all(s.get_session_options().enable_cpu_mem_arena is arena for s in sessions)
    feed = {
        "image": np.zeros((2, 3, 64, 64), dtype=np.uint8),
        "guide_mean": np.zeros((2, 8), dtype=np.float32),
    }
    assert model.run(feed, ["restored"])["restored"].shape == (2, 3, 64, 64)
