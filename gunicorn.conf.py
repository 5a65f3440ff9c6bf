"""gunicorn settings for `gunicorn "api:create_app()"` (read automatically from this folder)."""

import os

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
