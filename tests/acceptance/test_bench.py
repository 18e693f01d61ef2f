"""The benchmark runs: once, at its tiny size and with its cluster mode, to prove every phase works end to end.
Its figures are not checked against anything: timings belong to the benchmark's own runs, never to a test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT


@pytest.mark.slow
@pytest.mark.saturating
def test_the_benchmark_runs_every_phase_and_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--size", "tiny", "--cluster", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(out.read_text())
    rates = [
        figures["raw"]["publish_per_s"],
        figures["raw"]["drain_per_s"],
        figures["raw"]["drain_with_status_per_s"],
        figures["taskapp"]["submit_per_s"],
        figures["taskapp"]["submit_batch_per_s"],
        figures["taskapp"]["drain_per_s"],
        figures["taskapp"]["drain_after_submits_per_s"],
        figures["taskapp"]["drain_again_per_s"],
        figures["taskapp"]["drain_with_limits_per_s"],
    ]
    assert all(rate > 0 for rate in rates), figures
    for side, stages in (("taskapp", 7), ("raw", 2)):
        latency = figures[side]["latency_ms"]
        assert {"p50", "p95", "p99"} <= set(latency)
        assert len(latency["stages"]) == stages, latency["stages"]
        assert {stage["jobs"] for stage in latency["stages"].values()} == {figures["sizes"]["latency"]}
        # The stamps account for the whole measured latency: a stage left out, or stamped on another clock,
        # would leave a gap (or an overlap) between its neighbours.
        assert latency["stages_mean_sum"] == pytest.approx(latency["mean"], rel=0.10), latency
    disk = figures["taskapp"]["latency_ms"]["disk"]
    assert disk["syncs"] > 0 if disk["measured"] else disk["why_not"], disk
    assert list(figures["taskapp"]["reads_ms"]) == ["1000", "3000"]
    for reads in figures["taskapp"]["reads_ms"].values():
        assert all(
            reads[page] > 0
            for page in ("Console jobs", "Console jobs state+type", "Console jobs 2 labels+day")
        )
    cluster = figures["cluster"]
    assert all(cluster[rate] > 0 for rate in cluster if rate.endswith("_per_s")), cluster
    assert cluster["jobs_by_gateway"]["gateway-1"] > figures["sizes"]["submit"], "both phases' jobs"
    assert cluster["jobs_by_gateway"]["gateway-2"] > 0, "round robin over both gateways"
    for phase, kinds in (
        ("submit", {"gateway", "postgres", "redis"}),
        ("drain", {"worker main", "worker pool", "postgres", "redis"}),
    ):
        costs = cluster["costs"][phase]
        assert all(costs["cpu_ms"][kind] > 0 for kind in kinds), costs["cpu_ms"]
        assert costs["commits"] > 0 and costs["wal_bytes"] > 0 and costs["sql"] and costs["redis_calls"], (
            costs
        )
    measures = {target["measure"].split(" ", 1)[0] for target in figures["targets"]}
    assert measures == {"P1", "P2", "P3", "P4", "P5", "S1", "S2"}
    assert "Targets" in done.stdout and "raw Celery" in done.stdout and "PostgreSQL's WAL" in done.stdout
    assert "status table by hand" in done.stdout
