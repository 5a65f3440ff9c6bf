"""Unit tests of send_notification_email: the file outbox, validation, and delivery to a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

import functions.send_notification_email as module
from functions._mail_headers import UnsafeHeader, check_serialized
from functions._smtp_delivery import SmtpDeliveryDeferred, parse_smtp_url
from functions.send_notification_email import MAX_CONTENT_BYTES, build_message, send_notification_email
from runner import PermanentError
from runner.authoring.context import running
from runner.errors import InvalidInput
from runner.store.files import ArtifactStore
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

USERNAME, PASSWORD = "mailer", "p@ss word:1"  # characters that must be percent-encoded in the URL
GOOD = {"to": ["alice@example.com"], "subject": "Hello", "body": "Hi"}
JOB_ID = "job1"


def check_login(server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
    """Accept only USERNAME / PASSWORD."""
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (USERNAME.encode(), PASSWORD.encode())
    return AuthResult(success=ok, handled=False)


def start_controller(handler: RecordingHandler, **options: Any) -> Controller:
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), **options)
    controller.start()
    return controller


@pytest.fixture(scope="module")
def smtp_handler() -> RecordingHandler:
    return RecordingHandler()


@pytest.fixture(scope="module")
def smtp_port(smtp_handler: RecordingHandler) -> Iterator[int]:
    """One plain SMTP server for the module, with AUTH offered without TLS (loopback only)."""
    controller = start_controller(smtp_handler, authenticator=check_login, auth_require_tls=False)
    yield controller.port
    controller.stop()


@pytest.fixture
def smtp(smtp_handler: RecordingHandler, smtp_port: int, monkeypatch: pytest.MonkeyPatch) -> RecordingHandler:
    """The module's SMTP server, reset, with RUNNER_SMTP_URL pointing at it."""
    smtp_handler.reset()
    monkeypatch.setenv("RUNNER_SMTP_URL", f"smtp://127.0.0.1:{smtp_port}")
    return smtp_handler


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("RUNNER_SMTP_URL", "RUNNER_SMTP_FROM", "RUNNER_SMTP_ALLOWED_FROM", "RUNNER_SMTP_TIMEOUT",
                 "RUNNER_SMTP_CA_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RUNNER_DATA_DIR", str(tmp_path / "data"))


class ArtifactJob:
    """The job context a worker opens around a job, keeping artifacts in a real ArtifactStore."""

    attempt = 1

    def __init__(self, directory: Path) -> None:
        self.store = ArtifactStore(directory)
        self.entries: list[dict[str, Any]] = []

    def report_progress(self, percent: int, message: str) -> None:
        pass

    def save_artifact(self, name: str, content: bytes, media_type: str | None) -> dict[str, Any]:
        entry = self.store.write(JOB_ID, name, content, media_type)
        self.entries.append(entry)
        return entry

    def eml(self) -> bytes:
        """The bytes of the one artifact, which must be the message."""
        assert [entry["name"] for entry in self.entries] == ["message.eml"]
        return self.store.path(JOB_ID, "message.eml").read_bytes()


@pytest.fixture(autouse=True)
def job(tmp_path: Path) -> Iterator[ArtifactJob]:
    """Every call runs as inside a worker's job, so save_artifact works."""
    context = ArtifactJob(tmp_path / "artifacts")
    with running(context):
        yield context


@pytest.fixture
def progress_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, str]]:
    calls: list[tuple[float, str]] = []
    monkeypatch.setattr(module, "progress", lambda percent, message="": calls.append((percent, message)))
    return calls


# ---- outbox ------------------------------------------------------------------------------------


def outbox_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "data" / "outbox").glob("*"))


