"""No taskapp process grows with the number of jobs it has handled: a bounded soak for CI (10,000 noop jobs
through the namespace cluster of `bench.soak`: two gateways, three worker hosts, a scheduler); the closing
figures come from the same measure at 100,000 (`python -m bench.soak`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.scale_out import ClusterBench
from bench.soak import GROWTH_BOUND, soak


@pytest.mark.slow
@pytest.mark.saturating
def test_no_process_grows_from_4000_jobs_to_10000(tmp_path: Path) -> None:
    bench = ClusterBench.create(tmp_path)
    try:
        bench.open()
        figures = soak(bench, 10_000, 4_000, batch=500)  # four calls to each gateway first
    finally:
        bench.close()
    processes = {kind: len(pids) for kind, pids in figures["rss_kib"].items()}
    assert processes == {"gateway": 2, "worker main": 3, "worker pool": 6, "scheduler": 1}, processes
    grown = {kind: growth for kind, growth in figures["growth"].items() if growth > GROWTH_BOUND}
    assert not grown, f"grew more than {GROWTH_BOUND:.0%} from 4,000 jobs to 10,000: {figures['rss_kib']}"
