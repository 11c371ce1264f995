"""Prometheus scrapes paths the service serves; the dashboard's queries name metrics the service exports."""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry

from service.metrics import Metrics
from tests.deploy import deployfiles as df

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


def _exported() -> set[str]:
    return df.exposition_sample_names(Metrics(CollectorRegistry()).exposition().decode())


def test_dashboard_queries_name_only_exported_metrics() -> None:
    exported = _exported()
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


def test_prometheus_scrapes_the_metrics_path() -> None:
    prom = df.load_yaml(df.PROMETHEUS)
    paths = {job["job_name"]: job.get("metrics_path", "/metrics") for job in prom["scrape_configs"]}
    assert set(paths) == {"dir-api", "dir-worker", "dir-worker-gpu"}
    assert set(paths.values()) == {"/metrics"}
