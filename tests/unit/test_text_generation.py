"""Unit tests of text_generation: the offline Markov backend, and the HTTP backend against a real loopback server."""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from functions._markov import MODEL_NAME, MarkovChain, count_tokens, default_chain, model_tokens
from functions._openai_stream import LLMUnavailable, SSEParser
from functions.text_generation import derived_seed, text_generation
from runner import PermanentError
from runner.authoring import context
from runner.errors import InvalidInput
from tests.llm_server import FakeLLMServer
from tests.unit.test_job_context import FakeJob

LOOPING_PROMPT = "It was the best of"  # greedy decoding loops on "times, it was the best of" forever


def generate(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run text_generation's coroutine to its end, as a worker's event loop does."""
    return asyncio.run(text_generation(*args, **kwargs))


@pytest.fixture(scope="module")
def llm_server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@pytest.fixture
def remote(llm_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> FakeLLMServer:
    """Point text_generation at the fake server, as a worker's environment would."""
    llm_server.requests.clear()
    monkeypatch.setenv("RUNNER_LLM_BASE_URL", llm_server.base_url)
    monkeypatch.setenv("RUNNER_LLM_API_KEY", "sk-test-123")
    monkeypatch.setenv("RUNNER_LLM_TIMEOUT", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.delenv("RUNNER_LLM_MODEL", raising=False)
    return llm_server


@pytest.fixture(autouse=True)
def offline_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNNER_LLM_BASE_URL", raising=False)


# ---- offline backend ---------------------------------------------------------------------------


def test_offline_greedy_continues_the_prompt_from_the_corpus() -> None:
    outcome = generate(LOOPING_PROMPT, max_tokens=8, temperature=0)
    assert outcome == {
        "text": "times, it was the best of times",
        "model": MODEL_NAME,
        "finish_reason": "length",
        "usage": {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13},
        "backend": "offline",
    }


@pytest.mark.parametrize("max_tokens", [1, 7, 64, 300, 4096])
def test_offline_produces_exactly_max_tokens_when_not_stopped(max_tokens: int) -> None:
    outcome = generate(LOOPING_PROMPT, max_tokens=max_tokens, temperature=0)
    assert outcome["finish_reason"] == "length"
    assert outcome["usage"]["completion_tokens"] == max_tokens == count_tokens(outcome["text"])


def test_offline_stops_at_the_end_of_a_paragraph() -> None:
    outcome = generate("xyzzy", max_tokens=500, temperature=0.7, seed=4)
    assert outcome["finish_reason"] == "stop"
    assert 0 < outcome["usage"]["completion_tokens"] < 500
    assert outcome["text"][-1] in ".!?"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_offline_same_seed_gives_same_text(seed: int) -> None:
    first = generate("Tell me about the sea and the ship", max_tokens=40, temperature=1.0, seed=seed)
    again = generate("Tell me about the sea and the ship", max_tokens=40, temperature=1.0, seed=seed)
    assert first == again


def test_offline_different_seeds_give_different_texts() -> None:
    texts = {generate("The world", max_tokens=40, temperature=1.0, seed=seed)["text"] for seed in range(5)}
    assert len(texts) == 5


def test_offline_temperature_zero_ignores_the_seed() -> None:
    texts = {generate("The nation", max_tokens=30, temperature=0, seed=seed)["text"] for seed in range(4)}
    assert len(texts) == 1


def test_offline_default_seed_comes_from_the_prompt() -> None:
    first = generate("Liberty and the pursuit of", max_tokens=30, temperature=1.2)
    assert first == generate("Liberty and the pursuit of", max_tokens=30, temperature=1.2)
    assert first == generate("Liberty and the pursuit of", max_tokens=30, temperature=1.2,
                                    seed=derived_seed("Liberty and the pursuit of", None))
    assert derived_seed("a", None) != derived_seed("b", None) != derived_seed("b", "system")


def test_offline_counts_system_text_as_prompt_tokens() -> None:
    outcome = generate("Call me", max_tokens=3, temperature=0, system="You are Ishmael.")
    assert outcome["usage"]["prompt_tokens"] == 2 + 4  # "Call me" + "You are Ishmael ."
    assert outcome["text"] == "Ishmael. Some"  # "call me" continues as the corpus does


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e-10])
def test_offline_a_tiny_temperature_is_greedy_not_an_overflow(temperature: float) -> None:
    # Counts were raised to 1/T: 1e-300 overflowed (OverflowError in the worker, retried three times).
    # On a prompt without ties among the likeliest next tokens, it is the greedy choice every time.
    greedy = generate(LOOPING_PROMPT, max_tokens=30, temperature=0, seed=1)
    assert generate(LOOPING_PROMPT, max_tokens=30, temperature=temperature, seed=1) == greedy


