"""Readers for the deployment files (compose, Dockerfiles, Prometheus, Grafana) shared by the tests."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILES = (DOCKER / "Dockerfile", DOCKER / "Dockerfile.gpu")
PROMETHEUS = DOCKER / "prometheus" / "prometheus.yml"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "dir-isp.json"

_DEFAULT = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?::-(?P<default>[^}]*))?\}")


def load_yaml(path: Path) -> Any:
    """Parse one YAML file."""
    return yaml.safe_load(path.read_text())


def load_yaml_text(text: str) -> Any:
    """Parse YAML text."""
    return yaml.safe_load(text)


def compose() -> dict[str, Any]:
    """docker/compose.yaml, parsed."""
    data = load_yaml(COMPOSE)
    assert isinstance(data, dict)
    return data


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` substitution with an empty environment (each default taken)."""
    return _DEFAULT.sub(lambda m: m.group("default") or "", value)


def compose_defaults(value: str) -> list[tuple[str, str]]:
    """Every ``(VAR, default)`` pair written as ``${VAR:-default}`` in ``value``."""
    return [(m.group("name"), m.group("default") or "") for m in _DEFAULT.finditer(value)]


def console_scripts() -> dict[str, str]:
    """pyproject.toml's [project.scripts]."""
    with (ROOT / "pyproject.toml").open("rb") as fh:
        return dict(tomllib.load(fh)["project"]["scripts"])


def extras() -> dict[str, list[str]]:
    """pyproject.toml's optional-dependencies."""
    with (ROOT / "pyproject.toml").open("rb") as fh:
        return dict(tomllib.load(fh)["project"]["optional-dependencies"])


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: keyword (upper case) and its argument text."""

    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        """The JSON exec form of CMD/ENTRYPOINT/HEALTHCHECK CMD as a list (shell form split with shlex)."""
        text = self.args.split("CMD", 1)[1].strip() if self.keyword == "HEALTHCHECK" else self.args
        if text.startswith("["):
            parsed = json.loads(text)
            assert isinstance(parsed, list)
            return [str(p) for p in parsed]
        return shlex.split(text)


def dockerfile(path: Path) -> list[Instruction]:
    """Instructions of a Dockerfile (comments dropped, backslash continuations joined)."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    out = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
    return out


def dockerfile_env(instructions: list[Instruction]) -> dict[str, str]:
    """ENV key=value pairs of the final stage."""
    env: dict[str, str] = {}
    for ins in final_stage(instructions):
        if ins.keyword == "ENV":
            for token in shlex.split(ins.args):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    """Instructions from the last FROM on."""
    starts = [i for i, ins in enumerate(instructions) if ins.keyword == "FROM"]
    return instructions[starts[-1] :]


def dashboard_exprs() -> list[str]:
    """Every PromQL expression in the Grafana dashboard."""
    data = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in data["panels"] for t in p.get("targets", [])]


METRIC_NAME = re.compile(r"\b(dir_[a-z0-9_]+)\b")


def exposition_sample_names(text: str) -> set[str]:
    """Sample names a Prometheus text exposition can carry, from its ``# TYPE`` lines and samples."""
    names: set[str] = set()
    suffixes = {"histogram": ("_bucket", "_count", "_sum"), "counter": ("_total",), "gauge": ("",)}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.update(name + s for s in suffixes.get(kind, ("",)))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names
