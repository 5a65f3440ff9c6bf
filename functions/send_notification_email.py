"""Send a notification email through SMTP (`RUNNER_SMTP_URL`), or into a file outbox when none is set.

Without `RUNNER_SMTP_URL` every message is written as one .eml file to
`$RUNNER_DATA_DIR/outbox/` (data folder default ".runner"), so development works offline.
The sender is `from_address`, else `RUNNER_SMTP_FROM`, else "runner@localhost".
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from functions._env_settings import env_seconds, env_text
from functions._smtp_delivery import DEFAULT_TIMEOUT_SECONDS, deliver, parse_smtp_url
from runner import PermanentError, function, progress

MAX_RECIPIENTS = 50
MAX_SUBJECT_LENGTH = 998  # RFC 5322's limit for one header line
MAX_CONTENT_BYTES = 1024 * 1024
MAX_ADDRESS_LENGTH = 254
MAX_LOCAL_PART_LENGTH = 64
DEFAULT_SENDER = "runner@localhost"
DEFAULT_DATA_DIR = ".runner"
# ASCII addresses only (no quoted local parts, no IP literals, no SMTPUTF8): what every relay accepts.
LOCAL_PART = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
ADDRESS = re.compile(rf"{LOCAL_PART}@(?:{LABEL}\.)+[A-Za-z]{{2,63}}")
# The configured sender may be a host-local mailbox such as the default runner@localhost.
LOCAL_ADDRESS = re.compile(rf"{LOCAL_PART}@(?:{LABEL}\.)*{LABEL}")
# Unicode line separators that some mail tools also treat as line ends.
LINE_SEPARATORS = frozenset("\u2028\u2029\x85")


def _check_address(value: str) -> str:
    local = value.rpartition("@")[0]
    if not ADDRESS.fullmatch(value) or len(value) > MAX_ADDRESS_LENGTH or len(local) > MAX_LOCAL_PART_LENGTH:
        raise ValueError(f"{value[:100]!r} is not a valid email address")
    return value


def _check_subject(value: str) -> str:
    # A line break in a header value would let the input start a header of its own (Bcc: ...).
    if any(char in LINE_SEPARATORS or unicodedata.category(char) == "Cc" for char in value):
        raise ValueError("the subject must not contain line breaks or other control characters")
    return value


def _check_size(value: str | None) -> str | None:
    if value is not None and len(value.encode("utf-8")) > MAX_CONTENT_BYTES:
        raise ValueError(f"must be at most {MAX_CONTENT_BYTES} bytes in UTF-8")
    return value


EmailAddress = Annotated[
    str, Field(max_length=MAX_ADDRESS_LENGTH, json_schema_extra={"format": "email"}), AfterValidator(_check_address)
]
Content = Annotated[str, Field(max_length=MAX_CONTENT_BYTES), AfterValidator(_check_size)]


@function(queue="demo_tasks", timeout=60, retries=3, backoff=[5, 30, 120])
def send_notification_email(
    to: Annotated[list[EmailAddress], Field(min_length=1, max_length=MAX_RECIPIENTS)],
    subject: Annotated[str, Field(min_length=1, max_length=MAX_SUBJECT_LENGTH), AfterValidator(_check_subject)],
    body: Content,
    html: Content | None = None,
    from_address: EmailAddress | None = None,
) -> dict[str, Any]:
    """Send an email (plain text, optionally with an HTML alternative) by SMTP or into the outbox."""
    progress(10, "building the message")
    sender = from_address or _configured_sender()
    recipients = list(dict.fromkeys(to))  # the same address twice gets one copy
    message = build_message(sender, recipients, subject, body, html)
    smtp_url = env_text("RUNNER_SMTP_URL")
    if not smtp_url:
        path = _write_outbox(message)
        progress(100, "written to the outbox")
        return _result(message, recipients, {}, "outbox", str(path))
    timeout = env_seconds("RUNNER_SMTP_TIMEOUT", DEFAULT_TIMEOUT_SECONDS)
    target = parse_smtp_url(smtp_url, timeout=timeout, ca_file=env_text("RUNNER_SMTP_CA_FILE"))
    steps = {"connecting": (30, f"connecting to {target.where}"), "sending": (60, "sending")}
    refused = deliver(target, message, sender, recipients, on_step=lambda step: progress(*steps[step]))
    progress(100, "sent")
    rejected = {address: {"code": code, "message": reply} for address, (code, reply) in refused.items()}
    return _result(message, recipients, rejected, "smtp", None)


def build_message(sender: str, recipients: list[str], subject: str, body: str, html: str | None) -> EmailMessage:
    """A complete message: headers, a text part, and an HTML alternative when given."""
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
    return message


def _result(
    message: EmailMessage, recipients: list[str], rejected: dict[str, Any], transport: str, outbox_path: str | None
) -> dict[str, Any]:
    return {
        "message_id": message["Message-ID"],
        "accepted": [address for address in recipients if address not in rejected],
        "rejected": rejected,
        "transport": transport,
        "outbox_path": outbox_path,
    }


def _write_outbox(message: EmailMessage) -> Path:
    """Write the message to <data dir>/outbox/<message id>.eml; a reader never sees half a file."""
    progress(50, "writing to the outbox")
    outbox = Path(env_text("RUNNER_DATA_DIR", DEFAULT_DATA_DIR)) / "outbox"
    outbox.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", str(message["Message-ID"]).strip("<>"))
    path = (outbox / f"{name}.eml").resolve()
    partial = path.with_suffix(".eml.partial")
    partial.write_bytes(message.as_bytes())  # LF line ends, as maildir and mbox files keep them
    partial.replace(path)
    return path


def _configured_sender() -> str:
    sender = env_text("RUNNER_SMTP_FROM", DEFAULT_SENDER)
    if not LOCAL_ADDRESS.fullmatch(sender):
        raise PermanentError(f"RUNNER_SMTP_FROM={sender[:100]!r} is not a valid email address.")
    return sender

