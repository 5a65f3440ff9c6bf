"""text_generation's coroutine against the slow OpenAI-compatible server (the `slow_llm_server` fixture):
16 generations on one event loop take about the time of one, because the async client waits without
holding the loop. The worker's test of the same (16 jobs, one worker) builds on this fixture."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from functions.text_generation import text_generation
from runner.authoring import context
from tests.integration.conftest import SLOW_CHUNK_DELAY
from tests.llm_server import FakeLLMServer
from tests.unit.test_job_context import FakeJob

WORDS = 5  # chunks per answer: one answer takes WORDS * SLOW_CHUNK_DELAY to stream
ONE_ANSWER = WORDS * SLOW_CHUNK_DELAY
AT_ONCE = 16


@pytest.fixture(autouse=True)
def pointed_at_the_server(slow_llm_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in slow_llm_server.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("RUNNER_LLM_API_KEY", raising=False)


def prompt_of(number: int) -> str:
    return " ".join(f"job{number}-word{word}" for word in range(WORDS))


async def generate_as_job(job: FakeJob, number: int) -> dict[str, Any]:
    """One job's generation, in its own job context (gather gives each coroutine its own task and context)."""
    with context.running(job):
        return await text_generation(prompt_of(number), max_tokens=WORDS)


def test_one_answer_takes_the_servers_time(slow_llm_server: FakeLLMServer) -> None:
    started = time.monotonic()
    outcome = asyncio.run(generate_as_job(FakeJob("alone"), 0))
    elapsed = time.monotonic() - started
    assert outcome["text"] == prompt_of(0).upper()
    assert ONE_ANSWER <= elapsed < ONE_ANSWER + 1.0
    assert slow_llm_server.peak_in_flight == 1


def test_sixteen_generations_at_once_take_about_the_time_of_one(slow_llm_server: FakeLLMServer) -> None:
    jobs = [FakeJob(f"job-{number}") for number in range(AT_ONCE)]

    async def all_at_once() -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(generate_as_job(job, number) for number, job in enumerate(jobs))))

    started = time.monotonic()
    outcomes = asyncio.run(all_at_once())
    elapsed = time.monotonic() - started
    # One after another they would take AT_ONCE * ONE_ANSWER (16 s); at once, about ONE_ANSWER.
    assert ONE_ANSWER <= elapsed < 2 * ONE_ANSWER, f"{AT_ONCE} answers took {elapsed:.2f} s"
    assert slow_llm_server.peak_in_flight == AT_ONCE
    for number, (job, outcome) in enumerate(zip(jobs, outcomes, strict=True)):
        assert outcome["text"] == prompt_of(number).upper()
        assert outcome["usage"]["completion_tokens"] == WORDS
        # Each job's progress went to that job alone, in order, ending with "done".
        assert job.reports[0] == (2, "requesting a completion from gpt-4o-mini")
        assert f"{WORDS} of at most {WORDS} tokens generated" in [message for _, message in job.reports]
        assert job.reports[-1] == (100, "done")
        assert [percent for percent, _ in job.reports] == sorted(percent for percent, _ in job.reports)
