"""Over real HTTP: API keys on a real gunicorn, Idempotency-Key under 20 concurrent requests, callback URL checks."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from runner.journal.reads import read_history
from runner.store.models import InvocationRecord
from tests.integration.conftest import READY_TIMEOUT, ProcessSet, Stack, http_ready, wait_until
from tests.servers import free_port

ENV_KEY = "env-key-7f3a9c"
FILE_KEY = "file-key-41d2e8"
CONCURRENT_REQUESTS = 20


@dataclass
class KeyedWeb:
    """A second gunicorn on the stack's Redis and database, with API keys configured."""

    url: str
    processes: ProcessSet

    def get(self, path: str, **kwargs: object) -> requests.Response:
        return requests.get(f"{self.url}{path}", timeout=10, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def keyed_web(sqlite_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyedWeb]:
    directory = tmp_path_factory.mktemp("keyed-web")
    keys_file = directory / "api-keys"
    keys_file.write_text(f"# one key per line\n{FILE_KEY}\n")
    env = {**sqlite_stack.env, "RUNNER_API_KEYS": ENV_KEY, "RUNNER_API_KEYS_FILE": str(keys_file)}
    processes = ProcessSet(directory / "logs")
    port = free_port()
    processes.start_web(env, port, name="keyed-web")
    web = KeyedWeb(f"http://127.0.0.1:{port}", processes)
    try:
        wait_until(lambda: http_ready(f"{web.url}/healthz"), READY_TIMEOUT, "the keyed web process")
        yield web
    finally:
        processes.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_unauthorized(response: requests.Response, challenge: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["error"] == "unauthorized" and set(response.json()) == {"error", "message", "details"}
    assert response.headers["WWW-Authenticate"].startswith(challenge)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/functions"), ("GET", "/readyz"), ("GET", "/jobs"), ("POST", "/functions/simple_calculation/invocations"),
     ("POST", "/jobs/abc/cancel"), ("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/no/such/route")],
)
def test_without_a_key_every_route_but_healthz_is_401(keyed_web: KeyedWeb, method: str, path: str) -> None:
    assert_unauthorized(requests.request(method, f"{keyed_web.url}{path}", timeout=10), "Bearer")
    assert_unauthorized(requests.request(method, f"{keyed_web.url}{path}", headers=bearer("nope"), timeout=10),
                        "Bearer")
    assert_unauthorized(requests.request(method, f"{keyed_web.url}{path}", headers={"Authorization": "Bearer"},
                                         timeout=10), "Bearer")
    assert keyed_web.get("/healthz").status_code == 200


@pytest.mark.parametrize("key", [ENV_KEY, FILE_KEY])
def test_a_key_from_the_environment_or_the_file_opens_the_api(keyed_web: KeyedWeb, key: str) -> None:
    assert keyed_web.get("/readyz", headers=bearer(key)).status_code == 200
    response = requests.post(f"{keyed_web.url}/functions/simple_calculation/invocations?wait=10",
                             json={"expression": "6*7"}, headers=bearer(key), timeout=15)
    assert response.status_code == 200, response.text
    assert response.json()["result"]["result"] == 42


def test_the_dashboard_asks_the_browser_for_a_key(keyed_web: KeyedWeb) -> None:
    assert_unauthorized(keyed_web.get("/dashboard/"), 'Basic realm="runner"')
    assert_unauthorized(keyed_web.get("/dashboard/", auth=("ops", "wrong")), "Basic")
    page = keyed_web.get("/dashboard/", auth=("any-user", FILE_KEY))
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert keyed_web.get("/dashboard/", headers=bearer(ENV_KEY)).status_code == 200


def test_a_valid_key_does_not_let_another_site_change_anything(keyed_web: KeyedWeb) -> None:
    evil = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for path in ("/functions/simple_calculation/invocations", "/queues/failed/requeue", "/uploads"):
        response = requests.post(f"{keyed_web.url}{path}", data=b"", headers={**form, **evil, **bearer(ENV_KEY)},
                                 timeout=10)
        assert response.status_code == 403 and response.json()["error"] == "forbidden", response.text
    # A browser that logged in to the dashboard (Basic) sends the key with any page's form post.
    basic = ("ops", FILE_KEY)
    refused = requests.post(f"{keyed_web.url}/dashboard/requeue/demo_tasks", auth=basic, headers=evil, timeout=10)
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    own = requests.post(f"{keyed_web.url}/dashboard/requeue/demo_tasks", auth=basic, timeout=10,
                        headers={"Origin": keyed_web.url, "Sec-Fetch-Site": "same-origin"})
    assert own.status_code == 200 and own.json()["status"] == "OK"


