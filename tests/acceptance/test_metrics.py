"""Metrics, and the Grafana dashboard's queries: a real Prometheus (Debian's `prometheus`) scrapes the
gateway, a worker and the Celery exporter, with the scrape jobs of compose/prometheus/prometheus.yml pointed at
this run's ports. What it answers matches the jobs the test ran, and every query of the Grafana dashboard names
metrics it holds and returns data."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from google.protobuf import timestamp_pb2

from grpc_gateway.v1 import jobs_pb2
from tests.helpers import ROOT, Stack, free_port, get, submit, wait_dead_letters, wait_for

MakeStack = Callable[..., Stack]


def running(stack: Stack, job_id: str) -> bool:
    return get(stack, job_id).state == jobs_pb2.JOB_STATE_RUNNING


COMPOSE_PROMETHEUS = ROOT / "compose" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "compose" / "grafana" / "dashboards" / "taskapp.json"
#: What `$__rate_interval` stands for when the test runs the dashboard's queries (Grafana fills it in).
RATE_INTERVAL = "30s"


class Prometheus:
    """A Prometheus server of the test's own, on a free port, with its data in the test's directory."""

    def __init__(self, workdir: Path, targets: dict[str, str]) -> None:
        binary = shutil.which("prometheus")
        assert binary, "Prometheus is missing: install Debian's `prometheus` package (.ci/run does)"
        config = workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config_for(targets)))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'prometheus-data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._ready, 30, "Prometheus to be ready")

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def api(self, path: str, **params: str) -> Any:
        reply = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10).json()
        assert reply["status"] == "success", reply
        return reply["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=expr)["result"])

    def by(self, label: str, expr: str) -> dict[str, float]:
        """An instant query's values by one label (the label's value '' when a series lacks it)."""
        return {series["metric"].get(label, ""): float(series["value"][1]) for series in self.query(expr)}

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)
        self.log.close()


def scrape_config_for(targets: dict[str, str]) -> dict[str, Any]:
    """compose/prometheus/prometheus.yml with each scrape job pointed at this run's address for it, and
    scraping every second (or every 3 s where the job allows for slow scrapes)."""
    config = yaml.safe_load(COMPOSE_PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == set(targets), "compose's Prometheus scrapes exactly the gateway, workers and exporter"
    for name, job in jobs.items():
        slow = "scrape_timeout" in job
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": [targets[name]]}]
        job["scrape_interval"] = job["scrape_timeout"] = "3s" if slow else "1s"
    return dict(config)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Prometheus]]:
    servers: list[Prometheus] = []

    def start(targets: dict[str, str]) -> Prometheus:
        servers.append(Prometheus(tmp_path, targets))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def start_exporter(stack: Stack) -> None:
    """The Procfile's `exporter`, answering and hearing the worker's events (it has seen a heartbeat)."""
    stack.start("exporter")
    url = f"http://{stack.env['TASKAPP_EXPORTER_ADDR']}/metrics"

    def worker_seen() -> bool:
        try:
            scraped = httpx.get(url, timeout=10).text
        except httpx.HTTPError:
            return False
        return re.search(r"^celery_worker_up\{.*\} 1\.0$", scraped, re.M) is not None

    wait_for(worker_seen, 60, "the exporter to hear from the worker", interval=0.5)


def in_an_hour() -> timestamp_pb2.Timestamp:
    run_at = timestamp_pb2.Timestamp()
    run_at.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
    return run_at


def test_prometheus_counts_what_the_jobs_did_and_the_dashboard_queries_answer(
    make_stack: MakeStack, prometheus: Callable[[dict[str, str]], Prometheus]
) -> None:
    stack = make_stack(concurrency=2)
    start_exporter(stack)
    server = prometheus(
        {
            "gateway": stack.env["TASKAPP_METRICS_ADDR"],
            "worker": stack.env["TASKAPP_WORKER_METRICS_ADDR"],
            "exporter": stack.env["TASKAPP_EXPORTER_ADDR"],
        }
    )

    finishing = [submit(stack, "echo", {"n": n}) for n in range(6)]
    finishing += [submit(stack, "fail", {"permanent": True}) for _ in range(2)]
    finishing.append(submit(stack, "fail", {"times": 1}, max_attempts=1))  # dead letter
    finishing.append(submit(stack, "fail", {"times": 1}, max_attempts=2))  # one retry, then success
    scheduled = [submit(stack, "noop", run_at=in_an_hour()) for _ in range(2)]
    stack.stub().CancelJob(jobs_pb2.CancelJobRequest(job_id=scheduled[1]), timeout=10)
    for job_id in finishing:
        stack.wait_terminal(job_id)
    wait_dead_letters(stack, 1)
    # Both pool processes busy: what is submitted next waits in its queue.
    busy = [
        submit(stack, "sleep", {"seconds": 120}, priority=jobs_pb2.PRIORITY_HIGH, max_attempts=1)
        for _ in range(2)
    ]
    for job_id in busy:
        wait_for(partial(running, stack, job_id), 30, f"{job_id} to run")
    for _ in range(4):
        submit(stack, "noop", priority=jobs_pb2.PRIORITY_LOW)

    expected = {
        "submitted": 18.0,
        "finished": {"SUCCEEDED": 7.0, "FAILED": 2.0, "DEAD_LETTER": 1.0, "CANCELLED": 1.0},
        # Runs end on the worker; the cancel of a job that never ran is the gateway's.
        "finished, by scrape job": {"worker": 10.0, "gateway": 1.0},
        "retries": 1.0,
        "runs timed": 11.0,
        # Every created job's way through the gateway (the two scheduled ones are not published by it), and
        # every claimed delivery's through the worker: 13 runs, the retry's included.
        "start stages timed": {
            "batching": 18.0,
            "insert": 18.0,
            "publish": 16.0,
            "queue": 13.0,
            "handoff": 13.0,
            "claim": 13.0,
        },
        "queue depth": {"critical": 0.0, "high": 0.0, "default": 0.0, "low": 4.0, "dead_letter": 1.0},
        "scheduled": 1.0,
        "celery tasks succeeded (exporter)": 7.0,
        "celery queue length of low (exporter)": 4.0,
    }

    def observed() -> dict[str, object]:
        return {
            "submitted": server.value("sum(taskapp_jobs_submitted_total)"),
            "finished": server.by("state", "sum by (state) (taskapp_jobs_finished_total)"),
            "finished, by scrape job": server.by("job", "sum by (job) (taskapp_jobs_finished_total)"),
            "retries": server.value("sum(taskapp_job_retries_total)"),
            "runs timed": server.value("sum(taskapp_job_run_seconds_count)"),
            "start stages timed": server.by("stage", "sum by (stage) (taskapp_job_start_seconds_count)"),
            "queue depth": server.by("queue", "taskapp_queue_depth"),
            "scheduled": server.value("taskapp_jobs_scheduled"),
            "celery tasks succeeded (exporter)": server.value("sum(celery_task_succeeded_total)"),
            "celery queue length of low (exporter)": server.value('celery_queue_length{queue_name="low"}'),
        }

    last: dict[str, object] = {}

    def scraped_as_expected() -> bool:
        last.update(observed())
        return last == expected

    try:
        wait_for(scraped_as_expected, 60, "Prometheus to hold the counts of this test's jobs", interval=1)
    except AssertionError:
        assert last == expected

    names = set(server.api("label/__name__/values"))
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", RATE_INTERVAL)
            used = set(re.findall(r"\b(?:taskapp|celery)_[a-z_]+\b", expr))
            assert used, f"panel {panel['title']!r} queries no taskapp or Celery metric: {expr}"
            assert used <= names, f"panel {panel['title']!r} names metrics no one exports: {used - names}"
            # A rate needs two scrapes of a series: give the newest series that long.
            wait_for(partial(server.query, expr), 20, f"panel {panel['title']!r} to get data from {expr}")