@pytest.mark.parametrize("html", [None, "<p>Your report is <b>ready</b>.</p>"])
def test_outbox_writes_a_parseable_eml(tmp_path: Path, job: ArtifactJob, html: str | None) -> None:
    outcome = send_notification_email(
        ["alice@example.com", "bob@example.org"], "Report ready ✔", "Your report is ready.\n", html=html
    )
    [path] = outbox_files(tmp_path)  # no partial file left behind
    assert path.name == outcome["message_id"].strip("<>").replace("@", "_") + ".eml"
    assert job.eml() == path.read_bytes()
    assert job.entries == [{"name": "message.eml", "size": path.stat().st_size, "media_type": "message/rfc822"}]
    message = parse(job.eml())
    assert message["Message-ID"] == outcome["message_id"]
    assert (message["From"], message["To"]) == ("runner@localhost", "alice@example.com, bob@example.org")
    assert message["Subject"] == "Report ready ✔"
    assert parsedate_to_datetime(message["Date"]).tzinfo is not None
    assert message.get_content_type() == ("text/plain" if html is None else "multipart/alternative")
    assert text_and_html(message) == ("Your report is ready.\n", None if html is None else html + "\n")
    # The result names the artifact, never a path on the worker's disk.
    assert outcome == {
        "message_id": outcome["message_id"],
        "accepted": ["alice@example.com", "bob@example.org"],
        "rejected": {},
        "transport": "outbox",
        "artifact": "message.eml",
    }
    assert str(tmp_path) not in json.dumps(outcome)


def test_outbox_keeps_one_file_per_message(tmp_path: Path) -> None:
    first = send_notification_email(["a@example.com"], "One", "1")
    second = send_notification_email(["a@example.com"], "Two", "2")
    assert first["message_id"] != second["message_id"]
    subjects = {parse(path.read_bytes())["Subject"] for path in (tmp_path / "data" / "outbox").glob("*.eml")}
    assert subjects == {"One", "Two"}


def test_outbox_defaults_to_the_runner_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RUNNER_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    outcome = send_notification_email(["a@example.com"], "Hi", "body")
    [path] = (tmp_path / ".runner" / "outbox").iterdir()
    assert parse(path.read_bytes())["Message-ID"] == outcome["message_id"]


def test_duplicate_recipients_get_one_copy(monkeypatch: pytest.MonkeyPatch, job: ArtifactJob) -> None:
    monkeypatch.setenv("RUNNER_SMTP_FROM", "alerts@example.net")
    outcome = send_notification_email(["a@example.com", "b@example.com", "a@example.com"], "Hi", "body")
    assert outcome["accepted"] == ["a@example.com", "b@example.com"]
    message = parse(job.eml())
    assert (message["From"], message["To"]) == ("alerts@example.net", "a@example.com, b@example.com")
    assert outcome["message_id"].endswith("@example.net>")


@pytest.mark.parametrize("sender", ["not an address", "a@example.com\r\nBcc: evil@example.com",
                                    "=?utf-8?q?a=0D=0ABcc:_evil@example.com?=@example.com", "Ops <ops@example.com>"])
def test_bad_configured_sender_is_permanent(monkeypatch: pytest.MonkeyPatch, sender: str) -> None:
    monkeypatch.setenv("RUNNER_SMTP_FROM", sender)
    with pytest.raises(PermanentError, match="RUNNER_SMTP_FROM"):
        send_notification_email(["a@example.com"], "Hi", "body")


def test_outbox_progress(progress_calls: list[tuple[float, str]]) -> None:
    send_notification_email(["a@example.com"], "Hi", "body")
    assert progress_calls == [(10, "building the message"), (50, "writing to the outbox"),
                              (100, "written to the outbox")]


class ThreadJob(ArtifactJob):
    """A job of its own per thread; its progress reports wait until every thread has built its message."""

    def __init__(self, directory: Path, job_id: str, barrier: threading.Barrier) -> None:
        super().__init__(directory)
        self.job_id, self.barrier = job_id, barrier

    def report_progress(self, percent: int, message: str) -> None:
        if percent in (30, 50):  # the message is built, and not yet sent or written
            self.barrier.wait(10)

    def save_artifact(self, name: str, content: bytes, media_type: str | None) -> dict[str, Any]:
        entry = self.store.write(self.job_id, name, content, media_type)
        self.entries.append(entry)
        return entry


