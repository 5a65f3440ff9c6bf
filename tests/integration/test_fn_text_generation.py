"""text_generation over real HTTP, gunicorn, Redis and worker processes: offline, and streamed from a loopback server.

The workers' backend is chosen by their environment, so each mode gets its own stack: the
`llm_stack` fixture is parametrized indirectly and pytest runs one mode's tests before starting
the other stack. The OpenAI-compatible server runs in this test process (a real HTTP server on
127.0.0.1, from the unit tests) and the workers reach it through RUNNER_LLM_BASE_URL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.integration.conftest import Stack
from tests.llm_server import FakeLLMServer, reply_chunks

API_KEY = "sk-integration"
RETRY_TIMEOUT = 30.0  # first backoff is 2 s, plus the scheduler's polling


@pytest.fixture(scope="module")
def llm_server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@pytest.fixture(scope="module")
def llm_stack(
    request: pytest.FixtureRequest, stack_factory: Callable[..., Stack], llm_server: FakeLLMServer
) -> Stack:
    """A stack in mode "offline" (no RUNNER_LLM_BASE_URL) or "remote" (pointing at `llm_server`)."""
    mode: str = request.param
    env = {"RUNNER_LLM_BASE_URL": f"{llm_server.base_url}/v1", "RUNNER_LLM_API_KEY": API_KEY,
           "RUNNER_LLM_MODEL": "tiny-echo", "RUNNER_LLM_TIMEOUT": "5", "NO_PROXY": "127.0.0.1"}
    return stack_factory(extra_env=env if mode == "remote" else {})


offline = pytest.mark.parametrize("llm_stack", ["offline"], indirect=True)
remote = pytest.mark.parametrize("llm_stack", ["remote"], indirect=True)


@offline
def test_offline_generation_through_a_worker(llm_stack: Stack, llm_server: FakeLLMServer) -> None:
    requests_before = len(llm_server.requests)
    response = llm_stack.invoke("text_generation", {"prompt": "It was the best of", "max_tokens": 8,
                                                    "temperature": 0}, wait=15)
    assert response.status_code == 200, response.text
    view = response.json()
    assert view["status"] == "finished", view
    assert view["queue"] == "ai_processing"
    assert view["result"] == {
        "text": "times, it was the best of times",
        "model": "offline-markov-3gram",
        "finish_reason": "length",
        "usage": {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13},
        "backend": "offline",
    }
    assert view["progress"] == {"percent": 100, "message": "done"}
    assert len(llm_server.requests) == requests_before  # offline really is offline


@offline
def test_offline_seeded_runs_repeat_across_workers(llm_stack: Stack) -> None:
    payload = {"prompt": "Tell me of the sea", "max_tokens": 60, "temperature": 1.0, "seed": 7}
    texts = []
    for _ in range(3):  # two worker processes: each one trains its own chain
        response = llm_stack.invoke("text_generation", payload, wait=15)
        assert response.status_code == 200, response.text
        texts.append(response.json()["result"]["text"])
    assert len(set(texts)) == 1 and texts[0]


@remote
def test_remote_streamed_generation_through_a_worker(llm_stack: Stack, llm_server: FakeLLMServer) -> None:
    llm_server.requests.clear()
    payload = {"prompt": "stream these words back please", "max_tokens": 50, "temperature": 0.2,
               "system": "Echo."}
    response = llm_stack.invoke("text_generation", payload, wait=15)
    assert response.status_code == 200, response.text
    view = response.json()
    assert view["result"] == {
        "text": "STREAM THESE WORDS BACK PLEASE",
        "model": "fake-model",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 35, "completion_tokens": 5, "total_tokens": 40},
        "backend": "openai-compatible",
    }
    (sent,) = llm_server.requests
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["Authorization"] == f"Bearer {API_KEY}"
    assert sent["body"]["model"] == "tiny-echo"
    assert sent["body"]["stream"] is True
    assert sent["body"]["messages"] == [{"role": "system", "content": "Echo."},
                                        {"role": "user", "content": payload["prompt"]}]


@remote
def test_remote_progress_is_live_while_tokens_stream(llm_stack: Stack, llm_server: FakeLLMServer) -> None:
    prompt = "!gated " + " ".join(f"w{n}" for n in range(39))  # 40 chunks; the server pauses after 20
    llm_server.gate.clear()
    try:
        response = llm_stack.invoke("text_generation", {"prompt": prompt, "max_tokens": 40})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        halfway = llm_stack.wait_for(job_id, lambda view: view["progress"]["percent"] >= 45)
        assert halfway["status"] == "started"
        assert halfway["progress"]["percent"] < 95
        assert halfway["progress"]["message"].endswith("of at most 40 tokens generated")
    finally:
        llm_server.gate.set()
    view = llm_stack.wait_until_terminal(job_id)
    assert view["status"] == "finished", view
    assert view["result"]["text"] == "".join(reply_chunks(prompt))


@remote
def test_remote_rate_limit_is_retried(llm_stack: Stack) -> None:
    response = llm_stack.invoke("text_generation", {"prompt": "!flaky integration"})
    assert response.status_code == 202, response.text
    view = llm_stack.wait_until_terminal(response.json()["id"], timeout=RETRY_TIMEOUT)
    assert view["status"] == "finished", view
    assert view["attempts"] == 2
    assert view["result"]["text"] == "!FLAKY INTEGRATION"


@remote
def test_remote_client_error_fails_without_retry(llm_stack: Stack) -> None:
    response = llm_stack.invoke("text_generation", {"prompt": "!400 too long"}, wait=15)
    assert response.status_code == 200, response.text
    view = response.json()
    assert view["status"] == "failed"
    assert view["attempts"] == 1
    assert view["error"] == {
        "type": "PermanentError",
        "message": "The LLM server rejected the request (400): max_tokens is too large",
    }


@remote
def test_invalid_input_is_rejected_before_any_worker(llm_stack: Stack, llm_server: FakeLLMServer) -> None:
    requests_before = len(llm_server.requests)
    response = llm_stack.invoke("text_generation", {"prompt": "hi", "max_tokens": 5000})
    assert response.status_code == 422, response.text
    assert [detail["field"] for detail in response.json()["details"]] == ["max_tokens"]
    assert len(llm_server.requests) == requests_before
