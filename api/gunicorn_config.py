"""gunicorn settings for the runner's web processes: `gunicorn -c python:api.gunicorn_config "api:create_app()"`.

The repository's gunicorn.conf.py, which gunicorn reads from the working folder by itself, loads
this module; an installed server names it with `-c python:api.gunicorn_config` from any folder.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from api import gunicorn_errors, gunicorn_listen

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
# WEB_CONCURRENCY (set by Procfile platforms) overrides this.
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# gthread whose main loop reads each request whole before a thread serves it: slow or idle
# clients cost a socket, not a thread (api.buffering_worker; RUNNER_WEB_*_TIMEOUT bound them).
worker_class = "api.buffering_worker.BufferingWorker"
# Each `?wait=` and each event stream holds a thread while it lasts: RUNNER_WAIT_MAX_PER_PROCESS (4)
# and RUNNER_SSE_MAX_STREAMS (4) bound them, and the other 8 threads serve everything else.
threads = int(os.environ.get("RUNNER_WEB_THREADS", "16"))
# Longer than the longest `?wait=` (60 s), so a waiting request is not killed as hung.
timeout = 90
graceful_timeout = 30
accesslog = "-"
# The app's own warnings (a 503's cause, say) as dated lines like gunicorn's; INFO stays off the hot path.
logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

# Requests gunicorn rejects itself (oversized request line or headers) answer JSON, not HTML.
gunicorn_errors.install()

# A listening socket per worker, so the kernel spreads keep-alive connections over the workers
# instead of letting one worker take them all (api.gunicorn_listen); RUNNER_WEB_REUSE_PORT=0: off.
reuse_port = gunicorn_listen.reuse_port_wanted()
on_starting = gunicorn_listen.check_binds
when_ready = gunicorn_listen.announce_urls

# One control socket per user by default: several gunicorns on one machine (tests, dev next to
# a local deployment) would fight over it, and nothing here uses it.
control_socket_disable = True


def post_worker_init(worker: Any) -> None:
    """Once the app is loaded: freeze what it loaded for the GC; the first worker reports what keeps it from serving."""
    import gc

    # A full pass of the cyclic GC scans every object (about 30 ms here): requests caught behind one wait that long.
    gc.freeze()
    if worker.age == 1:  # once per server, not once per worker; off the start-up path (a database may take 3 s)
        threading.Thread(target=_report_backends, args=(worker,), name="backend-report", daemon=True).start()


def _report_backends(worker: Any) -> None:
    from api.auth import open_access_warning
    from api.state import runner_state
    from runner.services.backend_checks import startup_problems

    app = getattr(worker, "wsgi", None)
    if app is None or "runner" not in getattr(app, "extensions", {}):
        return
    backends = runner_state(app).backends
    warning = open_access_warning(backends.settings, worker.cfg.address)
    if warning is not None:
        worker.log.warning(warning)
    settings = backends.settings
    if settings.wait_max_per_process + settings.sse_max_streams >= worker.cfg.threads:
        worker.log.warning("RUNNER_WAIT_MAX_PER_PROCESS (%d) + RUNNER_SSE_MAX_STREAMS (%d) leave none of the %d "
                           "threads (RUNNER_WEB_THREADS) for other requests while they are all in use.",
                           settings.wait_max_per_process, settings.sse_max_streams, worker.cfg.threads)
    for problem in startup_problems(backends):
        worker.log.error("%s Until then the API answers 503.", problem)
