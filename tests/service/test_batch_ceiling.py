"""benchmarks/batch_ceiling.py runs every graph of an entry as served and reports per-tile times."""

from __future__ import annotations

import argparse
import multiprocessing
from pathlib import Path

import pytest

from benchmarks.batch_ceiling import END, START, fractions, markdown, measure, outside_load
from modelstore.store import resolve_entry
from service.settings import Settings
from service.store import RestoreModel


def test_measures_every_graph_and_side_at_each_load_and_writes_its_section(fixture_store: Path) -> None:
    result = measure(fixture_store, "dir-restore", repeats=1, loads=(0.0, 0.5))
    entry = resolve_entry(fixture_store, "dir-restore", "restore")
    graphs = RestoreModel.from_settings(entry, Settings(model_store=fixture_store), with_session=False).graphs
    assert [run["load"] for run in result["runs"]] == [0.0, 0.5]
    for run in result["runs"]:
        seen = {(r["graph"], r["side"]) for r in run["rows"]}
        assert {g for g, _ in seen} == set(graphs) and len(seen) == len(run["rows"])
        for row in run["rows"]:
            assert row["batch"] >= 1
            assert set(row["ms_per_tile"]) == {"off", "on_one_call", "on_as_served"}
            assert all(v > 0 for v in row["ms_per_tile"].values())
        largest = max(side for _, side in seen)
        for mode, m in run["modes"].items():
            assert m["side"] == largest and m["ms_per_tile"]["off"] > 0, mode
    result.update(machine="test CPU", cores=2, repeats=1, date="today", load_at_start="0.00")
    section = markdown(result, "python -m benchmarks.batch_ceiling --no-write")
    assert section.startswith(START) and section.endswith(END)
    table = [line for line in section.splitlines() if line.startswith(("| 0 |", "| 0.5 |"))]
    assert len(table) == sum(len(run["rows"]) for run in result["runs"])
    assert sum(line.startswith("- Outside load 0.5,") for line in section.splitlines()) == len(
        result["runs"][1]["modes"]
    )


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
