"""The JSONL log of a run (one record per logged step) and its loss-curve plot (``dir-train plot``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.errors import CheckpointError


def metrics_path(run_dir: Path, tag: str) -> Path:
    """The JSONL log of one stage of a run: ``run_dir/metrics-<tag>.jsonl``."""
    return run_dir / f"metrics-{tag}.jsonl"


def truncate_log(path: Path, after_step: int) -> None:
    """Drop records with ``step > after_step`` (used on ``--resume`` so the log has no duplicates)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= after_step]
    path.write_text("".join(line + "\n" for line in kept))


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON object as a line."""
    with path.open("a") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")


def read_log(path: Path) -> list[dict[str, Any]]:
    """All records of a JSONL log."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_run(run_dir: Path, out: Path | None = None) -> Path:
    """Draw every metrics-*.jsonl of ``run_dir`` to one PNG (a row per log: losses, then PSNR) -> its path."""
    import matplotlib  # optional: plots only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional: plots only

    logs = sorted(run_dir.glob("metrics-*.jsonl"))
    if not logs:
        raise CheckpointError(f"no metrics-*.jsonl logs in {run_dir}")
    fig, axes = plt.subplots(len(logs), 2, figsize=(11, 3.2 * len(logs)), squeeze=False)
    for row, log in zip(axes, logs, strict=True):
        records = read_log(log)
        tag = log.stem.removeprefix("metrics-")
        skip = {"step", "lr", "images_per_s", "epoch"}
        keys = sorted({k for r in records for k in r if k not in skip and not k.startswith("val_")})
        for k in keys:
            pts = [(r["step"], r[k]) for r in records if k in r]
            row[0].plot([p[0] for p in pts], [p[1] for p in pts], label=k, linewidth=1)
        row[0].set_title(f"{tag}: training losses")
        row[0].set_xlabel("step")
        row[0].legend(fontsize=7)
        vkeys = sorted({k for r in records for k in r if k.startswith("val_") and k.endswith("psnr")})
        for k in vkeys:
            pts = [(r["step"], r[k]) for r in records if k in r]
            row[1].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=k)
        row[1].set_title(f"{tag}: held-out PSNR (dB)")
        row[1].set_xlabel("step")
        if vkeys:
            row[1].legend(fontsize=7)
    fig.tight_layout()
    target = out or run_dir / "loss_curves.png"
    fig.savefig(target, dpi=80)
    plt.close(fig)
    return target
