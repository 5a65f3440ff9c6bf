"""How much work waits for each queue, and how many workers it wants: the one reading behind the
worker pool (runner.worker.pool), `GET /scaling` and the scaling gauges of `/metrics`.

Per queue, read in at most three round trips whatever the queues hold (no command walks a list or a
registry; the workers, when counted, in two more: runner.rq_seam.worker_reads):
- `queued`: LLEN of the queue;
- `running`: live members of the started registry (ZCOUNT from now on: a member's score is the
  moment its heartbeat expires, so a dead worker's job stops counting by itself);
- `scheduled_due`: members of the scheduled registry due within SCHEDULED_HORIZON_SECONDS (ZCOUNT);
- `oldest_age_seconds`: how long the job at the head of the queue has waited (LINDEX 0, enqueued_at);
- `workers`: live RQ workers serving the queue, and `free_slots`: their slots not in use;
- `desired_workers`: the jobs queued + running + scheduled_due, capped by the sum of the `concurrency`
  limits of the queue's functions when every one of them has one, turned into workers by the queue's
  `QueueRule`: one per job (a plain sync job takes its worker whole), or one per RUNNER_WORKER_SLOTS
  jobs when every function of the queue runs in slots (`async def`, or `threads=True`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import redis

from runner.authoring.registry import Registry
from runner.redis_connection import REDIS_ERRORS, redis_unavailable
from runner.rq_seam.keys import QUEUE_KEY_PREFIX, QUEUES_KEY, queue_key, registry_key
from runner.rq_seam.worker_reads import read_live_workers
from runner.services.backends import Backends
from runner.services.fleet import default_queues
from runner.services.metrics import QueueWorkers, enqueued_at, workers_by_queue
from runner.store.models import utcnow

# A scheduled job due this soon counts as load: a worker (and its RQ scheduler) should be there for it.
SCHEDULED_HORIZON_SECONDS = 60.0


@dataclass(frozen=True)
class QueueLoad:
    """The scaling figures of one queue."""

    queue: str
    queued: int
    running: int
    scheduled_due: int
    oldest_age_seconds: float
    workers: int
    free_slots: int
    desired_workers: int

    def to_dict(self) -> dict[str, Any]:
        """The JSON body of a queue's figures."""
        return asdict(self)


@dataclass(frozen=True)
class QueueRule:
    """How a queue's jobs turn into workers: at most `cap` of them at once (None: no limit), `jobs_per_worker`
    on one worker."""

    cap: int | None = None
    jobs_per_worker: int = 1


# A queue the registry does not know (RQ's, or `callbacks`): one job per worker, no cap.
PER_JOB = QueueRule()


def scaling_rules(registry: Registry, slots: int) -> dict[str, QueueRule]:
    """Per queue of the registry: the sum of its functions' `concurrency` (None when one has no limit), and
    `slots` jobs per worker when every one of its functions runs in slots, else one."""
    rules: dict[str, QueueRule] = {}
    for queue in {spec.queue for spec in registry}:
        specs = [spec for spec in registry if spec.queue == queue]
        limits = [spec.concurrency for spec in specs]
        rules[queue] = QueueRule(
            cap=None if None in limits else sum(limit for limit in limits if limit is not None),
            jobs_per_worker=max(1, slots) if all(spec.runs_in_slots for spec in specs) else 1,
        )
    return rules


def workers_for(jobs: int, rule: QueueRule) -> int:
    """Workers that run `jobs` jobs of a queue at once under `rule`."""
    return -(-jobs // rule.jobs_per_worker)


def desired_workers(queued: int, running: int, scheduled_due: int, rule: QueueRule) -> int:
    """Workers a queue wants for its jobs waiting, running or due soon (at most `rule.cap` of them at once)."""
    wanted = queued + running + scheduled_due
    return workers_for(wanted if rule.cap is None else min(wanted, rule.cap), rule)


def pool_wanted(loads: Iterable[QueueLoad], rules: Mapping[str, QueueRule], current: int) -> int:
    """Work processes a pool of `current` wants on its queues (before its min and max): what the loads want,
    less the workers that jobs running beyond what `current` processes hold need on other machines."""
    loads = list(loads)
    desired = sum(load.desired_workers for load in loads)
    # A process's own slot says whether it runs a job, but jobs of a few milliseconds come and go between
    # two looks: so count the running jobs as workers, and those beyond `current` are elsewhere.
    running = sum(workers_for(load.running, rules.get(load.queue, PER_JOB)) for load in loads)
    return desired - max(0, running - current)


def scaling_queues(connection: redis.Redis, queue_names: Iterable[str]) -> list[str]:
    """These queues and every queue RQ knows, sorted (what `GET /scaling` and `/metrics` report)."""
    known = {(raw.decode() if isinstance(raw, bytes) else raw).removeprefix(QUEUE_KEY_PREFIX)
             for raw in connection.smembers(QUEUES_KEY)}
    return sorted(set(queue_names) | known)


def read_load(connection: redis.Redis, queue_names: Sequence[str], rules: Mapping[str, QueueRule], *,
              count_workers: bool = True, now: float | None = None) -> list[QueueLoad]:
    """The scaling figures of each queue in `queue_names`, in that order (`workers`, `free_slots`: 0 unless counted)."""
    now = time.time() if now is None else now
    pipe = connection.pipeline(transaction=False)
    for name in queue_names:
        pipe.llen(queue_key(name))
        pipe.lindex(queue_key(name), 0)
        pipe.zcount(registry_key("started", name), now, "+inf")
        pipe.zcount(registry_key("scheduled", name), "-inf", now + SCHEDULED_HORIZON_SECONDS)
    replies = pipe.execute()
    rows = [replies[index * 4:(index + 1) * 4] for index in range(len(queue_names))]
    heads = [row[1].decode() for row in rows if row[1] is not None]
    stamps = enqueued_at(connection, heads) if heads else {}
    served = workers_by_queue(read_live_workers(connection)) if count_workers else {}
    moment = utcnow()
    loads = []
    for name, (queued, head, running, scheduled) in zip(queue_names, rows, strict=True):
        since = stamps.get(head.decode()) if head is not None else None
        serving = served.get(name, QueueWorkers())
        loads.append(QueueLoad(
            queue=name,
            queued=int(queued),
            running=int(running),
            scheduled_due=int(scheduled),
            oldest_age_seconds=round(max(0.0, (moment - since).total_seconds()), 3) if since else 0.0,
            workers=serving.workers,
            free_slots=serving.free_slots,
            desired_workers=desired_workers(int(queued), int(running), int(scheduled), rules.get(name, PER_JOB)),
        ))
    return loads


def next_scheduled_at(connection: redis.Redis, queue_names: Sequence[str]) -> float | None:
    """When the earliest scheduled job of these queues is due (epoch seconds), or None when none is."""
    pipe = connection.pipeline(transaction=False)
    for name in queue_names:
        pipe.zrange(registry_key("scheduled", name), 0, 0, withscores=True)
    scores = [float(reply[0][1]) for reply in pipe.execute() if reply]
    return min(scores) if scores else None


def scaling_figures(backends: Backends, registry: Registry) -> list[QueueLoad]:
    """The figures of every queue the functions use and every queue RQ knows (`GET /scaling`)."""
    try:
        names = scaling_queues(backends.connection, default_queues(registry))
        return read_load(backends.connection, names, scaling_rules(registry, backends.settings.worker_slots))
    except REDIS_ERRORS as exc:
        raise redis_unavailable() from exc
