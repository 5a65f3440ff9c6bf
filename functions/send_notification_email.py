"""Send a notification email through SMTP (`RUNNER_SMTP_URL`), or into a file outbox when none is set.

Without `RUNNER_SMTP_URL` every message is written as one .eml file to
`$RUNNER_DATA_DIR/outbox/` (data folder default ".runner"), so development works offline, and
kept as the job's `message.eml` artifact, which the API serves. The sender is `RUNNER_SMTP_FROM`
(default "runner@localhost"); a caller's `from_address` must be allowed (functions._mail_sender).
Every header value is checked as the e-mail library decodes it (functions._mail_headers).

`threads=True`: smtplib waits on the network, so a worker runs many of these jobs at once in its
thread pool. Nothing here is shared between jobs (each builds its own message, connection, TLS
context and outbox file, named by its Message-ID), so that is safe.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from functools import partial
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from functions._env_settings import env_seconds, env_text
from functions._mail_headers import (
    LOCAL_ADDRESS,
    MAX_ADDRESS_LENGTH,
    UnsafeHeader,
    check_address,
    check_serialized,
    check_text,
)
from functions._mail_sender import check_allowed_sender, choose_sender
from functions._smtp_delivery import DEFAULT_TIMEOUT_SECONDS, deliver, parse_smtp_url
from runner import PermanentError, function, progress, save_artifact

MAX_RECIPIENTS = 50
MAX_SUBJECT_LENGTH = 998  # RFC 5322's limit for one header line
MAX_CONTENT_BYTES = 1024 * 1024
DEFAULT_DATA_DIR = ".runner"
ARTIFACT_NAME = "message.eml"
EML_MEDIA_TYPE = "message/rfc822"


def _check_size(value: str | None) -> str | None:
    if value is not None and len(value.encode("utf-8")) > MAX_CONTENT_BYTES:
        raise ValueError(f"must be at most {MAX_CONTENT_BYTES} bytes in UTF-8")
    return value


EmailAddress = Annotated[
    str, Field(max_length=MAX_ADDRESS_LENGTH, json_schema_extra={"format": "email"}), AfterValidator(check_address)
]
Content = Annotated[str, Field(max_length=MAX_CONTENT_BYTES), AfterValidator(_check_size)]
Subject = Annotated[
    str, Field(min_length=1, max_length=MAX_SUBJECT_LENGTH), AfterValidator(partial(check_text, what="the subject"))
]


@function(queue="demo_tasks", timeout=60, retries=3, backoff=[5, 30, 120], threads=True)
def send_notification_email(
    to: Annotated[list[EmailAddress], Field(min_length=1, max_length=MAX_RECIPIENTS)],
    subject: Subject,
    body: Content,
    html: Content | None = None,
    from_address: Annotated[EmailAddress, AfterValidator(check_allowed_sender)] | None = None,
) -> dict[str, Any]:
    """Send an email (plain text, optionally with an HTML alternative) by SMTP or into the outbox."""
    progress(10, "building the message")
    sender = choose_sender(from_address)
    recipients = list(dict.fromkeys(to))  # the same address twice gets one copy
    message = build_message(sender, recipients, subject, body, html)
    smtp_url = env_text("RUNNER_SMTP_URL")
    if not smtp_url:
        _write_outbox(message)
        progress(100, "written to the outbox")
        return _result(message, recipients, {}, "outbox", ARTIFACT_NAME)
    timeout = env_seconds("RUNNER_SMTP_TIMEOUT", DEFAULT_TIMEOUT_SECONDS)
    target = parse_smtp_url(smtp_url, timeout=timeout, ca_file=env_text("RUNNER_SMTP_CA_FILE"))
    steps = {"connecting": (30, f"connecting to {target.where}"), "sending": (60, "sending")}
    refused = deliver(target, message, sender, recipients, on_step=lambda step: progress(*steps[step]))
    progress(100, "sent")
    rejected = {address: {"code": code, "message": reply} for address, (code, reply) in refused.items()}
    return _result(message, recipients, rejected, "smtp", None)


def build_message(sender: str, recipients: list[str], subject: str, body: str, html: str | None) -> EmailMessage:
    """A complete message: headers, a text part, and an HTML alternative when given.

    PermanentError when a header value is unsafe once decoded, or the message would not be sent
    as built: validation refuses such input first; this holds for any caller.
    """
    try:
        check_address(sender, LOCAL_ADDRESS)
        for recipient in recipients:
            check_address(recipient)
        check_text(subject, "the subject")
        message = EmailMessage()
        message["From"] = sender
        message["To"] = ", ".join(recipients)
        message["Subject"] = subject
        message["Date"] = format_datetime(datetime.now(UTC))
        message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
        message["Auto-Submitted"] = "auto-generated"  # RFC 3834: auto-replies should not answer it
        message.set_content(body)
        if html is not None:
            message.add_alternative(html, subtype="html")
        check_serialized(message)
    except UnsafeHeader as exc:
        raise PermanentError(f"The message cannot be sent safely: {exc}.") from None
    return message


def _result(
    message: EmailMessage, recipients: list[str], rejected: dict[str, Any], transport: str, artifact: str | None
) -> dict[str, Any]:
    return {
        "message_id": message["Message-ID"],
        "accepted": [address for address in recipients if address not in rejected],
        "rejected": rejected,
        "transport": transport,
        "artifact": artifact,
    }


def _write_outbox(message: EmailMessage) -> None:
    """Write the message to <data dir>/outbox/<message id>.eml (a reader never sees half a file) and as an artifact."""
    progress(50, "writing to the outbox")
    outbox = Path(env_text("RUNNER_DATA_DIR", DEFAULT_DATA_DIR)) / "outbox"
    outbox.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", str(message["Message-ID"]).strip("<>"))
    path = (outbox / f"{name}.eml").resolve()
    partial = path.with_suffix(".eml.partial")
    data = message.as_bytes()  # LF line ends, as maildir and mbox files keep them
    partial.write_bytes(data)
    partial.replace(path)
    # The API serves the artifact; the worker's own path is no business of the caller's.
    save_artifact(ARTIFACT_NAME, data, EML_MEDIA_TYPE)

