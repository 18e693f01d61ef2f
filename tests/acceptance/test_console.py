"""The web console (/console on the gateway's HTTP port), driven through Debian's Chromium by Playwright against
the real gateway, worker and scheduler: every page with real jobs (a screenshot of each is kept under
test-artifacts/console/), live updates without a reload, dead-letter replay, cancel, bulk retry by filter, and
refusal of everything without a sign-in or from another site."""

from __future__ import annotations

import http.server
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect
from playwright.sync_api import Response as PlaywrightResponse

from grpc_gateway.console.session import COOKIE
from grpc_gateway.v1 import jobs_pb2
from tests.helpers import ROOT, TERMINAL, ExecutionRecord, Stack, wait_for

MakeStack = Callable[..., Stack]
#: One test process runs them all, so they share one stack and one browser (`--dist loadgroup`).
pytestmark = pytest.mark.xdist_group("console")

TOKEN = "tok-console-8e2f61"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
ARTIFACTS = ROOT / "test-artifacts" / "console"
#: The server's own time for a page (its Server-Timing), the issue's bound.
PAGE_MS = 300


@pytest.fixture(scope="module")
def stack(make_module_stack: MakeStack) -> Stack:
    """A gateway with a token, a worker running three jobs at once, and a scheduler."""
    return make_module_stack(concurrency=3, TASKAPP_AUTH_TOKENS=TOKEN)


def sign_in(browser: Browser, stack: Stack, token: str = TOKEN) -> Page:
    page = browser.new_context().new_page()
    page.goto(f"{stack.http_url}/console/")
    expect(page).to_have_url(re.compile(r"/console/login\?next="))
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    return page


@pytest.fixture
def page(browser: Browser, stack: Stack) -> Iterator[Page]:
    page = sign_in(browser, stack)
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    yield page
    page.context.close()


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


def server_ms(headers: Mapping[str, str]) -> float:
    """The server's own time for a response, from its Server-Timing header."""
    timing = headers["server-timing"]
    match = re.fullmatch(r"app;dur=([\d.]+)", timing)
    assert match, timing
    return float(match[1])


def mark_page(page: Page) -> None:
    """A mark that a reload or a navigation would wipe: `still_same_page` proves there was neither."""
    page.evaluate("window.consoleTestMark = 'unchanged'")


def still_same_page(page: Page) -> bool:
    return bool(page.evaluate("window.consoleTestMark === 'unchanged'"))


def submit(stack: Stack, type: str, payload: dict[str, Any] | None = None, **fields: Any) -> str:
    request = jobs_pb2.SubmitJobRequest(type=type, **fields)
    if payload is not None:
        request.payload.update(payload)
    return str(stack.stub().SubmitJob(request, timeout=10, metadata=AUTH).job_id)


def get(stack: Stack, job_id: str) -> jobs_pb2.Job:
    return stack.stub().GetJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=10, metadata=AUTH)


def state_of(stack: Stack, job_id: str) -> str:
    return jobs_pb2.JobState.Name(get(stack, job_id).state).removeprefix("JOB_STATE_")


def wait_terminal(stack: Stack, job_id: str, timeout: float = 30) -> jobs_pb2.Job:
    def ended() -> jobs_pb2.Job | None:
        job = get(stack, job_id)
        return job if job.state in TERMINAL else None

    return wait_for(ended, timeout, f"{job_id} to end")