@pytest.mark.parametrize("transport", ["outbox", "smtp"])
def test_threads_at_once_each_send_their_own_message(
    request: pytest.FixtureRequest, tmp_path: Path, transport: str
) -> None:
    # threads=True: a worker runs these jobs side by side in one process; none may see another's message.
    smtp = request.getfixturevalue("smtp") if transport == "smtp" else None
    count = 8
    barrier = threading.Barrier(count)
    jobs = [ThreadJob(tmp_path / "artifacts", f"job-{n}", barrier) for n in range(count)]

    def send(number: int) -> dict[str, Any]:
        with running(jobs[number]):
            return send_notification_email([f"user{number}@example.com"], f"Subject {number}", f"Body {number}\n")

    with ThreadPoolExecutor(count) as pool:
        outcomes = list(pool.map(send, range(count)))
    assert len({outcome["message_id"] for outcome in outcomes}) == count
    for number, (job, outcome) in enumerate(zip(jobs, outcomes, strict=True)):
        assert outcome["accepted"] == [f"user{number}@example.com"] and outcome["transport"] == transport
        if transport == "outbox":
            message = parse(job.store.path(job.job_id, "message.eml").read_bytes())
            assert (message["Message-ID"], message["Subject"]) == (outcome["message_id"], f"Subject {number}")
    if smtp is not None:
        received = {tuple(envelope.rcpt_tos): parse(envelope.content) for envelope in smtp.envelopes}
        assert len(smtp.envelopes) == count
        for number, outcome in enumerate(outcomes):
            message = received[(f"user{number}@example.com",)]
            assert (message["Message-ID"], message["Subject"]) == (outcome["message_id"], f"Subject {number}")
            assert text_and_html(message) == (f"Body {number}\n", None)
    else:
        assert len(outbox_files(tmp_path)) == count


# ---- validation --------------------------------------------------------------------------------


def invalid_fields(payload: dict[str, Any]) -> set[str]:
    spec = send_notification_email.__runner_function__  # type: ignore[attr-defined]
    with pytest.raises(InvalidInput) as caught:
        spec.validate(payload)
    return {detail["field"] for detail in caught.value.details}


@pytest.mark.parametrize(
    "subject",
    ["Hi\r\nBcc: victim@example.com", "Hi\nBcc: victim@example.com", "Hi\rX: y", "Hi\u2028there", "Hi\x00", "a\x85b"],
)
def test_header_injection_is_rejected_at_validation(subject: str) -> None:
    assert invalid_fields({**GOOD, "subject": subject}) == {"subject"}


def test_header_injection_is_a_422_and_never_enqueued(
    client: FlaskClient,
    api_error: Callable[..., dict[str, Any]],
    assert_nothing_enqueued: Callable[[], None],
) -> None:
    payload = {**GOOD, "subject": "Hi\r\nBcc: victim@example.com"}
    response: TestResponse = client.post("/functions/send_notification_email/invocations", json=payload)
    body = api_error(response, 422, "invalid_input")
    assert [detail["field"] for detail in body["details"]] == ["subject"]
    assert_nothing_enqueued()


@pytest.mark.parametrize(
    "address",
    [
        "plainaddress", "a@b", "a@@example.com", "a b@example.com", "a@example.com\nBcc: x@example.com",
        "<a@example.com>", "Alice <a@example.com>", "a@-example.com", "a..b@example.com", ".a@example.com",
        "a@example.c", "a@example.com.", "x" * 65 + "@example.com", "ü@example.com", "a@exa_mple.com",
        "a@" + "b" * 250 + ".com", "", "a@example.com,b@example.com", "a=?x?=@example.com",
    ],
)
def test_invalid_addresses_name_the_field(address: str) -> None:
    assert invalid_fields({**GOOD, "to": ["ok@example.com", address]}) == {"to.1"}
    assert invalid_fields({**GOOD, "from_address": address}) == {"from_address"}


