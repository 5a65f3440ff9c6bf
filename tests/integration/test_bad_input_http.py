"""Bad input over real HTTP: the right status, the JSON error shape, and nothing enqueued or stored."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.integration.conftest import Stack

MIB = 1024 * 1024


@dataclass(frozen=True)
class Snapshot:
    """What would change if a request had been accepted."""

    queued: int
    rows: int
    job_keys: frozenset[bytes] = field(default_factory=frozenset)


def snapshot(stack: Stack) -> Snapshot:
    """Queue lengths (rq:queue:demo_tasks and any other queue), store rows and job hashes right now."""
    queues = {b"rq:queue:demo_tasks", *stack.redis.scan_iter(match="rq:queue:*", _type="list")}
    queued = sum(int(stack.redis.llen(name)) for name in queues)
    return Snapshot(queued=queued, rows=stack.row_count(), job_keys=frozenset(stack.job_keys()))


@pytest.fixture
def unchanged(sqlite_stack: Stack) -> Iterator[None]:
    """Assert, after the test, that nothing was enqueued and no row was written."""
    before = snapshot(sqlite_stack)
    yield
    assert snapshot(sqlite_stack) == before


def assert_error(response: requests.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is `status` with the JSON error shape; return its body."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].split(";")[0].strip() == "application/json", response.headers
    body = response.json()
    assert set(body) == {"error", "message", "details"}, body
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["message"], str) and body["message"]
    if code is not None:
        assert body["error"] == code
    return body


def invocations(name: str) -> str:
    """The invocation path of a function."""
    return f"/functions/{name}/invocations"


def post_raw(stack: Stack, path: str, data: bytes, content_type: str) -> requests.Response:
    """POST raw bytes with a content type."""
    return stack.post(path, data=data, headers={"Content-Type": content_type})


@pytest.mark.usefixtures("unchanged")
def test_unknown_function_is_404(sqlite_stack: Stack) -> None:
    body = assert_error(sqlite_stack.invoke("no_such_function", {"x": 1}), 404, "function_not_found")
    assert "no_such_function" in body["message"]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    "raw",
    [b'{"expression": ', b"{'expression': '1+1'}", b'{"expression": NaN}', b"\xff\xfe not utf-8"],
    ids=["truncated", "single-quotes", "nan", "not-utf8"],
)
def test_malformed_json_is_400(sqlite_stack: Stack, raw: bytes) -> None:
    response = post_raw(sqlite_stack, invocations("simple_calculation"), raw, "application/json")
    assert_error(response, 400, "malformed_request")


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("raw", [b"[1, 2]", b'"2*(3+4)"', b"14", b"null", b"true"])
def test_json_that_is_not_an_object_is_400(sqlite_stack: Stack, raw: bytes) -> None:
    response = post_raw(sqlite_stack, invocations("simple_calculation"), raw, "application/json")
    body = assert_error(response, 400, "malformed_request")
    assert "object" in body["message"]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    ("function", "payload", "bad_fields"),
    [
        ("simple_calculation", {}, {"expression"}),
        ("simple_calculation", {"expression": 5}, {"expression"}),
        ("simple_calculation", {"expression": ["1+1"]}, {"expression"}),
        ("simple_calculation", {"expression": "1+1", "extra": 1}, {"extra"}),
        ("simple_calculation", {"expression": 5, "extra": 1}, {"expression", "extra"}),
        ("unreliable_task", {"fail_times": -1}, {"fail_times"}),
        ("unreliable_task", {"fail_times": "two"}, {"fail_times"}),
    ],
    ids=["missing", "wrong-type", "list", "extra-field", "two-bad-fields", "negative", "not-a-number"],
)
def test_input_failing_the_schema_is_422_naming_each_field(
    sqlite_stack: Stack, function: str, payload: dict[str, Any], bad_fields: set[str]
) -> None:
    body = assert_error(sqlite_stack.invoke(function, payload), 422, "invalid_input")
    assert isinstance(body["details"], list)
    assert {detail["field"] for detail in body["details"]} == bad_fields
    for detail in body["details"]:
        assert detail["message"]
    for name in bad_fields:
        assert name in body["message"]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
def test_a_body_that_is_not_json_is_415(sqlite_stack: Stack, content_type: str) -> None:
    response = post_raw(sqlite_stack, invocations("simple_calculation"), b'{"expression": "1+1"}', content_type)
    assert_error(response, 415, "unsupported_media_type")


def oversized_body() -> bytes:
    """A valid JSON invocation body just over the default 1 MiB limit."""
    big = b'{"expression": "' + b"1+" * (MIB // 2) + b'1"}'
    assert len(big) > MIB
    return big


@pytest.mark.usefixtures("unchanged")
def test_a_body_over_the_limit_is_413(sqlite_stack: Stack) -> None:
    # Its own connection, so what the server does with it afterwards cannot affect other tests.
    response = requests.post(
        f"{sqlite_stack.url}{invocations('simple_calculation')}",
        data=oversized_body(),
        headers={"Content-Type": "application/json", "Connection": "close"},
        timeout=15,
    )
    assert_error(response, 413, "payload_too_large")


@pytest.mark.usefixtures("unchanged")
def test_a_keep_alive_connection_survives_a_413(sqlite_stack: Stack) -> None:
    """After a 413 the server either says `Connection: close` or serves the next request on that connection."""
    with requests.Session() as session:
        response = session.post(
            f"{sqlite_stack.url}{invocations('simple_calculation')}",
            data=oversized_body(),
            headers={"Content-Type": "application/json"},
            timeout=15,
        )
        assert_error(response, 413, "payload_too_large")
        if response.headers.get("Connection", "").lower() == "close":
            return
        try:
            follow_up = session.get(f"{sqlite_stack.url}/healthz", timeout=15)
        except requests.ConnectionError as exc:
            pytest.fail(
                f"the 413 said 'Connection: {response.headers.get('Connection')}', "
                f"but the next request on that connection failed: {exc}"
            )
        assert follow_up.status_code == 200


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("job_id", ["0" * 32, "not-a-job", "a" * 65])
def test_an_unknown_job_is_404(sqlite_stack: Stack, job_id: str) -> None:
    assert_error(sqlite_stack.get(f"/jobs/{job_id}"), 404)


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("path", ["/nope", "/functions/simple_calculation/nope", "/jobs/x/y/z"])
def test_an_unknown_route_is_404_json(sqlite_stack: Stack, path: str) -> None:
    assert_error(sqlite_stack.get(path), 404, "not_found")


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", invocations("simple_calculation")), ("DELETE", "/functions"), ("PUT", "/jobs")],
)
def test_a_wrong_method_is_405_json(sqlite_stack: Stack, method: str, path: str) -> None:
    response = sqlite_stack.http.request(method, f"{sqlite_stack.url}{path}", timeout=10)
    assert_error(response, 405, "method_not_allowed")
    assert response.headers.get("Allow")


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    ("wait", "status"), [("soon", 400), ("-1", 400), ("nan", 400)], ids=["word", "negative", "nan"]
)
def test_a_bad_wait_parameter_is_400(sqlite_stack: Stack, wait: str, status: int) -> None:
    response = sqlite_stack.invoke("simple_calculation", {"expression": "1+1"}, wait=wait)
    assert_error(response, status, "malformed_request")


def raw_request(stack: Stack, request_head: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send a hand-made request head over a socket; return status, headers and body."""
    address = urlsplit(stack.url)
    assert address.hostname is not None and address.port is not None
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(request_head)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /" + b"a" * 8200 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\nConnection: close\r\n\r\n",
    ],
    ids=["request-line", "header"],
)
def test_oversized_request_heads_get_a_json_error(sqlite_stack: Stack, request_head: bytes) -> None:
    status, headers, _body = raw_request(sqlite_stack, request_head)
    assert 400 <= status < 500
    assert headers.get("content-type", "").split(";")[0] == "application/json", (status, headers)


