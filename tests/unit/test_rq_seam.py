"""Contract tests of runner.rq_seam: each assumption it makes about the pinned RQ, pinned here, so
that an RQ upgrade that breaks one fails in this file and nowhere else first."""

from __future__ import annotations

import ast
import inspect
import logging
import re
import signal
import threading
from datetime import timedelta
from pathlib import Path

import fakeredis
import pytest
import redis
import rq
import rq.executions
import rq.registry
from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.registry import DeferredJobRegistry
from rq.results import Result
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer
from rq.utils import utcformat
from rq.worker import BaseWorker

import runner.rq_seam.worker as seam_worker
from runner.rq_seam import keys, macros
from runner.rq_seam.bookkeeping import queue_requeue
from runner.rq_seam.dependencies import dependency_ids
from runner.rq_seam.job_reads import fetch_with_latest_result, job_status
from runner.rq_seam.macros import queue_forget, queue_start_writes, queue_success_writes
from runner.rq_seam.scheduler_guard import RunnerScheduler, run_scheduler
from runner.rq_seam.scripts import KEY_COUNTS, execute_as_script, script_pipeline
from runner.rq_seam.worker_reads import read_live_workers
from runner.worker.runner_worker import RunnerWorker

ROOT = Path(__file__).resolve().parents[2]
PINNED_RQ = "2.12.0"


def test_the_seam_is_written_for_the_pinned_rq() -> None:
    assert rq.__version__ == PINNED_RQ, "RQ changed: run this file, then move PINNED_RQ"


def overridden(cls: type) -> set[str]:
    """The methods of RQ's worker classes that `cls` (and its runner bases) define anew."""
    rq_methods = {name for klass in (BaseWorker, SimpleWorker) for name, value in vars(klass).items()
                  if callable(value) or isinstance(value, property)}
    ours = {name for klass in cls.__mro__ if klass.__module__.startswith("runner.")
            for name, value in vars(klass).items() if inspect.isfunction(value) or isinstance(value, property)}
    return rq_methods & ours


def listed_overrides() -> set[str]:
    """The method names the seam's docstring lists, in its `- name, name: why` lines."""
    listed: set[str] = set()
    for line in (seam_worker.__doc__ or "").splitlines():
        if match := re.match(r"- ([a-z_, ]+):", line):
            listed |= {name.strip() for name in match.group(1).split(",")}
    return listed


def test_every_override_of_rqs_worker_is_listed_with_its_reason() -> None:
    assert overridden(RunnerWorker) == listed_overrides()


def test_the_private_names_the_seam_reads_exist() -> None:
    connection = fakeredis.FakeRedis()
    worker = SimpleWorker([Queue("q", connection=connection)], connection=connection)
    for name in ("_stop_requested", "_stopped_job_id", "_ordered_queues", "_shutdown_requested_date"):
        assert hasattr(worker, name), name
    scheduler = RQScheduler(["q"], connection=connection)
    for name in ("_process", "_queue_names"):
        assert hasattr(scheduler, name), name
    assert inspect.signature(Job.restore).parameters.keys() >= {"raw_data"}
    assert hasattr(Job("j", connection=connection), "_status")  # set by runner.rq_seam.macros, as RQ's start does


def test_key_formats_are_rqs() -> None:
    connection = fakeredis.FakeRedis()
    queue = Queue("q", connection=connection, serializer=JSONSerializer)
    job = queue.enqueue("runner.worker.execution.run_invocation", "f", {}, meta={"function": "f"})
    assert connection.exists(keys.job_key(job.id)) and connection.exists(keys.queue_key("q"))
    assert keys.queue_key("q").encode() in connection.smembers(keys.QUEUES_KEY)
    worker = SimpleWorker([queue], connection=connection, serializer=JSONSerializer)
    worker.register_birth()
    assert connection.exists(keys.worker_key(worker.name))
    assert keys.worker_key(worker.name).encode() in connection.smembers(keys.WORKERS_KEY)
    assert keys.worker_key(worker.name).encode() in connection.smembers(keys.workers_by_queue_key("q"))
    assert connection.hget(keys.worker_key(worker.name), keys.WORKER_QUEUES_FIELD) == b"q"
    with connection.pipeline() as pipeline:
        execution = Execution.create(job, 60, pipeline=pipeline, worker_name=worker.name)
        pipeline.execute()
    assert execution.key == keys.execution_key(job.id, execution.id)
    assert connection.exists(keys.executions_key(job.id))
    assert connection.hget(keys.execution_key(job.id, execution.id), keys.EXECUTION_WORKER_FIELD).decode() \
        == worker.name
    assert keys.registry_key("started", "q") == queue.started_job_registry.key
    assert set(keys.REGISTRY_KEY_TEMPLATES) == {"started", "scheduled", "deferred", "finished", "failed", "canceled"}
    fields = connection.hgetall(keys.job_key(job.id))
    for name in (keys.STATUS_FIELD, keys.META_FIELD, keys.ORIGIN_FIELD, keys.ENQUEUED_AT_FIELD):
        assert name.encode() in fields, name


