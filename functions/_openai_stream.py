"""A streaming client for OpenAI-compatible `POST /v1/chat/completions`, on the standard library only.

Failures worth retrying (HTTP 408/429/5xx, timeouts, refused or dropped connections, a garbled
stream) raise `LLMUnavailable`; a request the server will never accept (other 4xx) raises
`PermanentError` carrying the server's own error message.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from runner import PermanentError

RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})
MAX_ERROR_BODY = 64 * 1024
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


class LLMUnavailable(Exception):
    """Raised when the LLM server cannot answer now (rate limit, outage, timeout): the job is retried."""


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to stream from `base_url`."""

    base_url: str
    model: str
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    timeout: float
    api_key: str = ""
    seed: int | None = None

    @property
    def url(self) -> str:
        """The endpoint; the base may be given with or without its trailing /v1."""
        base = self.base_url.rstrip("/").removesuffix("/v1")
        return f"{base}/v1/chat/completions"

    def body(self) -> dict[str, Any]:
        """The JSON request body."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": self.messages,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stream": True,
            # Asks the server to end the stream with token counts (OpenAI, vLLM, llama.cpp, Ollama).
            "stream_options": {"include_usage": True},
        }
        if self.seed is not None:
            body["seed"] = self.seed
        return body


@dataclass
class ChatCompletion:
    """What a stream delivered: the text, the server's finish reason and usage when it sent them."""

    model: str
    parts: list[str] = field(default_factory=list)  # the content of each content-bearing chunk
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    done: bool = False

    @property
    def text(self) -> str:
        """The assembled completion."""
        return "".join(self.parts)

    @property
    def chunks(self) -> int:
        """How many chunks carried content: one token each on OpenAI-style servers."""
        return len(self.parts)


def stream_chat(request: ChatRequest, on_chunk: Callable[[int], None]) -> ChatCompletion:
    """POST the request with `stream: true` and assemble the answer as its chunks arrive."""
    parts = urlsplit(request.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # urllib would also open file:// and ftp:// URLs: only ever talk HTTP to the LLM server.
        raise PermanentError("RUNNER_LLM_BASE_URL must be an http:// or https:// URL with a host.")
    where = parts.netloc
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if request.api_key:
        headers["Authorization"] = f"Bearer {request.api_key}"
    data = json.dumps(request.body()).encode()
    outgoing = urllib.request.Request(request.url, data=data, headers=headers, method="POST")
    completion = ChatCompletion(model=request.model)
    try:
        with urllib.request.urlopen(outgoing, timeout=request.timeout) as response:
            if response.headers.get_content_type() == "application/json":
                # A server that ignores `stream` answers with one complete JSON body.
                _take_chunk(completion, _parse_json(response.read(), where), on_chunk, message_key="message")
                completion.done = True
            else:
                for event in _sse_events(response):
                    if event == "[DONE]":
                        completion.done = True
                        break
                    _take_chunk(completion, _parse_json(event.encode(), where), on_chunk, message_key="delta")
    except urllib.error.HTTPError as exc:
        raise _http_error(exc, where) from None
    except urllib.error.URLError as exc:
        raise LLMUnavailable(f"Cannot reach the LLM server at {where}: {exc.reason}") from None
    except TimeoutError:
        raise LLMUnavailable(f"The LLM server at {where} sent nothing for {request.timeout:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise LLMUnavailable(f"The connection to the LLM server at {where} failed: {exc!r}") from None
    if not completion.done and completion.finish_reason is None:
        raise LLMUnavailable(f"The LLM server at {where} ended the stream before finishing the answer")
    return completion


def _sse_events(response: http.client.HTTPResponse) -> Iterator[str]:
    """The data of each Server-Sent Event; multi-line data is joined with newlines."""
    data: list[str] = []
    for raw in response:
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise LLMUnavailable(f"The LLM server sent a line that is not UTF-8: {raw[:200]!r}") from None
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        # Comments (":"), "event:", "id:" and "retry:" lines carry nothing we use.
    if data:
        yield "\n".join(data)


def _parse_json(raw: bytes, where: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LLMUnavailable(f"The LLM server at {where} sent data that is not JSON: {raw[:200]!r}") from None
    if not isinstance(value, dict):
        raise LLMUnavailable(f"The LLM server at {where} sent JSON that is not an object: {raw[:200]!r}")
    return value


def _take_chunk(
    completion: ChatCompletion, chunk: dict[str, Any], on_chunk: Callable[[int], None], message_key: str
) -> None:
    """Fold one chunk (or a whole non-streamed answer) into `completion`."""
    if "error" in chunk:  # some servers report a failure inside an already-started stream
        raise LLMUnavailable(f"The LLM server reported an error mid-stream: {_error_text(chunk)}")
    if isinstance(chunk.get("model"), str) and chunk["model"]:
        completion.model = chunk["model"]
    usage = chunk.get("usage")
    if isinstance(usage, dict) and all(isinstance(usage.get(key), int) for key in USAGE_KEYS):
        completion.usage = {key: int(usage[key]) for key in USAGE_KEYS}
    for choice in chunk.get("choices") or []:
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue
        holder = choice.get(message_key)
        content = holder.get("content") if isinstance(holder, dict) else None
        if isinstance(content, str) and content:
            completion.parts.append(content)
            on_chunk(completion.chunks)
        if isinstance(choice.get("finish_reason"), str):
            completion.finish_reason = choice["finish_reason"]


def _http_error(exc: urllib.error.HTTPError, where: str) -> Exception:
    """LLMUnavailable for statuses worth retrying, PermanentError (with the server's words) for the rest."""
    try:
        raw = exc.read(MAX_ERROR_BODY)
    except (OSError, http.client.HTTPException):
        raw = b""
    try:
        message = _error_text(json.loads(raw))
    except (UnicodeDecodeError, json.JSONDecodeError):
        message = raw.decode("utf-8", errors="replace").strip()[:500]
    message = message or exc.reason or "no message"
    if exc.code in RETRYABLE_STATUSES or exc.code >= 500:
        return LLMUnavailable(f"The LLM server at {where} answered {exc.code}: {message}")
    return PermanentError(f"The LLM server rejected the request ({exc.code}): {message}")


def _error_text(body: Any) -> str:
    """The message of an OpenAI-style `{"error": {"message": ...}}` body (or of a looser variant)."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])[:1000]
    if isinstance(error, str):
        return error[:1000]
    return json.dumps(body)[:500]