def test_each_page_renders_with_real_jobs(page: Page, stack: Stack, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.touch()
    done = submit(stack, "echo", {"greeting": "hello"}, labels={"team": "web"})
    dead = submit(stack, "fail_while_file", {"path": str(gate)}, max_attempts=1)
    slow = submit(stack, "sleep", {"seconds": 0.5})
    chatty = submit(stack, "chatty", {"lines": 2, "fail_times": 1})
    large = submit(stack, "echo", {"blob": "x" * 3_000})
    for job_id in (done, dead, slow, chatty, large):
        wait_terminal(stack, job_id)

    response = page.goto(f"{stack.http_url}/console/")
    expect(page.locator("[data-state='DEAD_LETTER']")).not_to_have_text("0")
    expect(page.locator("[data-workers]")).to_have_text("1")
    expect(page.get_by_role("img", name="Jobs finished per minute over the last hour")).to_be_visible()
    expect(page.get_by_role("link", name="sleep")).to_be_visible()  # among the slowest types
    assert response is not None and server_ms(response.headers) <= PAGE_MS
    screenshot(page, "overview")

    # It refreshes by itself: one more dead letter shows without a reload.
    mark_page(page)
    dead_letters = int(page.locator("[data-state='DEAD_LETTER']").inner_text())
    wait_terminal(stack, submit(stack, "fail_while_file", {"path": str(gate)}, max_attempts=1))
    expect(page.locator("[data-state='DEAD_LETTER']")).to_have_text(str(dead_letters + 1), timeout=15_000)
    assert still_same_page(page)

    response = page.goto(f"{stack.http_url}/console/jobs")
    assert response is not None and server_ms(response.headers) <= PAGE_MS
    for job_id in (done, dead, slow):
        expect(page.get_by_role("link", name=job_id)).to_be_visible()
    screenshot(page, "jobs")

    page.get_by_role("link", name=done).click()
    expect(page.locator("[data-state]")).to_have_text("SUCCEEDED")
    expect(page.get_by_label("payload")).to_contain_text('"greeting": "hello"')
    expect(page.get_by_label("result")).to_contain_text("hello")
    expect(page.get_by_text("team=web")).to_be_visible()
    screenshot(page, "job")

    page.goto(f"{stack.http_url}/console/jobs/{chatty}")
    expect(page.get_by_text("Attempt 1 (2 line(s))")).to_be_visible()
    expect(page.get_by_text("Attempt 2 (2 line(s))")).to_be_visible()
    expect(page.get_by_text("line 2 of attempt 2")).to_be_visible()
    page.goto(f"{stack.http_url}/console/jobs/{large}")
    folded = page.get_by_text(re.compile(r"^payload \(\d+ characters\): show$"))
    expect(folded).to_be_visible()
    expect(page.get_by_text("x" * 3_000).first).to_be_hidden()  # folded until asked for
    folded.click()
    expect(page.get_by_text("x" * 3_000).first).to_be_visible()

    page.get_by_role("link", name="Dead letters").click()
    expect(page.get_by_role("heading", name=re.compile("GateClosed"))).to_be_visible()
    screenshot(page, "dead-letters")

    page.get_by_role("link", name="Workers").click()
    row = page.locator("[data-worker]")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("answering")
    expect(row.locator("td").nth(3)).to_have_text("3")  # its concurrency
    screenshot(page, "workers")


def test_replaying_a_dead_letter_group_shows_its_jobs_succeed_without_a_reload(
    page: Page, stack: Stack, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    gate.touch()
    dead = [submit(stack, "fail_while_file", {"path": str(gate)}, max_attempts=1) for _ in range(3)]
    for job_id in dead:
        assert wait_terminal(stack, job_id).state == jobs_pb2.JOB_STATE_DEAD_LETTER
    gate.unlink()  # the cause is gone: a replay now succeeds

    page.goto(f"{stack.http_url}/console/dead-letters")
    group = page.locator("section[data-group]").filter(has_text=f"{gate.parent.name}/gate")
    expect(group.locator("[data-count]")).to_have_text("3")
    mark_page(page)
    page.once("dialog", lambda dialog: dialog.accept())
    group.get_by_role("button", name="Replay group (3)").click()

    tracking = group.locator("[data-tracking]")
    expect(tracking).to_have_attribute("data-tracking", "done", timeout=30_000)
    for job_id in dead:
        expect(tracking.locator(f"[data-job='{job_id}']")).to_contain_text("SUCCEEDED")
    screenshot(page, "dead-letters-replayed")
    assert still_same_page(page)
    assert {state_of(stack, job_id) for job_id in dead} == {"SUCCEEDED"}


def test_a_job_page_follows_its_run_live_and_cancel_stops_another_on_its_worker(
    page: Page, stack: Stack, tmp_path: Path
) -> None:
    watched = submit(stack, "sleep", {"seconds": 5})
    page.goto(f"{stack.http_url}/console/jobs/{watched}")
    mark_page(page)
    state = page.locator("[data-state]")
    expect(state).to_have_text("RUNNING", timeout=15_000)
    seen: list[int] = []

    def progress_moved() -> bool:
        text = page.locator("[data-progress]").inner_text().rstrip("%")
        if text.isdigit() and (not seen or int(text) != seen[-1]):
            seen.append(int(text))
        return len(seen) >= 2

    wait_for(progress_moved, 15, "the progress bar to move")
    assert seen == sorted(seen) and seen[-1] > seen[0]
    screenshot(page, "job-running")
    expect(state).to_have_text("SUCCEEDED", timeout=15_000)
    expect(page.get_by_label("result")).to_contain_text('"slept": 5')
    assert still_same_page(page)

    record = ExecutionRecord(tmp_path / "record")
    hold = tmp_path / "hold"
    hold.touch()
    held = submit(stack, "recorded", record.payload(hold=hold))
    wait_for(lambda: record.of(held), 15, "the held job to start")
    page.goto(f"{stack.http_url}/console/workers")
    expect(page.locator("[data-worker]").get_by_role("link", name=held)).to_be_visible()  # what it runs now
    page.goto(f"{stack.http_url}/console/jobs/{held}")
    expect(state).to_have_text("RUNNING")
    page.get_by_role("button", name="Cancel").click()
    expect(page.get_by_role("status")).to_have_text("Cancelled.")
    expect(state).to_have_text("CANCELLED")

    def stopped() -> bool:
        (run,) = record.of(held)
        return time.time() - run.last_seen > 1.0  # its run ticks every 0.2 s while alive

    wait_for(stopped, 15, "the cancelled run to stop ticking")
    (run,) = record.of(held)
    assert not run.finished
    assert not Path(f"/proc/{run.pid}").exists() or "recorded" not in _cmdline(run.pid)
    assert state_of(stack, held) == "CANCELLED"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def test_bulk_retry_by_filter_acts_on_exactly_the_jobs_it_matches(
    page: Page, stack: Stack, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    gate.touch()
    batch = f"b{int(time.time() * 1000)}"

    def dead_letter(label: str) -> str:
        return submit(stack, "fail_while_file", {"path": str(gate)}, max_attempts=1, labels={"batch": label})

    chosen = [dead_letter(batch) for _ in range(5)]
    others = [dead_letter(f"{batch}-other") for _ in range(4)]
    finished = [submit(stack, "echo", {"n": n}, labels={"batch": batch}) for n in range(3)]
    for job_id in chosen + others + finished:
        wait_terminal(stack, job_id)
    before = {job_id: get(stack, job_id).updated_at.ToDatetime() for job_id in others + finished}
    gate.unlink()

    page.goto(f"{stack.http_url}/console/jobs")
    page.get_by_label("Label (key=value)").fill(f"batch={batch}")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#selection tbody tr")).to_have_count(8)
    page.get_by_role("button", name="Retry all matching…").click()
    confirm = page.locator("#bulk form")
    expect(confirm.locator("[data-count]")).to_have_text("5")
    expect(confirm).to_contain_text("3 more are in a state that does not allow it")
    screenshot(page, "jobs-bulk-confirm")
    confirm.get_by_role("button", name="Confirm: retry 5 job(s)").click()
    expect(page.locator("#bulk")).to_contain_text("5 job(s) queued again; 3 left as they were.")

    # Only a new run succeeds (the gate is gone); the jobs the filter did not match, or could not retry, are
    # untouched.
    for job_id in chosen:
        assert wait_terminal(stack, job_id).state == jobs_pb2.JOB_STATE_SUCCEEDED
    for job_id in others:
        assert state_of(stack, job_id) == "DEAD_LETTER"
    assert {job_id: get(stack, job_id).updated_at.ToDatetime() for job_id in others + finished} == before


PAGES = [
    "/console/",
    "/console/jobs",
    "/console/jobs/any-id",
    "/console/dead-letters",
    "/console/workers",
    "/console/flow",
]
FRAGMENTS = [
    "/console/overview/live",
    "/console/workers/live",
    "/console/jobs/states?id=x",
    "/console/jobs/x/live",
]
ACTIONS = [
    "/console/jobs/x/cancel",
    "/console/jobs/x/retry",
    "/console/jobs/bulk/preview",
    "/console/jobs/bulk",
    "/console/dead-letters/0123456789abcdef/replay",
    "/console/flow/queues/low/pause",
    "/console/logout",
]


def test_a_queue_paused_from_the_console_holds_its_job_until_resumed(page: Page, stack: Stack) -> None:
    page.get_by_role("link", name="Flow control").click()
    expect(page.get_by_role("heading", name="Flow control")).to_be_visible()
    mark_page(page)
    low = page.locator('tr[data-queue="low"]')
    page.get_by_role("button", name="Pause low").click()
    expect(low).to_contain_text("paused")
    expect(page.get_by_role("status")).to_have_text("The low queue is paused.")
    job_id = submit(stack, "noop", priority=jobs_pb2.PRIORITY_LOW)

    def explained() -> jobs_pb2.ExplainJobResponse:
        request = jobs_pb2.ExplainJobRequest(job_id=job_id)
        return stack.stub().ExplainJob(request, timeout=10, metadata=AUTH)

    wait_for(lambda: explained().code == jobs_pb2.WAIT_CODE_PAUSED, 30, "the job to wait for the queue")
    page.reload()
    mark_page(page)
    expect(page.locator('dd[data-waiting="paused"]')).to_have_text("1")
    screenshot(page, "flow-paused")
    page.get_by_role("button", name="Resume low").click()
    expect(low).to_contain_text("running")
    assert jobs_pb2.JobState.Name(wait_terminal(stack, job_id).state) == "JOB_STATE_SUCCEEDED"
    assert still_same_page(page)


def test_without_a_sign_in_every_page_and_action_is_refused(stack: Stack) -> None:
    with httpx.Client(base_url=stack.http_url, timeout=10) as anonymous:
        for path in PAGES:
            answer = anonymous.get(path)
            assert (answer.status_code, answer.headers["location"]) == (
                303,
                f"/console/login?next={quote(path, safe='')}",
            ), path
        for path in FRAGMENTS:
            assert anonymous.get(path).status_code == 401, path
        for path in ACTIONS:
            assert (
                anonymous.post(path, data={"verb": "retry", "scope": "filter", "state": "FAILED"}).status_code
                == 401
            )
        login = anonymous.get("/console/login")
        assert login.status_code == 200 and login.headers["x-frame-options"] == "DENY"  # no clickjacking
        wrong = anonymous.post("/console/login", data={"token": "not-the-token", "next": "/console/"})
        assert wrong.status_code == 401 and "not accepted" in wrong.text
        assert COOKIE not in wrong.cookies

        signed_in = anonymous.post("/console/login", data={"token": TOKEN, "next": "/console/jobs"})
        assert (signed_in.status_code, signed_in.headers["location"]) == (303, "/console/jobs")
        cookie = signed_in.headers["set-cookie"]
        for attribute in ("HttpOnly", "Secure", "SameSite=strict", "Path=/console"):
            assert attribute.lower() in cookie.lower(), cookie
    # Signed in, an action still needs the page's CSRF token and must not come from another origin.
    with httpx.Client(base_url=stack.http_url, timeout=10, cookies={COOKIE: TOKEN}) as operator:
        job_id = submit(stack, "sleep", {"seconds": 30})
        csrf = re.search(r'"x-taskapp-csrf": "([0-9a-f]+)"', operator.get("/console/").text)
        assert csrf
        refusals = [
            {},  # no CSRF token
            {"x-taskapp-csrf": "0" * 64},
            {"x-taskapp-csrf": csrf[1], "origin": "http://evil.example"},
            {"x-taskapp-csrf": csrf[1], "sec-fetch-site": "cross-site"},
        ]
        for headers in refusals:
            assert operator.post(f"/console/jobs/{job_id}/cancel", headers=headers).status_code == 403, (
                headers
            )
        assert state_of(stack, job_id) != "CANCELLED"
        # Bad input is told on the page, with its HTTP twin of the gRPC status.
        bad_filter = operator.get("/console/jobs", params={"created_after": "yesterday"})
        assert bad_filter.status_code == 400 and "created_after: not a date and time" in bad_filter.text
        unknown = operator.get("/console/jobs/no-such-job")
        assert unknown.status_code == 404 and "no-such-job" in unknown.text
        allowed = operator.post(f"/console/jobs/{job_id}/cancel", headers={"x-taskapp-csrf": csrf[1]})
        assert allowed.status_code == 200 and "Cancelled." in allowed.text
        assert state_of(stack, job_id) == "CANCELLED"


def test_a_cross_site_post_from_a_signed_in_browser_is_refused(page: Page, stack: Stack) -> None:
    """Another site's page, in the browser the operator signed in with, posts a form to the console."""
    job_id = submit(stack, "sleep", {"seconds": 30})
    target = f"{stack.http_url}/console/jobs/{job_id}/cancel"
    attack = f'<form method="post" action="{target}"><input name="x" value="1"></form><script>document.forms[0].submit()</script>'.encode()
    answers: list[int] = []

    class EvilSite(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.end_headers()
            self.wfile.write(attack)

        def log_message(self, *args: Any) -> None:
            pass

    evil = http.server.HTTPServer(("127.0.0.1", 0), EvilSite)
    threading.Thread(target=evil.serve_forever, daemon=True).start()

    def answered(response: PlaywrightResponse) -> None:
        if response.url == target:
            answers.append(response.status)

    try:
        page.on("response", answered)
        # localhost is another site than 127.0.0.1, where the console is.
        page.goto(f"http://localhost:{evil.server_port}/")
        wait_for(lambda: answers, 15, "the cross-site post to be answered")
    finally:
        evil.shutdown()
    assert answers[0] in (401, 403)
    assert state_of(stack, job_id) != "CANCELLED"


def focused_text(page: Page) -> str:
    return str(page.evaluate("document.activeElement ? document.activeElement.textContent.trim() : ''"))


def tab_to(page: Page, text: str, most: int = 40) -> None:
    for _ in range(most):
        page.keyboard.press("Tab")
        if focused_text(page) == text:
            return
    raise AssertionError(f"{text!r} cannot be reached with Tab")


def background(page: Page) -> str:
    return str(page.evaluate("getComputedStyle(document.body).backgroundColor"))


def test_the_console_is_used_from_the_keyboard_and_follows_the_dark_setting(
    browser: Browser, stack: Stack
) -> None:
    job_id = submit(stack, "sleep", {"seconds": 30})
    dark = browser.new_context(color_scheme="dark")
    try:
        page = dark.new_page()
        page.goto(f"{stack.http_url}/console/jobs/{job_id}")
        page.keyboard.type(TOKEN)  # the token field has the focus
        page.keyboard.press("Enter")
        expect(page.get_by_role("heading", name=f"Job {job_id}")).to_be_visible()
        assert background(page) == "rgb(13, 17, 23)"
        screenshot(page, "job-dark")

        page.keyboard.press("Tab")
        assert focused_text(page) == "Skip to content"
        tab_to(page, "Cancel")
        page.keyboard.press("Enter")
        expect(page.get_by_role("status")).to_have_text("Cancelled.")
        assert state_of(stack, job_id) == "CANCELLED"
    finally:
        dark.close()
    light = browser.new_context(color_scheme="light")
    try:
        page = light.new_page()
        page.goto(f"{stack.http_url}/console/login")
        assert background(page) == "rgb(255, 255, 255)"
    finally:
        light.close()
