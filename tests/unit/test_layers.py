"""What each layer loads, in a fresh interpreter: a program that only submits jobs gets grpcio and the stubs,
not the worker's stack. (`lint-imports` in scripts/test holds the import contracts statically.)"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import ROOT

WORKER_STACK = ("celery", "kombu", "billiard", "sqlalchemy", "sqlmodel", "psycopg", "redis", "alembic")


def loaded_after(statement: str) -> set[str]:
    """Top-level packages in `sys.modules` after running `statement` in a new interpreter."""
    program = (
        f"{statement}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(result.stdout))


def test_the_client_loads_none_of_the_worker_stack() -> None:
    loaded = loaded_after("import grpc_gateway.client")
    assert "grpc" in loaded, "the check sees what was imported"
    assert loaded.isdisjoint(WORKER_STACK), loaded & set(WORKER_STACK)


def test_the_domain_values_and_the_in_memory_store_load_none_of_it_either() -> None:
    loaded = loaded_after("import taskapp, taskapp.jobs, taskapp.store.memory")
    assert loaded.isdisjoint(WORKER_STACK), loaded & set(WORKER_STACK)


def test_celery_finds_the_app_from_the_package_name() -> None:
    loaded = loaded_after(
        "from celery.app.utils import find_app; assert find_app('taskapp').main == 'taskapp'"
    )
    assert "taskapp" in loaded
