"""docker/compose.yaml: every service, port, volume, env variable and file it names exists and agrees."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from service.settings import Settings
from tests.deploy import deployfiles as df

SERVICES = {"redis", "api", "worker", "worker-gpu", "prometheus", "grafana"}
DIR_SERVICES = ("api", "worker", "worker-gpu")
# DIR_* values compose sets for the deployment itself, deliberately unlike the local defaults.
DEPLOYMENT_OVERRIDES = {"DIR_QUEUE", "DIR_HOST", "DIR_PROVIDERS", "DIR_MAX_BATCH"}


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    return df.compose()


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment must be a mapping"
    return {str(k): str(v) for k, v in env.items()}


def _bind_sources(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host source, container target) of every bind mount (short or long syntax)."""
    out = []
    for vol in service.get("volumes", []):
        if isinstance(vol, dict):
            if vol["type"] == "bind":
                out.append((df.interpolate(vol["source"]), vol["target"]))
        else:
            source, target = df.interpolate(vol).split(":")[:2]
            if source.startswith((".", "/")):
                out.append((source, target))
    return out


def test_services_and_images(stack: dict[str, Any]) -> None:
    assert set(stack["services"]) == SERVICES
    for name in DIR_SERVICES:
        image = stack["services"][name]["image"]
        assert image == ("dir-isp:gpu" if name == "worker-gpu" else "dir-isp:cpu")
    built = {s["image"]: s["build"] for s in stack["services"].values() if "build" in s}
    assert set(built) == {"dir-isp:cpu", "dir-isp:gpu"}
    for build in built.values():
        context = (df.DOCKER / build["context"]).resolve()
        assert context == df.ROOT
        assert (context / build["dockerfile"]).is_file()