def test_a_start_written_as_one_command_writes_what_rqs_own_calls_write(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (rq.executions, rq.registry, macros):  # the registries' scores, from one clock
        monkeypatch.setattr(module, "current_timestamp", lambda: 1_800_000_000)
    connection = fakeredis.FakeRedis()
    queue = Queue("q", connection=connection, serializer=JSONSerializer)
    theirs, ours = (queue.enqueue("x.y", job_id=name) for name in ("theirs", "ours"))
    with connection.pipeline() as pipeline:  # RQ's start, and our two fields
        execution = Execution.create(theirs, 90, pipeline=pipeline, worker_name="w")
        pipeline.hset(theirs.key, keys.FENCE_FIELD, 3)
        pipeline.hset(execution.key, keys.DEAD_AFTER_FIELD, 15.0)
        theirs.prepare_for_execution("w", pipeline=pipeline)
        pipeline.persist(theirs.key)
        pipeline.execute()
    ours_execution = Execution("e", ours.id, connection=connection, worker_name="w")
    ours_execution.created_at = ours_execution.last_heartbeat = execution.created_at
    pipeline = script_pipeline(connection)
    queue_start_writes(pipeline, ours, ours_execution, fence=3, heartbeat_ttl=90, dead_after=15.0,
                       started=theirs.started_at)  # type: ignore[arg-type]
    execute_as_script(connection, pipeline)

    def written(job: Job, execution: Execution) -> dict[str, object]:
        registry = keys.registry_key("started", "q")
        return {
            "job": {k: v for k, v in connection.hgetall(job.key).items() if k not in (b"created_at", b"enqueued_at")},
            "job ttl": connection.ttl(job.key),
            "execution": {k: v.replace(execution.id.encode(), b"<id>") for k, v in
                          connection.hgetall(execution.key).items()},
            "execution ttl": connection.ttl(execution.key),
            "executions": [(m.replace(execution.id.encode(), b"<id>"), s) for m, s in
                           connection.zrange(keys.executions_key(job.id), 0, -1, withscores=True)],
            "executions ttl": connection.ttl(keys.executions_key(job.id)),
            "started": connection.zscore(registry, execution.composite_key),
            "in memory": (job.get_status(refresh=False), job.worker_name, job.started_at, job.last_heartbeat),
        }

    assert written(ours, ours_execution) == written(theirs, execution)


def test_a_success_and_an_executions_removal_as_one_command_each_write_what_rqs_own_calls_write(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (rq.executions, rq.registry, macros):
        monkeypatch.setattr(module, "current_timestamp", lambda: 1_800_000_000)
    connection = fakeredis.FakeRedis()
    queue = Queue("q", connection=connection, serializer=JSONSerializer)
    ended = {}
    for name in ("theirs", "ours"):
        job = queue.enqueue("x.y", job_id=name)
        with connection.pipeline() as pipeline:
            execution = Execution.create(job, 90, pipeline=pipeline, worker_name=name)
            job.prepare_for_execution(name, pipeline=pipeline)
            pipeline.execute()
        job.ended_at = job.started_at + timedelta(seconds=1.25)  # type: ignore[operator]
        job.last_heartbeat = job.ended_at + timedelta(microseconds=1)
        worker = SimpleWorker([queue], connection=connection, name=name)
        with connection.pipeline() as pipeline:
            if name == "theirs":  # RQ's calls, and the two fields its job.save would write anew
                worker.increment_successful_job_count(pipeline=pipeline)
                worker.increment_total_working_time(job.ended_at - job.started_at, pipeline)  # type: ignore[operator]
                job.set_status(JobStatus.FINISHED, pipeline=pipeline)
                pipeline.hset(job.key, mapping={"ended_at": utcformat(job.ended_at),
                                                "last_heartbeat": utcformat(job.last_heartbeat)})
                job.finished_job_registry.add(job, 60, pipeline)
                pipeline.expire(job.key, 60)
                execution.delete(job=job, pipeline=pipeline)
                pipeline.execute()
        if name == "ours":
            pipeline = script_pipeline(connection)
            queue_success_writes(pipeline, job, worker.key, result_ttl=60)
            queue_forget(pipeline, job, execution)
            execute_as_script(connection, pipeline)
        ended[name] = {
            "worker": {k: v for k, v in connection.hgetall(worker.key).items()
                       if k in (b"successful_job_count", b"total_working_time")},
            "job": {k: v.replace(name.encode(), b"<name>") for k, v in connection.hgetall(job.key).items()
                    if k not in (b"created_at", b"enqueued_at", b"started_at", b"ended_at", b"last_heartbeat")},
            "times": (connection.hget(job.key, "ended_at"), connection.hget(job.key, "last_heartbeat")) ==
                     (utcformat(job.ended_at).encode(), utcformat(job.last_heartbeat).encode()),
            "job ttl": connection.ttl(job.key),
            "finished": connection.zscore(keys.registry_key("finished", "q"), job.id),
            "execution": (connection.exists(execution.key),
                          connection.zscore(keys.registry_key("started", "q"), execution.composite_key),
                          connection.zrange(keys.executions_key(job.id), 0, -1)),
            "in memory": job.get_status(refresh=False),
        }
    assert ended["ours"] == ended["theirs"]
    assert ended["ours"]["worker"] == {b"successful_job_count": b"1", b"total_working_time": b"1.25"}


def test_a_latest_result_read_with_the_job_answers_return_value_without_a_round_trip() -> None:
    connection = fakeredis.FakeRedis()
    job = Queue("q", connection=connection, serializer=JSONSerializer).enqueue("x.y", 1)
    with connection.pipeline() as pipeline:
        Result.create(job, Result.Type.SUCCESSFUL, ttl=60, return_value={"answer": 42}, pipeline=pipeline)
        job.set_status(JobStatus.FINISHED, pipeline=pipeline)
        pipeline.execute()
    read = fetch_with_latest_result(job.id, connection)
    connection.flushall()  # return_value() must not need Redis any more
    assert read.return_value() == {"answer": 42}
    assert job_status(read) == "finished"


def test_a_worker_hash_reads_as_rqs_worker_reads_it() -> None:
    connection = fakeredis.FakeRedis()
    worker = SimpleWorker([Queue("a", connection=connection), Queue("b", connection=connection)],
                          connection=connection, name="w")
    worker.register_birth()
    worker.set_state("busy")
    worker.set_current_job_id("job-1")
    worker.heartbeat()
    connection.hset(keys.worker_key("w"), mapping={"successful_job_count": 3, "failed_job_count": 2,
                                                  "total_working_time": 1.5})
    (record,) = read_live_workers(connection)
    rqs = SimpleWorker.find_by_key(keys.worker_key("w"), connection=connection)
    assert rqs is not None
    assert (record.name, record.state, record.queues, record.current_job) == (
        rqs.name, rqs.get_state(), rqs.queue_names(), rqs.get_current_job_id())
    assert (record.successful_jobs, record.failed_jobs, record.total_working_seconds) == (
        rqs.successful_job_count, rqs.failed_job_count, rqs.total_working_time)
    assert (record.hostname, record.pid, record.started_at, record.last_heartbeat) == (
        rqs.hostname, rqs.pid, rqs.birth_date, rqs.last_heartbeat)
    assert (record.state, record.successful_jobs, record.pid) == ("busy", 3, worker.pid)

def test_every_command_rqs_pipelines_send_for_us_has_known_keys() -> None:
    # The commands RQ queues in the pipelines the seam hands it (job saves, registries, results,
    # executions, worker counters), found by running them on a recording pipeline.
    connection = fakeredis.FakeRedis()
    queue = Queue("q", connection=connection, serializer=JSONSerializer)
    job = queue.enqueue("x.y", 1, result_ttl=60)
    worker = SimpleWorker([queue], connection=connection, serializer=JSONSerializer)
    pipeline = connection.pipeline()
    pipeline.multi()
    execution = Execution.create(job, 60, pipeline=pipeline, worker_name=worker.name)
    job.prepare_for_execution(worker.name, pipeline=pipeline)
    worker.set_state("busy", pipeline=pipeline)
    worker.increment_successful_job_count(pipeline=pipeline)
    worker.increment_failed_job_count(pipeline=pipeline)
    job.started_at = job.ended_at = job.last_heartbeat = job.enqueued_at
    Result.create(job, Result.Type.SUCCESSFUL, ttl=60, return_value=1, pipeline=pipeline)
    Result.create_failure(job, 60, exc_string="x", pipeline=pipeline)
    job.finished_job_registry.add(job, 60, pipeline)
    job.failed_job_registry.add(job, ttl=60, exc_string="x", pipeline=pipeline)
    worker.execution = execution
    worker.cleanup_execution(job, pipeline=pipeline)
    queue.enqueue_job(job, pipeline=pipeline)
    queue.schedule_job(job, job.enqueued_at, pipeline=pipeline)  # type: ignore[arg-type]
    job.cancel(pipeline=pipeline)
    names = {str(command[0]).upper() for command, _ in pipeline.command_stack}
    pipeline.reset()
    assert names <= set(KEY_COUNTS), names - set(KEY_COUNTS)


LUA_CALL = re.compile(r"redis\.call\('([A-Z]+)',\s*([^,)]+)")
# Arguments that are keys, but not spelled KEYS[...] in the script: built from KEYS there.
KEYS_BUILT_IN_SCRIPT = {"unpack(args)"}


def lua_sources() -> list[tuple[str, str]]:
    """Every Lua script in runner/: (where, source)."""
    found = []
    for path in (ROOT / "runner").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "redis.call" in node.value:
                found.append((f"{path.relative_to(ROOT)}:{node.lineno}", node.value))
    return found


@pytest.mark.parametrize(("where", "source"), lua_sources(), ids=lambda value: str(value)[:40])
def test_every_lua_script_touches_only_keys_declared_in_keys(where: str, source: str) -> None:
    for command, first in LUA_CALL.findall(source):
        argument = first.strip()
        if command in ("TIME", "PING"):
            continue
        assert argument.startswith("KEYS[") or argument in KEYS_BUILT_IN_SCRIPT, (where, command, argument)
    assert "ARGV[1] .." not in source, where  # no key built from an argument


def test_the_seam_alone_uses_rqs_private_names() -> None:
    private = re.compile(r"\.(_stop_requested|_stopped_job_id|_ordered_queues|_shutdown_requested_date|_process|"
                         r"_queue_names|_cached_result|_job_stack|_handle_success|_handle_failure|_enqueue_job|"
                         r"_persist_job|_status|_result)\b")
    offenders = [f"{path.relative_to(ROOT)}:{number}" for path in (ROOT / "runner").rglob("*.py")
                 if "rq_seam" not in path.parts
                 for number, line in enumerate(path.read_text().splitlines(), 1) if private.search(line)]
    offenders += [f"{path.relative_to(ROOT)}:{number}" for path in (ROOT / "api").rglob("*.py")
                  for number, line in enumerate(path.read_text().splitlines(), 1) if private.search(line)]
    assert offenders == []


def test_rqs_key_strings_are_spelled_in_the_seam_alone() -> None:
    spelled = re.compile(r"[\"']rq:(job|queue|worker|workers|execution|executions|wip|finished|failed|scheduled)")
    offenders = [f"{path.relative_to(ROOT)}:{number}" for folder in ("runner", "api")
                 for path in (ROOT / folder).rglob("*.py") if "rq_seam" not in path.parts
                 for number, line in enumerate(path.read_text().splitlines(), 1) if spelled.search(line)]
    assert offenders == []


def test_what_runner_scheduler_repeats_of_rqs_scheduler_and_worker_is_rqs() -> None:
    # RunnerScheduler.start is RQ's start with another process body; SeamWorker._start_scheduler is
    # RQ's with another scheduler class; both handlers take RQ's arguments.
    start = inspect.getsource(RQScheduler.start)
    assert "self._connection = None" in start and "ForkProcess(target=run, args=(self,), name='Scheduler')" in start
    assert "self.scheduler = RQScheduler(" in inspect.getsource(BaseWorker._start_scheduler)
    assert list(inspect.signature(BaseWorker._start_scheduler).parameters) == [
        "self", "burst", "logging_level", "date_format", "log_format"]
    assert list(inspect.signature(BaseWorker._pubsub_exception_handler).parameters) == [
        "self", "exc", "pubsub", "pubsub_thread"]
    assert "exception_handler=self._pubsub_exception_handler" in inspect.getsource(BaseWorker.subscribe)


def test_a_scheduler_process_that_loses_redis_ends_without_a_traceback(
    closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = RunnerScheduler(["q"], connection=redis.Redis(port=closed_port, socket_connect_timeout=1))
    caplog.set_level(logging.DEBUG, logger="rq.scheduler")
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        run_scheduler(scheduler)  # what its process runs: returns instead of raising
    finally:  # the scheduler installs its own stop handlers
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info] == []
    assert any("Redis is unavailable" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)


def test_the_worker_runs_the_quiet_scheduler_and_its_pubsub_thread_retries_quietly(
    closed_port: int, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    connection = fakeredis.FakeRedis()
    worker = RunnerWorker([Queue("q", connection=connection)], connection=connection)
    worker._start_scheduler(burst=True)  # burst: enqueues what is due here, starts no process
    assert type(worker.scheduler) is RunnerScheduler
    slept: list[float] = []
    real_sleep = seam_worker.time.sleep

    def recorded(seconds: float) -> None:
        # `time.sleep` is the time module's, for every thread: threads other tests left running (a loop
        # with a sleep in it) keep sleeping, or they spin, and their appends ran pytest out of memory.
        if threading.current_thread() is threading.main_thread():
            slept.append(seconds)
        else:
            real_sleep(seconds)

    monkeypatch.setattr(seam_worker.time, "sleep", recorded)
    caplog.set_level(logging.DEBUG)
    worker._pubsub_exception_handler(redis.exceptions.ConnectionError("gone"), None, None)  # type: ignore[arg-type]
    assert slept == [seam_worker.PUBSUB_RETRY_SECONDS]
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    with pytest.raises(ValueError):  # anything else ends the thread, as RQ's handler does
        try:  # the handler is called from redis-py's `except` block, and re-raises what it holds
            raise ValueError("bug")
        except ValueError as exc:
            worker._pubsub_exception_handler(exc, None, None)  # type: ignore[arg-type]


def test_what_the_seam_assumes_of_rqs_dependencies() -> None:
    # runner.rq_seam.dependencies saves a deferred job as RQ does and settles it itself: pin what RQ does.
    connection = fakeredis.FakeRedis()
    queue = Queue("q", connection=connection, serializer=JSONSerializer)
    parent = queue.enqueue("x.y")
    child = queue.enqueue("x.y", depends_on=parent.id)
    assert child.get_status() == JobStatus.DEFERRED and child.id in DeferredJobRegistry("q", connection=connection)
    restored = Job(child.id, connection=connection, serializer=JSONSerializer)
    restored.restore(connection.hgetall(keys.job_key(child.id)))
    assert dependency_ids(restored) == [parent.id]  # read from the hash, no round trip
    assert connection.smembers(Job.dependents_key_for(parent.id)) == {child.id.encode()}
    # RQ's maintenance never drops a deferred job however long it waits.
    DeferredJobRegistry("q", connection=connection).cleanup(float("inf"))
    assert child.id in DeferredJobRegistry("q", connection=connection)
    # A parent that failed releases nothing: RQ leaves its dependents deferred for ever (the runner cancels them).
    parent.set_status(JobStatus.FAILED)
    queue.enqueue_dependents(parent)
    assert child.get_status() == JobStatus.DEFERRED
    # RQ's enqueue_job WATCHes a job's dependencies, which a pipeline in MULTI refuses: queue_requeue skips it.
    pipeline = connection.pipeline()
    pipeline.multi()
    with pytest.raises(redis.exceptions.RedisError):
        queue.enqueue_job(restored, pipeline=pipeline)
    pipeline.reset()
    with connection.pipeline() as pipeline:
        pipeline.multi()
        queue_requeue(pipeline, restored, queue)
        pipeline.execute()
    assert child.get_status() == JobStatus.QUEUED and child.id in queue.get_job_ids()
