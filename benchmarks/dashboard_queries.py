"""The Grafana dashboard's PromQL, evaluated on /metrics scrapes: ``Scrapes`` (every sample of every scrape)
with ``rate`` and ``max by``, ``histogram_quantile``, each panel's series (``evaluate``) and the batch-size
histogram, for ``benchmarks.render_dashboard``."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = Path(__file__).resolve().parents[1] / "docker" / "grafana" / "dashboards" / "dir-isp.json"
SeriesKey = tuple[str, str, frozenset[tuple[str, str]]]  # target, sample name, labels


@dataclass
class Scrapes:
    """Time series of every scraped sample, keyed by (target, sample name, labels)."""

    times: list[float] = field(default_factory=list)
    values: list[dict[SeriesKey, float]] = field(default_factory=list)

    def add(self, t: float, targets: dict[str, str]) -> None:
        """Scrape every target (URL of a /metrics) once at time ``t``; a dead target adds no samples."""
        snapshot: dict[SeriesKey, float] = {}
        for target, url in targets.items():
            try:
                text = httpx.get(url, timeout=2.0).text
            except httpx.HTTPError:
                continue  # a dead target has no samples, as in Prometheus
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    snapshot[(target, s.name, frozenset(s.labels.items()))] = float(s.value)
        self.times.append(t)
        self.values.append(snapshot)

    def _select(self, i: int, name: str, match: Callable[[dict[str, str]], bool]) -> dict[SeriesKey, float]:
        return {k: v for k, v in self.values[i].items() if k[1] == name and match(dict(k[2]))}

    def rate(
        self, i: int, window: float, name: str, by: tuple[str, ...], match: Callable[[dict[str, str]], bool]
    ) -> dict[tuple[str, ...], float]:
        """``sum by (by) (rate(name[window]))`` at scrape ``i``.

        Per series, from its first sample inside the window (series born inside it count from there), with
        counter resets (a restarted target) handled as Prometheus does.
        """
        first = i
        while first > 0 and self.times[i] - self.times[first - 1] <= window:
            first -= 1
        out: dict[tuple[str, ...], float] = defaultdict(float)
        for key in self._select(i, name, match):
            start = next((k for k in range(first, i) if key in self.values[k]), None)
            if start is None:
                continue
            delta, previous = 0.0, self.values[start][key]
            for k in range(start + 1, i + 1):
                current = self.values[k].get(key, previous)
                delta += current - previous if current >= previous else current
                previous = current
            labels = dict(key[2])
            out[tuple(labels.get(b, "") for b in by)] += delta / (self.times[i] - self.times[start])
        return dict(out)

    def gauge_max(self, i: int, name: str, by: tuple[str, ...]) -> dict[tuple[str, ...], float]:
        """``max by (by) (name)`` at scrape ``i``."""
        out: dict[tuple[str, ...], float] = {}
        for key, value in self._select(i, name, lambda _l: True).items():
            group = tuple(dict(key[2]).get(b, "") for b in by)
            out[group] = max(out.get(group, value), value)
        return out


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative bucket rates keyed by upper bound ``le``."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for upper in bounds:
        count = buckets[upper]
        if count >= rank:
            if upper == float("inf"):
                return bounds[-2] if len(bounds) > 1 else None
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = upper, count
    return None


def _quantiles(
    scrapes: Scrapes, i: int, metric: str, by: str, window: float, match: Callable[[dict[str, str]], bool]
) -> dict[str, float]:
    rates = scrapes.rate(i, window, metric + "_bucket", (by, "le"), match)
    grouped: dict[str, dict[float, float]] = defaultdict(dict)
    for (group, le), rate in rates.items():
        grouped[group][float(le)] = rate
    out: dict[str, float] = {}
    for group, buckets in grouped.items():
        for q in (0.5, 0.95, 0.99):
            quantile = histogram_quantile(q, buckets)
            if quantile is not None:
                out[f"{group} p{round(q * 100)}"] = quantile
    return out


def evaluate(scrapes: Scrapes, window: float) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Each dashboard panel title -> legend -> [(seconds since start, value)]."""
    titles = [p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]]
    panels: dict[str, dict[str, list[tuple[float, float]]]] = {t: defaultdict(list) for t in titles}
    every = lambda _l: True  # noqa: E731
    model_api = lambda labels: labels.get("endpoint", "").startswith("/v1/")  # noqa: E731
    errors = lambda labels: labels.get("status", "")[:1] in ("4", "5")  # noqa: E731
    t0 = scrapes.times[0]
    for i, now in enumerate(scrapes.times):
        t = now - t0

        def put(title: str, series: dict[str, float], t: float = t) -> None:
            for legend, value in series.items():
                panels[title][legend].append((t, value))

        req = scrapes.rate(i, window, "dir_request_duration_seconds_count", ("endpoint",), model_api)
        put(titles[0], {k[0]: v for k, v in req.items()})
        put(titles[1], _quantiles(scrapes, i, "dir_request_duration_seconds", "endpoint", window, model_api))
        put(titles[2], _quantiles(scrapes, i, "dir_queue_wait_seconds", "model", window, every))
        put(titles[3], _quantiles(scrapes, i, "dir_compute_seconds", "model", window, every))
        put(titles[5], {k[0]: v for k, v in scrapes.gauge_max(i, "dir_queue_depth", ("model",)).items()})
        errs = scrapes.rate(i, window, "dir_request_duration_seconds_count", ("endpoint", "status"), errors)
        rejected = scrapes.rate(i, window, "dir_rejected_total", ("reason",), every)
        put(
            titles[6],
            {f"{e} {s}": v for (e, s), v in errs.items()}
            | {f"rejected: {r[0]}": v for r, v in rejected.items() if v > 0},
        )
        redeliveries = scrapes.rate(i, 60.0, "dir_redeliveries_total", (), every)
        dead = scrapes.rate(i, 60.0, "dir_dead_letters_total", (), every)
        put(
            titles[7],
            {
                "redeliveries / min": 60 * redeliveries.get((), 0.0),
                "dead letters / min": 60 * dead.get((), 0.0),
            },
        )
    return panels


def batch_histogram(scrapes: Scrapes) -> tuple[dict[str, float], float]:
    """Batches per batch-size bucket over the whole run (``increase(dir_batch_size_bucket[$__range])``,
    de-cumulated as Grafana's heatmap format does) and the mean batch size."""
    last = len(scrapes.times) - 1
    span = scrapes.times[last] - scrapes.times[0]
    every = lambda _l: True  # noqa: E731
    rates = scrapes.rate(last, span, "dir_batch_size_bucket", ("le",), every)
    cumulative = {float(k[0]): v * span for k, v in rates.items()}
    counts: dict[str, float] = {}
    below, previous = 0.0, 0.0
    for le in sorted(cumulative):
        label = f">{previous:g}" if le == float("inf") else f"\u2264{le:g}"
        counts[label] = cumulative[le] - below
        below, previous = cumulative[le], le
    total = scrapes.rate(last, span, "dir_batch_size_count", (), every).get((), 0.0)
    mean = scrapes.rate(last, span, "dir_batch_size_sum", (), every).get((), 0.0) / total if total else 0.0
    return counts, mean
