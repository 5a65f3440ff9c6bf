"""Our RQ queue class, one instance per queue name and connection, and the wake-up token it pushes."""

from __future__ import annotations

from weakref import WeakKeyDictionary

import redis
from redis.client import Pipeline
from rq import Queue
from rq.serializers import JSONSerializer

WAKE_KEY_PREFIX = "runner:wake:"


def wake_key(queue_name: str) -> str:
    """The list an idle worker of `queue_name` waits on: a token is pushed with every job."""
    return f"{WAKE_KEY_PREFIX}{queue_name}"


class RunnerQueue(Queue):
    """An RQ queue that wakes an idle runner worker for every job it pushes."""

    def push_job_id(self, job_id: str, pipeline: Pipeline | None = None, at_front: bool = False) -> None:
        super().push_job_id(job_id, pipeline=pipeline, at_front=at_front)
        connection = pipeline if pipeline is not None else self.connection
        # One token is enough: a worker that finds more jobs behind its own leaves another.
        connection.lpush(wake_key(self.name), "1")
        connection.ltrim(wake_key(self.name), 0, 0)


def queue_for(name: str, connection: redis.Redis) -> Queue:
    """The RQ queue `name`, with the JSON serializer (nothing from the network is unpickled)."""
    # Kept per connection: building an RQ Queue costs more than enqueueing a job's commands.
    queues = _queues.get(connection)
    if queues is None:
        queues = _queues[connection] = {}
    queue = queues.get(name)
    if queue is None:
        queue = queues[name] = RunnerQueue(name, connection=connection, serializer=JSONSerializer)
    return queue


_queues: WeakKeyDictionary[redis.Redis, dict[str, Queue]] = WeakKeyDictionary()
