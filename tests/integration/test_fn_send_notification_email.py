"""send_notification_email over real HTTP, gunicorn, Redis and workers: into an aiosmtpd server, and the outbox.

The SMTP server runs in this test process on 127.0.0.1; the workers reach it through
RUNNER_SMTP_URL. Each transport gets its own stack (`mail_stack` is parametrized indirectly),
because the workers choose the transport from their environment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from aiosmtpd.controller import Controller

from tests.integration.conftest import Stack
from tests.mail import (
    INJECTED_ADDRESSES,
    INJECTED_SUBJECTS,
    VICTIM,
    RecordingHandler,
    assert_only_our_headers,
    b_word,
    parse,
    q_word,
    text_and_html,
)
from tests.servers import free_port

SENDER = "notifier@example.net"
ALLOWED_FROM = "alerts@example.org, *@team.example.org"


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
    env = {"RUNNER_SMTP_FROM": SENDER, "RUNNER_SMTP_ALLOWED_FROM": ALLOWED_FROM}
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
                      "transport": "smtp", "artifact": None}
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
    view = response.json()
    result = view["result"]
    assert (result["transport"], result["artifact"]) == ("outbox", "message.eml")
    assert str(mail_stack.directory) not in response.text  # no path of the worker's disk in the view
    [artifact] = view["artifacts"]
    assert (artifact["name"], artifact["media_type"]) == ("message.eml", "message/rfc822")
    served = mail_stack.get(artifact["url"])
    assert served.status_code == 200 and served.headers["Content-Type"] == "message/rfc822"
    [outboxed] = (mail_stack.directory / "data" / "outbox").glob("*.eml")
    assert served.content == outboxed.read_bytes()
    message = parse(served.content)
    assert (message["Message-ID"], message["From"], message["Subject"]) == (
        result["message_id"], SENDER, "Offline hello")
    assert text_and_html(message) == ("Kept on disk.\n", None)
    assert smtp.envelopes == []


# ---- hostile callers --------------------------------------------------------------------------


@by_smtp
@pytest.mark.parametrize("subject", [value for _, value in INJECTED_SUBJECTS],
                         ids=[name for name, _ in INJECTED_SUBJECTS])
def test_encoded_header_injection_never_reaches_the_smtp_server(mail_stack: Stack, smtp: RecordingHandler,
                                                                subject: str) -> None:
    response = mail_stack.invoke("send_notification_email", {"to": ["alice@example.com"], "subject": subject,
                                                             "body": "x"})
    assert response.status_code == 422, response.text
    assert [detail["field"] for detail in response.json()["details"]] == ["subject"]
    assert smtp.envelopes == []


@by_smtp
@pytest.mark.parametrize("address", [value for _, value in INJECTED_ADDRESSES],
                         ids=[name for name, _ in INJECTED_ADDRESSES])
def test_encoded_words_in_addresses_never_reach_the_smtp_server(mail_stack: Stack, smtp: RecordingHandler,
                                                                address: str) -> None:
    response = mail_stack.invoke("send_notification_email", {"to": [address], "subject": "Hi", "body": "x"})
    assert response.status_code == 422, response.text
    assert smtp.envelopes == []


HARMLESS = [(q_word("Facture payée ✔"), "Facture payée ✔"),
            (b_word(f"Invoice Bcc: {VICTIM}"), f"Invoice Bcc: {VICTIM}")]


@pytest.mark.parametrize("mail_stack", ["smtp", "outbox"], indirect=True)
@pytest.mark.parametrize(("subject", "decoded"), HARMLESS, ids=["q-accents", "b-header-like-text"])
def test_harmless_encoded_words_arrive_inside_the_subject(mail_stack: Stack, smtp: RecordingHandler, subject: str,
                                                          decoded: str) -> None:
    payload = {"to": ["alice@example.com"], "subject": subject, "body": "Body stays.\n"}
    response = mail_stack.invoke("send_notification_email", payload, wait=15)
    assert response.status_code == 200 and response.json()["status"] == "finished", response.text
    if response.json()["result"]["transport"] == "smtp":
        (envelope,) = smtp.envelopes
        assert envelope.rcpt_tos == ["alice@example.com"]
        raw = envelope.content
    else:
        raw = mail_stack.get(response.json()["artifacts"][0]["url"]).content
    assert isinstance(raw, bytes)
    message = assert_only_our_headers(raw, decoded, ["alice@example.com"])
    assert text_and_html(message) == ("Body stays.\n", None)


@by_smtp
@pytest.mark.parametrize(("from_address", "sender"), [(None, SENDER), ("alerts@example.org", "alerts@example.org"),
                                                      ("night.shift@team.example.org", "night.shift@team.example.org")])
def test_the_sender_is_configured_or_allowed(mail_stack: Stack, smtp: RecordingHandler, from_address: str | None,
                                             sender: str) -> None:
    payload = {"to": ["alice@example.com"], "subject": "Hi", "body": "x", "from_address": from_address}
    response = mail_stack.invoke("send_notification_email", payload, wait=15)
    assert response.status_code == 200 and response.json()["status"] == "finished", response.text
    (envelope,) = smtp.envelopes
    assert (envelope.mail_from, smtp.message()["From"]) == (sender, sender)


@by_smtp
@pytest.mark.parametrize("from_address", ["ceo@bank.example", "alerts@example.org.evil.example",
                                          "x@sub.team.example.org", SENDER.upper()])
def test_a_spoofed_sender_is_422_and_sends_nothing(mail_stack: Stack, smtp: RecordingHandler,
                                                   from_address: str) -> None:
    before = mail_stack.row_count()
    payload = {"to": ["alice@example.com"], "subject": "Hi", "body": "x", "from_address": from_address}
    response = mail_stack.invoke("send_notification_email", payload)
    assert response.status_code == 422, response.text
    assert [detail["field"] for detail in response.json()["details"]] == ["from_address"]
    assert mail_stack.row_count() == before and smtp.envelopes == []
