"""Slots for long requests in one web process (a `?wait=`, an event stream): each holds a thread while it lasts.

A process has few threads; requests that hold one for seconds or minutes must leave the others to
everyone else. `Slots` counts them against a bound for the process and, optionally, one for each
client, and says when it is full, which /readyz reports.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Slots:
    """At most `limit` holders at once in this process, and at most `per_client` of them for one client."""

    def __init__(self, limit: int, per_client: int | None = None) -> None:
        self.limit = limit
        self.per_client = per_client
        self._lock = threading.Lock()
        self._in_use = 0
        self._by_client: dict[str, int] = {}

    @property
    def in_use(self) -> int:
        """How many slots are held now."""
        return self._in_use

    @property
    def full(self) -> bool:
        """True when the slots are all taken (a bound of 0 turns them off: never full, never taken)."""
        return 0 < self.limit <= self._in_use

    def refusal(self, client: str = "") -> str | None:
        """Which bound a new holder for `client` would pass ("client" first, then "process"); None when it fits."""
        if self.per_client is not None and self._by_client.get(client, 0) >= self.per_client:
            return "client"
        if self._in_use >= self.limit:
            return "process"
        return None

    def take(self, client: str = "") -> str | None:
        """Take a slot for `client`: None when taken, else the bound that refused it (see `refusal`)."""
        with self._lock:
            refused = self.refusal(client)
            if refused is None:
                self._in_use += 1
                self._by_client[client] = self._by_client.get(client, 0) + 1
            return refused

    def give_back(self, client: str = "") -> None:
        """Free a slot `client` took."""
        with self._lock:
            self._in_use -= 1
            left = self._by_client[client] - 1
            if left:
                self._by_client[client] = left
            else:
                del self._by_client[client]

    @contextmanager
    def holding(self, client: str = "") -> Iterator[str | None]:
        """A slot for the block: yields None when it got one, else the bound that refused it."""
        refused = self.take(client)
        try:
            yield refused
        finally:
            if refused is None:
                self.give_back(client)
