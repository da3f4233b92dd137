"""JSON over HTTP to an inference server, with the retries a paid API needs and none it must not have.

Retried, with exponential backoff and jitter (or the server's `Retry-After`): a refused or dropped connection,
a timeout, 429 (rate limit) and 5xx. Not retried: any other 4xx (a bad key, an unknown model or route, a
malformed request), which no amount of waiting fixes; its error says what the server answered. No wait is longer
than `MAX_WAIT` seconds, jitter included, whatever `Retry-After` asks.

A server is not trusted with this process's memory: an answer larger than `max_response_bytes` is refused (not
retried) before it is read whole, and an answer that is not a JSON object is an `EndpointError`.
"""

from __future__ import annotations

import http.client
import json
import math
import random
import time
import urllib.error
import urllib.request
from typing import Any

from ...utils.logging import get_logger

logger = get_logger(__name__)

RETRIED_STATUS = {408, 409, 425, 429}  # and every 5xx
MAX_WAIT = 60.0  # seconds: the longest wait before a retry, jitter and `Retry-After` included
MAX_RESPONSE_BYTES = 16 << 20  # the default cap on one answer: a per-token embedding of 4,096 tokens x 1,024 floats


class EndpointError(RuntimeError):
    """The endpoint refused a request, or kept failing past `max_retries`."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class HTTPClient:
    """JSON requests with retries, safe to share between threads. The API key goes in a bearer header, never in
    a log or an error message. The standard library's client: no dependency, and a fresh connection per request
    is no cost next to a model's answer.

    Args:
        base_url (`str`): prefix of relative routes.
        api_key (`str`, *optional*): bearer token.
        timeout (`float`): seconds to wait for a response before retrying.
        max_retries (`int`): retries after the first attempt.
        backoff (`float`): seconds before the first retry, doubled for each next one (capped at `MAX_WAIT`).
        max_response_bytes (`int`): the largest answer accepted.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout: float,
        max_retries: int,
        backoff: float,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_response_bytes = max_response_bytes
        self.requests = 0  # HTTP requests sent, retries included
        self.retries = 0

    def post(self, route: str, payload: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", route, payload)

    def get(self, route: str) -> dict[str, Any]:
        return self.request("GET", route)

    def request(self, method: str, route: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        """The JSON answer of `route`: relative to `base_url`, or a whole URL."""
        url = route if route.startswith(("http://", "https://")) else f"{self.base_url}/{route.lstrip('/')}"
        data = None if payload is None else json.dumps(payload).encode()
        for attempt in range(self.max_retries + 1):
            wait = self.backoff * 2**attempt
            self.requests += 1
            try:
                request = urllib.request.Request(url, data=data, headers=self.headers, method=method)
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    body = self._read_capped(response, method, url)
                try:
                    answer = json.loads(body)
                except (ValueError, RecursionError):
                    answer = None
                if not isinstance(answer, dict):
                    raise EndpointError(
                        f"{method} {url} answered {response.status} with no JSON object (got {body[:120]!r}): is "
                        "this an OpenAI-compatible server?"
                    )
                return answer
            except urllib.error.HTTPError as err:
                problem = f"HTTP {err.code}: {_server_message(err)}"
                if err.code < 500 and err.code not in RETRIED_STATUS:
                    raise EndpointError(f"{method} {url} was refused ({problem}).", err.code) from None
                wait = _retry_after(err.headers, wait)
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as err:
                problem = f"{type(err).__name__}: {getattr(err, 'reason', None) or err or 'no answer'}"
            if attempt == self.max_retries:
                raise EndpointError(
                    f"{method} {url} failed {attempt + 1} times; last: {problem}. Answers received so far are "
                    "cached: run again (with a larger `max_retries` or `timeout` if the server is slow) to resume."
                )
            self.retries += 1
            wait = min(MAX_WAIT, wait * (1 + 0.25 * random.random()))  # jitter: workers do not retry in lockstep
            logger.warning("%s %s: %s; retry %d of %d in %.1f s", method, url, problem, attempt + 1,
                           self.max_retries, wait)  # fmt: skip
            time.sleep(wait)
        raise AssertionError("unreachable")

    def _read_capped(self, response: Any, method: str, url: str) -> bytes:
        """The body of `response`, refused (not retried: a server that sends too much will again) past the cap."""
        declared = response.headers.get("Content-Length") or ""
        body = b""
        too_large = declared.isdigit() and int(declared) > self.max_response_bytes
        if not too_large:
            body = response.read(self.max_response_bytes + 1)
            too_large = len(body) > self.max_response_bytes
        if too_large:
            raise EndpointError(
                f"{method} {url} answered with more than {self.max_response_bytes:,d} bytes, the most accepted: "
                "raise `Endpoint(max_response_bytes=...)` if this server's answers are really that large."
            )
        return body


def _server_message(error: urllib.error.HTTPError) -> str:
    """The error message a server put in its body (OpenAI's `{"error": {"message": ...}}` or FastAPI's
    `{"detail": ...}`), else the start of the body."""
    try:
        text = error.read().decode("utf-8", "replace")
    except OSError:
        return str(error.reason)
    try:
        body = json.loads(text)
    except ValueError:
        return text[:300] or str(error.reason)
    if isinstance(body, dict):
        body = body.get("error", body.get("detail", body))
        if isinstance(body, dict):
            body = body.get("message", body)
    return str(body)[:300]


def _retry_after(headers: Any, default: float) -> float:
    """The server's `Retry-After` in seconds when it gives one, else `default` (the caller caps either)."""
    try:
        seconds = float(headers.get("Retry-After", ""))
    except (TypeError, ValueError):
        return default
    return max(0.0, seconds) if math.isfinite(seconds) else default
