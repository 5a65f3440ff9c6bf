"""API keys: once RUNNER_API_KEYS or RUNNER_API_KEYS_FILE is set, every route but /healthz needs one.

Clients send `Authorization: Bearer <key>`. Under /dashboard a browser may also send HTTP Basic
credentials whose password is a key (any user name), so the browser's own login prompt works.
Keys are compared in constant time against every configured key (hashed first, so lengths leak
nothing either) and are never logged. Keys are read once, when the app is built: restart the web
processes after changing them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from flask import Flask, Response, request

from api.clients import remember_key
from api.dashboard import DASHBOARD_PREFIX
from api.docs import DOCS_PREFIX
from api.errors import error_response
from runner.config import Settings, SettingsError

OPEN_PATHS = frozenset({"/healthz"})
# Pages a browser opens (it cannot send a Bearer token): HTTP Basic with a key as password works there.
BROWSER_PREFIXES = (DASHBOARD_PREFIX, DOCS_PREFIX)
REALM = "runner"


def _usable(key: str) -> bool:
    return key.isascii() and key.isprintable() and " " not in key


def load_api_keys(settings: Settings) -> tuple[str, ...]:
    """The configured keys (RUNNER_API_KEYS, comma-separated, plus RUNNER_API_KEYS_FILE, one a line)."""
    keys = [key.strip() for key in settings.api_keys.split(",") if key.strip()]
    if settings.api_keys_file:
        try:
            text = Path(settings.api_keys_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"RUNNER_API_KEYS_FILE cannot be read: {type(exc).__name__}") from None
        lines = (line.strip() for line in text.splitlines())
        from_file = [line for line in lines if line and not line.startswith("#")]
        if not from_file:
            raise SettingsError("RUNNER_API_KEYS_FILE holds no key (one key per line, # starts a comment)")
        keys += from_file
    # Never echo a key back, not even in this message: count them instead.
    unusable = sum(1 for key in keys if not _usable(key))
    if unusable:
        raise SettingsError(f"{unusable} API key(s) contain spaces, control or non-ASCII characters")
    return tuple(dict.fromkeys(keys))


class ApiKeyCheck:
    """The `before_request` hook: lets a request through, or answers 401 in the JSON error shape."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._digests = tuple(hashlib.sha256(key.encode()).digest() for key in keys)

    def accepts(self, candidate: str) -> bool:
        """True when `candidate` is one of the keys (every key is compared, in constant time)."""
        digest = hashlib.sha256(candidate.encode()).digest()
        found = False
        for known in self._digests:
            found |= hmac.compare_digest(digest, known)
        return found

    def __call__(self) -> Response | None:
        path = request.path
        if path in OPEN_PATHS:
            return None
        dashboard = any(path == prefix or path.startswith(f"{prefix}/") for prefix in BROWSER_PREFIXES)
        header = request.headers.get("Authorization")
        if header is None:
            return _challenge(dashboard, "This API needs an API key: send 'Authorization: Bearer <key>'.")
        scheme, _, credentials = header.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() == "bearer":
            candidate = credentials
        elif scheme.lower() == "basic" and dashboard:
            candidate = _basic_password(credentials)
        else:
            return _challenge(dashboard, "The Authorization header must be 'Bearer <key>'.", malformed=True)
        if not candidate or " " in candidate:
            return _challenge(dashboard, "The Authorization header carries no usable key.", malformed=True)
        if not self.accepts(candidate):
            return _challenge(dashboard, "The API key is not valid.", invalid=True)
        remember_key(candidate)  # the caller, for per-client bounds
        return None


def _basic_password(credentials: str) -> str:
    try:
        decoded = base64.b64decode(credentials.encode("ascii"), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        return ""
    _, separator, password = decoded.partition(":")
    return password if separator else ""


def _challenge(dashboard: bool, message: str, *, malformed: bool = False, invalid: bool = False) -> Response:
    response = error_response(401, "unauthorized", message)
    if dashboard:
        # Basic makes a browser ask for credentials: the password is an API key.
        response.headers["WWW-Authenticate"] = f'Basic realm="{REALM}"'
    elif malformed:
        response.headers["WWW-Authenticate"] = f'Bearer realm="{REALM}", error="invalid_request"'
    elif invalid:
        response.headers["WWW-Authenticate"] = f'Bearer realm="{REALM}", error="invalid_token"'
    else:
        response.headers["WWW-Authenticate"] = f'Bearer realm="{REALM}"'
    return response


def install_auth(app: Flask, settings: Settings) -> None:
    """Require an API key on every route but /healthz when keys are configured (no-op otherwise)."""
    keys = load_api_keys(settings)
    if keys:
        app.before_request(ApiKeyCheck(keys))


def open_access_warning(settings: Settings, addresses: Sequence[object]) -> str | None:
    """A warning when no key is set and a bind address reaches past this machine; None otherwise."""
    if settings.api_keys.strip() or settings.api_keys_file:
        return None
    beyond = [address for address in addresses if isinstance(address, tuple) and not _is_loopback(str(address[0]))]
    if not beyond:
        return None
    where = ", ".join(f"{host}:{port}" for host, port, *_ in beyond)
    return (f"No API keys are set (RUNNER_API_KEYS, RUNNER_API_KEYS_FILE) and this server listens on {where}: "
            "anyone who reaches it may invoke functions and read every job.")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything
