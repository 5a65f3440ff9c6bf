"""The baseline for the HTTP benchmark: a Flask route that only calls Queue.enqueue."""

import os

from flask import Flask
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer


def create_app() -> Flask:
    """A one-route app on BENCH_REDIS_URL."""
    app = Flask(__name__)
    queue = Queue("bench_bare", connection=Redis.from_url(os.environ["BENCH_REDIS_URL"]), serializer=JSONSerializer)

    @app.post("/enqueue")
    def enqueue() -> tuple[dict[str, str], int]:
        job = queue.enqueue("bench.rq_tasks.noop")
        return {"id": job.id}, 202

    return app
