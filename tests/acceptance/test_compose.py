"""The compose stack's structure. No Docker engine runs here, so this reads the files, and has
`docker-compose config` (Debian's docker-compose, which needs no engine) validate and render them: each
taskapp service runs its Procfile line from the one image, built once, Prometheus scrapes every metrics endpoint at the
port its service listens on (`promtool` checks the file), Grafana is provisioned with that Prometheus and the
dashboard, and README's Procfile and compose instructions match the files. That the dashboard's queries name
metrics we export, and return data, is shown against a real Prometheus in test_metrics.py."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import ROOT, procfile

COMPOSE_DIR = ROOT / "compose"
#: Services beside the Procfile's processes.
INFRASTRUCTURE = {"redis", "postgres", "migrate", "prometheus", "grafana"}


#: Variables the stack refuses to start without, with the values the tests give them.
SECRETS = {
    "TASKAPP_AUTH_TOKENS": "token-for-the-test",
    "TASKAPP_FLOWER_AUTH": "ops:flower-for-the-test",
    "GRAFANA_ADMIN_PASSWORD": "grafana-for-the-test",
    "POSTGRES_PASSWORD": "pgForTheTest42",
}


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text()))


def docker_compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    docker_compose = shutil.which("docker-compose")
    assert docker_compose, "docker-compose is missing: install Debian's `docker-compose` (scripts/test does)"
    return subprocess.run(
        [docker_compose, "-f", str(COMPOSE_DIR / "docker-compose.yml"), "config"],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def rendered() -> dict[str, Any]:
    """The stack as docker-compose validates and resolves it, with every secret given."""
    result = docker_compose_config(SECRETS)
    assert result.returncode == 0, result.stderr
    return dict(yaml.safe_load(result.stdout))


def services() -> dict[str, Any]:
    return dict(compose()["services"])


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Bind mounts of a service: container path -> the repository path it shows."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            found[target] = (COMPOSE_DIR / source).resolve()
    return found


def test_every_procfile_process_is_a_service_running_its_procfile_line_from_one_image_built_once() -> None:
    lines = procfile()
    all_services = rendered()["services"]
    assert set(all_services) == set(lines) | INFRASTRUCTURE
    migrate = all_services["migrate"]
    image = migrate["image"]
    assert migrate["build"] == {"context": str(ROOT), "dockerfile": "compose/Dockerfile"}
    for name, line in lines.items():
        service = all_services[name]
        assert shlex.split(service["command"]) == shlex.split(line), name
        assert (service["image"], service["pull_policy"]) == (image, "never"), name
        assert "build" not in service, f"{name} must run the image migrate builds, not build its own"
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
    assert migrate["command"] == "taskapp db upgrade"
    assert {name: dep["condition"] for name, dep in migrate["depends_on"].items()} == {
        "redis": "service_healthy",
        "postgres": "service_healthy",
    }
    assert all_services["gateway"]["environment"]["TASKAPP_AUTH_TOKENS"] == SECRETS["TASKAPP_AUTH_TOKENS"]


@pytest.mark.parametrize("secret", sorted(SECRETS))
def test_the_stack_refuses_to_start_without_each_secret(secret: str) -> None:
    result = docker_compose_config({name: value for name, value in SECRETS.items() if name != secret})
    assert result.returncode != 0
    assert f"set {secret}" in result.stderr


def test_no_password_is_written_in_the_files() -> None:
    text = (COMPOSE_DIR / "docker-compose.yml").read_text()
    assert "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?" in text
    all_services = rendered()["services"]
    password = SECRETS["POSTGRES_PASSWORD"]
    assert all_services["postgres"]["environment"]["POSTGRES_PASSWORD"] == password
    for name in procfile():
        assert f"taskapp:{password}@postgres:5432/" in all_services[name]["environment"]["DATABASE_URL"], name


def test_every_image_is_pinned_to_a_version() -> None:
    services_ = rendered()["services"]
    taskapp_image = services_["migrate"]["image"]
    others = [service["image"] for service in services_.values() if service["image"] != taskapp_image]
    [base] = re.findall(r"^FROM (\S+)", (COMPOSE_DIR / "Dockerfile").read_text(), re.M)
    assert len(others) == len(INFRASTRUCTURE) - 1, "every infrastructure service but migrate has an image"
    for image in [*others, base]:
        assert re.search(r":v?\d+\.\d+", image), f"{image} is not pinned to a version"


def test_the_worker_is_healthy_while_it_answers_celery_s_ping() -> None:
    check = rendered()["services"]["worker"]["healthcheck"]
    command = shlex.split(check["test"][1])
    assert command[:4] == ["celery", "-A", "taskapp", "inspect"] and "ping" in command
    # `$$` is compose's escape for a `$` the container's shell expands.
    assert "celery@$$HOSTNAME" in command, "only this container's worker counts"


def test_the_build_context_leaves_out_local_environments_and_keeps_what_the_image_copies() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, pattern) for pattern in patterns)

    for local in (".venv", ".venv-exporter", ".git", "taskapp.db", "flower.db", ".run"):
        assert ignored(local), f"{local} would be sent to the Docker engine"
    for line in (COMPOSE_DIR / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert not ignored(source.rstrip("/")), (
                    f"the Dockerfile copies {source}, which .dockerignore drops"
                )


def test_the_image_holds_what_the_services_run() -> None:
    dockerfile = (COMPOSE_DIR / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is not in the repository"
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for package in packages["include"]:
        assert f"COPY {package.rstrip('*')} " in dockerfile, f"the image lacks {package}"
    assert "RUN scripts/install-celery-exporter /opt/celery-exporter /usr/local/bin" in dockerfile
    assert "RUN pip install --no-cache-dir ." in dockerfile


def test_prometheus_scrapes_every_metrics_endpoint_where_its_service_listens() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: install Debian's `prometheus` package (.ci/run does)"
    config_path = COMPOSE_DIR / "prometheus" / "prometheus.yml"
    checked = subprocess.run([promtool, "check", "config", str(config_path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    all_services = services()
    assert mounts(all_services["prometheus"])["/etc/prometheus/prometheus.yml"] == config_path
    environment = all_services["gateway"]["environment"]
    jobs = {job["job_name"]: job for job in yaml.safe_load(config_path.read_text())["scrape_configs"]}
    assert jobs["gateway"]["static_configs"] == [
        {"targets": [f"gateway:{port_of(environment['TASKAPP_METRICS_ADDR'])}"]}
    ]
    assert jobs["exporter"]["static_configs"] == [
        {"targets": [f"exporter:{port_of(environment['TASKAPP_EXPORTER_ADDR'])}"]}
    ]
    # Every worker container, however many `--scale worker=N` starts.
    assert jobs["worker"]["dns_sd_configs"] == [
        {"names": ["worker"], "type": "A", "port": port_of(environment["TASKAPP_WORKER_METRICS_ADDR"])}
    ]
    for address in ("TASKAPP_METRICS_ADDR", "TASKAPP_WORKER_METRICS_ADDR", "TASKAPP_EXPORTER_ADDR"):
        assert environment[address].startswith("0.0.0.0:"), f"{address} must be reachable from Prometheus"


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard() -> None:
    grafana = services()["grafana"]
    bound = mounts(grafana)
    provisioning = bound["/etc/grafana/provisioning"]
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    [datasource] = datasources["datasources"]
    assert (datasource["type"], datasource["url"]) == ("prometheus", "http://prometheus:9090")
    [provider] = yaml.safe_load((provisioning / "dashboards" / "taskapp.yml").read_text())["providers"]
    dashboards = bound[provider["options"]["path"]]
    dashboard = json.loads((dashboards / "taskapp.json").read_text())
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].startswith(
        provider["options"]["path"]
    )

    exprs = {}
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]
            exprs[target["expr"]] = panel["title"]
    wanted = {
        "submit rate": r"rate\(taskapp_jobs_submitted_total",
        "finish rate by state": r"sum by \(state\) \(rate\(taskapp_jobs_finished_total",
        "queue depths": r"taskapp_queue_depth",
        "run-time quantiles": r"histogram_quantile\(0\.99, sum by \(le\) \(rate\(taskapp_job_run_seconds_bucket",
        "dead letters": r'taskapp_jobs_finished_total\{state="DEAD_LETTER"\}',
    }
    for what, pattern in wanted.items():
        assert any(re.search(pattern, expr) for expr in exprs), f"the dashboard shows no {what}"


def test_readme_tells_the_procfile_and_the_compose_stack_as_they_are() -> None:
    readme = (ROOT / "README.md").read_text()
    by_hand = re.search(r"## Running the pieces yourself.*?```sh\n(.*?)```", readme, re.S)
    assert by_hand is not None
    commands = [line.split("#")[0].strip() for line in by_hand.group(1).splitlines()]
    for name, line in procfile().items():
        assert line.strip() in commands, f"README's by-hand list lacks the Procfile's {name}: {line.strip()}"

    up = [line for line in readme.splitlines() if "docker compose -f compose/docker-compose.yml up" in line]
    assert up, "README says how to start the compose stack"
    required = set(re.findall(r"\$\{(\w+):\?", (COMPOSE_DIR / "docker-compose.yml").read_text()))
    for line in up:
        assert {name for name in required if f"{name}=" in line} == required, line
    compose_section = readme.split("## The compose stack", 1)[1].split("\n## ", 1)[0]
    for port in ("50051", "5555", "9090", "3000"):
        assert port in compose_section, f"README's compose section names port {port}"
