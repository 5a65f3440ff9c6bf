"""The engines of the waiting-jobs section (`make bench-waiting`): each runs 2 processes with 16 jobs in
flight in all, on no-op jobs ("noop") and jobs that wait 100 ms ("wait").

- Dramatiq `-p 2 -t 8` (bench/dramatiq_app.py), results on Redis;
- Celery `--pool threads -c 8`, 2 worker processes;
- ours: 2 `python -m runner worker` processes, as the runner engine starts them, with
  RUNNER_WORKER_SLOTS=8, running the bench functions of bench/noop_functions/waiting.py: `async def`
  ones, `threads=True` ones, and a plain sync one (one job at a time per process: the gain's baseline).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.engines import LOG_LEVEL, CeleryEngine, Engine, RunnerEngine, wait_until

# 100 ms jobs per batch: 15 s of work for 16 in flight. The batch's first and last cycle (its workers
# filling their slots, then the one whose last jobs end a cycle after the other's) cost any engine about
# 100 ms; in a batch of 800 (5 s) that was 2 % of the figure, as much as the differences it decides.
WAITING_JOBS = 2400
# Jobs in flight per worker process, for every engine: 2 processes, 16 in flight in all.
THREADS = 8


class DramatiqEngine(Engine):
    """Dramatiq with its thread pools: one `dramatiq -p N -t 8` (N processes), Redis broker and results."""

    name = "dramatiq-threads"
    queue_key = "dramatiq:bench_dramatiq"
    kinds = ("noop", "wait")

    def __init__(self, redis_url: str, workdir: Path) -> None:
        super().__init__(redis_url, workdir)
        os.environ["BENCH_REDIS_URL"] = redis_url  # before the app's import: its broker reads it
        from bench import dramatiq_app

        self.app = dramatiq_app

    def start(self, workers: int) -> None:
        dramatiq_cli = str(Path(sys.executable).parent / "dramatiq")
        self.spawn([dramatiq_cli, "bench.dramatiq_app", "-p", str(workers), "-t", str(THREADS),
                    "-Q", self.app.QUEUE])
        wait_until(lambda: self._consuming() >= workers, 60, "dramatiq worker processes")

    def _consuming(self) -> int:
        """Worker processes that have fetched from Redis: each one's broker beats in the heartbeats set
        (ours does too, when it sends)."""
        beating = "dramatiq:__heartbeats__"
        ours = self.connection.zscore(beating, self.app.broker.broker_id) is not None
        return int(self.connection.zcard(beating)) - ours

    def fill(self, count: int, kind: str = "noop") -> Callable[[], bool]:
        from dramatiq.results import ResultMissing

        actor = {"noop": self.app.noop, "wait": self.app.wait}[kind]
        messages = [actor.send() for _ in range(count)]
        ready = 0

        def done() -> bool:
            nonlocal ready  # results are checked in order, each once it is there
            while ready < count:
                try:
                    messages[ready].get_result(backend=self.app.results)
                except ResultMissing:
                    return False
                ready += 1
            return True

        return done


class CeleryThreadsEngine(CeleryEngine):
    """Celery's thread pool: N worker processes of `--pool threads -c 8`."""

    name = "celery-threads"
    kinds = ("noop", "wait")

    def start(self, workers: int) -> None:
        for index in range(workers):
            self.spawn([sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker", "-P", "threads",
                        "-c", str(THREADS), "-n", f"bench-threads-{index}@%h", "-Q", "bench_celery",
                        "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", LOG_LEVEL])
        wait_until(lambda: len(self.app.control.ping(timeout=0.5)) >= workers, 60, "celery worker processes")


class StyleRunnerEngine(RunnerEngine):
    """Our runner on the bench functions of one style: "async", "threads" (many jobs at once in a work
    process) or "sync" (one at a time, waiting jobs only: the baseline)."""

    def __init__(self, redis_url: str, workdir: Path, style: str) -> None:
        self.style = style
        super().__init__(redis_url, workdir)
        self.name = f"runner-{style}"
        self.kinds = ("wait",) if style == "sync" else ("noop", "wait")

    def env(self) -> dict[str, str]:
        return {**super().env(), "RUNNER_WORKER_SLOTS": str(THREADS)}

    def _payload(self, kind: str) -> tuple[str, dict[str, Any]]:
        return f"{kind}_{self.style}", {}  # noop_async, wait_threads, wait_sync...
