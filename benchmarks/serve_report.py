"""The docs/BENCHMARKS.md section of ``benchmarks.serve``: the markdown of a result and its ratios."""

from __future__ import annotations

from typing import Any

START, END = "<!-- serve:start -->", "<!-- serve:end -->"


def markdown(result: dict[str, Any], waves: int) -> str:
    """The docs/BENCHMARKS.md section; at concurrency c > 1 each client sent ``waves`` requests."""
    lines = [
        START,
        "## Serving (`benchmarks/serve.py`)",
        "",
        f"Machine: {result['machine']}. Command: `{result['command']}`. Model: `{result['model']}` "
        f"(tile sides {result['tile']}). Servers: {result['server_threads']}; "
        f"ORT vs torch: {result['threads']} intra-op threads. Measured {result['date']}.",
        f"Load average at start: {result['load_at_start']}; the modes ran one after another in the same run, "
        "so compare ratios, not absolute numbers across runs. Each server first serves one wave of "
        "requests at the highest concurrency (not counted); at concurrency c > 1 each of the c clients then "
        f"sends {waves} requests, one after another.",
        "",
        "| mode | concurrency | requests | throughput (req/s) | p50 (ms) | p99 (ms) | failures |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, rows in result["serving"].items():
        if isinstance(rows, dict):
            lines.append(f"| {mode} | - | - | {rows['skipped']} | | | |")
            continue
        for r in rows:
            lines.append(
                f"| {mode} | {r['concurrency']} | {r['requests']} | {r['throughput_rps']:.2f} | "
                f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['failures']} |"
            )
    lines.append("")
    for key, value in result["ratios"].items():
        lines.append(f"- {key}: {value}")
    over = result.get("redis_overhead")
    if over:
        q1, q3 = over["difference_quartiles_ms"]
        lines.append(
            f"- Redis + 1 worker vs embedded at concurrency 1, both servers up and requests interleaved "
            f"({over['pairs']} pairs): p50 {over['redis_p50_ms']:.0f} vs {over['embedded_p50_ms']:.0f} ms, "
            f"median paired difference {over['median_difference_ms']:+.1f} ms (quartiles {q1:+.1f} / "
            f"{q3:+.1f} ms; target <= 15 ms)"
        )
        o1, o3 = over["outside_model_difference_quartiles_ms"]
        lines.append(
            f"- The same pairs, time outside the model (latency minus `Server-Timing` compute): "
            f"p50 {over['redis_outside_model_p50_ms']:.0f} vs "
            f"{over['embedded_outside_model_p50_ms']:.0f} ms, "
            f"median paired difference {over['median_outside_model_difference_ms']:+.1f} ms "
            f"(quartiles {o1:+.1f} / {o3:+.1f} ms)"
        )
    ot = result["ort_vs_torch"]
    what = {
        "two_pass": "two-pass as served (guide graph, its mean, serving graph)",
        "single_pass": "single pass (the graph pools over its own input)",
    }
    for name, label in what.items():
        if name in ot:
            row = ot[name]
            lines.append(
                f"- ONNX Runtime vs PyTorch eager, {label}, one {ot['input_shape']} image, "
                f"{ot['threads']} threads, median of {ot['repeats']} interleaved, {ot['weights']}: "
                f"ORT {row['ort_ms']:.1f} ms, torch {row['torch_ms']:.1f} ms, "
                f"ORT/torch = {row['ort_over_torch']:.2f} (target <= 0.8)"
            )
    rss = result["peak_rss_12mp"]
    lines.append(
        f"- One 12 MP JPEG (4000x3000, {rss['tiles']} tiles): status {rss['status']}, "
        f"{rss['seconds']:.1f} s, "
        f"API peak RSS {rss['peak_rss_mb']:.0f} MiB (before the request: {rss['peak_rss_before_mb']:.0f} MiB)"
    )
    lines.append(END)
    return "\n".join(lines)


def ratios(serving: dict[str, Any]) -> dict[str, str]:
    """Throughput of batching vs none at the highest concurrency; Redis vs embedded p50 at concurrency 1."""
    out: dict[str, str] = {}
    off, emb, red = serving.get("batching_off"), serving.get("embedded"), serving.get("redis_1_worker")
    if isinstance(off, list) and isinstance(emb, list):
        out[f"embedded batching / batching off throughput at concurrency {emb[-1]['concurrency']}"] = (
            f"{emb[-1]['throughput_rps'] / off[-1]['throughput_rps']:.2f}x (target >= 1.3x)"
        )
    if isinstance(emb, list) and isinstance(red, list):
        out["Redis p50 - embedded p50 at concurrency 1, rows above (modes run one after another)"] = (
            f"{red[0]['p50_ms'] - emb[0]['p50_ms']:+.1f} ms"
        )
    den = serving.get("embedded_denoise")
    if isinstance(emb, list) and isinstance(den, list):
        out["mode=denoise vs mode=full (embedded), p50 at concurrency 1 and throughput at the highest"] = (
            f"{den[0]['p50_ms']:.0f} vs {emb[0]['p50_ms']:.0f} ms, "
            f"{den[-1]['throughput_rps'] / emb[-1]['throughput_rps']:.2f}x (no target)"
        )
    den_off = serving.get("batching_off_denoise")
    if isinstance(den, list) and isinstance(den_off, list):
        out[
            "mode=denoise (the default mode): embedded batching / batching off throughput at concurrency "
            f"{den[-1]['concurrency']}"
        ] = f"{den[-1]['throughput_rps'] / den_off[-1]['throughput_rps']:.2f}x (the target is set for full)"
    return out
