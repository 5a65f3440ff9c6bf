"""send_notification_email over real HTTP, gunicorn, Redis and workers: into an aiosmtpd server, and the outbox.

The SMTP server runs in this test process on 127.0.0.1; the workers reach it through
RUNNER_SMTP_URL. Each transport gets its own stack (`mail_stack` is parametrized indirectly),
because the workers choose the transport from their environment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from tests.integration.conftest import Stack
from tests.servers import free_port
from tests.unit.test_send_notification_email import RecordingHandler, parse, text_and_html

SENDER = "notifier@example.net"


@pytest.fixture(scope="module")
def smtp_handler() -> RecordingHandler:
    return RecordingHandler()


@pytest.fixture(scope="module")
def smtp_port(smtp_handler: RecordingHandler) -> Iterator[int]:
    """A real SMTP server on loopback for the whole module, recording into `smtp_handler`."""
    controller = Controller(smtp_handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller.port
    controller.stop()


@pytest.fixture
def smtp(smtp_handler: RecordingHandler, smtp_port: int) -> RecordingHandler:
    """The module's SMTP server with no recorded envelopes and default replies."""
    smtp_handler.reset()
    return smtp_handler


@pytest.fixture(scope="module")
def mail_stack(request: pytest.FixtureRequest, stack_factory: Callable[..., Stack], smtp_port: int) -> Stack:
    """A stack whose workers send by SMTP to the loopback server ("smtp") or write the outbox ("outbox")."""
    transport: str = request.param
    env = {"RUNNER_SMTP_FROM": SENDER}
    if transport == "smtp":
        env["RUNNER_SMTP_URL"] = f"smtp://127.0.0.1:{smtp_port}"
    return stack_factory(extra_env=env)


by_smtp = pytest.mark.parametrize("mail_stack", ["smtp"], indirect=True)
to_outbox = pytest.mark.parametrize("mail_stack", ["outbox"], indirect=True)


@by_smtp
def test_email_bytes_arrive_at_the_smtp_server(mail_stack: Stack, smtp: RecordingHandler) -> None:
    to = ["alice@example.com", "bob@example.org"]
    html = "<p>3 files <b>exported</b>.</p>"
    payload = {"to": to, "subject": "Nightly export finished ✔", "body": "3 files exported.\n", "html": html}
    response = mail_stack.invoke("send_notification_email", payload, wait=15)
    assert response.status_code == 200, response.text
    view = response.json()
    assert view["status"] == "finished", view
    assert view["queue"] == "demo_tasks"
    result = view["result"]
    assert result == {"message_id": result["message_id"], "accepted": to, "rejected": {},
                      "transport": "smtp", "outbox_path": None}
    (envelope,) = smtp.envelopes
    assert (envelope.mail_from, envelope.rcpt_tos) == (SENDER, to)
    message = smtp.message()
    assert message["Message-ID"] == result["message_id"]
    assert message["Subject"] == payload["subject"]
    assert (message["From"], message["To"]) == (SENDER, "alice@example.com, bob@example.org")
    assert text_and_html(message) == ("3 files exported.\n", html + "\n")
    assert view["progress"] == {"percent": 100, "message": "sent"}


@by_smtp
def test_rejected_recipient_fails_without_retry(mail_stack: Stack, smtp: RecordingHandler) -> None:
    smtp.rcpt_replies["nobody@example.com"] = "550 5.1.1 Mailbox unavailable"
    response = mail_stack.invoke(
        "send_notification_email", {"to": ["nobody@example.com"], "subject": "Hi", "body": "x"}, wait=15
    )
    assert response.status_code == 200, response.text
    view = response.json()
    assert (view["status"], view["attempts"]) == ("failed", 1)
    assert view["error"]["type"] == "PermanentError"
    assert "550 5.1.1 Mailbox unavailable" in view["error"]["message"]
    assert smtp.envelopes == []


@by_smtp
def test_header_injection_never_reaches_a_worker(mail_stack: Stack, smtp: RecordingHandler) -> None:
    payload = {"to": ["alice@example.com"], "subject": "Hi\r\nBcc: victim@example.com", "body": "x"}
    response = mail_stack.invoke("send_notification_email", payload)
    assert response.status_code == 422, response.text
    assert [detail["field"] for detail in response.json()["details"]] == ["subject"]
    assert smtp.envelopes == []


@to_outbox
def test_without_smtp_the_message_lands_in_the_outbox(mail_stack: Stack, smtp: RecordingHandler) -> None:
    payload = {"to": ["carol@example.com"], "subject": "Offline hello", "body": "Kept on disk.\n"}
    response = mail_stack.invoke("send_notification_email", payload, wait=15)
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert result["transport"] == "outbox"
    path = Path(result["outbox_path"])
    assert path.parent == (mail_stack.directory / "data" / "outbox").resolve()
    message = parse(path.read_bytes())
    assert (message["Message-ID"], message["From"], message["Subject"]) == (
        result["message_id"], SENDER, "Offline hello")
    assert text_and_html(message) == ("Kept on disk.\n", None)
    assert smtp.envelopes == []
