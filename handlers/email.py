"""`email`: sends one plain-text message through the SMTP server named by `TASKAPP_SMTP_URL`.

Mail servers say whether to try again: a 4xx reply (greylisting, a full queue) or a server that cannot be
reached is retried; a 5xx reply fails the job, since resending the same message gets the same answer.
The body is never logged: it is the user's content.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Annotated
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from taskapp.config import get_settings
from taskapp.errors import PermanentError
from taskapp.registry import JobContext, handler

#: Seconds to wait on the server at each step; a job must not hang on a silent server.
SMTP_TIMEOUT_SECONDS = 30

#: One bare address (`user@host`), no display name: nothing that could smuggle extra headers or recipients.
Address = Annotated[
    str, StringConstraints(max_length=254, pattern=r"^[^@\s<>()\[\],;:\\\"]+@[^@\s<>()\[\],;:\\\"]+$")
]


class EmailPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: list[Address] = Field(min_length=1, max_length=100)
    #: RFC 5322's line limit; one line, since a line break would start a new header.
    subject: Annotated[str, StringConstraints(max_length=998, pattern=r"^[^\r\n]*$")]
    body: str
    #: Defaults to `taskapp@<this host's name>`.
    from_addr: Address | None = None


class EmailRetryable(Exception):
    """Raised on a 4xx reply or an unreachable server: the same message may be accepted later."""


@dataclass(frozen=True, slots=True)
class SmtpServer:
    """TASKAPP_SMTP_URL, parsed. `str()` leaves the password out so it can go in messages."""

    host: str
    port: int
    implicit_tls: bool
    username: str | None
    password: str | None = field(repr=False)

    @classmethod
    def from_url(cls, url: str) -> SmtpServer:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps"):
            raise PermanentError("TASKAPP_SMTP_URL must start with smtp:// or smtps://")
        try:
            port = parts.port
        except ValueError:
            raise PermanentError("TASKAPP_SMTP_URL has an invalid port") from None
        if not parts.hostname:
            raise PermanentError("TASKAPP_SMTP_URL has no host")
        return cls(
            host=parts.hostname,
            port=port or (465 if parts.scheme == "smtps" else 25),
            implicit_tls=parts.scheme == "smtps",
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
        )

    def __str__(self) -> str:
        return f"{'smtps' if self.implicit_tls else 'smtp'}://{self.host}:{self.port}"

    def connect(self, local_hostname: str) -> smtplib.SMTP:
        if self.implicit_tls:
            return smtplib.SMTP_SSL(
                self.host,
                self.port,
                local_hostname=local_hostname,
                timeout=SMTP_TIMEOUT_SECONDS,
                context=ssl.create_default_context(),
            )
        return smtplib.SMTP(self.host, self.port, local_hostname=local_hostname, timeout=SMTP_TIMEOUT_SECONDS)


@handler("email", schema=EmailPayload, retry_on=(EmailRetryable,))
def email(payload: EmailPayload, job: JobContext) -> dict[str, list[str]]:
    server = SmtpServer.from_url(get_settings().smtp_url)
    local_hostname = socket.getfqdn()
    sender = payload.from_addr or f"taskapp@{local_hostname}"
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(payload.to)
    message["Subject"] = payload.subject
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain=local_hostname)
    message.set_content(payload.body)

    try:
        refused = _send(server, local_hostname, message, sender, payload.to)
    except smtplib.SMTPRecipientsRefused as exc:
        codes = sorted({code for code, _ in exc.recipients.values()})
        if any(400 <= code < 500 for code in codes):
            raise EmailRetryable(f"{server}: every recipient refused, some for now (codes {codes})") from exc
        raise PermanentError(f"{server}: every recipient refused (codes {codes})") from exc
    except smtplib.SMTPConnectError as exc:
        raise EmailRetryable(f"{server}: cannot connect: {exc.smtp_code} {_text(exc.smtp_error)}") from exc
    except smtplib.SMTPResponseException as exc:
        reply = f"{exc.smtp_code} {_text(exc.smtp_error)}"
        if 400 <= exc.smtp_code < 500:
            raise EmailRetryable(f"{server}: answered {reply}") from exc
        raise PermanentError(f"{server}: answered {reply}") from exc
    except smtplib.SMTPServerDisconnected as exc:
        raise EmailRetryable(f"{server}: disconnected: {exc}") from exc
    except smtplib.SMTPException as exc:
        # What is left (no AUTH or SMTPUTF8 support, no usable login method) is the server's fixed setup.
        raise PermanentError(f"{server}: {exc}") from exc
    except OSError as exc:
        raise EmailRetryable(f"{server}: connection failed: {exc}") from exc

    if refused:
        job.logger.warning(
            "%s refused %d of %d recipients: %s", server, len(refused), len(payload.to), sorted(refused)
        )
    accepted = [address for address in payload.to if address not in refused]
    job.logger.info("sent to %d recipients via %s", len(accepted), server)
    return {"accepted": accepted}


def _send(
    server: SmtpServer, local_hostname: str, message: EmailMessage, sender: str, to: list[str]
) -> dict[str, tuple[int, bytes]]:
    """Send and return the refused recipients.

    QUIT failing after the message was accepted is not an error: reporting it would retry, and deliver twice.
    """
    smtp = server.connect(local_hostname)
    try:
        if server.username is not None:
            smtp.login(server.username, server.password or "")
        return smtp.send_message(message, from_addr=sender, to_addrs=to)
    finally:
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()


def _text(reply: bytes | str) -> str:
    return reply.decode(errors="replace") if isinstance(reply, bytes) else reply
