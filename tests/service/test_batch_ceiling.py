"""benchmarks/batch_ceiling.py runs every graph of an entry as served and reports per-tile times."""

from __future__ import annotations

from pathlib import Path

from benchmarks.batch_ceiling import END, START, markdown, measure
from service.settings import Settings
from service.store import RestoreModel, resolve_entry


def test_measures_every_graph_and_side_and_writes_its_section(fixture_store: Path) -> None:
    result = measure(fixture_store, "dir-restore", repeats=1)
    entry = resolve_entry(fixture_store, "dir-restore", "restore")
    graphs = RestoreModel.from_settings(entry, Settings(model_store=fixture_store), with_session=False).graphs
    seen = {(r["graph"], r["side"]) for r in result["rows"]}
    assert {g for g, _ in seen} == set(graphs) and len(seen) == len(result["rows"])
    for row in result["rows"]:
        assert row["batch"] >= 1
        assert set(row["ms_per_tile"]) == {"off", "on_one_call", "on_as_served"}
        assert all(v > 0 for v in row["ms_per_tile"].values())
    largest = max(side for _, side in seen)
    for mode, m in result["modes"].items():
        assert m["side"] == largest and m["ms_per_tile"]["off"] > 0, mode
    result.update(machine="test CPU", cores=2, repeats=1, date="today", load_at_start="0.00")
    section = markdown(result, "python -m benchmarks.batch_ceiling --no-write")
    assert section.startswith(START) and section.endswith(END)
    assert sum(line.startswith(("| guide", "| model", "| denoise")) for line in section.splitlines()) == len(
        seen
    )
