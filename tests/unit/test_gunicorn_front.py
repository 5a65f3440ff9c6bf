"""What the web front (api.buffering_worker, api.front_connection) assumes of the pinned gunicorn.

The front is gunicorn's gthread worker with its main loop reading requests whole. It overrides
three of ThreadWorker's methods and leans on a few of gthread's and the parser's names. A gunicorn
upgrade that moves any of them fails here first, naming the assumption, before a slow-client test
fails for a reason nobody can see.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import gunicorn
import gunicorn.http.message
from gunicorn.http.message import Request
from gunicorn.http.parser import RequestParser
from gunicorn.http.unreader import Unreader
from gunicorn.workers.gthread import TConn, ThreadWorker

from api.buffering_worker import BufferingWorker

ROOT = Path(__file__).resolve().parents[2]


def test_the_installed_gunicorn_is_the_pinned_one() -> None:
    pinned = re.search(r"^gunicorn==(\S+)$", (ROOT / "requirements.txt").read_text(), re.MULTILINE)
    assert pinned is not None and gunicorn.__version__ == pinned.group(1)


def test_the_front_overrides_only_these_gthread_methods() -> None:
    overridden = {name for name, value in vars(BufferingWorker).items()
                  if callable(value) and not name.startswith("_") and hasattr(ThreadWorker, name)}
    assert overridden == {"accept", "finish_request", "murder_keepalived"}
    for name in overridden | {"enqueue_req"}:
        assert callable(getattr(ThreadWorker, name)), f"gthread no longer has {name}"
    assert list(inspect.signature(ThreadWorker.accept).parameters) == ["self", "listener"]
    assert list(inspect.signature(ThreadWorker.finish_request).parameters) == ["self", "conn", "fs"]


def test_gthread_connections_and_parsers_are_as_the_front_builds_them() -> None:
    # FrontConn is a TConn built with these arguments; data_ready=True skips gthread's first-byte wait.
    assert list(inspect.signature(TConn.__init__).parameters) == ["self", "cfg", "sock", "client", "server"]
    assert "data_ready" in inspect.getsource(TConn)
    # The thread's parser reads from any object with recv(); what it read ahead is taken back.
    assert list(inspect.signature(RequestParser.__init__).parameters)[:4] == ["self", "cfg", "source", "source_addr"]
    assert callable(Unreader.take_buffered)
    # The front answers "100 Continue" itself, and tells the request's parser not to say it again.
    assert "self._policy_expect_continue" in inspect.getsource(gunicorn.http.message)
    assert RequestParser.mesg_class is Request
