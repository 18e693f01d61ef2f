"""Load on the HTTP/JSON API with Locust, for what `scripts/bench` does not do: many users, a mix of calls, a
web page of live figures.

    locust -f bench/locustfile.py --host http://127.0.0.1:8080                       # then open :8089
    locust -f bench/locustfile.py --host http://127.0.0.1:8080 --headless -u 50 -r 10 -t 1m

Each user submits noop jobs (with a label) and reads them back, one job and pages of a labelled list.
TASKAPP_TOKEN, when set, is sent as the bearer token.
"""

from __future__ import annotations

import os

from locust import FastHttpUser, task


class JobsUser(FastHttpUser):
    """Five submits for each GetJob and each ListJobs page."""

    def on_start(self) -> None:
        token = os.environ.get("TASKAPP_TOKEN")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.last_job_id = ""

    @task(5)
    def submit(self) -> None:
        job = {"type": "noop", "labels": {"load": "locust"}}
        with self.client.post("/v1/jobs", json=job, headers=self.headers, catch_response=True) as answer:
            if answer.status_code == 200:
                self.last_job_id = answer.json()["job_id"]
            else:
                answer.failure(f"{answer.status_code}: {answer.text}")

    @task
    def get(self) -> None:
        if self.last_job_id:
            self.client.get(f"/v1/jobs/{self.last_job_id}", headers=self.headers, name="/v1/jobs/{job_id}")

    @task
    def list_labelled(self) -> None:
        self.client.get(
            "/v1/jobs?labels[load]=locust&page_size=50", headers=self.headers, name="/v1/jobs?labels"
        )
