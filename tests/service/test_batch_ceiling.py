"""benchmarks/batch_ceiling.py times every graph of an entry as served, tile by tile against full batches."""

from __future__ import annotations

import argparse
import json
import multiprocessing
from pathlib import Path

import pytest

from benchmarks.batch_ceiling import MODE_GRAPHS, fractions, main, mode_totals, outside_load, ratio
from modelstore.store import resolve_entry
from service.settings import Settings
from service.store import RestoreModel, tile_geometry

ROOT = Path(__file__).resolve().parents[2]


def test_measures_every_graph_and_side_at_each_load_with_batches_of_the_served_ceiling(
    fixture_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = (ROOT / "docs" / "BENCHMARKS.md").read_bytes()
    argv = ["--model-store", str(fixture_store), "--repeats", "1", "--load", "0,0.5", "--json", "--no-write"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert (ROOT / "docs" / "BENCHMARKS.md").read_bytes() == docs, "--no-write leaves the docs alone"
    settings = Settings(model_store=fixture_store)
    entry = resolve_entry(fixture_store, "dir-restore", "restore")
    graphs = RestoreModel.from_settings(entry, settings, with_session=False).graphs
    base, sides, _ = tile_geometry(entry, settings)
    assert result["model"] == entry.ref
    assert [run["load"] for run in result["runs"]] == [0.0, 0.5]
    for run in result["runs"]:
        assert sorted((r["graph"], r["side"]) for r in run["rows"]) == sorted(
            (g, side) for g in graphs for side in sides
        )
        for row in run["rows"]:
            pixels = settings.max_batch * base * base
            assert row["batch"] == max(1, pixels // (row["side"] * row["side"])), (
                "a full batch of the base side"
            )
            assert set(row["ms_per_tile"]) == {"off", "on_one_call", "on_as_served"}
            assert all(v > 0 for v in row["ms_per_tile"].values())
        assert run["modes"] == mode_totals(run["rows"], max(sides))
        assert set(run["modes"]) == {m for m, needs in MODE_GRAPHS.items() if set(needs) <= set(graphs)}


def test_a_mode_costs_the_sum_of_its_graphs_at_one_side() -> None:
    def row(graph: str, side: int, off: float) -> dict[str, object]:
        return {
            "graph": graph,
            "side": side,
            "ms_per_tile": {"off": off, "on_one_call": 1.0, "on_as_served": 2.0},
        }

    full, denoise = MODE_GRAPHS["full"], MODE_GRAPHS["denoise"]
    rows = [
        row(full[0], 512, 3.0),
        row(full[1], 512, 5.0),
        row(full[1], 256, 100.0),
        row(denoise[0], 256, 7.0),
    ]
    modes = mode_totals(rows, 512)
    assert modes == {
        "full": {"side": 512, "ms_per_tile": {"off": 8.0, "on_one_call": 2.0, "on_as_served": 4.0}}
    }
    assert ratio(modes["full"]["ms_per_tile"], "on_as_served") == 2.0, "throughput against batching off"


def test_outside_load_runs_a_process_only_inside_the_block() -> None:
    with outside_load(0.0):
        assert not multiprocessing.active_children()
    with outside_load(1.0):
        (child,) = multiprocessing.active_children()
        assert child.is_alive()
    child.join(timeout=10)
    assert not child.is_alive() and not multiprocessing.active_children()


def test_load_levels_must_be_fractions_of_one_core() -> None:
    assert fractions("0,0.5,1") == (0.0, 0.5, 1.0)
    for bad in ("2", "-0.1", "half", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            fractions(bad)
    with pytest.raises(ValueError, match="not a fraction of one core"), outside_load(1.5):
        pass