def test_every_dir_variable_is_a_settings_field_and_validates(
    stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    fields = set(Settings.model_fields)
    for name in DIR_SERVICES:
        env = _env(stack["services"][name])
        unknown = [k for k in env if not k.startswith("DIR_") or k.removeprefix("DIR_").lower() not in fields]
        assert not unknown, f"{name}: not fields of service.settings.Settings: {unknown}"
        for key, value in env.items():
            monkeypatch.setenv(key, df.interpolate(value))
        Settings()
        for key in env:
            monkeypatch.delenv(key)


def test_compose_defaults_equal_the_settings_defaults(stack: dict[str, Any]) -> None:
    defaults = {k: v.default for k, v in Settings.model_fields.items()}
    for name in DIR_SERVICES:
        for key, value in _env(stack["services"][name]).items():
            if key in DEPLOYMENT_OVERRIDES:
                continue
            for var, default in df.compose_defaults(value):
                if var != key:
                    continue
                want = defaults[key.removeprefix("DIR_").lower()]
                assert type(want)(default) == want, (
                    f"{name}: {key} defaults to {default!r}, Settings to {want!r}"
                )


def test_queue_points_at_the_redis_service_with_append_only_persistence(stack: dict[str, Any]) -> None:
    redis = stack["services"]["redis"]
    assert redis["command"][:3] == ["redis-server", "--appendonly", "yes"]
    assert any(v.split(":")[1] == "/data" for v in redis["volumes"])
    for name in DIR_SERVICES:
        queue = _env(stack["services"][name])["DIR_QUEUE"]
        assert queue == "redis://redis:6379/0"
        command = stack["services"][name]["command"]
        if "--queue" in command:
            assert command[command.index("--queue") + 1] == queue


def test_commands_are_console_scripts(stack: dict[str, Any]) -> None:
    scripts = df.console_scripts()
    assert stack["services"]["api"]["command"] == ["dir-serve"]
    for name in ("worker", "worker-gpu"):
        assert stack["services"][name]["command"][0] == "dir-worker"
    for name in DIR_SERVICES:
        assert stack["services"][name]["command"][0] in scripts


def test_ports_agree_with_settings_and_prometheus(stack: dict[str, Any]) -> None:
    api = stack["services"]["api"]
    port = int(_env(api)["DIR_PORT"])
    published = [df.interpolate(p) for p in api["ports"]]
    assert published == [f"8000:{port}"]
    prom = df.load_yaml(df.PROMETHEUS)
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert jobs["dir-api"]["static_configs"][0]["targets"] == [f"api:{port}"]
    for name, job in (("worker", "dir-worker"), ("worker-gpu", "dir-worker-gpu")):
        service = stack["services"][name]
        command = service["command"]
        metrics_port = int(command[command.index("--metrics-port") + 1])
        assert [str(p) for p in service["expose"]] == [str(metrics_port)]
        sd = jobs[job]["dns_sd_configs"][0]
        assert sd["names"] == [name]
        assert sd["port"] == metrics_port
        assert f":{metrics_port}/metrics" in " ".join(service["healthcheck"]["test"])


def test_volumes_exist_or_are_declared(stack: dict[str, Any]) -> None:
    declared = set(stack.get("volumes", {}))
    for name, service in stack["services"].items():
        for vol in service.get("volumes", []):
            source = df.interpolate(vol).split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: undeclared volume {vol}"
        for source, target in _bind_sources(service):
            path = (df.DOCKER / source).resolve()
            if target == "/app/model_store/yolo-fastestv2":
                # made on the host by `dir-models add-detector`; git-ignored, created empty if absent
                assert "model_store/yolo-fastestv2/" in (df.ROOT / ".gitignore").read_text()
                continue
            assert path.exists(), f"{name}: bind source {source} does not exist"


def test_single_process_metrics_in_every_container(stack: dict[str, Any]) -> None:
    """dir-worker serves --metrics-port only in single-process mode (one process per container)."""
    for path in df.DOCKERFILES:
        assert "PROMETHEUS_MULTIPROC_DIR" not in df.dockerfile_env(df.dockerfile(path))
    for name in DIR_SERVICES:
        assert "PROMETHEUS_MULTIPROC_DIR" not in _env(stack["services"][name])


def test_command_flags_are_accepted_by_the_console_scripts(
    stack: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    for name in DIR_SERVICES:
        command = stack["services"][name]["command"]
        entry = df.console_scripts()[command[0]]
        module, _, func = entry.partition(":")
        with pytest.raises(SystemExit) as exit_info:
            getattr(importlib.import_module(module), func)(["--help"])
        assert exit_info.value.code == 0
        usage = capsys.readouterr().out
        for flag in (c for c in command[1:] if c.startswith("--")):
            assert flag in usage, f"{name}: {command[0]} has no {flag} option"


def test_gpu_profile_reserves_a_gpu(stack: dict[str, Any]) -> None:
    gpu = stack["services"]["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "CUDAExecutionProvider" in _env(gpu)["DIR_PROVIDERS"]
    assert all("profiles" not in s for n, s in stack["services"].items() if n != "worker-gpu")


def test_depends_on_names_services(stack: dict[str, Any]) -> None:
    for name, service in stack["services"].items():
        for dep in service.get("depends_on", []):
            assert dep in SERVICES, f"{name} depends on unknown service {dep}"


def test_grafana_provisioning_files_and_datasource(stack: dict[str, Any]) -> None:
    grafana = stack["services"]["grafana"]
    mounts = dict(_bind_sources(grafana))
    provisioning = df.DOCKER / next(s for s, t in mounts.items() if t == "/etc/grafana/provisioning")
    datasource = df.load_yaml(provisioning / "datasources" / "prometheus.yaml")["datasources"][0]
    prom_port = stack["services"]["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert datasource["url"] == f"http://prometheus:{prom_port}"
    providers = df.load_yaml(provisioning / "dashboards" / "dir-isp.yaml")["providers"]
    dash_target = providers[0]["options"]["path"]
    dash_source = next(s for s, t in mounts.items() if t == dash_target)
    assert (df.DOCKER / dash_source / df.DASHBOARD.name).is_file()
    home = _env(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).parent.as_posix() == dash_target
    prom_mount = dict(_bind_sources(stack["services"]["prometheus"]))
    assert (df.DOCKER / next(iter(prom_mount))).resolve() == df.PROMETHEUS


def test_deploy_doc_lists_every_setting_and_compose_variable(stack: dict[str, Any]) -> None:
    doc = (df.ROOT / "docs" / "DEPLOY.md").read_text()
    for field in Settings.model_fields:
        assert f"`DIR_{field.upper()}`" in doc, f"docs/DEPLOY.md does not document DIR_{field.upper()}"
    text = df.COMPOSE.read_text()
    compose_vars = {var for var, _ in df.compose_defaults(text)}
    for var in compose_vars:
        assert f"`{var}`" in doc, f"docs/DEPLOY.md does not document {var} (used by compose.yaml)"


@pytest.mark.parametrize("profile", [None, "gpu"])
def test_compose_validates_with_docker_compose(profile: str | None, tmp_path: Path) -> None:
    """Schema check by Debian's docker-compose 1.29 (``config`` needs no daemon).

    1.29 predates the top-level ``name`` key, so that one line is left out of the checked copy.
    """
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is absent (apt-get install docker-compose) - compose schema not checked")
    lines = df.COMPOSE.read_text().splitlines(keepends=True)
    copy = tmp_path / "compose.yaml"
    copy.write_text("".join(line for line in lines if not line.startswith("name:")))
    command = [binary, "-f", str(copy), "--project-directory", str(df.DOCKER)]
    command += ["--profile", profile] if profile else []
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIR_", "GRAFANA_", "PROMETHEUS_"))}
    done = subprocess.run([*command, "config"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    resolved = df.load_yaml_text(done.stdout)
    assert set(resolved["services"]) == SERVICES  # 1.29's `config` lists profiled services too
