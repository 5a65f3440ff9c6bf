"""A streaming client for OpenAI-compatible `POST /v1/chat/completions`, on httpx's async client: a
coroutine that waits on the server holds no thread, so one worker streams many answers at once.

Failures worth retrying (HTTP 408/429/5xx, timeouts, refused or dropped connections, a garbled
stream) raise `LLMUnavailable`; a request the server will never accept (other 4xx) raises
`PermanentError` carrying the server's own error message.
"""

from __future__ import annotations

import functools
import json
import os
import ssl
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, urlsplit

import httpx

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


async def stream_chat(request: ChatRequest, on_chunk: Callable[[int], Awaitable[None]]) -> ChatCompletion:
    """POST the request with `stream: true` and assemble the answer as its chunks arrive (awaiting
    `on_chunk(count)` after each content chunk)."""
    parts = _endpoint(request)
    where = parts.netloc
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream",
               # A compressing server or proxy may hold an event stream back to fill its buffers.
               "Accept-Encoding": "identity"}
    if request.api_key:
        headers["Authorization"] = f"Bearer {request.api_key}"
    completion = ChatCompletion(model=request.model)
    try:
        async with _client(request, parts.scheme, where) as client, client.stream(
            "POST", request.url, content=json.dumps(request.body()).encode(), headers=headers
        ) as response:
            if not 200 <= response.status_code < 300:
                raise await _http_error(response, where)
            if _content_type(response) == "application/json":
                # A server that ignores `stream` answers with one complete JSON body.
                body = _parse_json(await response.aread(), where)
                await _take_chunk(completion, body, on_chunk, message_key="message")
                completion.done = True
            else:
                await _read_events(response, completion, on_chunk, where)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.WriteError, httpx.WriteTimeout) as exc:
        raise LLMUnavailable(f"Cannot reach the LLM server at {where}: {_reason(exc)}") from None
    except httpx.InvalidURL as exc:  # a host or port no request can reach: no retry will change it
        raise PermanentError(f"RUNNER_LLM_BASE_URL is not a usable URL: {exc}") from None
    except httpx.ReadTimeout:
        raise LLMUnavailable(f"The LLM server at {where} sent nothing for {request.timeout:g} s") from None
    except (httpx.HTTPError, OSError) as exc:
        raise LLMUnavailable(f"The connection to the LLM server at {where} failed: {exc!r}") from None
    if not completion.done and completion.finish_reason is None:
        raise LLMUnavailable(f"The LLM server at {where} ended the stream before finishing the answer")
    return completion


