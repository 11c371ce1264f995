"""The evaluation report's figures (the crops grid, the PSNR bar chart) and what they share with its tables:
dataset labels, the paper's Table 5 and a method's mean PSNR on a dataset."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from training.evaluate.protocols import DATASETS
from training.evaluate.runner import MethodResult, RunResult

PAPER_TABLE5: dict[str, dict[str, tuple[float, float]]] = {
    "autoencoder": {"cset14": (21.6, 0.378), "bsd100": (23.1, 0.408)},
    "dir-r0": {"cset14": (22.4, 0.359), "bsd100": (23.8, 0.379)},
    "dir-no-pilot": {"cset14": (23.9, 0.243), "bsd100": (24.6, 0.313)},
    "dir-full": {"cset14": (24.1, 0.228), "bsd100": (25.0, 0.288)},
    "onnx": {"cset14": (24.1, 0.228), "bsd100": (25.0, 0.288)},
}
"""Paper Table 5: (PSNR dB, LPIPS) per method and dataset; the shipped model is compared with the full row."""

FAMILY_COLOURS = {"peer": "#999999", "diagnostic": "#dd8452"}
"""PSNR chart bar colours by method family; our models (``dir``, ``shipped``) are blue."""


def dataset_label(ds: str) -> str:
    return DATASETS[ds].label if ds in DATASETS else ds


def paper_key(m: MethodResult) -> str:
    """The paper-table key of a method: the shipped full method's graphs (``onnx``, ``onnx:<dir>``) are
    scored against the paper's full DiR; the denoise mode has no paper counterpart."""
    return "onnx" if m.family == "shipped" and m.method != "onnx-denoise" else m.method


def mean_psnr(m: MethodResult | None, ds: str) -> float | None:
    s = m.summary(ds) if m else None
    return s.psnr if s else None


def write_figure(run: RunResult, path: Path) -> Path:
    """A PNG grid: one row per dataset (the centre crop of its first image), one column per image shown:
    clean (where there is one), degraded, then every method that ran, each titled with its PSNR there."""
    rows = [ds for ds in run.datasets if ds in run.crops]
    cols = max(len(run.crops[ds]) for ds in rows)
    fig = Figure(figsize=(1.9 * cols, 2.2 * len(rows)))
    axes = fig.subplots(len(rows), cols, squeeze=False)
    by_label = {m.label: m for m in run.methods}
    for r, ds in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            items = list(run.crops[ds].items())
            if c >= len(items):
                continue
            label, crop = items[c]
            ax.imshow(crop)
            m = by_label.get(label)
            score = next((s for s in m.scores if s.dataset == ds), None) if m else None
            title = label if score is None or score.psnr is None else f"{label}\n{score.psnr:.2f} dB"
            if label == "Degraded":
                ident = next((mm for mm in run.methods if mm.family == "reference"), None)
                di = next((s for s in ident.scores if s.dataset == ds), None) if ident else None
                title = label if di is None or di.psnr is None else f"{label}\n{di.psnr:.2f} dB"
            ax.set_title(title, fontsize=7)
            if c == 0:
                name = (
                    next(s.name for s in run.methods[0].scores if s.dataset == ds)
                    if run.methods[0].scores
                    else ""
                )
                ax.text(
                    -0.05,
                    0.5,
                    f"{dataset_label(ds)}\n{name}",
                    transform=ax.transAxes,
                    ha="right",
                    va="center",
                    fontsize=7,
                )
    fig.suptitle(
        f"protocol {run.protocol}: centre crops of the first image per dataset (PSNR on the whole image)",
        fontsize=8,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _chart_top(values: Sequence[float | None], base: float | None) -> float:
    """The right end of a PSNR bar chart's axis: 1 dB past the highest finite value (an output identical to
    its reference scores inf dB and is drawn to this end, labelled)."""
    finite = [v for v in (*values, base) if v is not None and math.isfinite(v)]
    return max(finite, default=99.0) + 1.0


def write_psnr_chart(run: RunResult, path: Path) -> Path | None:
    """Horizontal bars of each method's mean PSNR per dataset, the degraded input as a dashed line and the
    paper's Table 5 value as a diamond where it has one; None when no method has a PSNR (no reference)."""
    ran = [m for m in run.methods if m.reason is None]
    datasets = [ds for ds in run.datasets if any((s := m.summary(ds)) and s.psnr is not None for m in ran)]
    if not datasets:
        return None
    shown = [m for m in ran if m.family != "reference"]
    reference = next((m for m in ran if m.family == "reference"), None)
    fig = Figure(figsize=(4.2 * len(datasets), 0.32 * len(shown) + 1.2))
    axes = fig.subplots(1, len(datasets), squeeze=False, sharey=True)[0]
    for ax, ds in zip(axes, datasets, strict=True):
        values = [mean_psnr(m, ds) for m in shown]
        ys = range(len(shown))
        base = mean_psnr(reference, ds)
        top = _chart_top(values, base)
        ax.barh(
            list(ys),
            [min(v, top) if v is not None else 0.0 for v in values],
            color=[FAMILY_COLOURS.get(m.family, "#4c72b0") for m in shown],
        )
        for y, v in zip(ys, values, strict=True):
            if v is not None and math.isinf(v):
                ax.text(top, y, " identical (inf)", va="center", ha="right", fontsize=6, color="white")
        if base is not None and math.isfinite(base):
            ax.axvline(
                base, color="black", linestyle="--", linewidth=1, label=f"degraded input {base:.2f} dB"
            )
        known = [min(v, top) for v in (*values, base) if v is not None]
        for y, m in zip(ys, shown, strict=True):
            paper = PAPER_TABLE5.get(paper_key(m), {}).get(ds) if run.protocol == "ablation" else None
            if paper is not None:
                ax.plot(paper[0], y, marker="D", color="#c44e52", markersize=5)
                known.append(paper[0])
        ax.set_xlim(min(known) - 2.0, max(known) + 1.0)
        ax.set_title(f"{dataset_label(ds)}: mean PSNR (dB)", fontsize=8)
        ax.set_yticks(list(ys))
        ax.set_yticklabels([m.label for m in shown], fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
        ax.invert_yaxis()
        if base is not None:
            ax.legend(fontsize=6, loc="lower right")
    note = "; red diamonds: the paper's Table 5" if run.protocol == "ablation" else ""
    if any(m.family == "diagnostic" for m in shown):
        note = ", orange = diagnostics" + note
    fig.suptitle(f"protocol {run.protocol}: blue = our models, grey = peers{note}", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
