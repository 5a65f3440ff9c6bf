"""Generate text from a prompt: an OpenAI-compatible server when configured, else a shipped offline model.

Backend, chosen at call time:

- `RUNNER_LLM_BASE_URL` set: stream `POST {base}/v1/chat/completions` (model `RUNNER_LLM_MODEL`,
  default "gpt-4o-mini"; bearer key `RUNNER_LLM_API_KEY`; per-read timeout `RUNNER_LLM_TIMEOUT`,
  default 60 s). Usage comes from the server when it sends it; otherwise completion tokens are
  the content chunks received (one token each on OpenAI-style servers) and prompt tokens are
  counted as words and punctuation marks, an estimate.
- unset: a word-level Markov chain trained on public-domain prose (`functions/_corpus/`),
  deterministic for a given seed; the default seed is derived from the prompt and system text.

An `async def` function: while it waits on the server, its worker runs other jobs on the same event
loop. The offline model is CPU work, so it runs in a thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from typing import Annotated, Any

from pydantic import Field

from functions._env_settings import env_seconds, env_text
from functions._markov import MODEL_NAME, count_tokens, default_chain, model_tokens
from functions._openai_stream import ChatRequest, stream_chat
from runner import aprogress, function, progress

MAX_PROMPT_LENGTH = 20_000
MAX_TOKENS_LIMIT = 4096
DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_TIMEOUT_SECONDS = 60.0
PROGRESS_STEP = 5  # percent between two progress reports while tokens arrive
SEED_LIMIT = 2**63 - 1  # OpenAI's seed is a signed 64-bit integer


@function(queue="ai_processing", timeout=120, retries=3, backoff=[2, 10, 30])
async def text_generation(
    prompt: Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_LENGTH)],
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)] = 128,
    temperature: Annotated[float, Field(ge=0.0, le=2.0, allow_inf_nan=False)] = 0.7,
    system: Annotated[str | None, Field(max_length=MAX_PROMPT_LENGTH)] = None,
    seed: Annotated[int | None, Field(ge=0, le=SEED_LIMIT)] = None,
) -> dict[str, Any]:
    """Generate text from a prompt (OpenAI-compatible server if configured, else an offline Markov model)."""
    base_url = env_text("RUNNER_LLM_BASE_URL")
    if base_url:
        return await _generate_remote(base_url, prompt, max_tokens, temperature, system, seed)
    # CPU work: in a thread (with this job's context), so the other jobs on the event loop go on meanwhile.
    return await asyncio.to_thread(_generate_offline, prompt, max_tokens, temperature, system, seed)


class _TokenProgress:
    """Reports tokens produced as a share of max_tokens, at most once per PROGRESS_STEP percent."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.reported_step = -1

    def due(self, count: int) -> tuple[float, str] | None:
        """The report to make after `count` tokens, or None when the last one still stands."""
        # 5..95: the ends belong to "connecting"/"loading" and "done".
        percent = 5 + 90 * min(count, self.max_tokens) / self.max_tokens
        step = int(percent) // PROGRESS_STEP
        if step <= self.reported_step:
            return None
        self.reported_step = step
        return percent, f"{count} of at most {self.max_tokens} tokens generated"

    def __call__(self, count: int) -> None:
        """Report from the offline model's thread."""
        if report := self.due(count):
            progress(*report)

    async def streamed(self, count: int) -> None:
        """Report from the event loop, as the server's chunks arrive."""
        if report := self.due(count):
            await aprogress(*report)


async def _generate_remote(
    base_url: str, prompt: str, max_tokens: int, temperature: float, system: str | None, seed: int | None
) -> dict[str, Any]:
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": prompt}
    ]
    request = ChatRequest(
        base_url=base_url,
        model=env_text("RUNNER_LLM_MODEL", DEFAULT_MODEL),
        messages=messages,
        max_tokens=max_tokens,
        temperature=temperature,
        timeout=env_seconds("RUNNER_LLM_TIMEOUT", DEFAULT_TIMEOUT_SECONDS),
        api_key=env_text("RUNNER_LLM_API_KEY"),
        seed=seed,
    )
    await aprogress(2, f"requesting a completion from {request.model}")
    completion = await stream_chat(request, _TokenProgress(max_tokens).streamed)
    usage = completion.usage
    if usage is None:
        prompt_tokens = sum(count_tokens(message["content"]) for message in messages)
        usage = _usage(prompt_tokens, completion.chunks)
    finish_reason = completion.finish_reason or ("length" if completion.chunks >= max_tokens else "stop")
    await aprogress(100, "done")
    return {
        "text": completion.text,
        "model": completion.model,
        "finish_reason": finish_reason,
        "usage": usage,
        "backend": "openai-compatible",
    }


def _generate_offline(
    prompt: str, max_tokens: int, temperature: float, system: str | None, seed: int | None
) -> dict[str, Any]:
    progress(2, "loading the offline model")
    chain = default_chain()
    rng = random.Random(seed if seed is not None else derived_seed(prompt, system))
    generation = chain.generate(
        model_tokens(prompt),
        max_tokens,
        temperature,
        rng,
        topic=model_tokens(system or ""),
        on_token=_TokenProgress(max_tokens),
    )
    progress(100, "done")
    prompt_tokens = count_tokens(prompt) + count_tokens(system or "")
    return {
        "text": generation.text,
        "model": MODEL_NAME,
        "finish_reason": generation.finish_reason,
        "usage": _usage(prompt_tokens, len(generation.tokens)),
        "backend": "offline",
    }


def derived_seed(prompt: str, system: str | None) -> int:
    """The seed used when none is given: the same prompt and system text always give the same seed."""
    # surrogatepass: JSON may carry a lone surrogate ("\ud800"), which strict UTF-8 cannot encode.
    digest = hashlib.sha256(f"{system or ''}\x00{prompt}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big")


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }

