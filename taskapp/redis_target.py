"""Where Redis is, for every Redis client of taskapp: one server, or the Sentinels that know which server is the
primary now.

`REDIS_URL` is either a plain Redis URL (`redis://host:6379/0`, `rediss://...`) or names the Sentinels, the
master's name and the database: `sentinel://[:password@]s1:26379,s2:26379,s3:26379/mymaster/0`. With Sentinels,
Celery's broker is kombu's Sentinel transport and taskapp's own clients (the scheduler's lease and sweeps, the
change notifications, readiness, reconcile) are redis-py's `Sentinel.master_for`: each asks the Sentinels for the
primary when it connects, so after a failover every process follows the new primary by itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

SCHEME = "sentinel://"
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int
    password: str | None


def sentinel_target(url: str) -> SentinelTarget | None:
    """The Sentinels a `sentinel://` URL names; None for a plain Redis URL. Raises ValueError if malformed."""
    if not url.startswith(SCHEME):
        return None
    authority, _, path = url.removeprefix(SCHEME).partition("/")
    userinfo, _, hosts = authority.rpartition("@")
    password = unquote(userinfo.partition(":")[2]) or None
    sentinels = []
    for host in filter(None, hosts.split(",")):
        name, _, port = host.rpartition(":") if host.rpartition(":")[2].isdigit() else (host, "", "")
        sentinels.append((name.strip("[]"), int(port) if port else DEFAULT_SENTINEL_PORT))
    master, _, db = path.partition("/")
    if not sentinels or not master or (db and not db.isdigit()):
        raise ValueError(
            f"REDIS_URL: expected sentinel://host:port[,host:port...]/master-name[/db], got {url!r}"
        )
    return SentinelTarget(tuple(sentinels), master, int(db or 0), password)


def redis_client(url: str, **options: Any) -> redis.Redis:
    """A client of the current primary; `options` as for `redis.Redis` (timeouts)."""
    target = sentinel_target(url)
    if target is None:
        return redis.Redis.from_url(url, **options)
    sentinels = redis.sentinel.Sentinel(target.sentinels, sentinel_kwargs=sentinel_options())
    client: redis.Redis = sentinels.master_for(
        target.master, db=target.db, password=target.password, **options
    )
    return client


def async_redis_client(url: str, **options: Any) -> redis.asyncio.Redis:
    """`redis_client` for asyncio."""
    target = sentinel_target(url)
    if target is None:
        return redis.asyncio.Redis.from_url(url, **options)
    sentinels = redis.asyncio.sentinel.Sentinel(target.sentinels, sentinel_kwargs=sentinel_options())
    client: redis.asyncio.Redis = sentinels.master_for(
        target.master, db=target.db, password=target.password, **options
    )
    return client


def sentinel_options() -> dict[str, Any]:
    """How each Sentinel is asked: one that does not answer is skipped for the next at once. (redis-py tries a
    refused connection three more times with back-off by default: 3.7 s per dead Sentinel, on every new
    connection to the primary, for as long as that Sentinel's host is gone.)"""
    return {"retry": Retry(NoBackoff(), 0), "socket_connect_timeout": 1, "socket_timeout": 1}


def celery_broker(url: str) -> tuple[str, dict[str, Any]]:
    """Celery's broker URL and the transport options it needs: kombu's `sentinel://a;sentinel://b/db` form with
    `master_name` and how to ask the Sentinels, for Sentinels."""
    target = sentinel_target(url)
    if target is None:
        return url, {}
    password = f":{target.password}@" if target.password else ""
    broker = ";".join(f"sentinel://{password}{host}:{port}/{target.db}" for host, port in target.sentinels)
    return broker, {"master_name": target.master, "sentinel_kwargs": sentinel_options()}
