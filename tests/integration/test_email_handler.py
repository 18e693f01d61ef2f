"""`email` against a real SMTP server (aiosmtpd) on loopback, reached through TASKAPP_SMTP_URL."""

from __future__ import annotations

import email.policy
import logging
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from email import message_from_bytes
from email.message import EmailMessage
from typing import Any

import pydantic
import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from handlers.email import EmailPayload, EmailRetryable
from handlers.email import email as send_email
from taskapp.errors import PermanentError
from taskapp.registry import JobContext, load_handlers
from tests.loopback import Mailbox, smtp_mailbox

PASSWORD = "p@ss w0rd-secret"


@pytest.fixture
def smtp_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Mailbox]]:
    """Starts a server (keyword arguments go to aiosmtpd) and points TASKAPP_SMTP_URL at it."""
    with ExitStack() as servers:

        def start(credentials: str = "", **smtp_options: Any) -> Mailbox:
            mailbox, port = servers.enter_context(smtp_mailbox(**smtp_options))
            monkeypatch.setenv("TASKAPP_SMTP_URL", f"smtp://{credentials}127.0.0.1:{port}")
            return mailbox

        yield start


def send(**payload: Any) -> Any:
    job = JobContext(job_id="t", attempt=1, logger=logging.getLogger("t"))
    return send_email(EmailPayload.model_validate(payload), job)