def test_offline_a_prompt_with_a_lone_surrogate_gets_its_default_seed() -> None:
    # JSON's "\ud800" is a str Python cannot encode as UTF-8: deriving the seed raised UnicodeEncodeError.
    outcome = generate("\ud800 The nation", max_tokens=5, temperature=1.0)
    assert outcome == generate("\ud800 The nation", max_tokens=5, temperature=1.0)
    assert derived_seed("\ud800", None) != derived_seed("\udfff", None)


def test_chain_learns_and_replays_a_tiny_corpus() -> None:
    chain = MarkovChain.train(["The cat sat on the mat. The cat ran to Paris."])
    greedy = chain.generate(model_tokens("the cat"), 10, 0, random.Random(0))
    # After "the cat", "sat" and "ran" tie: the one seen first wins; "Paris" keeps its capital.
    assert greedy.tokens == ["sat", "on", "the", "mat", ".", "the", "cat", "sat", "on", "the"]
    assert greedy.text == "sat on the mat. The cat sat on the"
    stopped = chain.generate(model_tokens("ran to"), 10, 0, random.Random(0))
    assert (stopped.text, stopped.finish_reason) == ("Paris.", "stop")


def test_corpus_is_trained_once_per_process() -> None:
    assert default_chain() is default_chain()
    assert len(default_chain().singles) > 400  # the shipped corpus, not an empty file


def test_offline_progress_tracks_tokens_and_is_throttled() -> None:
    job = FakeJob("offline")
    with context.running(job):  # the model runs in a thread: the job's context goes with it
        generate(LOOPING_PROMPT, max_tokens=1000, temperature=0)
    calls = job.reports
    assert threading.get_ident() not in job.threads  # the CPU work ran off the event loop's thread
    percents = [percent for percent, _ in calls]
    assert percents == sorted(percents)
    assert calls[-1] == (100, "done")
    assert 10 <= len(calls) <= 25
    assert "500 of at most 1000 tokens generated" in [message for _, message in calls]


# ---- OpenAI-compatible backend -----------------------------------------------------------------


def test_remote_assembles_the_streamed_text(remote: FakeLLMServer) -> None:
    outcome = generate("hello there brave new world", max_tokens=50, temperature=0.3, system="Be brief.")
    assert outcome == {
        "text": "HELLO THERE BRAVE NEW WORLD",
        "model": "fake-model",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 36, "completion_tokens": 5, "total_tokens": 41},  # the server's counts
        "backend": "openai-compatible",
    }


def test_remote_request_carries_model_messages_and_key(remote: FakeLLMServer) -> None:
    generate("hi", max_tokens=7, temperature=1.5, system="Be brief.", seed=42)
    (request,) = remote.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test-123"
    assert request["headers"]["Content-Type"] == "application/json"
    body = request["body"]
    assert body["model"] == "gpt-4o-mini"
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert (body["max_tokens"], body["temperature"], body["stream"], body["seed"]) == (7, 1.5, True, 42)


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_remote_base_url_with_or_without_v1(remote: FakeLLMServer, monkeypatch: pytest.MonkeyPatch,
                                            suffix: str) -> None:
    monkeypatch.setenv("RUNNER_LLM_BASE_URL", remote.base_url + suffix)
    monkeypatch.setenv("RUNNER_LLM_MODEL", "llama-3-8b")
    monkeypatch.delenv("RUNNER_LLM_API_KEY")
    assert generate("ok")["text"] == "OK"
    (request,) = remote.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["body"]["model"] == "llama-3-8b"
    assert request["body"]["messages"] == [{"role": "user", "content": "ok"}]
    assert "seed" not in request["body"]
    assert "Authorization" not in request["headers"]


