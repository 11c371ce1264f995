"""Dockerfiles: multi-stage, non-root, health-checked, model store baked in, commands = console scripts
that run as the README gives them."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import Settings
from tests.deploy import deployfiles as df
from tests.doc_commands import flags, program, shell_commands


@pytest.fixture(params=df.DOCKERFILES, ids=lambda p: p.name)
def dockerfile(request: pytest.FixtureRequest) -> Path:
    path = request.param
    assert isinstance(path, Path)
    return path


def test_multi_stage_non_root_with_healthcheck(dockerfile: Path) -> None:
    instructions = df.dockerfile(dockerfile)
    stages = [i.args for i in instructions if i.keyword == "FROM"]
    assert len(stages) >= 2 and " AS " in stages[0], "build stage + runtime stage"
    final = df.final_stage(instructions)
    users = [i.args for i in final if i.keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), "the runtime stage must drop root"
    health = [i for i in final if i.keyword == "HEALTHCHECK"]
    assert len(health) == 1
    probe = " ".join(health[0].exec_form())
    assert "/healthz" in probe
    assert "DIR_PORT" in probe, "the probe follows the configured port"
    assert any(
        i.keyword == "COPY" and i.args.split()[-2:] == ["model_store", "/app/model_store"] for i in final
    )


def test_command_is_the_console_script_compose_and_make_use(dockerfile: Path) -> None:
    final = df.final_stage(df.dockerfile(dockerfile))
    cmd = [i for i in final if i.keyword == "CMD"][-1].exec_form()
    assert cmd == ["dir-serve"]
    assert cmd[0] in df.console_scripts()
    assert df.compose()["services"]["api"]["command"] == cmd
    makefile = (df.ROOT / "Makefile").read_text()
    assert re.search(r"\$\(BIN\)/dir-serve\b", makefile), "make serve runs the same console script"


def test_the_readme_runs_the_image_commands_as_console_scripts_with_flags_they_take() -> None:
    scripts = df.console_scripts()
    commands = [c for c in shell_commands("README.md") if program(c) in ("dir-serve", "dir-worker")]
    assert {program(c) for c in commands} == {"dir-serve", "dir-worker"}
    for command in commands:
        module, function = scripts[program(command)].split(":")
        call = (
            f"import sys; from {module} import {function}; sys.argv[0] = {program(command)!r}; {function}()"
        )
        done = subprocess.run(
            [sys.executable, "-c", call, "--help"], capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert flags(command) <= set(re.findall(r"--[a-z][a-z0-9-]*", done.stdout)), (
            f"{command}: flags its --help does not list"
        )


def test_environment_is_settings_only(dockerfile: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = df.dockerfile_env(df.dockerfile(dockerfile))
    fields = set(Settings.model_fields)
    dir_vars = {k: v for k, v in env.items() if k.startswith("DIR_")}
    assert {k.removeprefix("DIR_").lower() for k in dir_vars} <= fields
    for key, value in dir_vars.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.model_store == Path("/app/model_store")
    assert settings.host == "0.0.0.0"
    expose = [i.args for i in df.final_stage(df.dockerfile(dockerfile)) if i.keyword == "EXPOSE"]
    assert expose == [str(settings.port)]


def test_extras_installed_exist_in_pyproject(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    wanted = set(re.findall(r"'\.\[([a-z,]+)\]'", text))
    assert wanted, "the image installs the project with its extras"
    extras = df.extras()
    for group in wanted:
        assert set(group.split(",")) <= set(extras)
    if dockerfile.name.endswith(".gpu"):
        assert "onnxruntime-gpu" in " ".join(extras["gpu"])
        assert "pip uninstall -y onnxruntime" in text


def test_dockerignore_keeps_what_copy_needs_and_drops_detector_weights(dockerfile: Path) -> None:
    ignore = Path(f"{dockerfile}.dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in ignore if p.strip() and not p.startswith("#")]
    assert "model_store/yolo-fastestv2/" in patterns
    kept = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for ins in df.dockerfile(dockerfile):
        if ins.keyword == "COPY" and "--from" not in ins.args:
            sources = [a for a in ins.args.split()[:-1] if not a.startswith("--")]
            for source in sources:
                assert source.rstrip("/") in kept, f"COPY {source} is excluded by the .dockerignore"
                assert (df.ROOT / source).exists()
    assert not any(fnmatch.fnmatch("service/static/index.html", p) for p in patterns if p != "*")
