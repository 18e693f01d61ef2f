"""Security: tokens on every RPC, TLS (grpcurl and the Python client), nothing secret in
the logs, and no unauthenticated gateway on a non-loopback address."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import struct_pb2

from grpc_gateway.client import JobClient, JobServiceError
from grpc_gateway.v1 import jobs_pb2, jobs_pb2_grpc
from tests.helpers import BIN, ROOT, Stack, free_port, procfile, submit, wait_for

MakeStack = Callable[..., Stack]
TOKEN = "tok-3f9c2b7e1d0a4c58-never-log-me"
OTHER_TOKEN = "tok-second-one-7a7a"
PAYLOAD_SECRET = "pw-5e1f8c0b9d-secret-payload-value"

#: A schedule a right token may create (paused: it never fires).
SCHEDULE = jobs_pb2.Schedule(name="x", job=jobs_pb2.SubmitJobRequest(type="noop"), paused=True)
SCHEDULE.interval.FromSeconds(3600)

CALLS: dict[str, object] = {
    "SubmitJob": jobs_pb2.SubmitJobRequest(type="noop"),
    "SubmitJobs": jobs_pb2.SubmitJobsRequest(jobs=[jobs_pb2.SubmitJobRequest(type="noop")]),
    "GetJob": jobs_pb2.GetJobRequest(job_id="x"),
    "CancelJob": jobs_pb2.CancelJobRequest(job_id="x"),
    "RetryJob": jobs_pb2.RetryJobRequest(job_id="x"),
    "ListJobs": jobs_pb2.ListJobsRequest(),
    "WatchJob": jobs_pb2.WatchJobRequest(job_id="x"),
    "GetJobLogs": jobs_pb2.GetJobLogsRequest(job_id="x"),
    "GetQueueStats": jobs_pb2.GetQueueStatsRequest(),
    "CancelJobs": jobs_pb2.CancelJobsRequest(job_id_prefix="x", dry_run=True),
    "RetryJobs": jobs_pb2.RetryJobsRequest(job_id_prefix="x", dry_run=True),
    "CreateSchedule": jobs_pb2.CreateScheduleRequest(schedule=SCHEDULE),
    "UpdateSchedule": jobs_pb2.UpdateScheduleRequest(schedule=SCHEDULE),
    "GetSchedule": jobs_pb2.GetScheduleRequest(name="x"),
    "ListSchedules": jobs_pb2.ListSchedulesRequest(),
    "PauseSchedule": jobs_pb2.PauseScheduleRequest(name="x"),
    "ResumeSchedule": jobs_pb2.ResumeScheduleRequest(name="x"),
    "DeleteSchedule": jobs_pb2.DeleteScheduleRequest(name="x"),
    "TriggerSchedule": jobs_pb2.TriggerScheduleRequest(name="x"),
    "SetTypeLimit": jobs_pb2.SetTypeLimitRequest(type="echo"),
    "SetKeyRate": jobs_pb2.SetKeyRateRequest(key="security-test"),
    "PauseType": jobs_pb2.PauseTypeRequest(type="email"),
    "ResumeType": jobs_pb2.ResumeTypeRequest(type="email"),
    "PauseQueue": jobs_pb2.PauseQueueRequest(queue=jobs_pb2.PRIORITY_LOW),
    "ResumeQueue": jobs_pb2.ResumeQueueRequest(queue=jobs_pb2.PRIORITY_LOW),
    "GetFlowControls": jobs_pb2.GetFlowControlsRequest(),
    "ExplainJob": jobs_pb2.ExplainJobRequest(job_id="x"),
}


def test_every_rpc_is_knocked_on() -> None:
    assert set(CALLS) == set(jobs_pb2.DESCRIPTOR.services_by_name["JobService"].methods_by_name)


def call(stack: Stack, method: str, authorization: str | None) -> grpc.StatusCode:
    metadata = [("authorization", authorization)] if authorization is not None else None
    rpc = getattr(stack.stub(), method)
    try:
        reply = rpc(CALLS[method], timeout=10, metadata=metadata)
        if method == "WatchJob":
            list(reply)
    except grpc.RpcError as error:
        assert TOKEN not in (error.details() or "") and (authorization or "-") not in (error.details() or "")
        return error.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def guarded(make_module_stack: MakeStack) -> Stack:
    """A gateway with two tokens, for the tests that only knock."""
    return make_module_stack(worker=False, TASKAPP_AUTH_TOKENS=f"{TOKEN}, {OTHER_TOKEN}")


@pytest.mark.parametrize("method", sorted(CALLS))
def test_every_rpc_needs_a_right_token(guarded: Stack, method: str) -> None:
    stack = guarded
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    assert call(stack, method, None) is unauthenticated
    assert call(stack, method, "Bearer wrong-token") is unauthenticated
    assert call(stack, method, f"Basic {TOKEN}") is unauthenticated, "wrong form"
    assert call(stack, method, f"Bearer {TOKEN} extra") is unauthenticated, "wrong form"
    assert call(stack, method, "") is unauthenticated
    # With a right token the call gets through to the service (which may still answer NOT_FOUND for "x").
    for authorization in (f"Bearer {TOKEN}", f"bearer {OTHER_TOKEN}", TOKEN):
        assert call(stack, method, authorization) in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND)


def test_health_and_reflection_need_no_token(make_stack: MakeStack) -> None:
    stack = make_stack(worker=False, TASKAPP_AUTH_TOKENS=TOKEN)  # start_gateway checks health without one
    services = stack.grpcurl(stack.address, "list").stdout.split()
    assert "taskapp.v1.JobService" in services
    denied = stack.grpcurl(
        "-d", '{"job_id": "x"}', stack.address, "taskapp.v1.JobService/GetJob", check=False
    )
    assert denied.returncode != 0 and "Unauthenticated" in denied.stderr
    allowed = stack.grpcurl(
        "-H", f"authorization: Bearer {TOKEN}", "-d", '{"type": "noop"}', stack.address,
        "taskapp.v1.JobService/SubmitJob",
    )  # fmt: skip
    assert json.loads(allowed.stdout)["state"] == "JOB_STATE_QUEUED"


def test_tokens_can_come_from_a_file(make_stack: MakeStack, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# one per line\n{TOKEN}\n\n{OTHER_TOKEN}\n")
    stack = make_stack(worker=False, TASKAPP_AUTH_TOKENS_FILE=str(tokens))
    assert call(stack, "ListJobs", f"Bearer {OTHER_TOKEN}") is grpc.StatusCode.OK
    assert call(stack, "ListJobs", "Bearer one") is grpc.StatusCode.UNAUTHENTICATED


def test_the_python_client_sends_its_token(make_stack: MakeStack) -> None:
    stack = make_stack(worker=False, TASKAPP_AUTH_TOKENS=TOKEN)
    with JobClient(stack.address, token=TOKEN) as client:
        assert client.submit("noop").created
    with JobClient(stack.address, token="wrong") as client, pytest.raises(JobServiceError) as raised:
        client.get("x")
    assert raised.value.code == "UNAUTHENTICATED"


def _certificates(directory: Path) -> dict[str, Path]:
    """A CA, and a server certificate for 127.0.0.1 and localhost signed by it, as PEM files."""
    now = dt.datetime.now(dt.UTC)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("taskapp test CA"))
        .issuer_name(name("taskapp test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = {
        "ca": directory / "ca.pem",
        "cert": directory / "server.pem",
        "key": directory / "server.key",
    }
    files["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return files


def test_tls_with_grpcurl_and_the_python_client(make_stack: MakeStack, tmp_path: Path) -> None:
    pem = _certificates(tmp_path)
    stack = make_stack(
        worker=False,
        start=False,
        TASKAPP_TLS_CERT=str(pem["cert"]),
        TASKAPP_TLS_KEY=str(pem["key"]),
        TASKAPP_AUTH_TOKENS=TOKEN,
    )
    stack.start("gateway")
    wait_for(lambda: "listening" in stack.log("gateway"), 30, "the TLS gateway to listen")

    submitted = subprocess.run(
        [str(BIN / "grpcurl"), "-cacert", str(pem["ca"]), "-H", f"authorization: Bearer {TOKEN}",
         "-d", '{"type": "noop"}', stack.address, "taskapp.v1.JobService/SubmitJob"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["job_id"]

    credentials = grpc.ssl_channel_credentials(root_certificates=pem["ca"].read_bytes())
    with JobClient(stack.address, token=TOKEN, credentials=credentials) as client:
        assert client.get(job_id).job_id == job_id

    plaintext = subprocess.run(
        [str(BIN / "grpcurl"), "-plaintext", "-H", f"authorization: Bearer {TOKEN}", "-d", '{"job_id": "x"}',
         stack.address, "taskapp.v1.JobService/GetJob"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert plaintext.returncode != 0
    assert "NotFound" not in plaintext.stderr, "a plaintext call never reaches the service"

    http_address = stack.env["TASKAPP_HTTP_ADDR"]
    trusting = ssl.create_default_context(cafile=str(pem["ca"]))
    with httpx.Client(verify=trusting, headers={"authorization": f"Bearer {TOKEN}"}, timeout=10) as https:
        assert https.get(f"https://{http_address}/v1/jobs/{job_id}").json()["job_id"] == job_id
    with pytest.raises(httpx.TransportError):  # plaintext HTTP never reaches the service either
        httpx.get(f"http://{http_address}/healthz", timeout=10)


@pytest.mark.parametrize(
    ("variable", "address"),
    [("TASKAPP_GRPC_ADDR", "0.0.0.0"), ("TASKAPP_GRPC_ADDR", "[::]"), ("TASKAPP_HTTP_ADDR", "0.0.0.0")],
)
def test_no_token_on_a_non_loopback_address_refuses_to_start(
    make_stack: MakeStack, variable: str, address: str
) -> None:
    stack = make_stack(worker=False, start=False)
    env = {**stack.env, variable: f"{address}:{free_port()}"}
    env.pop("TASKAPP_AUTH_TOKENS", None)
    done = subprocess.run(
        procfile()["gateway"].split(), env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "TASKAPP_AUTH_TOKENS" in done.stderr and "refusing" in done.stderr


def test_no_token_or_payload_secret_in_any_log(make_stack: MakeStack) -> None:
    stack = make_stack(TASKAPP_AUTH_TOKENS=TOKEN)
    metadata = [("authorization", f"Bearer {TOKEN}")]
    stub = stack.stub()
    ids = [
        stub.SubmitJob(
            jobs_pb2.SubmitJobRequest(type="echo", payload=_struct({"password": PAYLOAD_SECRET})),
            timeout=10,
            metadata=metadata,
        ).job_id,
        stub.SubmitJob(
            jobs_pb2.SubmitJobRequest(
                type="http_call",
                payload=_struct({"url": f"http://user:{PAYLOAD_SECRET}@127.0.0.1:9/x?t={PAYLOAD_SECRET}"}),
                max_attempts=1,
            ),
            timeout=10,
            metadata=metadata,
        ).job_id,
        stub.SubmitJob(
            jobs_pb2.SubmitJobRequest(type="fail", payload=_struct({"permanent": True}), max_attempts=1),
            timeout=10,
            metadata=metadata,
        ).job_id,
    ]
    for job_id in ids:

        def finished(j: str = job_id) -> bool:
            state = stub.GetJob(jobs_pb2.GetJobRequest(job_id=j), timeout=10, metadata=metadata).state
            return state in (
                jobs_pb2.JOB_STATE_SUCCEEDED,
                jobs_pb2.JOB_STATE_FAILED,
                jobs_pb2.JOB_STATE_DEAD_LETTER,
            )

        wait_for(
            finished,
            30,
            f"job {job_id} to finish",
        )
    with pytest.raises(grpc.RpcError):
        stub.GetJob(
            jobs_pb2.GetJobRequest(job_id="x"), timeout=10, metadata=[("authorization", f"Bearer {TOKEN}x")]
        )
    stack.stop_all()

    logs = {name: stack.log(name) for name in ("gateway", "worker", "scheduler")}
    assert all(logs.values()), "every process wrote its log"
    assert any(job_id in logs["worker"] for job_id in ids), "the worker logs job ids"
    for name, text in logs.items():
        assert TOKEN not in text, f"token in the {name} log"
        assert PAYLOAD_SECRET not in text, f"payload secret in the {name} log"


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


def test_submit_is_refused_without_a_token_even_before_anything_is_written(make_stack: MakeStack) -> None:
    stack = make_stack(worker=False, TASKAPP_AUTH_TOKENS=TOKEN)
    with pytest.raises(grpc.RpcError) as raised:
        submit(stack, "noop", job_id="sneaky")
    assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with JobClient(stack.address, token=TOKEN) as client, pytest.raises(JobServiceError) as missing:
        client.get("sneaky")
    assert missing.value.code == "NOT_FOUND"


def test_a_message_over_the_size_limit_is_resource_exhausted(make_stack: MakeStack) -> None:
    stack = make_stack(worker=False)
    blob = "x" * 250_000
    jobs = [jobs_pb2.SubmitJobRequest(type="echo", payload=_struct({"blob": blob})) for _ in range(70)]
    with pytest.raises(grpc.RpcError) as raised:
        stack.stub().SubmitJobs(jobs_pb2.SubmitJobsRequest(jobs=jobs), timeout=30)
    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert submit(stack, "noop"), "still serving"


def test_calls_beyond_the_concurrency_bound_are_resource_exhausted(make_stack: MakeStack) -> None:
    stack = make_stack(worker=False, TASKAPP_MAX_CONCURRENT_RPCS="5")
    job_id = submit(stack, "noop")  # no worker: it stays QUEUED and its watchers wait
    channel = grpc.insecure_channel(stack.address)
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    streams = [stub.WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id), timeout=5) for _ in range(10)]
    codes = []
    for stream in streams:
        try:
            list(stream)
        except grpc.RpcError as error:
            codes.append(error.code())
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    assert set(codes) <= {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}
    channel.close()
    wait_for(lambda: _serves(stack), 10, "the gateway to take calls again")


def _serves(stack: Stack) -> bool:
    try:
        submit(stack, "noop")
    except grpc.RpcError:
        return False
    return True


def test_flower_asks_for_its_users_password(make_stack: MakeStack) -> None:
    stack = make_stack(worker=False, start=False)
    address = f"127.0.0.1:{free_port()}"
    stack.start("flower", TASKAPP_FLOWER_ADDR=address, TASKAPP_FLOWER_AUTH="admin:fl0wer-pass")

    def answers() -> int | None:
        try:
            return httpx.get(f"http://{address}/", timeout=2).status_code
        except httpx.TransportError:
            return None

    assert wait_for(answers, 60, "Flower to answer") == 401
    assert httpx.get(f"http://{address}/", auth=("admin", "fl0wer-pass"), timeout=10).status_code == 200
    assert httpx.get(f"http://{address}/", auth=("admin", "wrong"), timeout=10).status_code == 401


def test_flower_off_loopback_without_a_password_refuses_to_start(make_stack: MakeStack) -> None:
    stack = make_stack(worker=False, start=False)
    env = {**stack.env, "TASKAPP_FLOWER_ADDR": f"0.0.0.0:{free_port()}"}
    done = subprocess.run(
        procfile()["flower"].split(), env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "TASKAPP_FLOWER_AUTH" in done.stderr
