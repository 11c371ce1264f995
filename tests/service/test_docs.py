"""docs/SERVICE.md documents every setting and every metric the service exports."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from service.metrics import Metrics
from service.settings import Settings

DOC = (Path(__file__).resolve().parents[2] / "docs" / "SERVICE.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [f"DIR_{name.upper()}" for name in Settings.model_fields if f"`DIR_{name.upper()}`" not in DOC]
    assert not missing, f"docs/SERVICE.md lacks {missing}"


def test_every_metric_is_documented() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    names = {m.name + ("_total" if m.type == "counter" else "") for m in registry.collect()}
    assert names == {
        "dir_request_duration_seconds",
        "dir_queue_wait_seconds",
        "dir_compute_seconds",
        "dir_batch_size",
        "dir_queue_depth",
        "dir_live_workers",
        "dir_redeliveries_total",
        "dir_dead_letters_total",
        "dir_rejected_total",
    }
    assert all(f"`{name}`" in DOC for name in names)