@pytest.mark.parametrize(
    "address", ["first.last+tag@sub.example.co.uk", "o'brien@example.ie", "x@xn--bcher-kva.example", "A_Z@EXAMPLE.COM"]
)
def test_valid_addresses_pass(address: str) -> None:
    spec = send_notification_email.__runner_function__  # type: ignore[attr-defined]
    assert spec.validate({**GOOD, "to": [address]})["to"] == [address]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"to": []}, "to"),
        ({"to": [f"u{n}@example.com" for n in range(51)]}, "to"),
        ({"to": "alice@example.com"}, "to"),
        ({"subject": ""}, "subject"),
        ({"subject": "x" * 999}, "subject"),
        ({"body": "é" * (MAX_CONTENT_BYTES // 2 + 1)}, "body"),  # few enough characters, too many bytes
        ({"html": "x" * (MAX_CONTENT_BYTES + 1)}, "html"),
        ({"cc": ["x@example.com"]}, "cc"),
    ],
)
def test_validation_rejects_bad_input(change: dict[str, Any], field: str) -> None:
    assert field in invalid_fields({**GOOD, **change})


def test_validation_fills_defaults() -> None:
    spec = send_notification_email.__runner_function__  # type: ignore[attr-defined]
    assert spec.validate({**GOOD, "to": [f"u{n}@example.com" for n in range(50)]})["html"] is None
    assert spec.validate(GOOD) == {**GOOD, "html": None, "from_address": None}


def test_declared_policy() -> None:
    spec = send_notification_email.__runner_function__  # type: ignore[attr-defined]
    assert (spec.queue, spec.timeout, spec.retries, spec.backoff) == ("demo_tasks", 60, 3, (5, 30, 120))
    assert spec.threads and spec.runs_in_slots  # it waits on SMTP: many at once in a worker's threads
    assert spec.input_schema()["properties"]["to"]["items"]["format"] == "email"


# ---- SMTP --------------------------------------------------------------------------------------


def test_smtp_delivers_the_message_bytes(
    smtp: RecordingHandler, smtp_port: int, progress_calls: list[tuple[float, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNNER_SMTP_ALLOWED_FROM", "ci@example.net")
    outcome = send_notification_email(
        ["alice@example.com", "bob@example.org"], "Build #42 failed", "See the log.\n", html="<p>See the log.</p>",
        from_address="ci@example.net",
    )
    (envelope,) = smtp.envelopes
    assert envelope.mail_from == "ci@example.net"
    assert envelope.rcpt_tos == ["alice@example.com", "bob@example.org"]
    message = smtp.message()
    assert (message["Subject"], message["To"], message["Message-ID"]) == (
        "Build #42 failed", "alice@example.com, bob@example.org", outcome["message_id"])
    assert text_and_html(message) == ("See the log.\n", "<p>See the log.</p>\n")
    assert outcome == {"message_id": outcome["message_id"], "accepted": ["alice@example.com", "bob@example.org"],
                       "rejected": {}, "transport": "smtp", "artifact": None}
    assert progress_calls == [(10, "building the message"), (30, f"connecting to 127.0.0.1:{smtp_port}"),
                              (60, "sending"), (100, "sent")]


def test_smtp_partial_refusal_is_reported_not_retried(smtp: RecordingHandler) -> None:
    smtp.rcpt_replies["ghost@example.com"] = "550 5.1.1 No such user"
    outcome = send_notification_email(["alice@example.com", "ghost@example.com"], "Hi", "body")
    assert outcome["accepted"] == ["alice@example.com"]
    assert outcome["rejected"] == {"ghost@example.com": {"code": 550, "message": "5.1.1 No such user"}}
    assert smtp.envelopes[0].rcpt_tos == ["alice@example.com"]


@pytest.mark.parametrize(
    ("command", "reply", "error", "message"),
    [
        ("rcpt", "550 5.1.1 No such user", PermanentError, "refused every recipient: alice@example.com: 550 5.1.1"),
        ("rcpt", "451 4.3.0 Try again later", SmtpDeliveryDeferred, "deferred the recipients"),
        ("data", "554 5.7.1 Message rejected as spam", PermanentError, "rejected the message: 554 5.7.1 Message"),
        ("data", "451 4.7.1 Greylisted, come back later", SmtpDeliveryDeferred, "deferred the message: 451 4.7.1"),
        ("mail", "553 5.7.1 Sender not allowed", PermanentError, "rejected the sender: 553 5.7.1 Sender not allowed"),
        ("mail", "452 4.3.1 Insufficient storage", SmtpDeliveryDeferred, "deferred the sender: 452"),
    ],
)
def test_smtp_replies_decide_retry(
    smtp: RecordingHandler, command: str, reply: str, error: type[Exception], message: str
) -> None:
    if command == "rcpt":
        smtp.rcpt_replies["alice@example.com"] = reply
    else:
        setattr(smtp, f"{command}_reply", reply)
    with pytest.raises(error, match=message):
        send_notification_email(["alice@example.com"], "Hi", "body")
    assert smtp.envelopes == []


@pytest.mark.parametrize(("password", "delivered"), [(PASSWORD, True), ("wrong", False)])
def test_smtp_login(smtp: RecordingHandler, smtp_port: int, monkeypatch: pytest.MonkeyPatch,
                    password: str, delivered: bool) -> None:
    quoted = password.replace("%", "%25").replace("@", "%40").replace(" ", "%20").replace(":", "%3A")
    monkeypatch.setenv("RUNNER_SMTP_URL", f"smtp://{USERNAME}:{quoted}@127.0.0.1:{smtp_port}")
    if delivered:
        assert send_notification_email(["alice@example.com"], "Hi", "body")["accepted"] == ["alice@example.com"]
        assert smtp.message()["Subject"] == "Hi"
    else:
        with pytest.raises(PermanentError, match="rejected the login: 535"):
            send_notification_email(["alice@example.com"], "Hi", "body")
        assert smtp.envelopes == []


def test_smtp_not_listening_is_transient(monkeypatch: pytest.MonkeyPatch, closed_port: int) -> None:
    monkeypatch.setenv("RUNNER_SMTP_URL", f"smtp://127.0.0.1:{closed_port}")
    with pytest.raises(SmtpDeliveryDeferred, match=f"Cannot talk to the SMTP server at 127.0.0.1:{closed_port}"):
        send_notification_email(["alice@example.com"], "Hi", "body")


def test_smtp_silent_server_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # connections queue in the backlog, never greeted
        monkeypatch.setenv("RUNNER_SMTP_URL", f"smtp://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setenv("RUNNER_SMTP_TIMEOUT", "0.3")
        with pytest.raises(SmtpDeliveryDeferred, match="did not answer in time"):
            send_notification_email(["alice@example.com"], "Hi", "body")


def test_starttls_required_but_not_offered_is_permanent(smtp: RecordingHandler, smtp_port: int,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_SMTP_URL", f"smtp://127.0.0.1:{smtp_port}?starttls=1")
    with pytest.raises(PermanentError, match="does not support"):
        send_notification_email(["alice@example.com"], "Hi", "body")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://mail.example.com", ("mail.example.com", 25, "plain", "", "")),
        ("smtp://u:p%40ss@mail.example.com:2525?starttls=1", ("mail.example.com", 2525, "starttls", "u", "p@ss")),
        ("smtp://mail.example.com?starttls=0", ("mail.example.com", 25, "plain", "", "")),
        ("smtp+starttls://u%2Bx@relay.example.com", ("relay.example.com", 587, "starttls", "u+x", "")),
        ("SMTPS://relay.example.com:4650", ("relay.example.com", 4650, "tls", "", "")),
    ],
)
def test_parse_smtp_url(url: str, expected: tuple[str, int, str, str, str]) -> None:
    target = parse_smtp_url(url)
    assert (target.host, target.port, target.security, target.username, target.password) == expected


@pytest.mark.parametrize("url", ["http://mail.example.com", "smtp://", "smtp://mail.example.com:99999", "mail:25"])
def test_bad_smtp_url_is_permanent(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("RUNNER_SMTP_URL", url)
    with pytest.raises(PermanentError, match="RUNNER_SMTP_URL"):
        send_notification_email(["alice@example.com"], "Hi", "body")


# ---- header injection through encoded words ----------------------------------------------------

injected_subjects = pytest.mark.parametrize("subject", [value for _, value in INJECTED_SUBJECTS],
                                            ids=[name for name, _ in INJECTED_SUBJECTS])
injected_addresses = pytest.mark.parametrize("address", [value for _, value in INJECTED_ADDRESSES],
                                             ids=[name for name, _ in INJECTED_ADDRESSES])


@injected_subjects
def test_encoded_line_breaks_in_the_subject_are_refused_at_validation(subject: str) -> None:
    assert invalid_fields({**GOOD, "subject": subject}) == {"subject"}


@injected_addresses
def test_encoded_words_in_addresses_are_refused_at_validation(address: str) -> None:
    assert invalid_fields({**GOOD, "to": ["ok@example.com", address]}) == {"to.1"}
    assert invalid_fields({**GOOD, "from_address": address}) == {"from_address"}


@injected_subjects
def test_an_encoded_injection_past_validation_writes_no_eml(subject: str, tmp_path: Path, job: ArtifactJob) -> None:
    # Called directly, as no API caller can: the function refuses by itself, for good (no retry).
    with pytest.raises(PermanentError, match="cannot be sent safely"):
        send_notification_email(["alice@example.com"], subject, "body")
    assert outbox_files(tmp_path) == [] and job.entries == []


@injected_subjects
def test_an_encoded_injection_past_validation_sends_nothing(subject: str, smtp: RecordingHandler) -> None:
    with pytest.raises(PermanentError, match="cannot be sent safely"):
        send_notification_email(["alice@example.com"], subject, "body")
    assert smtp.envelopes == []


@injected_addresses
def test_an_encoded_recipient_past_validation_sends_nothing(address: str, smtp: RecordingHandler) -> None:
    with pytest.raises(PermanentError, match="cannot be sent safely"):
        send_notification_email(["alice@example.com", address], "Hi", "body")
    assert smtp.envelopes == []


HARMLESS_ENCODED = pytest.mark.parametrize(
    ("subject", "decoded"),
    [(q_word("Café ✔"), "Café ✔"), (b_word(f"Invoice Bcc: {VICTIM}"), f"Invoice Bcc: {VICTIM}"),
     (b_word("Line one") + " " + q_word("and two"), "Line oneand two"), ("x" * 998, "x" * 998),
     ("é" * 998, "é" * 998)],
    ids=["q-accents", "b-header-like-text", "two-words", "longest-ascii", "longest-accented"],
)


@HARMLESS_ENCODED
def test_harmless_encoded_words_stay_inside_the_subject(subject: str, decoded: str, smtp: RecordingHandler,
                                                        job: ArtifactJob, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = send_notification_email.__runner_function__  # type: ignore[attr-defined]
    assert spec.validate({**GOOD, "subject": subject})["subject"] == subject
    send_notification_email(["alice@example.com"], subject, "body\n")
    (envelope,) = smtp.envelopes
    assert envelope.rcpt_tos == ["alice@example.com"]
    assert isinstance(envelope.content, bytes)
    message = assert_only_our_headers(envelope.content, decoded, ["alice@example.com"])
    assert text_and_html(message) == ("body\n", None)
    monkeypatch.delenv("RUNNER_SMTP_URL")
    send_notification_email(["alice@example.com"], subject, "body\n")
    assert text_and_html(assert_only_our_headers(job.eml(), decoded, ["alice@example.com"])) == ("body\n", None)


@pytest.mark.parametrize("subject", [value for _, value in INJECTED_SUBJECTS[:4]])
def test_a_message_that_would_be_written_with_other_headers_is_caught(subject: str) -> None:
    # The last line of defence, under the checks of each value: what is written is read back.
    message = EmailMessage()
    message["Subject"] = subject
    message.set_content("body")
    with pytest.raises(UnsafeHeader, match="headers added: bcc"):
        check_serialized(message)
    check_serialized(build_message("a@example.com", ["b@example.com"], "Fine", "body", "<p>body</p>"))


# ---- sender ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allowed", "from_address", "sender"),
    [
        ("", None, "alerts@example.net"),
        ("", "alerts@example.net", "alerts@example.net"),  # the configured sender, named
        ("ops@example.org", "ops@example.org", "ops@example.org"),
        (" ops@example.org , *@example.com ", "anyone@example.com", "anyone@example.com"),
        ("*@Example.COM", "Any.One@EXAMPLE.com", "Any.One@EXAMPLE.com"),  # domains compare in any case
    ],
)
def test_the_sender_is_configured_or_allowed(smtp: RecordingHandler, monkeypatch: pytest.MonkeyPatch,
                                             allowed: str, from_address: str | None, sender: str) -> None:
    monkeypatch.setenv("RUNNER_SMTP_FROM", "alerts@example.net")
    monkeypatch.setenv("RUNNER_SMTP_ALLOWED_FROM", allowed)
    if from_address is not None:
        spec = send_notification_email.__runner_function__  # type: ignore[attr-defined]
        assert spec.validate({**GOOD, "from_address": from_address})["from_address"] == from_address
    send_notification_email(["alice@example.com"], "Hi", "body", from_address=from_address)
    (envelope,) = smtp.envelopes
    assert (envelope.mail_from, smtp.message()["From"]) == (sender, sender)


REFUSED_SENDERS = pytest.mark.parametrize(
    ("allowed", "from_address"),
    [
        ("", "ceo@example.com"),
        ("ops@example.org", "Ops@example.org"),  # local parts compare exactly
        ("ops@example.org", "ops@example.org.evil.example"),
        ("*@example.com", "x@sub.example.com"),  # not subdomains
        ("*@example.com", "x@evilexample.com"),
    ],
)


@REFUSED_SENDERS
def test_a_sender_outside_the_list_is_a_422_and_never_enqueued(
    client: FlaskClient, api_error: Callable[..., dict[str, Any]], assert_nothing_enqueued: Callable[[], None],
    monkeypatch: pytest.MonkeyPatch, allowed: str, from_address: str,
) -> None:
    monkeypatch.setenv("RUNNER_SMTP_ALLOWED_FROM", allowed)
    payload = {**GOOD, "from_address": from_address}
    response = client.post("/functions/send_notification_email/invocations", json=payload)
    body = api_error(response, 422, "invalid_input")
    assert [detail["field"] for detail in body["details"]] == ["from_address"]
    assert "not an allowed sender" in body["details"][0]["message"]
    assert_nothing_enqueued()


@REFUSED_SENDERS
def test_a_sender_outside_the_list_fails_the_job_for_good(smtp: RecordingHandler, monkeypatch: pytest.MonkeyPatch,
                                                          allowed: str, from_address: str) -> None:
    # The worker's environment decides too (the API's may differ): no message, no retry.
    monkeypatch.setenv("RUNNER_SMTP_ALLOWED_FROM", allowed)
    with pytest.raises(PermanentError, match="not an allowed sender"):
        send_notification_email(["alice@example.com"], "Hi", "body", from_address=from_address)
    assert smtp.envelopes == []


@pytest.mark.parametrize("entry", ["*", "*@*", "*@*.example.com", "ops*@example.com", "Ops <ops@example.com>",
                                   "not an address", "=?utf-8?q?ops?=@example.com"])
def test_a_bad_allow_list_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch, entry: str) -> None:
    monkeypatch.setenv("RUNNER_SMTP_ALLOWED_FROM", f"ops@example.org,{entry}")
    with pytest.raises(PermanentError, match="RUNNER_SMTP_ALLOWED_FROM"):
        send_notification_email(["a@example.com"], "Hi", "body", from_address="ops@example.org")
    spec = send_notification_email.__runner_function__  # type: ignore[attr-defined]
    with pytest.raises(InvalidInput) as caught:  # a 422 naming the setting, never a 500
        spec.validate({**GOOD, "from_address": "ops@example.org"})
    assert "RUNNER_SMTP_ALLOWED_FROM" in caught.value.details[0]["message"]
    assert send_notification_email(["a@example.com"], "Hi", "body")["accepted"] == ["a@example.com"]


# ---- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 made with the openssl command (skipped without it)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )
    return cert, key


@pytest.mark.parametrize("scheme", ["smtp+starttls", "smtps"])
@pytest.mark.parametrize("trusted", [True, False])
def test_tls_delivery(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, scheme: str,
                      trusted: bool) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(*certificate)
    handler = RecordingHandler()
    options: dict[str, Any] = {"tls_context": server_context, "require_starttls": True}
    if scheme == "smtps":
        options = {"ssl_context": server_context}
    controller = start_controller(handler, **options)
    try:
        monkeypatch.setenv("RUNNER_SMTP_URL", f"{scheme}://127.0.0.1:{controller.port}")
        if trusted:
            monkeypatch.setenv("RUNNER_SMTP_CA_FILE", str(certificate[0]))
            assert send_notification_email(["alice@example.com"], "Over TLS", "body")["transport"] == "smtp"
            assert handler.message()["Subject"] == "Over TLS"
        else:
            with pytest.raises(PermanentError, match="certificate .* cannot be trusted"):
                send_notification_email(["alice@example.com"], "Over TLS", "body")
            assert handler.envelopes == []
    finally:
        controller.stop()
