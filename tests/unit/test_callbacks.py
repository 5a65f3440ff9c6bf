"""X-Callback-Url: checked at invoke time, delivered (signed, retried) by a job of its own when the job ends."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import fakeredis
import pytest
from flask.testing import FlaskClient
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry
from rq.serializers import JSONSerializer

from runner.config import Settings, SettingsError
from runner.errors import CallbackDeliveryError
from runner.rq_seam.queues import queue_for
from runner.services.callbacks import CALLBACK_QUEUE, DELIVERY_BACKOFF, deliver_callback, resolve_target, signature
from runner.store.sql_store import Store
from tests.receiver import CallbackReceiver

ApiError = Callable[..., dict[str, Any]]
RunJobs = Callable[..., bool]
SECRET = "shared-secret-for-tests"
PUBLIC = "https://8.8.8.8/hooks/runner?token=abc"


def invoke(client: FlaskClient, url: str | None, expression: str = "6*7") -> Any:
    headers = {} if url is None else {"X-Callback-Url": url}
    return client.post("/functions/simple_calculation/invocations", json={"expression": expression}, headers=headers)


@pytest.fixture
def private_ok(make_client: Callable[..., FlaskClient], settings: Settings,
               monkeypatch: pytest.MonkeyPatch) -> FlaskClient:
    """A client whose API, like the worker (which reads the environment), allows 127.0.0.1 receivers."""
    monkeypatch.setenv("RUNNER_CALLBACK_ALLOW_PRIVATE", "1")
    monkeypatch.setenv("RUNNER_CALLBACK_SECRET", SECRET)
    return make_client(settings=replace(settings, callback_allow_private=True, callback_secret=SECRET))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://localhost:8000/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.1.2.3/", "private"),
        ("http://192.168.0.10/", "private"),
        ("http://172.16.5.4/", "private"),
        ("http://0.0.0.0/", "address 0.0.0.0"),
        ("http://224.0.0.1/", "multicast"),
        ("http://100.64.0.1/", "non-public"),
        ("file:///etc/passwd", "only http and https"),
        ("ftp://8.8.8.8/x", "only http and https"),
        ("javascript:alert(1)", "only http and https"),
        ("", "only http and https"),
        ("http:///no-host", "no host"),
        ("http://user:secret@8.8.8.8/", "credentials"),
        ("http://8.8.8.8:99999/", "not a valid URL"),
        ("http://no-such-host.invalid/", "cannot be resolved"),
        ("http://8.8.8.8/" + "a" * 2040, "longer than 2048"),
        ("http://8.8.8.8/with space", "spaces"),
        ("http://8.8.8.8:0/hook", "port 0"),
        ("https://8.8.8.8:000/hook", "port 0"),
        ("http://[2002:7f00:1::]/", "loopback address 127.0.0.1 in 6to4"),
        ("http://[2002:a9fe:a9fe::]/latest/meta-data/", "link-local address 169.254.169.254 in 6to4"),
        ("http://[64:ff9b::7f00:1]/", "loopback address 127.0.0.1 in NAT64"),
        ("http://[64:ff9b:1::a00:1]/", "local-use NAT64"),
        ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", "loopback address 127.0.0.1 in Teredo"),
        ("http://[::7f00:1]/", "loopback address 127.0.0.1 in IPv4-compatible"),
        ("http://[::ffff:0:a00:1]/", "private address 10.0.0.1 in IPv4-translated"),
        ("http://[2a00:1450:4001:1::5efe:7f00:1]/", "loopback address 127.0.0.1 in ISATAP"),
    ],
)
def test_unsafe_callback_urls_are_refused_naming_the_header(
    client: FlaskClient, api_error: ApiError, assert_nothing_enqueued: Callable[[], None], url: str, reason: str
) -> None:
    body = api_error(invoke(client, url), 422, "invalid_input")
    assert "X-Callback-Url" in body["message"] and reason in body["message"]
    assert body["details"][0]["field"] == "X-Callback-Url"
    assert_nothing_enqueued()


def test_invalid_input_is_reported_before_the_callback_is_looked_at(client: FlaskClient, api_error: ApiError) -> None:
    body = api_error(invoke(client, "http://127.0.0.1/", expression=""), 422, "invalid_input")
    assert body["details"][0]["field"] == "expression"


def test_a_public_callback_url_is_stored_with_the_job(client: FlaskClient, store: Store,
                                                      connection: fakeredis.FakeRedis) -> None:
    response = invoke(client, PUBLIC)
    assert response.status_code == 202
    job_id = response.get_json()["id"]
    record = store.get(job_id)
    assert record is not None and record.callback_url == PUBLIC
    assert Job.fetch(job_id, connection=connection, serializer=JSONSerializer).meta["callback_url"] == PUBLIC
    assert "callback_url" not in response.get_json()  # the view never shows it (it may hold a token)


def test_private_receivers_are_allowed_when_configured(private_ok: FlaskClient) -> None:
    assert invoke(private_ok, "http://127.0.0.1:9/hook").status_code == 202
    assert Settings.from_env({"RUNNER_CALLBACK_ALLOW_PRIVATE": "yes"}).callback_allow_private is True


def test_a_finished_job_posts_its_final_view_signed(private_ok: FlaskClient, run_jobs: RunJobs) -> None:
    with CallbackReceiver() as receiver:
        job_id = invoke(private_ok, f"{receiver.url}/hook?token=abc").get_json()["id"]
        run_jobs(["demo_tasks"])
        assert receiver.deliveries == []  # delivery is a job of its own, on its own queue
        run_jobs([CALLBACK_QUEUE])
        [delivery] = receiver.wait_for(1, timeout=5)
    assert delivery.path == "/hook?token=abc"
    assert delivery.headers["Content-Type"] == "application/json"
    assert delivery.headers["X-Runner-Job-Id"] == job_id
    assert delivery.headers["X-Runner-Event"] == "finished"
    expected = "sha256=" + hmac.new(SECRET.encode(), delivery.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(delivery.headers["X-Runner-Signature"], expected)
    view = json.loads(delivery.body)
    assert view == private_ok.get(f"/jobs/{job_id}").get_json()
    assert view["status"] == "finished" and view["result"]["result"] == 42


def test_a_failed_job_posts_too_and_no_secret_means_no_signature(
    private_ok: FlaskClient, run_jobs: RunJobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RUNNER_CALLBACK_SECRET")
    with CallbackReceiver() as receiver:
        job_id = invoke(private_ok, f"{receiver.url}/hook", expression="1/0").get_json()["id"]
        run_jobs(["demo_tasks"])
        run_jobs([CALLBACK_QUEUE])
        [delivery] = receiver.wait_for(1, timeout=5)
    assert delivery.headers["X-Runner-Event"] == "failed"
    assert "X-Runner-Signature" not in delivery.headers
    assert json.loads(delivery.body)["error"]["type"] == "PermanentError"
    assert json.loads(delivery.body)["id"] == job_id


def test_jobs_without_a_callback_enqueue_no_delivery(client: FlaskClient, run_jobs: RunJobs,
                                                     connection: fakeredis.FakeRedis) -> None:
    invoke(client, None)
    run_jobs(["demo_tasks"])
    assert queue_for(CALLBACK_QUEUE, connection).count == 0


def _delivery_job(connection: fakeredis.FakeRedis) -> Job:
    ids = (queue_for(CALLBACK_QUEUE, connection).job_ids
           + ScheduledJobRegistry(CALLBACK_QUEUE, connection=connection).get_job_ids()
           + FailedJobRegistry(CALLBACK_QUEUE, connection=connection).get_job_ids())
    assert len(ids) == 1, ids
    return Job.fetch(ids[0], connection=connection, serializer=JSONSerializer)


@pytest.mark.parametrize(
    ("status", "retried"),
    [(500, True), (503, True), (429, True), (404, False), (400, False), (301, False)],
)
def test_server_errors_and_429_are_retried_other_answers_are_final(
    private_ok: FlaskClient, run_jobs: RunJobs, connection: fakeredis.FakeRedis, status: int, retried: bool
) -> None:
    with CallbackReceiver([status]) as receiver:
        invoke(private_ok, f"{receiver.url}/hook")
        run_jobs(["demo_tasks"])
        run_jobs([CALLBACK_QUEUE])
        receiver.wait_for(1, timeout=5)
    delivery = _delivery_job(connection)
    assert delivery.retry_intervals == list(DELIVERY_BACKOFF)
    if retried:
        assert delivery.get_status() == "scheduled"
        assert delivery.retries_left == len(DELIVERY_BACKOFF) - 1
    else:
        assert delivery.get_status() == "failed"
        assert delivery.retries_left == 0


def test_an_unreachable_receiver_is_a_transient_error(closed_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_CALLBACK_ALLOW_PRIVATE", "1")
    with pytest.raises(CallbackDeliveryError, match="could not be reached"):
        deliver_callback(f"http://127.0.0.1:{closed_port}/hook", "job1", "finished", "{}")


def test_delivery_checks_the_address_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNNER_CALLBACK_ALLOW_PRIVATE", raising=False)
    with CallbackReceiver() as receiver, pytest.raises(CallbackDeliveryError, match="refused at delivery"):
        deliver_callback(f"{receiver.url}/hook", "job1", "finished", "{}")
    assert receiver.deliveries == []


def _resolving(host: str, address: str) -> Callable[..., Any]:
    real = socket.getaddrinfo

    def fake(name: str, *args: Any, **kwargs: Any) -> Any:
        return real(address if name == host else name, *args, **kwargs)

    return fake


def test_a_host_that_rebinds_to_a_private_address_gets_nothing(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _resolving("hooks.example", "8.8.8.8"))
    assert invoke(client, "http://hooks.example/hook").status_code == 202
    monkeypatch.setattr(socket, "getaddrinfo", _resolving("hooks.example", "127.0.0.1"))
    with pytest.raises(CallbackDeliveryError, match="loopback"):
        deliver_callback("http://hooks.example/hook", "job1", "finished", "{}")


# 127.0.0.1 in each IPv6 form that carries an IPv4 address.
LOOPBACK_IN_IPV6 = ["::ffff:127.0.0.1", "::ffff:0:7f00:1", "2002:7f00:1::", "64:ff9b::7f00:1", "::7f00:1",
                    "2001:0:4136:e378:8000:63bf:80ff:fffe", "2a00:1450:4001:1::5efe:7f00:1"]


@pytest.mark.parametrize("address", LOOPBACK_IN_IPV6)
def test_delivery_refuses_a_receiver_behind_an_ipv6_form_of_loopback(monkeypatch: pytest.MonkeyPatch,
                                                                     address: str) -> None:
    # The URL passed at invoke time; by delivery the host resolves (or always did) to this address.
    monkeypatch.delenv("RUNNER_CALLBACK_ALLOW_PRIVATE", raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", _resolving("hooks.example", address))
    with CallbackReceiver() as receiver:
        port = receiver.url.rsplit(":", 1)[1]
        for url in (f"http://hooks.example:{port}/hook", f"http://[{address}]:{port}/hook"):
            with pytest.raises(CallbackDeliveryError, match="refused at delivery: .* in .* address"):
                deliver_callback(url, "job1", "finished", "{}")
        assert receiver.deliveries == []


def test_an_ipv4_mapped_url_would_reach_the_loopback_receiver(monkeypatch: pytest.MonkeyPatch) -> None:
    # Why the forms above matter: allowed, this one does reach a server listening on 127.0.0.1.
    monkeypatch.setenv("RUNNER_CALLBACK_ALLOW_PRIVATE", "1")
    with CallbackReceiver() as receiver:
        port = receiver.url.rsplit(":", 1)[1]
        outcome = deliver_callback(f"http://[::ffff:127.0.0.1]:{port}/hook", "job1", "finished", "{}")
        assert outcome == {"status": 200, "address": "::ffff:127.0.0.1"}
        assert len(receiver.wait_for(1, timeout=5)) == 1


def test_port_0_is_refused_at_delivery_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_CALLBACK_ALLOW_PRIVATE", "1")  # refused whatever the address
    with pytest.raises(CallbackDeliveryError, match="refused at delivery: port 0"):
        deliver_callback("http://127.0.0.1:0/hook", "job1", "finished", "{}")


def test_delivery_connects_to_the_checked_address_and_names_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_CALLBACK_ALLOW_PRIVATE", "1")
    monkeypatch.setattr(socket, "getaddrinfo", _resolving("hooks.example", "127.0.0.1"))
    with CallbackReceiver() as receiver:
        port = receiver.url.rsplit(":", 1)[1]
        outcome = deliver_callback(f"http://hooks.example:{port}/in", "job1", "stopped", '{"id": "job1"}')
        [delivery] = receiver.wait_for(1, timeout=5)
    assert outcome == {"status": 200, "address": "127.0.0.1"}
    assert delivery.headers["Host"] == f"hooks.example:{port}"
    assert delivery.headers["X-Runner-Event"] == "stopped" and delivery.body == b'{"id": "job1"}'


def test_the_signature_is_an_hmac_of_the_exact_bytes() -> None:
    body = b'{"a": 1}'
    assert signature(body, "k") == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert signature(body, "k") != signature(b'{"a":1}', "k")


def test_resolve_target_keeps_path_and_query() -> None:
    target = resolve_target("https://8.8.8.8:8443/a/b?c=d#frag", allow_private=False, within=1)
    assert (target.scheme, target.host, target.port, target.path, target.addresses) == (
        "https", "8.8.8.8", 8443, "/a/b?c=d", ("8.8.8.8",))
    assert resolve_target("http://8.8.8.8", allow_private=False, within=1).path == "/"


@pytest.mark.parametrize(("raw", "allowed"), [("1", True), ("true", True), ("ON", True), ("0", False), ("no", False)])
def test_allow_private_reads_the_usual_switch_words(raw: str, allowed: bool) -> None:
    assert Settings.from_env({"RUNNER_CALLBACK_ALLOW_PRIVATE": raw}).callback_allow_private is allowed


def test_allow_private_refuses_other_words() -> None:
    with pytest.raises(SettingsError, match="RUNNER_CALLBACK_ALLOW_PRIVATE"):
        Settings.from_env({"RUNNER_CALLBACK_ALLOW_PRIVATE": "maybe"})
