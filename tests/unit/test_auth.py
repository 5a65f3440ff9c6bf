"""API keys: every route but /healthz needs `Authorization: Bearer <key>`; the dashboard also takes Basic."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from api.auth import ApiKeyCheck, load_api_keys, open_access_warning
from runner.config import Settings, SettingsError

KEYS = "first-key-123,second-key-456"
ApiError = Callable[..., dict[str, Any]]


@pytest.fixture
def keyed(make_client: Callable[..., FlaskClient], settings: Settings) -> FlaskClient:
    return make_client(settings=replace(settings, api_keys=KEYS))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


PROTECTED = [
    ("GET", "/functions"),
    ("GET", "/functions/simple_calculation"),
    ("POST", "/functions/simple_calculation/invocations"),
    ("GET", "/jobs"),
    ("GET", "/jobs/0123456789abcdef"),
    ("POST", "/jobs/0123456789abcdef/cancel"),
    ("POST", "/jobs/0123456789abcdef/retry"),
    ("POST", "/uploads"),
    ("GET", "/readyz"),
    ("GET", "/no/such/route"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_every_route_but_healthz_needs_a_key(keyed: FlaskClient, api_error: ApiError, method: str, path: str) -> None:
    response = keyed.open(path, method=method)
    api_error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_healthz_stays_open(keyed: FlaskClient) -> None:
    assert keyed.get("/healthz").status_code == 200


@pytest.mark.parametrize("key", KEYS.split(","))
def test_each_configured_key_opens_the_api(keyed: FlaskClient, key: str) -> None:
    response = keyed.get("/functions", headers=bearer(key))
    assert response.status_code == 200
    assert keyed.post("/functions/simple_calculation/invocations", json={"expression": "1+1"},
                      headers=bearer(key)).status_code == 202


def test_the_scheme_is_case_insensitive(keyed: FlaskClient) -> None:
    assert keyed.get("/functions", headers={"Authorization": "bearer first-key-123"}).status_code == 200


@pytest.mark.parametrize(
    "key",
    ["wrong", "first-key-12", "first-key-1234", "FIRST-KEY-123", "first-key-123,second-key-456", "second"],
)
def test_a_wrong_key_is_refused(keyed: FlaskClient, api_error: ApiError, key: str) -> None:
    response = keyed.get("/functions", headers=bearer(key))
    api_error(response, 401, "unauthorized")
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer ", "Token first-key-123", "first-key-123", "Bearer first-key-123 extra",
     "Basic " + base64.b64encode(b"user:first-key-123").decode(), ""],
)
def test_a_malformed_authorization_header_is_refused(keyed: FlaskClient, api_error: ApiError, header: str) -> None:
    response = keyed.get("/functions", headers={"Authorization": header})
    body = api_error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "first-key-123" not in body["message"]


@pytest.mark.parametrize(
    "path", ["/dashboard/", "/dashboard", "/dashboard/0/data/queues.json", "/docs", "/docs/openapi.json"]
)
def test_the_dashboard_prompts_the_browser_for_basic_credentials(
    keyed: FlaskClient, api_error: ApiError, path: str
) -> None:
    refused = keyed.get(path)
    api_error(refused, 401, "unauthorized")
    assert refused.headers["WWW-Authenticate"] == 'Basic realm="runner"'
    api_error(keyed.get(path, headers=basic("ops", "wrong")), 401, "unauthorized")
    api_error(keyed.get(path, headers={"Authorization": "Basic not-base64!"}), 401, "unauthorized")
    api_error(keyed.get(path, headers={"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()}), 401)
    for user in ("ops", "", "anyone at all"):
        assert keyed.get(path, headers=basic(user, "second-key-456")).status_code in (200, 308)
    assert keyed.get(path, headers=bearer("first-key-123")).status_code in (200, 308)


def test_without_keys_nothing_is_asked(client: FlaskClient) -> None:
    assert client.get("/functions").status_code == 200


def test_keys_come_from_a_file_too(tmp_path: Path, make_client: Callable[..., FlaskClient], settings: Settings,
                                   api_error: ApiError) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# rotated 2026-11\nfile-key-one\n\n   file-key-two   \n# old-key\n")
    client = make_client(settings=replace(settings, api_keys="env-key", api_keys_file=str(keys_file)))
    for key in ("file-key-one", "file-key-two", "env-key"):
        assert client.get("/functions", headers=bearer(key)).status_code == 200
    for key in ("old-key", "# old-key", "# rotated 2026-11"):
        api_error(client.get("/functions", headers=bearer(key)), 401, "unauthorized")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot be read"),
        ("", "holds no key"),
        ("# only a comment\n\n", "holds no key"),
        ("good-key\nbad key with spaces\n", "1 API key.s. contain spaces"),
        (b"\xff\xfe not utf-8", "cannot be read"),
    ],
)
def test_an_unusable_keys_file_stops_the_app(tmp_path: Path, content: str | bytes | None, message: str) -> None:
    keys_file = tmp_path / "keys"
    if isinstance(content, bytes):
        keys_file.write_bytes(content)
    elif content is not None:
        keys_file.write_text(content)
    with pytest.raises(SettingsError, match=message) as caught:
        load_api_keys(Settings(api_keys_file=str(keys_file)))
    assert "bad key" not in str(caught.value)


def test_keys_from_the_environment() -> None:
    settings = Settings.from_env({"RUNNER_API_KEYS": " a-key , b-key,,a-key "})
    assert load_api_keys(settings) == ("a-key", "b-key")
    assert load_api_keys(Settings()) == ()


def test_keys_never_reach_the_logs_or_the_settings_repr(
    keyed: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    keyed.get("/functions", headers=bearer("first-key-123"))
    keyed.get("/functions", headers=bearer("first-key-12"))
    keyed.get("/no/such/route", headers=bearer("second-key-456"))
    assert "key-123" not in caplog.text and "key-456" not in caplog.text
    assert "key-123" not in repr(Settings.from_env({"RUNNER_API_KEYS": KEYS}))


def test_every_key_is_compared() -> None:
    check = ApiKeyCheck(["alpha", "beta", "gamma"])
    assert [check.accepts(key) for key in ("alpha", "beta", "gamma")] == [True, True, True]
    assert not any(check.accepts(key) for key in ("", "alph", "alphaa", "ALPHA", "gamma\x00"))


def test_the_app_refuses_to_start_with_a_missing_keys_file(
    tmp_path: Path, make_client: Callable[..., FlaskClient], settings: Settings
) -> None:
    with pytest.raises(SettingsError, match="RUNNER_API_KEYS_FILE"):
        make_client(settings=replace(settings, api_keys_file=str(tmp_path / "missing")))


@pytest.mark.parametrize(
    ("addresses", "keys", "warned"),
    [
        ([("0.0.0.0", 8000)], "", "0.0.0.0:8000"),  # a container's bind, or a server's
        ([("::", 8000)], "", ":::8000"),
        ([("127.0.0.1", 8000), ("10.0.0.5", 8000)], "", "10.0.0.5:8000"),
        ([("runner.example.com", 8000)], "", "runner.example.com:8000"),
        ([("0.0.0.0", 8000)], "a-key", None),
        ([("127.0.0.1", 8000), ("::1", 8000), ("localhost", 8000)], "", None),  # `make dev`: this machine only
        (["/run/runner.sock"], "", None),
    ],
)
def test_an_open_api_reachable_from_elsewhere_is_warned_about(addresses: list[Any], keys: str,
                                                              warned: str | None) -> None:
    warning = open_access_warning(Settings(api_keys=keys), addresses)
    if warned is None:
        assert warning is None
    else:
        assert warning is not None and f"listens on {warned}:" in warning and "RUNNER_API_KEYS" in warning
