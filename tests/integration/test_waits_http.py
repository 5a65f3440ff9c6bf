"""`?wait=` through real gunicorn (issue 19, item 7): waits are bounded per process and per client.

16 clients with `?delay=300&wait=60` used to take every thread, so other requests timed out while
/healthz said 200. Now a process lets RUNNER_WAIT_MAX_PER_PROCESS waits run, a client (its API
key here) RUNNER_WAIT_MAX_PER_CLIENT of them; the rest answer 202 at once, and /readyz says 503
while the process is saturated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import requests

from tests.integration.conftest import Stack, wait_until

KEYS = ("alice-key", "bob-key", "carol-key")
PER_PROCESS, PER_CLIENT = 4, 2
WAITERS = 16  # 8 for alice, 8 for bob
QUICK_SECONDS = 1.0


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def waiting_invoke(stack: Stack, key: str) -> requests.Response:
    """An invocation scheduled 300 s ahead that waits up to 60 s: it can only end by a cancel."""
    return requests.post(f"{stack.url}/functions/simple_calculation/invocations", params={"delay": 300, "wait": 60},
                         json={"expression": "1+1"}, headers=bearer(key), timeout=90)


def timed(call: Callable[[], requests.Response]) -> tuple[float, requests.Response]:
    started = time.monotonic()
    response = call()
    return time.monotonic() - started, response


def cancel_every_scheduled_job(stack: Stack, futures: list[Future[requests.Response]]) -> None:
    """Cancel the scheduled jobs until no waiter is left (history may list a job a moment after its 202)."""
    deadline = time.monotonic() + 10
    while not all(future.done() for future in futures) and time.monotonic() < deadline:
        listing = stack.get("/jobs", params={"status": "scheduled", "limit": 100}, headers=bearer(KEYS[0]))
        for job in listing.json()["jobs"]:
            stack.post(f"/jobs/{job['id']}/cancel", headers=bearer(KEYS[0]))
        time.sleep(0.2)


def test_waits_are_bounded_per_process_and_per_client(stack_factory: Callable[..., Stack]) -> None:
    stack = stack_factory(web_workers=1, extra_env={
        "RUNNER_API_KEYS": ",".join(KEYS),
        "RUNNER_WAIT_MAX_PER_PROCESS": str(PER_PROCESS), "RUNNER_WAIT_MAX_PER_CLIENT": str(PER_CLIENT)})
    with ThreadPoolExecutor(WAITERS) as pool:
        started = time.monotonic()
        futures: list[Future[requests.Response]] = [
            pool.submit(waiting_invoke, stack, KEYS[index % 2]) for index in range(WAITERS)]
        wait_until(lambda: sum(future.done() for future in futures) == WAITERS - PER_PROCESS, 10,
                   "the waits beyond the bounds to answer")
        skipped = [future.result() for future in futures if future.done()]
        answered_within = time.monotonic() - started
        try:
            assert all(r.status_code == 202 and r.headers["Wait-Skipped"] == "client-limit" for r in skipped)
            assert all(r.json()["status"] == "scheduled" for r in skipped)
            # Other requests, of every client, are served meanwhile.
            others = [timed(lambda: stack.get("/healthz")),
                      timed(lambda: stack.get("/jobs", headers=bearer(KEYS[2]))),
                      timed(lambda: stack.post("/functions/simple_calculation/invocations",
                                               json={"expression": "6*7"}, headers=bearer(KEYS[2])))]
            carol_seconds, carol = timed(lambda: waiting_invoke(stack, KEYS[2]))
            ready = stack.get("/readyz", headers=bearer(KEYS[2]))
        finally:
            cancel_every_scheduled_job(stack, futures)
        ended = [future.result(timeout=10) for future in futures]
    print(f"\n{WAITERS} waiting clients: {len(skipped)} answered 202 at once (within {answered_within:.2f} s), "
          f"{PER_PROCESS} waited; other requests took {max(seconds for seconds, _ in others) * 1000:.0f} ms at most")
    assert [response.status_code for _, response in others] == [200, 200, 202]
    assert max(seconds for seconds, _ in others) < QUICK_SECONDS
    # Carol has waited for nothing yet, but the process has: her wait answers at once too.
    assert carol.status_code == 202 and carol.headers["Wait-Skipped"] == "process-limit"
    assert carol_seconds < QUICK_SECONDS
    assert ready.status_code == 503, ready.text
    assert ready.json()["error"] == "saturated" and ready.json()["details"]["saturated"] == ["waits"]
    assert ready.json()["details"]["checks"]["waits"] == f"{PER_PROCESS} of {PER_PROCESS} in use"
    # The waits that were let run ended with their jobs' cancel, and the slots came back.
    assert sum(1 for response in ended if response.json()["status"] == "canceled"
               and "Wait-Skipped" not in response.headers) == PER_PROCESS
    assert stack.get("/readyz", headers=bearer(KEYS[2])).status_code == 200
