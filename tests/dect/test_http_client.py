"""A hostile or broken OpenAI-compatible server, scripted on the loopback address: every malformed answer is a clear
`EndpointError`, no answer is read past its size cap, and no wait is longer than the documented cap."""

from __future__ import annotations

import http.server
import json
import threading

import pytest

import hf_frozen.dect.backbones.http_client as http_client
from hf_frozen import DecTConfig, Endpoint, get_frozen_model
from hf_frozen.dect import EndpointError

CONFIG = DecTConfig(template="Review: {text} Sentiment:{answer}", label_words=["bad", "good"])


class ScriptedServer:
    """Answers each route with `routes[path](body) -> (status, headers, bytes)`, on 127.0.0.1."""

    def __init__(self, routes: dict) -> None:
        self.routes = routes
        self.requests = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                outer.requests.append(self.path)
                status, headers, data = outer.routes.get(self.path, lambda b: (404, {}, b"{}"))(body)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"


def ok(value) -> callable:
    return lambda body: (200, {}, json.dumps(value).encode())


def working_routes(embedding_sizes=None) -> dict:
    """A minimal server that DecT can use: one model, a tokenizer, completions and embeddings."""
    sizes = iter(embedding_sizes or [])
    return {
        "/v1/models": ok({"data": [{"id": "m"}]}),
        "/extras/tokenize": lambda body: (200, {}, json.dumps({"tokens": [len(body["input"].strip())]}).encode()),
        "/extras/detokenize": lambda body: (200, {}, json.dumps({"text": f"t{body['tokens'][0]}"}).encode()),
        "/v1/completions": ok({"choices": [{"logprobs": {"top_logprobs": [{"t3": -0.5, "t4": -1.0}]}}]}),
        "/v1/embeddings": lambda body: (
            200,
            {},
            json.dumps({"data": [{"embedding": [0.5] * next(sizes, 8)}]}).encode(),
        ),
    }


@pytest.fixture
def no_sleep(monkeypatch):
    waits = []
    monkeypatch.setattr(http_client.time, "sleep", waits.append)
    return waits


def test_retry_after_waits_are_capped_jitter_included(no_sleep):
    server = ScriptedServer({"/v1/models": lambda body: (429, {"Retry-After": "3600"}, b'{"error": "slow down"}')})
    with pytest.raises(EndpointError, match="failed 4 times; last: HTTP 429"):
        get_frozen_model(Endpoint(server.url, "m", max_retries=3), CONFIG)
    assert len(no_sleep) == 3 and max(no_sleep) <= http_client.MAX_WAIT


def test_an_oversized_answer_is_refused_not_read(no_sleep):
    huge = json.dumps({"data": [{"id": "m", "padding": "x" * 3_000_000}]}).encode()
    server = ScriptedServer({"/v1/models": lambda body: (200, {}, huge)})
    with pytest.raises(
        EndpointError, match=r"more than 1,000,000 bytes, the most accepted: raise .*max_response_bytes"
    ):
        get_frozen_model(Endpoint(server.url, "m", max_response_bytes=1_000_000), CONFIG)
    assert len(server.requests) == 1, "an oversized answer is not retried"


@pytest.mark.parametrize(
    "route, answer, message",
    [
        ("/v1/models", [{"id": "m"}], "no JSON object"),
        ("/v1/models", {"data": {"id": "m"}}, "not a model list"),
        ("/extras/tokenize", {"ids": [1, 2]}, "without a `tokens` list of token ids"),
        ("/extras/tokenize", {"tokens": ["a"]}, "without a `tokens` list of token ids"),
        ("/extras/detokenize", {"text": 5}, "without the token's text"),
    ],
)
def test_malformed_answers_are_named(route, answer, message, no_sleep):
    server = ScriptedServer({**working_routes(), route: ok(answer)})
    with pytest.raises(EndpointError, match=message):
        get_frozen_model(Endpoint(server.url, "m"), CONFIG)


@pytest.mark.parametrize(
    "sizes, message",
    [([8, 9], "embedding of size 9 after ones of size 8: the server changed model mid-run"),
     ([1 << 17], "at most 65,536 numbers")],
)  # fmt: skip
def test_embeddings_that_change_size_or_are_huge_are_refused(sizes, message, no_sleep):
    server = ScriptedServer(working_routes(embedding_sizes=sizes))
    dect = get_frozen_model(Endpoint(server.url, "m", concurrency=1), CONFIG)
    dect.show_progress = False
    with pytest.raises(EndpointError, match=message):
        dect.extract(["one text", "another text"])
