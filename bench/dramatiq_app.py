"""The Dramatiq actors of the benchmarks (broker and results on the benchmark's own Redis).

Run as `dramatiq bench.dramatiq_app -p 2 -t 8 -Q bench_dramatiq`: 2 processes of 8 threads each.
Results are stored, as Celery's and ours are, so that a batch is done when every result is there.
"""

import os
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from bench.noop_functions import WAIT_SECONDS

QUEUE = "bench_dramatiq"

redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
# Dramatiq's constructors are untyped.
broker = RedisBroker(url=redis_url)  # type: ignore[no-untyped-call]
results = RedisBackend(url=redis_url)
broker.add_middleware(Results(backend=results))  # type: ignore[no-untyped-call]
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, store_results=True, max_retries=0)
def noop() -> None:
    """Do nothing."""


@dramatiq.actor(queue_name=QUEUE, store_results=True, max_retries=0)
def wait() -> None:
    """Wait as long as a waiting bench job (bench/noop_functions/waiting.py), in a worker thread."""
    time.sleep(WAIT_SECONDS)
