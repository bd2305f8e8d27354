"""llama-cpp-python's server as a baseline: its OpenAI completions stream, over one pooled client.

Its only cancel is a disconnect, so what is measured for it is what the next
request pays: how long it waits for the abandoned one to let go.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from bench.harness.background import events_of
from bench.harness.runs import DisconnectRun, StreamRun

DONE = "[DONE]"


class PeerClient:
    def __init__(self, url: str, *, timeout: float = 600.0) -> None:
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_keepalive_connections=4),
        )

    def close(self) -> None:
        self.http.close()

    def warm_up(self) -> None:
        self.stream("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n", max_tokens=64)

    def forget_prompt(self) -> None:
        """Make the server's cached prompt one nobody shares, so the next is evaluated in full.

        It reuses the KV cache of the longest prefix shared with the previous prompt; the
        worker, with a fresh context per job, never does. Called before the pause that
        precedes a measured request, so the server is idle when it comes.
        """
        self.stream("\n", max_tokens=1)

    @staticmethod
    def _body(prompt: str, max_tokens: int) -> dict[str, Any]:
        return {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stream": True}

    def stream(self, prompt: str, max_tokens: int) -> StreamRun:
        run = StreamRun(sent_at=time.perf_counter())
        with self.http.stream("POST", "/v1/completions", json=self._body(prompt, max_tokens)) as response:
            _check(response)
            for event in events_of(response):
                if event.raw == DONE:
                    break
                choice = event.data["choices"][0]
                if choice.get("text"):
                    run.token_times.append(event.at)
                if choice.get("finish_reason"):
                    run.stop_reason = choice["finish_reason"]
        return run

    def first_token(self, prompt: str) -> StreamRun:
        return self.stream(prompt, max_tokens=1)

    def abandon_after_tokens(self, prompt: str, after: int, max_tokens: int) -> int:
        """Read `after` tokens, then disconnect; returns the tokens read."""
        seen = 0
        with self.http.stream("POST", "/v1/completions", json=self._body(prompt, max_tokens)) as response:
            _check(response)
            for event in events_of(response):
                if event.raw == DONE:
                    raise RuntimeError(f"peer finished before {after} tokens")
                if event.data["choices"][0].get("text"):
                    seen += 1
                    if seen >= after:
                        break
        # Leaving the block closed the half-read response, and with it the connection.
        return seen

    def abandon_after_delay(self, prompt: str, delay_s: float, max_tokens: int) -> None:
        """Disconnect `delay_s` after sending the request (during a long prompt)."""
        sent = time.perf_counter()
        with self.http.stream("POST", "/v1/completions", json=self._body(prompt, max_tokens)) as response:
            _check(response)
            left = sent + delay_s - time.perf_counter()
            if left > 0:
                time.sleep(left)

    def disconnect_after_tokens(self, prompt: str, after: int, max_tokens: int, next_prompt: str) -> DisconnectRun:
        """Go away after `after` tokens, then time the next request's first token."""
        seen = self.abandon_after_tokens(prompt, after, max_tokens)
        return DisconnectRun(tokens_before=seen, next_ttft_ms=self.first_token(next_prompt).ttft_ms)

    def disconnect_after_delay(self, prompt: str, delay_s: float, max_tokens: int, next_prompt: str) -> DisconnectRun:
        self.abandon_after_delay(prompt, delay_s, max_tokens)
        return DisconnectRun(tokens_before=0, next_ttft_ms=self.first_token(next_prompt).ttft_ms)


def _check(response: httpx.Response) -> None:
    if response.status_code != 200:
        response.read()
        raise RuntimeError(f"peer answered {response.status_code}: {response.text}")