# Chunked bodies and bodies the schema cannot serialize (issue 19, item 12), through real gunicorn.
def exchange(stack: Stack, head: bytes, body_parts: list[bytes]) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Send a request head and body over a raw socket; the status, headers and JSON body of the answer."""
    address = urlsplit(stack.url)
    assert address.hostname is not None and address.port is not None
    with socket.create_connection((address.hostname, address.port), timeout=15) as sock:
        try:
            sock.sendall(head)
            for part in body_parts:
                sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered before reading everything: the answer is what matters
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head_bytes, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
    assert headers.get("content-type", "").split(";")[0] == "application/json", (status_line, headers, body[:300])
    answer = json.loads(body)
    assert set(answer) == {"error", "message", "details"} or "id" in answer, answer
    return int(status_line.split()[1]), headers, answer


def chunked_head(path: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


@pytest.mark.usefixtures("unchanged")
def test_a_chunked_body_over_the_limit_is_413(sqlite_stack: Stack) -> None:
    # It was cut at 1 MiB and the first MiB accepted: a JSON string cut short made this one a 400, others a 202.
    body = oversized_body()
    parts = [chunk(body[start:start + 65536]) for start in range(0, len(body), 65536)] + [b"0\r\n\r\n"]
    status, _, answer = exchange(sqlite_stack, chunked_head(invocations("simple_calculation")), parts)
    assert (status, answer["error"]) == (413, "payload_too_large")
    assert answer["details"] == {"limit": MIB}


@pytest.mark.usefixtures("unchanged")
def test_a_chunked_upload_over_its_limit_is_413(sqlite_stack: Stack) -> None:
    limit = 100 * MIB  # RUNNER_MAX_UPLOAD_BYTES' default
    head = (b"POST /uploads HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    start = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n\r\n'
    block = chunk(b"\0" * MIB)
    status, _, answer = exchange(sqlite_stack, head, [chunk(start), *[block] * (limit // MIB + 2), b"0\r\n\r\n"])
    assert (status, answer["error"]) == (413, "payload_too_large")
    assert not any(
        path.name != ".lock" and not path.name.startswith(".incoming-")
        for path in (sqlite_stack.directory / "data" / "uploads").glob("*"))


def test_a_chunked_body_within_the_limit_is_accepted(sqlite_stack: Stack) -> None:
    body = json.dumps({"expression": "6*7"}).encode()
    status, _, answer = exchange(sqlite_stack, chunked_head(invocations("simple_calculation")),
                                 [chunk(body[:5]), chunk(body[5:]), b"0\r\n\r\n"])
    assert status == 202, answer
    assert sqlite_stack.wait_until_terminal(answer["id"])["result"]["result"] == 42


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("framing", [
    b"zz\r\n{}\r\n0\r\n\r\n",  # a chunk size that is not hexadecimal
    b"2\r\n{}XX0\r\n\r\n",  # chunk data not followed by CRLF
    b"2;\x01=\r\n{}\r\n0\r\n\r\n",  # a chunk extension with a control character
    b"10\r\n{}",  # the client stops in the middle of a chunk
], ids=["bad-size", "no-terminator", "bad-extension", "cut-short"])
def test_malformed_chunk_framing_is_400(sqlite_stack: Stack, framing: bytes) -> None:
    address = urlsplit(sqlite_stack.url)
    assert address.hostname is not None and address.port is not None
    with socket.create_connection((address.hostname, address.port), timeout=15) as sock:
        sock.sendall(chunked_head(invocations("simple_calculation")) + framing)
        sock.shutdown(socket.SHUT_WR)  # what a client that stops sending does
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"400", answer[:500]
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["error"] == "malformed_request" and body["message"]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("depth", [65, 256, 900])
def test_records_nested_deeper_than_data_processing_takes_are_422(sqlite_stack: Stack, depth: int) -> None:
    # 256 levels failed pydantic's serializer: a 500.
    records = '{"records": [{"a": ' + "[" * depth + "]" * depth + "}]}"
    response = post_raw(sqlite_stack, invocations("data_processing"), records.encode(), "application/json")
    body = assert_error(response, 422, "invalid_input")
    assert body["details"][0]["field"] == "records"
