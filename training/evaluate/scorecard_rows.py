"""The scorecard's rows, the replacement rule and the Markdown table: pure data, no model is run here.

Statistics are of per-image PSNR in dB (peak 1, float32 sRGB in [0, 1]) as scored by
:mod:`training.evaluate.runner`; :mod:`training.evaluate.scorecard` runs the protocols that fill them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from training.evaluate.runner import MethodResult

TOLERANCE_DB = 0.1
"""A candidate may lose at most this much (dB) on any dB row against the shipped entry."""


@dataclass(frozen=True)
class Row:
    """One scorecard line: a statistic of one method family on one protocol and dataset.

    ``stat``: ``psnr`` (mean dB), ``gain`` (mean dB over the input), ``worst`` (the lowest per-image dB
    over the input), ``worse`` (images more than 0.1 dB below their input; lower is better), ``s_per_mp``
    (seconds per megapixel; lower is better). ``target``: the issue's target in the same unit, or None.
    """

    label: str
    protocol: str
    dataset: str
    mode: str
    stat: str
    primary: bool
    target: float | None = None
    peers: bool = True

    @property
    def higher_is_better(self) -> bool:
        """False for counts of worse images and for costs."""
        return self.stat not in ("worse", "s_per_mp")

    @property
    def in_db(self) -> bool:
        """Whether the row is in dB (the tolerance applies)."""
        return self.stat in ("psnr", "gain", "worst")


ROWS: tuple[Row, ...] = (
    Row("cc15 real noise, default mode: mean gain (dB)", "real", "cc15", "default", "gain", True, 3.0),
    Row("cc15, default mode: worst image vs its input (dB)", "real", "cc15", "default", "worst", True, -0.1),
    Row("cc15, default mode: images made worse", "real", "cc15", "default", "worse", True, 0.0, peers=False),
    Row("cc15, full: mean gain (dB)", "real", "cc15", "full", "gain", False, -0.5, peers=False),
    Row("clean cset14 as input, default mode (dB)", "clean", "cset14", "default", "psnr", True, 38.0),
    Row("clean bsd100 as input, default mode (dB)", "clean", "bsd100", "default", "psnr", True, 38.0),
    Row("ablation cset14, full (dB)", "ablation", "cset14", "full", "psnr", False, 22.5),
    Row("ablation bsd100, full (dB)", "ablation", "bsd100", "full", "psnr", False, 22.5),
    Row(
        "ablation cset14, full + oracle colour fit (dB)",
        "ablation",
        "cset14",
        "full-fit",
        "psnr",
        False,
        26.5,
    ),
    Row(
        "ablation bsd100, full + oracle colour fit (dB)",
        "ablation",
        "bsd100",
        "full-fit",
        "psnr",
        False,
        26.5,
    ),
    Row("ablation cset14, default mode (dB)", "ablation", "cset14", "default", "psnr", False),
    Row("ablation bsd100, default mode (dB)", "ablation", "bsd100", "default", "psnr", False),
    Row("lowlight cset14, default mode (dB)", "lowlight", "cset14", "default", "psnr", True),
    Row("lowlight bsd100, default mode (dB)", "lowlight", "bsd100", "default", "psnr", True),
)


def row_stat(result: MethodResult, reference: MethodResult | None, dataset: str, stat: str) -> float | None:
    """One statistic of ``result`` on ``dataset`` (see :class:`Row`); None where it did not run."""
    scores = [s for s in result.scores if s.dataset == dataset]
    summary = result.summary(dataset)
    if summary is None:
        return None
    if stat == "psnr":
        return summary.psnr
    if stat == "s_per_mp":
        return summary.s_per_mp
    if reference is None:
        return None
    inputs = {s.name: s.psnr for s in reference.scores if s.dataset == dataset}
    deltas = []
    for score in scores:
        before = inputs.get(score.name)
        if score.psnr is not None and before is not None:
            deltas.append(score.psnr - before)
    if not deltas:
        return None
    if stat == "gain":
        return sum(deltas) / len(deltas)
    if stat == "worst":
        return min(deltas)
    return float(sum(d < -TOLERANCE_DB for d in deltas))


@dataclass
class Line:
    """A computed row: candidate, shipped, the best peer (name and value), and the verdicts."""

    row: Row
    candidate: float | None
    shipped: float | None
    peer: str | None
    peer_value: float | None

    @property
    def target_met(self) -> bool | None:
        """Whether the candidate meets the row's target (None: no target or no value)."""
        if self.row.target is None or self.candidate is None:
            return None
        better = (
            self.candidate >= self.row.target
            if self.row.higher_is_better
            else self.candidate <= self.row.target
        )
        return bool(better)

    @property
    def delta(self) -> float | None:
        """Candidate minus shipped, signed so that positive is better."""
        if self.candidate is None or self.shipped is None:
            return None
        d = self.candidate - self.shipped
        return d if self.row.higher_is_better else -d


def decide(lines: Sequence[Line]) -> tuple[bool, list[str]]:
    """The replacement rule: every primary row at least as good as the shipped entry, no dB row more than
    :data:`TOLERANCE_DB` worse. Returns (replace, reasons against)."""
    against = []
    for line in lines:
        d = line.delta
        if d is None:
            continue
        if line.row.primary and d < 0 and not (line.row.in_db and d >= -1e-9):
            against.append(f"primary row '{line.row.label}' worse by {-d:.2f}")
        elif line.row.in_db and d < -TOLERANCE_DB:
            against.append(f"'{line.row.label}' worse by {-d:.2f} dB (more than {TOLERANCE_DB})")
    return not against, against


def fmt(value: float | None, stat: str) -> str:
    if value is None:
        return "-"
    if stat == "worse":
        return f"{value:.0f}"
    if stat in ("gain", "worst"):
        return f"{value:+.2f}"
    return f"{value:.2f}"


def render(lines: Sequence[Line], candidate: str, shipped: str, extra: Sequence[str] = ()) -> str:
    """The scorecard as a Markdown table plus the verdict line."""
    replace, against = decide(lines)
    out = [
        f"| row | candidate `{candidate}` | shipped `{shipped}` | best peer | target | met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for line in lines:
        r = line.row
        peer = f"{fmt(line.peer_value, r.stat)} ({line.peer})" if line.peer else "-"
        met = {None: "", True: "yes", False: "no"}[line.target_met]
        target = (
            "-" if r.target is None else ("<= " if not r.higher_is_better else ">= ") + fmt(r.target, r.stat)
        )
        label = f"**{r.label}**" if r.primary else r.label
        ours = f"{fmt(line.candidate, r.stat)} | {fmt(line.shipped, r.stat)}"
        out.append(f"| {label} | {ours} | {peer} | {target} | {met} |")
    verdict = "replace the default" if replace else "keep the shipped default: " + "; ".join(against)
    out += [
        "",
        f"Verdict (bold rows primary; no dB row more than {TOLERANCE_DB} dB worse): **{verdict}**.",
        *extra,
    ]
    return "\n".join(out)
