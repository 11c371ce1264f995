"""``dir-eval scorecard``: every row computed for two entries side by side, the replacement rule, the
clean-input protocol and a run folder exported as the candidate."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.service.fixture_model import build_entry
from training.evaluate.cli import main as eval_main
from training.evaluate.protocols import get_protocol
from training.evaluate.scorecard_rows import ROWS, Line, Row, decide


def _line(stat: str, candidate: float, shipped: float, primary: bool = False) -> Line:
    return Line(Row("r", "real", "cc15", "default", stat, primary), candidate, shipped, None, None)


def test_the_replacement_rule() -> None:
    assert decide([_line("psnr", 30.0, 29.0, True), _line("psnr", 20.0, 20.05)]) == (True, [])
    replace, against = decide([_line("psnr", 30.0, 29.0, True), _line("psnr", 20.0, 20.2)])
    assert not replace and "worse by 0.20 dB" in against[0]
    replace, against = decide([_line("gain", 1.0, 1.01, True)])
    assert not replace and "primary row" in against[0]
    assert decide([_line("worse", 3, 2, True)])[0] is False
    assert decide([_line("worse", 1, 2, True)])[0] is True


def test_clean_protocol_feeds_each_image_as_its_own_reference(dataset: Callable[[str], Path]) -> None:
    dataset("cset14")
    (sample,) = get_protocol("clean").samples("cset14", 1)
    assert sample.clean is not None and torch.equal(sample.degraded, sample.clean)


def test_scorecard_of_two_entries(
    dataset: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("cc15", "cset14", "bsd100"):
        dataset(name)
    store = tmp_path / "store"
    shipped = build_entry(store, version="0.0.1")
    candidate = build_entry(tmp_path / "candidates", version="0.0.2")
    out = tmp_path / "card.json"
    argv = ["scorecard", str(candidate), "--model-store", str(store), "--limit", "1", "--peers", "nlm"]
    assert eval_main([*argv, "--json", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Verdict" in printed and f"shipped `dir-restore/{shipped.name}`" in printed
    card = json.loads(out.read_text())
    rows = {r["label"]: r for r in card["rows"]}
    assert set(rows) >= {r.label for r in ROWS} and any(k.startswith("cost, full") for k in rows)
    # The same graphs on both sides: every quality row is equal, so the candidate may replace the default.
    for row in ROWS:
        assert rows[row.label]["candidate"] == pytest.approx(rows[row.label]["shipped"]), row.label
    assert card["replace"] is True
    assert rows[ROWS[0].label]["peer"] == "OpenCV NLM"
    assert eval_main(["scorecard", str(tmp_path / "nowhere"), "--model-store", str(store)]) == 2
    assert "neither an entry nor a run folder" in capsys.readouterr().err