def _endpoint(request: ChatRequest) -> SplitResult:
    """The parts of the request's URL; PermanentError unless it is http(s) with a host and a valid port."""
    try:
        parts = urlsplit(request.url)
        parts.port  # noqa: B018 (raises ValueError for a port outside 0-65535)
    except ValueError as exc:  # "Invalid IPv6 URL", "Port out of range"
        raise PermanentError(f"RUNNER_LLM_BASE_URL is not a usable URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # Only ever talk HTTP to the LLM server, whatever the variable says.
        raise PermanentError("RUNNER_LLM_BASE_URL must be an http:// or https:// URL with a host.")
    return parts


async def _read_events(
    response: httpx.Response, completion: ChatCompletion, on_chunk: Callable[[int], Awaitable[None]], where: str
) -> None:
    """Fold the stream's events into `completion` until `[DONE]` or the end of the body."""
    events = SSEParser()
    async for data in response.aiter_bytes():
        if await _take_events(completion, events.feed(data), on_chunk, where):
            return
    await _take_events(completion, events.close(), on_chunk, where)


async def _take_events(
    completion: ChatCompletion, events: list[str], on_chunk: Callable[[int], Awaitable[None]], where: str
) -> bool:
    """Fold `events` into `completion`; whether the stream said `[DONE]`."""
    for event in events:
        if event == "[DONE]":
            completion.done = True
            return True
        await _take_chunk(completion, _parse_json(event.encode(), where), on_chunk, message_key="delta")
    return False


def _client(request: ChatRequest, scheme: str, where: str) -> httpx.AsyncClient:
    """A client for one request: the system's CA store and the proxy settings urllib would use
    (http_proxy/https_proxy less no_proxy), `timeout` for the connection and for each read."""
    proxy = None if urllib.request.proxy_bypass(where) else urllib.request.getproxies().get(scheme)
    if proxy and "://" not in proxy:
        proxy = f"http://{proxy}"  # urllib takes "host:port" for an HTTP proxy
    try:
        return httpx.AsyncClient(timeout=request.timeout, verify=_tls_context(), proxy=proxy, trust_env=False)
    except (ValueError, ImportError) as exc:  # a proxy URL httpx cannot use (socks5:// needs an extra package)
        raise PermanentError(f"The proxy for the LLM server, {proxy!r}, is not usable: {exc}") from None


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The system's trust store, as urllib used: built once, since building one takes ~20 ms of CPU."""
    return ssl.create_default_context()


def _content_type(response: httpx.Response) -> str:
    value: str = response.headers.get("content-type", "")
    return value.split(";")[0].strip().lower()


def _reason(exc: BaseException) -> str:
    """Why a connection failed, from the OS error under httpx's and anyio's wrappers ("All connection
    attempts failed"): "[Errno 111] Connection refused", as urllib said."""
    root: BaseException = exc
    for _ in range(10):  # httpx re-raises httpcore's error, which wraps anyio's, which wraps the OS's
        under = root.__cause__ or root.__context__
        if under is None:
            break
        root = under
    if isinstance(root, OSError) and isinstance(root.errno, int) and root.errno > 0:
        return f"[Errno {root.errno}] {os.strerror(root.errno)}"
    return str(root) or str(exc) or type(exc).__name__


class SSEParser:
    """Server-Sent Events from a byte stream: the data of each event, multi-line data joined with newlines."""

    def __init__(self) -> None:
        self.pending = bytearray()
        self.data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        """The events that `chunk` completes."""
        self.pending += chunk
        events: list[str] = []
        start = 0
        while (end := self.pending.find(b"\n", start)) >= 0:
            self._line(bytes(self.pending[start:end + 1]), events)
            start = end + 1
        del self.pending[:start]
        return events

    def close(self) -> list[str]:
        """The events left when the stream ends (a last line without its newline, an event without its blank line)."""
        events: list[str] = []
        if self.pending:
            self._line(bytes(self.pending), events)
            self.pending.clear()
        if self.data:
            events.append("\n".join(self.data))
            self.data = []
        return events

    def _line(self, raw: bytes, events: list[str]) -> None:
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise LLMUnavailable(f"The LLM server sent a line that is not UTF-8: {raw[:200]!r}") from None
        if not line:
            if self.data:
                events.append("\n".join(self.data))
                self.data = []
        elif line.startswith("data:"):
            self.data.append(line[5:].removeprefix(" "))
        # Comments (":"), "event:", "id:" and "retry:" lines carry nothing we use.


def _parse_json(raw: bytes, where: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LLMUnavailable(f"The LLM server at {where} sent data that is not JSON: {raw[:200]!r}") from None
    if not isinstance(value, dict):
        raise LLMUnavailable(f"The LLM server at {where} sent JSON that is not an object: {raw[:200]!r}")
    return value


async def _take_chunk(
    completion: ChatCompletion, chunk: dict[str, Any], on_chunk: Callable[[int], Awaitable[None]], message_key: str
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
            await on_chunk(completion.chunks)
        if isinstance(choice.get("finish_reason"), str):
            completion.finish_reason = choice["finish_reason"]


async def _http_error(response: httpx.Response, where: str) -> Exception:
    """LLMUnavailable for statuses worth retrying, PermanentError (with the server's words) for the rest."""
    raw = b""
    try:
        async for data in response.aiter_bytes():
            raw += data
            if len(raw) >= MAX_ERROR_BODY:
                break
    except (httpx.HTTPError, OSError):
        pass  # the status says enough
    raw = raw[:MAX_ERROR_BODY]
    try:
        message = _error_text(json.loads(raw))
    except (UnicodeDecodeError, json.JSONDecodeError):
        message = raw.decode("utf-8", errors="replace").strip()[:500]
    message = message or response.reason_phrase or "no message"
    status = response.status_code
    if status in RETRYABLE_STATUSES or status >= 500:
        return LLMUnavailable(f"The LLM server at {where} answered {status}: {message}")
    return PermanentError(f"The LLM server rejected the request ({status}): {message}")


def _error_text(body: Any) -> str:
    """The message of an OpenAI-style `{"error": {"message": ...}}` body (or of a looser variant)."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])[:1000]
    if isinstance(error, str):
        return error[:1000]
    return json.dumps(body)[:500]
