"""16 text_generation jobs against a slow OpenAI-compatible server, run by one worker, finish in about
the time of one: the function is `async def`, so the worker streams 16 answers at once on its loop.

Real parts: gunicorn, Redis, one `python -m runner worker` process (RUNNER_WORKER_SLOTS=16), and a
loopback HTTP server that takes SLOW_CHUNK_DELAY s per chunk of every answer (tests.llm_server).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.integration.conftest import Stack
from tests.llm_server import FakeLLMServer

JOBS = 16
PAYLOAD = {"prompt": "Say something slowly", "max_tokens": 16, "temperature": 0}


def test_sixteen_generations_against_a_slow_server_take_about_the_time_of_one(
        stack_factory: Callable[..., Stack], slow_llm_server: FakeLLMServer) -> None:
    stack = stack_factory(extra_env={**slow_llm_server.environment(), "RUNNER_WORKER_SLOTS": str(JOBS)}, workers=1)

    began = time.monotonic()
    alone = stack.invoke("text_generation", PAYLOAD).json()["id"]
    assert stack.wait_until_terminal(alone, timeout=30)["status"] == "finished"
    one = time.monotonic() - began

    began = time.monotonic()
    ids = [stack.invoke("text_generation", PAYLOAD).json()["id"] for _ in range(JOBS)]
    while_running = wait_for_worker(stack, lambda worker: worker["slots"]["busy"] >= JOBS // 2)
    views = [stack.wait_until_terminal(job_id, timeout=60) for job_id in ids]
    sixteen = time.monotonic() - began
    # Their last end leaves the worker as a plain job's end does: idle, with no current job.
    after = wait_for_worker(stack, lambda worker: worker["slots"]["busy"] == 0)

    assert [view["status"] for view in views] == ["finished"] * JOBS, [view.get("error") for view in views]
    assert all(view["result"]["backend"] == "openai-compatible" and view["result"]["text"] for view in views)
    print(f"one generation alone: {one:.2f} s; {JOBS} at once in one worker: {sixteen:.2f} s; "
          f"the server streamed {slow_llm_server.peak_in_flight} answers at once at most")
    assert slow_llm_server.peak_in_flight >= JOBS // 2, "the worker did not stream the answers at once"
    assert sixteen < 2 * one + 1.0, f"{JOBS} generations took {sixteen:.2f} s, one alone {one:.2f} s"
    assert while_running["state"] == "busy" and while_running["current_job"] in ids, while_running
    assert after["state"] == "idle" and after["current_job"] is None, after
    assert after["slots"] == {"total": JOBS, "busy": 0, "free": JOBS}, after


def wait_for_worker(stack: Stack, condition: Callable[[dict[str, Any]], bool], timeout: float = 30) -> dict[str, Any]:
    """The stack's one worker as GET /workers shows it, once `condition` holds of it."""
    deadline = time.monotonic() + timeout
    while True:
        response = stack.get("/workers")
        assert response.status_code == 200, response.text
        (worker,) = response.json()["workers"]
        if condition(worker) or time.monotonic() > deadline:
            return worker  # type: ignore[no-any-return]
        time.sleep(0.05)