def test_remote_cut_at_max_tokens_reports_length(remote: FakeLLMServer) -> None:
    outcome = generate("one two three four five six", max_tokens=4)
    assert (outcome["text"], outcome["finish_reason"]) == ("ONE TWO THREE FOUR", "length")


def test_remote_without_usage_counts_tokens_itself(remote: FakeLLMServer) -> None:
    outcome = generate("!nousage alpha beta", max_tokens=10, system="Be brief.")
    assert outcome["text"] == "!NOUSAGE ALPHA BETA"
    # Completion: 3 content chunks. Prompt: words and marks of "Be brief." (3) and "!nousage alpha beta" (4).
    assert outcome["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def test_remote_accepts_a_non_streamed_json_answer(remote: FakeLLMServer) -> None:
    outcome = generate("!json a b", max_tokens=10)
    assert (outcome["text"], outcome["model"], outcome["finish_reason"]) == ("!JSON A B", "fake-json", "stop")


def test_remote_progress_follows_chunks(remote: FakeLLMServer) -> None:
    job = FakeJob("remote")
    with context.running(job):
        generate(" ".join(["word"] * 40), max_tokens=40)
    calls = job.reports
    assert threading.get_ident() not in job.threads  # each report was written off the event loop
    messages = [message for _, message in calls]
    assert messages[0] == "requesting a completion from gpt-4o-mini"
    assert "20 of at most 40 tokens generated" in messages
    assert calls[-1] == (100, "done")
    assert len(calls) <= 25


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("!429", "answered 429: Rate limit reached"),
        ("!500", "answered 500: The engine crashed"),
        ("!slow", "sent nothing for 0.3 s"),
        ("!drop one two three", "ended the stream before finishing"),
        ("!garbage one two", "not JSON"),
    ],
)
def test_remote_transient_failures_are_retried(
    remote: FakeLLMServer, monkeypatch: pytest.MonkeyPatch, prompt: str, message: str
) -> None:
    monkeypatch.setenv("RUNNER_LLM_TIMEOUT", "0.3")
    started = time.monotonic()
    with pytest.raises(LLMUnavailable, match=message):
        generate(prompt)
    assert time.monotonic() - started < 2  # the read timeout bounds a silent server


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("!400", r"The LLM server rejected the request \(400\): max_tokens is too large"),
        ("!401", r"rejected the request \(401\): Incorrect API key provided"),
    ],
)
def test_remote_client_errors_are_permanent(remote: FakeLLMServer, prompt: str, message: str) -> None:
    with pytest.raises(PermanentError, match=message):
        generate(prompt)


def test_remote_rate_limit_then_success(remote: FakeLLMServer) -> None:
    with pytest.raises(LLMUnavailable, match="429"):
        generate("!flaky unit")
    assert generate("!flaky unit")["text"] == "!FLAKY UNIT"
    assert len(remote.requests) == 2


def test_remote_unreachable_server_is_transient(monkeypatch: pytest.MonkeyPatch, closed_port: int) -> None:
    monkeypatch.setenv("RUNNER_LLM_BASE_URL", f"http://127.0.0.1:{closed_port}")
    with pytest.raises(LLMUnavailable, match=r"Cannot reach the LLM server at 127.0.0.1:\d+: \[Errno 111\] "
                                              "Connection refused"):
        generate("hi")


PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
                   "no_proxy", "NO_PROXY")


