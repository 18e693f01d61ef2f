"""REDIS_URL naming one Redis or the Sentinels of a primary, read the same by Celery and taskapp's own clients."""

from __future__ import annotations

import pytest

from taskapp.redis_target import SentinelTarget, celery_broker, sentinel_target


def test_a_plain_redis_url_is_no_sentinel_and_celery_s_broker_as_it_is() -> None:
    assert sentinel_target("redis://127.0.0.1:6379/3") is None
    assert celery_broker("rediss://:pw@cache:6380/0") == ("rediss://:pw@cache:6380/0", {})


def test_sentinels_the_master_s_name_and_the_database() -> None:
    assert sentinel_target(
        "sentinel://:s3cret@10.0.0.1:26379,10.0.0.2:26380,sentinel-3/jobs/2"
    ) == SentinelTarget(
        sentinels=(("10.0.0.1", 26379), ("10.0.0.2", 26380), ("sentinel-3", 26379)),
        master="jobs",
        db=2,
        password="s3cret",
    )


def test_celery_gets_kombu_s_sentinel_urls_and_the_master_s_name() -> None:
    broker, options = celery_broker("sentinel://10.0.0.1:26379,10.0.0.2:26379/jobs/1")
    assert broker == "sentinel://10.0.0.1:26379/1;sentinel://10.0.0.2:26379/1"
    assert options["master_name"] == "jobs"
    assert options["sentinel_kwargs"]["retry"].get_retries() == 0, "a dead Sentinel is skipped at once"


@pytest.mark.parametrize("url", ["sentinel://10.0.0.1:26379", "sentinel:///jobs", "sentinel://h:1/jobs/x"])
def test_a_sentinel_url_without_sentinels_a_master_or_a_numeric_database_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="sentinel://host:port"):
        sentinel_target(url)
