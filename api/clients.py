"""Who sends a request, for per-client bounds (`?wait=`): its API key when keys are set, else its peer address.

The key is kept as a digest, so it is held nowhere in the clear. Behind a proxy every client has
the proxy's address: there, give clients keys of their own, or raise RUNNER_WAIT_MAX_PER_CLIENT.
"""

from __future__ import annotations

import hashlib

from flask import g, request


def remember_key(key: str) -> None:
    """Note the API key the current request was let in with (api.auth calls it)."""
    g.api_client = "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]


def client_identity() -> str:
    """The current request's client: `key:<digest>` when it came with a valid key, else `address:<peer>`."""
    return str(g.get("api_client") or f"address:{request.remote_addr}")
