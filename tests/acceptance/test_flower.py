"""Flower as the Procfile runs it, seen through headless Chromium (Debian's `chromium`,
driven by Playwright, which downloads no browser of its own). With its user's credentials the tasks page lists
a job the test submitted, by its job id; without them, or with a wrong password, the browser is refused. What
Flower has seen survives a restart of Flower (its persistent state)."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest
from playwright.sync_api import Browser, Page
from playwright.sync_api import Error as PlaywrightError

from tests.helpers import Stack, submit, wait_for

MakeStack = Callable[..., Stack]

USER, PASSWORD = "ops", "fl0wer-s3cret"


def start_flower(stack: Stack) -> str:
    """Flower with one user, once it hears the worker's events (it shows the worker online)."""
    stack.start("flower", TASKAPP_FLOWER_AUTH=f"{USER}:{PASSWORD}")
    url = f"http://{stack.env['TASKAPP_FLOWER_ADDR']}"

    def hears_the_worker() -> bool:
        try:
            scraped = httpx.get(f"{url}/metrics", auth=(USER, PASSWORD), timeout=5).text
        except httpx.HTTPError:
            return False
        return re.search(r"^flower_worker_online\{.*\} 1\.0$", scraped, re.M) is not None

    wait_for(hears_the_worker, 60, "Flower to hear from the worker", interval=0.5)
    return url


def shows_job(page: Page, url: str, job_id: str) -> None:
    """The tasks page fills its table from Flower's API after loading: wait for the job's row."""
    assert (response := page.goto(f"{url}/tasks")) is not None and response.status == 200
    row = page.locator("tr", has_text=job_id)
    row.wait_for(timeout=20_000)
    assert "SUCCESS" in row.inner_text() and "handlers.echo" in row.inner_text()


@pytest.mark.slow
def test_flower_shows_a_job_by_its_id_to_its_user_only_and_keeps_it_across_a_restart(
    make_stack: MakeStack, browser: Browser
) -> None:
    stack = make_stack(concurrency=1)
    url = start_flower(stack)
    job_id = submit(stack, "echo", {"shown": "in flower"}, job_id="flower-visible-1")
    stack.wait_terminal(job_id)

    anonymous = browser.new_context()
    with pytest.raises(PlaywrightError, match="ERR_INVALID_AUTH_CREDENTIALS"):
        anonymous.new_page().goto(f"{url}/tasks")  # Flower asks for a password; headless, none comes
    assert anonymous.request.get(f"{url}/api/tasks").status == 401
    anonymous.close()
    wrong = browser.new_context(http_credentials={"username": USER, "password": "wrong"})
    page = wrong.new_page()
    assert (response := page.goto(f"{url}/tasks")) is not None and response.status == 401
    assert job_id not in page.content()
    assert wrong.request.get(f"{url}/api/tasks").status == 401
    wrong.close()

    user = browser.new_context(http_credentials={"username": USER, "password": PASSWORD})
    shows_job(user.new_page(), url, job_id)

    stack.stop("flower")
    stack.stop("worker")  # nothing new to hear: the job can only come from Flower's saved state
    stack.start("flower", TASKAPP_FLOWER_AUTH=f"{USER}:{PASSWORD}")
    wait_for(lambda: _answers(url), 60, "Flower to answer again")
    shows_job(user.new_page(), url, job_id)
    user.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, auth=(USER, PASSWORD), timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
