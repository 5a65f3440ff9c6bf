"""A real OpenAI-compatible chat server on 127.0.0.1, in a thread of the test process: text_generation's
unit tests, its integration tests (workers reach it through RUNNER_LLM_BASE_URL) and the worker's
"many jobs that wait" tests use it.

The reply is the user prompt's words upper-cased, one SSE chunk each (see `reply_chunks`).
`chunk_delay` makes it a slow server: it waits that long before each chunk, as an LLM that takes
its time per token; `peak_in_flight` says how many answers it was streaming at once at most.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeLLMServer(ThreadingHTTPServer):
    """A real OpenAI-compatible chat server on 127.0.0.1 that streams the prompt back in upper case.

    The reply is the user prompt's words, one SSE chunk each, cut at max_tokens. A prompt whose first
    word is a scenario ("!429", "!500", "!400", "!401", "!slow", "!drop", "!json", "!garbage",
    "!nousage") answers that way instead; "!flaky" answers 429 the first time it sees a prompt;
    "!gated" streams half its chunks, then waits for `gate`. Usage counts prompt characters, so it
    differs from ours. With `chunk_delay` (seconds, changeable at any time) it waits that long before
    each content chunk of every streamed answer.
    """

    daemon_threads = True
    request_queue_size = 128  # many workers' jobs connect at the same moment

    def __init__(self, chunk_delay: float = 0.0) -> None:
        super().__init__(("127.0.0.1", 0), FakeLLMHandler)
        self.chunk_delay = chunk_delay
        self.in_flight = 0  # requests being answered now
        self.peak_in_flight = 0  # the most ever answered at once
        self.counting = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()  # "!slow" waits on it instead of answering
        self.gate = threading.Event()  # "!gated" waits on it halfway through its stream
        self.seen: set[str] = set()
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gives up mid-stream (as text_generation does on garbage) is expected here.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    @property
    def base_url(self) -> str:
        """The server's base URL (without /v1)."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    def environment(self) -> dict[str, str]:
        """What points text_generation at this server (a worker's environment, or monkeypatched)."""
        return {"RUNNER_LLM_BASE_URL": self.base_url, "NO_PROXY": "127.0.0.1"}

    def __enter__(self) -> FakeLLMServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release.set()
        self.gate.set()
        self.shutdown()
        self.server_close()
        self.thread.join(5)


def reply_chunks(prompt: str) -> list[str]:
    """What the fake server streams for `prompt`: its upper-cased words, spaces kept."""
    words = prompt.upper().split()
    return [words[0], *(f" {word}" for word in words[1:])]


class FakeLLMHandler(BaseHTTPRequestHandler):
    """Serves POST /v1/chat/completions as described by FakeLLMServer."""

    protocol_version = "HTTP/1.1"
    server: FakeLLMServer

    def log_message(self, format: str, *args: Any) -> None:
        return  # keep test output clean

    def do_POST(self) -> None:
        with self.server.counting:
            self.server.in_flight += 1
            self.server.peak_in_flight = max(self.server.peak_in_flight, self.server.in_flight)
        try:
            self.answer()
        finally:
            with self.server.counting:
                self.server.in_flight -= 1

    def answer(self) -> None:
        """One request, answered as its scenario says."""
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        prompt = body["messages"][-1]["content"]
        scenario = prompt.split()[0] if prompt.startswith("!") else "!stream"
        if scenario == "!flaky" and prompt not in self.server.seen:
            self.server.seen.add(prompt)
            scenario = "!429"
        if scenario in ("!429", "!500", "!400", "!401"):
            message = {"!429": "Rate limit reached", "!500": "The engine crashed", "!400": "max_tokens is too large",
                       "!401": "Incorrect API key provided"}[scenario]
            self.send_json(int(scenario[1:]), {"error": {"message": message, "type": "invalid_request_error"}})
            return
        if scenario == "!slow":
            self.server.release.wait(10)
            return
        chunks = reply_chunks(prompt)[: body["max_tokens"]]
        finish = "length" if len(chunks) < len(reply_chunks(prompt)) else "stop"
        characters = sum(len(message["content"]) for message in body["messages"])
        usage = {"prompt_tokens": characters, "completion_tokens": len(chunks)}
        usage["total_tokens"] = characters + len(chunks)
        if scenario == "!json":
            choice = {"index": 0, "message": {"role": "assistant", "content": "".join(chunks)}, "finish_reason": finish}
            self.send_json(200, {"model": "fake-json", "choices": [choice], "usage": usage})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.send_event(": keep-alive comment\n\n")
        self.send_event(data={"model": "fake-model", "choices": [{"index": 0, "delta": {"role": "assistant"}}]})
        for number, chunk in enumerate(chunks):
            if scenario == "!garbage" and number == 1:
                self.send_event("data: {not json\n\n")
            if scenario == "!gated" and number == len(chunks) // 2:
                self.server.gate.wait(10)
            if scenario == "!drop" and number == 2:
                self.wfile.write(b"0\r\n\r\n")  # end of body, no finish_reason, no [DONE]
                return
            if self.server.chunk_delay:
                time.sleep(self.server.chunk_delay)  # a slow model: each token takes its time
            self.send_event(data={"model": "fake-model", "choices": [{"index": 0, "delta": {"content": chunk}}]})
        self.send_event(data={"model": "fake-model", "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        if scenario != "!nousage":
            self.send_event(data={"model": "fake-model", "choices": [], "usage": usage})
        self.send_event("data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def send_json(self, status: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def send_event(self, text: str = "", data: dict[str, Any] | None = None) -> None:
        """One HTTP chunk holding `text` or one `data:` event, flushed at once as a real stream would be."""
        raw = (text or f"data: {json.dumps(data)}\n\n").encode()
        self.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
        self.wfile.flush()