def test_keys_never_reach_the_log(keyed_web: KeyedWeb) -> None:
    keyed_web.get("/functions", headers=bearer(ENV_KEY))
    keyed_web.get("/functions", headers=bearer(FILE_KEY + "x"))
    log = Path(keyed_web.processes.processes[0].log_path).read_text(errors="replace")
    assert "GET /functions" in log  # the access log is there; the keys are not
    assert ENV_KEY not in log and FILE_KEY not in log


def rows_with_key(stack: Stack, key: str) -> list[str]:
    read_history(stack.redis, stack.store)  # the rows still in the journal too, as the API reads history
    with stack.store.session() as session:
        query = sa.select(InvocationRecord.id).where(InvocationRecord.idempotency_key == key)
        return list(session.scalars(query))


def test_twenty_concurrent_identical_requests_make_one_job(sqlite_stack: Stack) -> None:
    key = f"concurrent-{uuid.uuid4().hex}"
    body = {"expression": f"{uuid.uuid4().int % 1000} + 1"}
    keys_before = sqlite_stack.job_keys()
    start = threading.Barrier(CONCURRENT_REQUESTS)

    def post(_: int) -> requests.Response:
        start.wait()  # all threads fire together
        return requests.post(f"{sqlite_stack.url}/functions/simple_calculation/invocations", json=body,
                             headers={"Idempotency-Key": key}, timeout=30)

    with ThreadPoolExecutor(CONCURRENT_REQUESTS) as pool:
        responses = list(pool.map(post, range(CONCURRENT_REQUESTS)))
    assert [r.status_code for r in responses] == [202] * CONCURRENT_REQUESTS, [r.text for r in responses]
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    replayed = [r.headers.get("Idempotent-Replayed") for r in responses]
    assert replayed.count("true") == CONCURRENT_REQUESTS - 1 and replayed.count(None) == 1
    [job_id] = ids
    assert rows_with_key(sqlite_stack, key) == [job_id]
    assert sqlite_stack.wait_until_terminal(job_id)["status"] == "finished"
    assert sqlite_stack.job_keys() - keys_before == {f"rq:job:{job_id}".encode()}


def test_a_reused_key_with_another_body_is_409(sqlite_stack: Stack) -> None:
    key = f"reused-{uuid.uuid4().hex}"
    first = sqlite_stack.post("/functions/simple_calculation/invocations", json={"expression": "1"},
                              headers={"Idempotency-Key": key})
    assert first.status_code == 202
    again = sqlite_stack.post("/functions/simple_calculation/invocations", json={"expression": "2"},
                              headers={"Idempotency-Key": key})
    assert again.status_code == 409 and again.json()["error"] == "idempotency_conflict"
    bad = sqlite_stack.post("/functions/simple_calculation/invocations", json={"expression": "1"},
                            headers={"Idempotency-Key": "x" * 256})
    assert bad.status_code == 400 and bad.json()["error"] == "malformed_request"
    assert rows_with_key(sqlite_stack, key) == [first.json()["id"]]


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/hook", "http://[::1]/hook", "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.7/", "http://192.168.1.1/", "file:///etc/passwd", "ftp://8.8.8.8/",
            "http://[2002:7f00:1::]/", "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
            "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", "http://[::7f00:1]/", "http://8.8.8.8:0/"],
)
def test_private_and_non_http_callback_urls_are_422(sqlite_stack: Stack, url: str) -> None:
    before = sqlite_stack.row_count()
    response = sqlite_stack.post("/functions/simple_calculation/invocations", json={"expression": "1"},
                                 headers={"X-Callback-Url": url})
    assert response.status_code == 422, response.text
    assert response.json()["details"][0]["field"] == "X-Callback-Url"
    assert sqlite_stack.row_count() == before
