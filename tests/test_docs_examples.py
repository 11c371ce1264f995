"""Every command of the README's and docs/EVALUATION.md's shell blocks runs, in a tiny form.

Each command is listed in ``EXAMPLES`` (a new or changed doc command fails
``test_every_doc_command_is_listed`` until it is given a tiny form here) with the arguments that make it
small: ``--steps 2``, ``--limit 1``, 96 x 96 crops of the evaluation sets, the tiny test entry of
tests/service/fixture_model.py, outputs in a scratch folder. Commands run from that scratch folder, through
bash, with ``.venv/bin/<script>`` and ``<script>`` resolved to this tree's pyproject console scripts. A
command that needs the shared data skips, naming it, where it is absent; one that cannot run here (a
browser, docker, a GPU-sized config, a file the user supplies) skips with the reason. The README's Redis
pair runs in ``test_serve_and_worker_through_redis``.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.deploy.deployfiles import console_scripts
from tests.doc_commands import ROOT, shell_commands
from training.paths import data_root

SHIPPED = "dir-restore/3.3.0"


@dataclass(frozen=True)
class Tiny:
    """The small form of a doc command: a bash line run in the scratch folder. ``{data}`` is the shared data
    folder, ``{port}`` the port of a ``dir-serve`` on the tiny test entry (started when used). ``needs``:
    paths under the shared data without which it skips; ``run``: it reads the tiny training run."""

    command: str
    needs: tuple[str, ...] = ()
    run: bool = False


@dataclass(frozen=True)
class Skip:
    """A doc command that does not run here, and why."""

    reason: str


TRAIN_TINY = ".venv/bin/dir-train {stage} --config tiny --steps 2 --run-dir runs/tiny --no-progress"
EVAL_TINY = "--limit 1 --no-progress"
GPU_CONFIG = (
    "GPU-sized config (the paper's widths, large batches): one step takes minutes on 2 CPU cores; the"
    " tiny config above runs the same commands"
)

EXAMPLES: dict[str, dict[str, Tiny | Skip]] = {
    "README.md": {
        "make serve": Tiny(
            "make -n -C {root} serve | grep 'bin/dir-serve --host 127.0.0.1 --port 8000' >/dev/null"
        ),
        "make test": Tiny("make -n -C {root} test | grep 'bin/python -m pytest' >/dev/null"),
        "curl --data-binary @photo.jpg -H 'Accept: image/jpeg' http://127.0.0.1:8000/v1/restore "
        "-o restored.jpg": (
            Tiny(
                "curl -sf --data-binary @photo.jpg -H 'Accept: image/jpeg' http://127.0.0.1:{port}/v1/restore"
                ' -o restored.jpg && python -c \'from PIL import Image; assert Image.open("restored.jpg")'
                '.format == "JPEG"\''
            )
        ),
        "curl --data-binary @photo.jpg 'http://127.0.0.1:8000/v1/restore?mode=full' -o fixed.png": Tiny(
            "curl -sf --data-binary @photo.jpg 'http://127.0.0.1:{port}/v1/restore?mode=full' -o fixed.png"
            " && python -c 'from PIL import Image; assert Image.open(\"fixed.png\").size == (64, 48)'"
        ),
        "curl --data-binary @photo.jpg http://127.0.0.1:8000/v1/represent -o r_plus.npy": Tiny(
            "curl -sf --data-binary @photo.jpg http://127.0.0.1:{port}/v1/represent -o r_plus.npy"
            " && python -c 'import numpy; assert numpy.load(\"r_plus.npy\").shape[1:] == (12, 16)'"
        ),
        "curl --data-binary @photo.jpg 'http://127.0.0.1:8000/v1/detect?compare=true'": Skip(
            "needs an installed detector (tests/service/test_detect.py serves one)"
        ),
        "curl -i --data-binary @photo.jpg http://127.0.0.1:8000/v1/jobs/restore": Tiny(
            "curl -sf --data-binary @photo.jpg http://127.0.0.1:{port}/v1/jobs/restore -o job.json"
            ' && python -c \'import json; assert json.load(open("job.json"))["task"] == "restore"\''
        ),
        "open http://127.0.0.1:8000/": Skip("opens a browser (tests/deploy/test_browser.py loads the page)"),
        ".venv/bin/dir restore photos/*.jpg -o restored/": Tiny(
            ".venv/bin/dir --url http://127.0.0.1:{port} restore photos/*.jpg -o restored/ --no-progress"
            " && test -s restored/a.png -o -s restored/a.jpg"
        ),
        ".venv/bin/dir-models add-detector yolo-fastestv2 ../shared/data/yolo_fastestv2/modelzoo/"
        "coco2017-0.241078ap-model.pth": Tiny(
            ".venv/bin/dir-models add-detector yolo-fastestv2 {data}/yolo_fastestv2/modelzoo/"
            "coco2017-0.241078ap-model.pth --store detectors",
            needs=("yolo_fastestv2/modelzoo/coco2017-0.241078ap-model.pth",),
        ),
        ".venv/bin/dir-models add-detector onnx yolov8n.onnx --layout yolov8 --names coco.names "
        "--input-size 640": (
            Skip("a YOLOv8 ONNX export the user supplies (none is committed or in the shared data)")
        ),
        ".venv/bin/dir-models evaluate-detector": Tiny(
            "mkdir -p coco/images coco/labels"
            " && cp {data}/coco128_val/images/val2017/000000000139.jpg coco/images/"
            " && cp {data}/coco128_val/labels/val2017/000000000139.txt coco/labels/"
            " && (test -d detectors/yolo-fastestv2 || .venv/bin/dir-models add-detector yolo-fastestv2"
            " {data}/yolo_fastestv2/modelzoo/coco2017-0.241078ap-model.pth --store detectors)"
            " && .venv/bin/dir-models evaluate-detector --store detectors --images coco/images"
            " --labels coco/labels",
            needs=("coco128_val/images/val2017/000000000139.jpg", "yolo_fastestv2"),
        ),
        ".venv/bin/dir-serve --queue redis://127.0.0.1:6379/0": Skip(
            "runs with the dir-worker command below (test_serve_and_worker_through_redis starts both)"
        ),
        ".venv/bin/dir-worker --queue redis://127.0.0.1:6379/0": Skip(
            "runs with the dir-serve command above (test_serve_and_worker_through_redis starts both)"
        ),
        "docker compose -f docker/compose.yaml up -d --build": Skip(
            "needs docker (tests/deploy/test_compose.py checks the file)"
        ),
        ".venv/bin/dir-isp show ../shared/data/cset14/lenna.png --preset ablation --seed 7 "
        "-o sheet.png": Tiny(
            ".venv/bin/dir-isp show {data}/cset14/lenna.png --preset ablation --seed 7 -o sheet.png"
            " --max-side 64 && test -s sheet.png",
            needs=("cset14/lenna.png",),
        ),
        ".venv/bin/dir-train stage1 --config tiny": Tiny(TRAIN_TINY.format(stage="stage1"), run=True),
        ".venv/bin/dir-train stage2 --config tiny": Tiny(TRAIN_TINY.format(stage="stage2"), run=True),
        ".venv/bin/dir-train stage1 --config gpu --time-limit 480": Skip(GPU_CONFIG),
        ".venv/bin/dir-train stage2 --config gpu --time-limit 480": Skip(GPU_CONFIG),
        ".venv/bin/dir-train stage1 --config paper": Skip(GPU_CONFIG),
        ".venv/bin/dir-train stage2 --config paper": Skip(GPU_CONFIG),
        ".venv/bin/dir-train plot runs/tiny": Tiny(
            ".venv/bin/dir-train plot runs/tiny && test -s runs/tiny/loss_curves.png", run=True
        ),
        ".venv/bin/dir-train score model_store/dir-restore/3.3.0 --datasets cset14 --crop 128": Tiny(
            ".venv/bin/dir-train score model_store/dir-restore/3.3.0 --datasets cset14 --crop 128 --limit 1",
            needs=("cset14",),
        ),
        ".venv/bin/dir-export runs/tiny --to model_store/dir-restore/0.0.1/": Tiny(
            ".venv/bin/dir-export runs/tiny --to model_store/dir-restore/0.0.1/"
            " && test -s model_store/dir-restore/0.0.1/manifest.json",
            run=True,
        ),
        ".venv/bin/dir-export model_store/dir-restore/3.3.0 --to model_store/dir-restore/3.4.0 --denoiser "
        "runs/denoise-cpu/denoise.pt": Skip(
            "needs a denoise checkpoint (hours of `dir-train denoise`); tests/training/test_denoise.py"
            " re-exports an entry with a tiny one"
        ),
        ".venv/bin/dir-train align --task detect --detector yolo-fastestv2 --init-from "
        "model_store/dir-restore/3.3.0 --config align-detect-joint-cpu --detector-mode joint --loss distill "
        "--images coco128_train bsds500_train": Skip(
            "needs the locally installed Yolo-FastestV2 detector and about 11 minutes of CPU;"
            " tests/training/test_align.py runs the command on a tiny detector it builds"
        ),
        ".venv/bin/dir-eval --protocol ablation --datasets cset14,bsd100 --methods all --run runs/tiny "
        "--json out.json --report out.md": Tiny(
            ".venv/bin/dir-eval --protocol ablation --datasets cset14 --methods identity,dir-full"
            f" --run runs/tiny --json out.json --report out.md {EVAL_TINY} && test -s out.json -a -s out.md",
            needs=("cset14",),
            run=True,
        ),
    },
    "docs/EVALUATION.md": {
        "dir-eval --protocol ablation --datasets cset14,bsd100 --methods all --run runs/default "
        "--json OUT.json --report OUT.md": Tiny(
            "dir-eval --protocol ablation --datasets cset14 --methods identity,nlm,autoencoder"
            " --run runs/tiny"
            f" --json OUT.json --report OUT.md {EVAL_TINY} && test -s img/results_ablation.png",
            needs=("cset14",),
            run=True,
        ),
        "dir-eval --protocol all --methods identity,bm3d,nlm,dncnn,ffdnet,ffdnet-oracle,autoencoder,dir-r0,"
        "dir-no-pilot,dir-full,onnx --run runs/default --limit 50 --cache runs/eval-cache --report "
        "docs/RESULTS.md --json /tmp/results.json": Tiny(
            "dir-eval --protocol clean,ablation --datasets cset14 --methods identity,nlm --run runs/tiny"
            f" --cache runs/eval-cache --report RESULTS.md --json results.json {EVAL_TINY}"
            " && test -s runs/eval-cache/scores.jsonl",
            needs=("cset14",),
            run=True,
        ),
        "dir-eval --protocol real --methods identity,onnx:model_store/dir-restore/3.3.0": Tiny(
            f"dir-eval --protocol real --datasets cc15 --methods identity,onnx:model_store/{SHIPPED}"
            f" {EVAL_TINY}",
            needs=("cc15",),
        ),
        "dir-eval --protocol real --methods identity,dncnn,ffdnet,onnx,onnx-pilot --json /tmp/real.json "
        "--report /tmp/real.md": Tiny(
            "dir-eval --protocol real --datasets cc15 --methods identity,onnx-pilot --model-store"
            f" model_store --json real.json --report real.md {EVAL_TINY}",
            needs=("cc15",),
        ),
        "dir-eval scorecard runs/denoise-gated --cache runs/eval-cache --json /tmp/card.json": Skip(
            "needs a denoise run folder (hours of `dir-train denoise`); the entry form runs below"
        ),
        "dir-eval scorecard model_store/dir-restore/3.3.0 --shipped /tmp/older-entry --limit 20": Skip(
            "every protocol for two entries plus the timing rows: about a minute here even at --limit 1 on"
            " 96-px crops (tests/evaluate/test_scorecard.py runs it on two tiny entries)"
        ),
    },
}


def test_every_doc_command_is_listed() -> None:
    for doc, examples in EXAMPLES.items():
        assert shell_commands(doc) == list(examples), f"{doc}: give each new command a tiny form here"


def test_docs_name_only_committed_entries_in_their_headings_and_examples() -> None:
    assert (ROOT / "model_store" / SHIPPED / "manifest.json").is_file()
    training = (ROOT / "docs" / "TRAINING.md").read_text().splitlines()
    assert len(training) <= 200, "docs/TRAINING.md stays a how-to page (logs go to docs/log/)"
    for line in (line for line in training if line.startswith("#")):
        for word in line.split():
            entry = word.strip("`()").removeprefix("model_store/")
            if entry.startswith("dir-restore/"):
                assert (ROOT / "model_store" / entry).is_dir(), f"heading names {entry}, not committed"
    for command in shell_commands("docs/EVALUATION.md"):
        for word in command.replace(",", " ").split():
            if "model_store/" in word:
                assert (ROOT / word.split(":")[-1]).is_dir(), f"{command}: {word} does not exist"


def test_readme_status_is_short_and_links_the_results() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("**Where the product stands.**"))
    end = next(i for i in range(start, len(lines)) if not lines[i].strip())
    assert end - start <= 8
    assert "(docs/RESULTS.md)" in " ".join(lines[start:end])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the commands run in: ``.venv/bin`` of wrappers that run this tree's console scripts,
    ``model_store/dir-restore/3.3.0`` (a link to the committed entry; new entries land in the scratch
    folder), ``photo.jpg`` and ``photos/a.jpg`` (64 x 48 noise)."""
    root = tmp_path_factory.mktemp("docs")
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name, target in console_scripts().items():
        module, function = target.split(":")
        call = f"import sys; from {module} import {function}; sys.argv[0] = '{name}'; sys.exit({function}())"
        (bin_dir / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" -c "{call}" "$@"\n')
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    for script in bin_dir.iterdir():
        script.chmod(0o755)
    (root / "model_store" / "dir-restore").mkdir(parents=True)
    (root / "model_store" / SHIPPED).symlink_to(ROOT / "model_store" / SHIPPED)
    pixels = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(root / "photo.jpg", quality=90)
    (root / "photos").mkdir()
    shutil.copy(root / "photo.jpg", root / "photos" / "a.jpg")
    return root


#: Evaluation sets the tiny data root holds as 96 x 96 crops of their first files by name (plus ``lenna``).
CROPPED = {"cset14": 2, "bsd100": 2, "cc15": 3, "rni15": 2}


def tiny_data(scratch: Path) -> Path:
    """``data`` of the scratch folder: the evaluation sets of ``CROPPED`` as top-left 96 x 96 crops (a cc15
    pair keeps its alignment), every other folder of the shared data linked."""
    root = scratch / "data"
    if root.is_dir() or not data_root().is_dir():
        return root
    root.mkdir()
    for folder in sorted(data_root().iterdir()):
        if folder.name not in CROPPED:
            (root / folder.name).symlink_to(folder)
            continue
        (root / folder.name).mkdir()
        images = sorted(f for f in folder.iterdir() if f.suffix.lower() in (".png", ".jpg"))
        for image in [*images[: CROPPED[folder.name]], *(f for f in images if f.name == "lenna.png")]:
            with Image.open(image) as full:
                full.crop((0, 0, 96, 96)).save(root / folder.name / image.name)
    return root


def environment(scratch: Path) -> dict[str, str]:
    """This tree first on the Python path, the wrappers first on PATH, the tiny data root as the data."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    bins = os.pathsep.join([str(scratch / ".venv" / "bin"), os.environ.get("PATH", "")])
    return os.environ | {"PYTHONPATH": path, "PATH": bins, "DIR_DATA_ROOT": str(tiny_data(scratch))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running(command: list[str], scratch: Path, port: int | None = None, **env: str) -> Iterator[None]:
    """``command`` (a console script of the scratch folder and its arguments) in the background; with
    ``port``, once ``/healthz`` answers there (60 s at most). Stopped when the block ends."""
    log = scratch / f"{command[0]}-{uuid.uuid4().hex[:8]}.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(scratch / ".venv" / "bin" / command[0]), *command[1:]],
            cwd=scratch,
            env=environment(scratch) | env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while port is not None:
            assert process.poll() is None, log.read_text()[-2000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, (
                f"{command[0]} did not answer in 60 s: {log.read_text()[-2000:]}"
            )
            time.sleep(0.3)
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(scratch: Path, fixture_store: Path) -> Iterator[int]:
    """The port of ``dir-serve`` (embedded queue) on the tiny test entry."""
    port = free_port()
    with running(["dir-serve", "--model-store", str(fixture_store), "--port", str(port)], scratch, port):
        yield port


@pytest.fixture(scope="module")
def tiny_run(scratch: Path) -> Path:
    """``runs/tiny`` of the scratch folder, trained by the README's two ``dir-train`` commands (tiny form);
    skips where the tiny config's training images (``bsds500_train``) are absent."""
    if not (data_root() / "bsds500_train").is_dir():
        pytest.skip(f"shared data ['bsds500_train'] absent under {data_root()} (the tiny config's images)")
    for command in shell_commands("README.md"):
        example = EXAMPLES["README.md"][command]
        if isinstance(example, Tiny) and example.command.startswith(".venv/bin/dir-train stage"):
            execute(example.command, scratch)
    return scratch / "runs" / "tiny"


def execute(command: str, scratch: Path, port: int = 0) -> None:
    """Run a tiny form through bash in the scratch folder; fails with its output when it does."""
    line = command.format(root=ROOT, data=tiny_data(scratch), port=port)
    done = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {line}"],
        cwd=scratch,
        env=environment(scratch),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


CASES = [(doc, command) for doc, examples in EXAMPLES.items() for command in examples]


@pytest.mark.parametrize(("doc", "command"), CASES, ids=[f"{d}:{c[:60]}" for d, c in CASES])
def test_doc_command_runs(doc: str, command: str, scratch: Path, request: pytest.FixtureRequest) -> None:
    example = EXAMPLES[doc][command]
    if isinstance(example, Skip):
        pytest.skip(example.reason)
    missing = [need for need in example.needs if not (data_root() / need).exists()]
    if missing:
        pytest.skip(f"shared data {missing} absent under {data_root()}")
    if example.run:
        run = request.getfixturevalue("tiny_run")
        if example.command in (TRAIN_TINY.format(stage=stage) for stage in ("stage1", "stage2")):
            assert (run / f"{example.command.split()[1]}.pt").is_file(), "trained by the tiny_run fixture"
            return
    port = request.getfixturevalue("server") if "{port}" in example.command else 0
    execute(example.command, scratch, port)


def test_serve_and_worker_through_redis(scratch: Path, fixture_store: Path) -> None:
    """The README's ``dir-serve --queue redis://...`` and ``dir-worker --queue redis://...`` together, on
    the tiny entry with keys of their own, restore a photo."""
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 6379)) != 0:
            pytest.skip("no Redis answers on 127.0.0.1:6379")
    commands = [shlex.split(c) for c in shell_commands("README.md") if "--queue redis://" in c]
    assert sorted(Path(c[0]).name for c in commands) == ["dir-serve", "dir-worker"]
    port, prefix = free_port(), f"docs-{uuid.uuid4().hex[:8]}"
    store = ["--model-store", str(fixture_store)]
    serve, work = sorted(([Path(c[0]).name, *c[1:], *store] for c in commands), key=lambda c: c[0])
    with (
        running(work, scratch, DIR_STREAM_PREFIX=prefix),
        running([*serve, "--port", str(port)], scratch, port, DIR_STREAM_PREFIX=prefix),
    ):
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/restore", content=(scratch / "photo.jpg").read_bytes(), timeout=120
        )
    assert answer.status_code == 200, answer.text
    assert Image.open(io.BytesIO(answer.content)).size == (64, 48)
