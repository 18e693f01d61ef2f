"""Where `celery -A taskapp` finds the app: Celery looks for a `celery` module in the package it is given
(its documented project layout). The app itself is `taskapp.app.app`."""

from __future__ import annotations

from taskapp.app import app

__all__ = ["app"]
