"""Building and running the worker: `python -m runner worker [--min N --max M] [QUEUE ...]`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import suppress

from rq.serializers import JSONSerializer

from runner import tracing
from runner.authoring.registry import Registry
from runner.config import Settings
from runner.errors import BackendUnavailable
from runner.redis_connection import connect_redis
from runner.rq_seam import fast_paths
from runner.rq_seam.queues import queue_for
from runner.services.backends import Backends, open_backends
from runner.services.fleet import default_queues
from runner.services.lifecycle import load_listeners
from runner.services.scaling import scaling_rules
from runner.store.retention import Retention
from runner.worker.environment import WorkerEnvironment, install_environment
from runner.worker.in_process import MONITOR_TICK_SECONDS, DeadlineSlot
from runner.worker.pool import PoolSize
from runner.worker.process_supervisor import ProcessSupervisor
from runner.worker.process_ties import tie_children_to_this_process
from runner.worker.redis_outage import RedisOutage
from runner.worker.runner_worker import RunnerWorker


def build_worker(queue_names: Sequence[str], backends: Backends, registry: Registry,
                 name: str | None = None) -> RunnerWorker:
    """A worker on these queues whose jobs see this registry and store."""
    install_environment(
        WorkerEnvironment(registry=registry, store=backends.store, uploads=backends.uploads,
                          artifacts=backends.artifacts, connection=backends.connection)
    )
    queues = [queue_for(name, backends.connection) for name in queue_names]
    settings = backends.settings
    worker = RunnerWorker(queues, name=name, connection=backends.connection, serializer=JSONSerializer,
                          job_monitoring_interval=MONITOR_TICK_SECONDS,
                          worker_ttl=max(1, int(settings.worker_dead_after_seconds)))
    worker.store = backends.store
    worker.backends = backends
    if settings.history_days:
        worker.duties.retention = Retention(settings.history_days, backends.artifacts)
    worker.outage = RedisOutage(settings.redis_url)
    worker.supervise(dead_after=settings.worker_dead_after_seconds, grace_seconds=settings.worker_grace_seconds,
                     slots=settings.worker_slots)
    return worker


def run_worker(queue_names: Sequence[str], settings: Settings, *, burst: bool = False,
               pool: tuple[int, int] | None = None) -> int:
    """Start a worker (scheduler on, so retries with intervals run), or a pool of (min, max) of them, and work
    until stopped; its exit code."""
    fast_paths.install()  # worker processes only: see runner.rq_seam.fast_paths
    registry = Registry.discover(settings.functions_package)  # imported once, before the work process forks
    load_listeners()  # likewise the lifecycle listeners (runner.services.callbacks brings http.client and ssl)
    backends = open_backends(settings)
    backends.store.migrate()
    queues = list(queue_names) or default_queues(registry)

    def work(name: str, slot: DeadlineSlot) -> int:
        tracing.start_tracing("runner-worker")  # here, in the work process: an exporter's thread is not forked
        # The worker blocks on Redis for new jobs; no socket timeout, so an idle worker is not an error.
        worker = build_worker(queues, open_backends(settings, socket_timeout=None), registry, name=name)
        if worker.store is not None:  # connected now, not at the first job (a database away waits)
            with suppress(BackendUnavailable):
                worker.store.ping()
        worker.watch.deadline_slot = slot
        worker.first_claim_first = pool is not None  # a pool forks a work process for a job that waits
        worker.pid = os.getppid()  # registered as the worker command's pid: the one to signal
        tie_children_to_this_process()
        worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level)
        # RQ's loop also ends on an unexpected error: then a fresh work process takes over.
        return 0 if burst or worker.stop_requested else 1

    size = None
    if pool is not None:
        # Its own connection, with no socket timeout: it blocks while the pool is at zero.
        size = PoolSize(connect_redis(settings.redis_url, socket_timeout=None), queues,
                        scaling_rules(registry, settings.worker_slots),
                        minimum=pool[0], maximum=pool[1], scale_down_after=settings.scale_down_after_seconds,
                        outage=RedisOutage(settings.redis_url))
    # This process records the attempts of work processes that died (runner.worker.recovery); each
    # span is sent as it ends, so no exporter thread is running when it forks.
    tracing.start_tracing("runner-worker", batched=False)
    supervisor = ProcessSupervisor(work, queue_names=queues, connection=backends.connection,
                                   grace_seconds=settings.worker_grace_seconds, outage=RedisOutage(settings.redis_url),
                                   pool=size)
    return supervisor.run()
