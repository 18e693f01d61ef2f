"""Celery settings for every taskapp process, built from the one `Settings` object.

docs/celery-on-redis.md says why each setting is what it is.
"""

from __future__ import annotations

from kombu import Queue

from taskapp.config import get_settings
from taskapp.redis_target import celery_broker
from taskapp.routing import DEAD_LETTER_QUEUE, PRIORITY_QUEUES

_settings = get_settings()

# A `sentinel://` REDIS_URL becomes kombu's Sentinel broker URL and its `master_name` (taskapp.redis_target).
broker_url, _sentinel_options = celery_broker(_settings.redis_url)
broker_connection_retry_on_startup = True
broker_transport_options = {
    # BRPOP over the queues in `-Q` order: a worker always takes the highest priority waiting job.
    "queue_order_strategy": "priority",
    # A message unacknowledged this long is handed to another worker: keep it above the longest job.
    "visibility_timeout": _settings.visibility_timeout,
    # Sweep for messages abandoned by a dead worker every few seconds (kombu's default is ~100 s), so a job
    # comes back soon after its visibility timeout runs out.
    "unacked_restore_interval": max(1, min(10, _settings.visibility_timeout // 3)),
    "unacked_restore_throttle": 1,
    "socket_connect_timeout": 5,
    "socket_timeout": 30,
    **_sentinel_options,
}
# A submit must answer UNAVAILABLE quickly when Redis is gone, not hang in publish retries.
task_publish_retry_policy = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}

task_queues = [Queue(name, routing_key=name) for name in (*PRIORITY_QUEUES, DEAD_LETTER_QUEUE)]
task_default_queue = "default"

task_serializer = "json"
accept_content = ["json"]
# SQL is the result store; Celery keeps none.
task_ignore_result = True
task_store_errors_even_if_ignored = False

# A message is acknowledged after its run, and given back if the worker process dies mid-run.
task_acks_late = True
task_reject_on_worker_lost = True
# One unacknowledged message per process: prefetching more would let lower priorities slip ahead.
worker_prefetch_multiplier = 1
if _settings.worker_concurrency is not None:
    worker_concurrency = _settings.worker_concurrency

# Events for Flower.
worker_send_task_events = True
task_send_sent_event = True

imports = (
    "taskapp.tasks",
    "taskapp.mirror",
    "taskapp.worker_shutdown",
    "taskapp.worker_logging",
    "taskapp.worker_metrics",
    "taskapp.worker_timers",
    "taskapp.gc_pauses",
)
