"""The Celery app of the benchmarks (broker and results on the benchmark's own Redis)."""

import os
import time

from celery import Celery

from bench.noop_functions import WAIT_SECONDS

redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
app = Celery("bench", broker=redis_url, backend=redis_url)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_default_queue="bench_celery",
    worker_prefetch_multiplier=4,
    broker_connection_retry_on_startup=True,
)


# Celery ships no type hints: its decorator is untyped.
@app.task(name="bench.noop")  # type: ignore[untyped-decorator]
def noop() -> None:
    """Do nothing."""


@app.task(name="bench.wait")  # type: ignore[untyped-decorator]
def wait() -> None:
    """Wait as long as a waiting bench job (bench/noop_functions/waiting.py): run with `--pool threads`."""
    time.sleep(WAIT_SECONDS)