def test_remote_goes_through_the_http_proxy_of_the_environment(
    remote: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As urllib did: http_proxy is honoured. The fake server plays the proxy, so the name is never resolved.
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", remote.base_url.removeprefix("http://"))  # host:port, as urllib accepts
    monkeypatch.setenv("RUNNER_LLM_BASE_URL", "http://llm.invalid:8000/v1")
    assert generate("via the proxy")["text"] == "VIA THE PROXY"
    (request,) = remote.requests
    assert request["path"] == "http://llm.invalid:8000/v1/chat/completions"
    assert request["headers"]["Host"] == "llm.invalid:8000"


def test_remote_skips_the_proxy_for_no_proxy_hosts(
    remote: FakeLLMServer, monkeypatch: pytest.MonkeyPatch, closed_port: int
) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{closed_port}")  # nothing there: using it would fail
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.1")
    assert generate("direct")["text"] == "DIRECT"
    (request,) = remote.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Accept-Encoding"] == "identity"  # nothing may hold the stream back to compress it


@pytest.mark.parametrize(("url", "reason"), [("http://127.0.0.1:99999", "Port out of range"),
                                             ("http://[::1:80", "Invalid IPv6 URL"),
                                             ("http://llm:port", "Port could not be cast")])
def test_an_unusable_base_url_is_permanent(monkeypatch: pytest.MonkeyPatch, url: str, reason: str) -> None:
    # Before, these raised ValueError or OverflowError in the worker, which retried them three times.
    monkeypatch.setenv("RUNNER_LLM_BASE_URL", url)
    with pytest.raises(PermanentError, match=f"RUNNER_LLM_BASE_URL is not a usable URL: {re.escape(reason)}"):
        generate("hi")


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_sse_parser_reassembles_events_across_any_chunking(size: int) -> None:
    stream = ": comment\r\n\r\ndata: {\"a\": \"é✓\"}\r\n\r\nevent: x\ndata: one\ndata:two\n\ndata: [DONE]".encode()
    parser = SSEParser()
    events = [event for start in range(0, len(stream), size) for event in parser.feed(stream[start:start + size])]
    events += parser.close()
    assert events == ['{"a": "é✓"}', "one\ntwo", "[DONE]"]


def test_sse_parser_refuses_a_line_that_is_not_utf8() -> None:
    with pytest.raises(LLMUnavailable, match="not UTF-8"):
        SSEParser().feed(b"data: \xff\xfe\n")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com", "127.0.0.1:8000", "localhost", "http://"])
def test_only_http_base_urls_are_used(remote: FakeLLMServer, monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("RUNNER_LLM_BASE_URL", url)
    with pytest.raises(PermanentError, match="RUNNER_LLM_BASE_URL must be an http"):
        generate("hi")


@pytest.mark.parametrize("value", ["soon", "0", "-5", "nan"])
def test_bad_timeout_setting_is_permanent(remote: FakeLLMServer, monkeypatch: pytest.MonkeyPatch,
                                          value: str) -> None:
    monkeypatch.setenv("RUNNER_LLM_TIMEOUT", value)
    with pytest.raises(PermanentError, match="RUNNER_LLM_TIMEOUT"):
        generate("hi")
    assert remote.requests == []


# ---- declaration and validation ----------------------------------------------------------------


def test_declared_policy() -> None:
    spec = text_generation.__runner_function__  # type: ignore[attr-defined]
    assert (spec.queue, spec.timeout, spec.retries, spec.backoff) == ("ai_processing", 120, 3, (2, 10, 30))


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 20_001}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "hi", "max_tokens": 4097}, "max_tokens"),
        ({"prompt": "hi", "temperature": -0.1}, "temperature"),
        ({"prompt": "hi", "temperature": 2.01}, "temperature"),
        ({"prompt": "hi", "temperature": float("nan")}, "temperature"),
        ({"prompt": "hi", "system": "x" * 20_001}, "system"),
        ({"prompt": "hi", "seed": -1}, "seed"),
        ({"prompt": "hi", "seed": 2**63}, "seed"),
        ({"prompt": "hi", "model": "gpt-5"}, "model"),
    ],
)
def test_validation_rejects_bad_input(payload: dict[str, object], field: str) -> None:
    spec = text_generation.__runner_function__  # type: ignore[attr-defined]
    with pytest.raises(InvalidInput) as caught:
        spec.validate(payload)
    assert field in {detail["field"] for detail in caught.value.details}


def test_validation_fills_defaults() -> None:
    spec = text_generation.__runner_function__  # type: ignore[attr-defined]
    assert spec.validate({"prompt": "hi"}) == {
        "prompt": "hi", "max_tokens": 128, "temperature": 0.7, "system": None, "seed": None,
    }