def parsed(envelope: Envelope) -> EmailMessage:
    assert isinstance(envelope.content, bytes)
    message = message_from_bytes(envelope.content, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_registered_as_builtin_with_its_retryable_error() -> None:
    registered = load_handlers().get("email")
    assert registered is not None
    assert registered.func is send_email
    assert registered.retry_on == (EmailRetryable,)


def test_delivers_one_message_with_subject_recipients_and_body(
    smtp_server: Callable[..., Mailbox],
) -> None:
    mailbox = smtp_server()
    body = "Bonjour,\n\nvotre rapport est prêt ✓\n"

    result = send(
        to=["a@example.com", "b@example.org"],
        subject="Rapport prêt — semaine 12",
        body=body,
        from_addr="reports@example.net",
    )

    assert result == {"accepted": ["a@example.com", "b@example.org"]}
    [envelope] = mailbox.messages
    assert envelope.mail_from == "reports@example.net"
    assert envelope.rcpt_tos == ["a@example.com", "b@example.org"]
    message = parsed(envelope)
    assert message["Subject"] == "Rapport prêt — semaine 12"
    assert message["To"] == "a@example.com, b@example.org"
    assert message["From"] == "reports@example.net"
    assert message["Message-ID"]
    assert message["Date"]
    assert message.get_content().replace("\r\n", "\n") == body


def test_sender_defaults_to_taskapp_at_this_host(smtp_server: Callable[..., Mailbox]) -> None:
    mailbox = smtp_server()

    send(to=["a@example.com"], subject="s", body="b")

    [envelope] = mailbox.messages
    assert envelope.mail_from == f"taskapp@{socket.getfqdn()}"


def test_logs_in_with_the_url_credentials(smtp_server: Callable[..., Mailbox]) -> None:
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        logins.append((data.login, data.password))
        return AuthResult(success=data.password == PASSWORD.encode(), handled=False)

    mailbox = smtp_server(
        credentials="mailer:p%40ss%20w0rd-secret@", authenticator=authenticator, auth_require_tls=False
    )

    send(to=["a@example.com"], subject="s", body="b")

    assert logins == [(b"mailer", PASSWORD.encode())]
    assert len(mailbox.messages) == 1


def test_rejected_login_fails_permanently_without_the_password(smtp_server: Callable[..., Mailbox]) -> None:
    mailbox = smtp_server(
        credentials="mailer:wrong-secret@",
        authenticator=lambda *args: AuthResult(success=False, handled=False),
        auth_require_tls=False,
    )

    with pytest.raises(PermanentError, match="535") as raised:
        send(to=["a@example.com"], subject="s", body="b")

    assert "wrong-secret" not in str(raised.value)
    assert mailbox.messages == []


def test_4xx_on_rcpt_is_retryable(smtp_server: Callable[..., Mailbox]) -> None:
    mailbox = smtp_server()
    mailbox.rcpt_replies["a@example.com"] = "450 4.2.1 Mailbox busy, try later"

    with pytest.raises(EmailRetryable, match="450"):
        send(to=["a@example.com"], subject="s", body="b")
    assert mailbox.messages == []


def test_5xx_on_rcpt_fails_permanently(smtp_server: Callable[..., Mailbox]) -> None:
    mailbox = smtp_server()
    mailbox.rcpt_replies["a@example.com"] = "550 5.1.1 No such user"

    with pytest.raises(PermanentError, match="550"):
        send(to=["a@example.com"], subject="s", body="b")
    assert mailbox.messages == []


def test_one_recipient_refused_still_delivers_to_the_others(smtp_server: Callable[..., Mailbox]) -> None:
    mailbox = smtp_server()
    mailbox.rcpt_replies["gone@example.com"] = "550 5.1.1 No such user"

    result = send(to=["gone@example.com", "here@example.com"], subject="s", body="b")

    assert result == {"accepted": ["here@example.com"]}
    [envelope] = mailbox.messages
    assert envelope.rcpt_tos == ["here@example.com"]


def test_4xx_on_data_is_retryable(smtp_server: Callable[..., Mailbox]) -> None:
    mailbox = smtp_server()
    mailbox.data_reply = "451 4.3.0 Queue full, try later"

    with pytest.raises(EmailRetryable, match="451"):
        send(to=["a@example.com"], subject="s", body="b")


def test_5xx_on_mail_from_fails_permanently(smtp_server: Callable[..., Mailbox]) -> None:
    mailbox = smtp_server()
    mailbox.mail_reply = "553 5.7.1 Sender not allowed"

    with pytest.raises(PermanentError, match="553"):
        send(to=["a@example.com"], subject="s", body="b", from_addr="spoof@example.com")
    assert mailbox.messages == []


def test_refused_connection_is_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        monkeypatch.setenv("TASKAPP_SMTP_URL", f"smtp://127.0.0.1:{closed.getsockname()[1]}")
        with pytest.raises(EmailRetryable, match="connection failed"):
            send(to=["a@example.com"], subject="s", body="b")


def test_bad_smtp_url_fails_permanently_without_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKAPP_SMTP_URL", "http://user:hunter2@127.0.0.1:25")

    with pytest.raises(PermanentError, match="smtp://") as raised:
        send(to=["a@example.com"], subject="s", body="b")
    assert "hunter2" not in str(raised.value)


def test_body_is_not_logged(smtp_server: Callable[..., Mailbox], caplog: pytest.LogCaptureFixture) -> None:
    smtp_server()
    caplog.set_level(logging.DEBUG)

    send(to=["a@example.com"], subject="s", body="the-private-body-text")

    ours = [record for record in caplog.records if not record.name.startswith("mail.log")]  # aiosmtpd's own
    assert ours
    assert not [record for record in ours if "the-private-body-text" in record.getMessage()]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"to": []}, "to"),
        ({"to": [f"u{i}@example.com" for i in range(101)]}, "to"),
        ({"to": ["not-an-address"]}, "to"),
        ({"to": ["a@example.com, b@example.com"]}, "to"),
        ({"to": ["Name <a@example.com>"]}, "to"),
        ({"subject": "x" * 999}, "subject"),
        ({"subject": "hi\r\nBcc: victim@example.com"}, "subject"),
        ({"from_addr": "a@example.com\nBcc: x@example.com"}, "from_addr"),
        ({"cc": ["a@example.com"]}, "cc"),
    ],
)
def test_payload_validation_rejects(change: dict[str, Any], field: str) -> None:
    payload = {"to": ["a@example.com"], "subject": "s", "body": "b", **change}
    with pytest.raises(pydantic.ValidationError) as raised:
        EmailPayload.model_validate(payload)
    assert raised.value.errors()[0]["loc"][0] == field
