"""The runner: scores per image, the score cache reused on byte-identical inputs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from training.evaluate.methods import MethodContext, resolve_methods
from training.evaluate.runner import RunResult, ScoreCache, run_protocol


def test_score_cache_is_reused(tmp_path: Path, dataset: Callable[[str], Path]) -> None:
    dataset("cc15")
    methods = resolve_methods("identity,nlm,dir-full")

    def run(cache: ScoreCache) -> RunResult:
        return run_protocol("real", methods, MethodContext(), ["cc15"], limit=2, progress=False, cache=cache)

    first = run(ScoreCache(tmp_path))
    cache = ScoreCache(tmp_path)
    assert len(cache.entries) == 4  # identity and nlm on 2 images; dir-full did not run (no --run)
    second = run(cache)
    nlm1, nlm2 = first.methods[1], second.methods[1]
    assert nlm2.scores[1] == nlm1.scores[1]  # from the cache, timing included
    assert nlm2.scores[0].psnr == nlm1.scores[0].psnr  # first image recomputed for the figure
    assert first.methods[2].reason is not None and not first.methods[2].scores
    assert set(second.crops["cc15"]) == {"Clean", "Degraded", "OpenCV NLM"}
