"""gunicorn settings for `gunicorn "api:create_app()"` (read automatically from this folder)."""

import os
import sys

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
# WEB_CONCURRENCY (set by Procfile platforms) overrides this; threads let `?wait=` requests
# wait without holding a whole process.
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("RUNNER_WEB_THREADS", "8"))
# Longer than the longest `?wait=` (60 s), so a waiting request is not killed as hung.
timeout = 90
graceful_timeout = 30
accesslog = "-"

# Requests gunicorn rejects itself (oversized request line or headers) answer JSON, not HTML.
# gunicorn reads this file before it puts the app's folder on sys.path, so put it there.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import api.gunicorn_errors  # noqa: E402
import api.gunicorn_listen  # noqa: E402

api.gunicorn_errors.install()

# A listening socket per worker, so the kernel spreads keep-alive connections over the workers
# instead of letting one worker take them all (api.gunicorn_listen); RUNNER_WEB_REUSE_PORT=0: off.
reuse_port = api.gunicorn_listen.reuse_port_wanted()
on_starting = api.gunicorn_listen.check_binds

# One control socket per user by default: several gunicorns on one machine (tests, dev next to
# a local deployment) would fight over it, and nothing here uses it.
control_socket_disable = True


def post_worker_init(_worker: object) -> None:
    """Once the app is loaded: keep what was imported and built so far out of the cyclic GC's full
    passes. They scan every object (about 30 ms here): requests caught behind one wait that long."""
    import gc

    gc.freeze()
