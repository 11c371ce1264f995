"""Prometheus scrapes paths the service serves; the dashboard's queries name metrics the service exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.deploy import deployfiles as df
from tests.deploy.conftest import app_for

CONTRACT = {
    "dir_request_duration_seconds",
    "dir_queue_wait_seconds",
    "dir_compute_seconds",
    "dir_batch_size",
    "dir_queue_depth",
    "dir_redeliveries_total",
    "dir_dead_letters_total",
    "dir_rejected_total",
}


@pytest.fixture(scope="module")
def scraped(fixture_store: Path, sample_jpeg: Path) -> tuple[str, set[str]]:
    """The real app's /metrics text after one restore, and the paths the app serves."""
    app = app_for(fixture_store)
    with TestClient(app) as client:
        client.post("/v1/restore", content=sample_jpeg.read_bytes()).raise_for_status()
        text = client.get("/metrics").text
    paths = {str(getattr(route, "path", "")) for route in app.routes}
    return text, paths


def test_dashboard_queries_name_only_exported_metrics(scraped: tuple[str, set[str]]) -> None:
    exported = df.exposition_sample_names(scraped[0])
    used = {name for expr in df.dashboard_exprs() for name in df.METRIC_NAME.findall(expr)}
    assert used, "the dashboard has queries"
    missing = used - exported
    assert not missing, f"dashboard queries metrics the service does not export: {sorted(missing)}"


def test_dashboard_covers_every_contract_metric() -> None:
    text = " ".join(df.dashboard_exprs())
    for family in CONTRACT:
        assert family in text, f"no panel shows {family}"
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (endpoint, le)" in text


def test_dashboard_panels_are_unique_and_use_the_provisioned_datasource() -> None:
    data = json.loads(df.DASHBOARD.read_text())
    source = df.load_yaml(df.DOCKER / "grafana/provisioning/datasources/prometheus.yaml")["datasources"][0]
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    for panel in data["panels"]:
        assert panel["datasource"]["uid"] == source["uid"]
        assert panel["description"]


def test_the_scrape_moved_after_a_request(scraped: tuple[str, set[str]]) -> None:
    text = scraped[0]
    assert 'dir_request_duration_seconds_count{endpoint="/v1/restore",status="200"} 1.0' in text
    assert "dir_compute_seconds_count" in text


def test_prometheus_scrapes_the_paths_the_service_serves(scraped: tuple[str, set[str]]) -> None:
    prom = df.load_yaml(df.PROMETHEUS)
    paths = {job["job_name"]: job.get("metrics_path", "/metrics") for job in prom["scrape_configs"]}
    assert set(paths) == {"dir-api", "dir-worker", "dir-worker-gpu"}
    assert paths["dir-api"] in scraped[1]
    # dir-worker --metrics-port serves prometheus_client's start_http_server, which answers /metrics
    assert {paths["dir-worker"], paths["dir-worker-gpu"]} == {"/metrics"}
    assert "/healthz" in scraped[1], "the images' HEALTHCHECK path"
