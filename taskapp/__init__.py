"""taskapp: a job service on Celery. `celery -A taskapp worker` finds the Celery app here."""

from __future__ import annotations

from taskapp.app import app

__all__ = ["app"]
