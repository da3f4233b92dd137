"""DecT over a real OpenAI-compatible endpoint: llama.cpp's server (llama-cpp-python) on the loopback address,
serving SmolLM2-135M-Instruct. Marked `endpoint`: `make test-endpoint` runs them after `make setup-endpoint`
builds the server (CI does both, as a step of its own)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from hf_frozen import AutoFrozenModel, DecTConfig, Endpoint, get_frozen_model
from hf_frozen.dect import EndpointError

from .llama_server import API_KEY, MODEL_NAME, FaultProxy, LlamaServer

pytestmark = pytest.mark.endpoint

# SmolLM2's chat turn written into the template: the completion route does not apply chat templates.
TEMPLATE = (
    "<|im_start|>user\nClassify the sentiment of the movie review as positive or negative.\nReview: {text}"
    "<|im_end|>\n<|im_start|>assistant\nThis movie review is{answer}"
)
WORDS = ["negative", "positive"]
POSITIVE = ["A gripping, beautiful film.", "The best movie of the year, funny and moving.",
            "I loved every minute.", "Brilliant acting and a clever story.", "A warm, wonderful delight.",
            "Smart, tender and very funny."]  # fmt: skip
NEGATIVE = ["A dull, tedious mess.", "The worst film I have seen in years.", "Boring from start to finish.",
            "Clumsy writing and wooden acting.", "An ugly, pointless waste of time.",
            "Tiresome and badly made."]  # fmt: skip


@pytest.fixture(scope="module")
def server():
    server = LlamaServer().start()
    yield server
    server.kill()


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)


def config(**kwargs) -> DecTConfig:
    return DecTConfig(template=TEMPLATE, label_words=WORDS, labels=["neg", "pos"], **kwargs)


def endpoint(url: str, **kwargs) -> Endpoint:
    return Endpoint(url, MODEL_NAME, **{"backoff": 0.05, **kwargs})


def write_csv(path, rows):
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)


def test_llama_cpp_is_built_for_the_portable_baseline():
    """`make setup-endpoint` builds ggml for AVX2 and never natively: a native build took AMX kernels on CPUs that
    have them, and those segfaulted on the first embeddings request (see the Makefile). This machine kind has
    AVX-512, so a native build here shows `AVX512 = 1` and fails this test too, also where the CPU has no AMX."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    info = info.decode() if isinstance(info, bytes) else str(info)
    enabled = {name.split(":")[-1].strip() for name, _, value in (f.partition("=") for f in info.split("|"))
               if value.strip() == "1"}  # fmt: skip
    assert "AVX2" in enabled, info
    assert not {f for f in enabled if f.startswith(("AMX", "AVX512"))}, info


def test_command_trains_and_evaluates_against_the_server(server, tmp_path, caplog):
    train = [(t, "pos") for t in POSITIVE[:4]] + [(t, "neg") for t in NEGATIVE[:4]]
    test = [(t, "pos") for t in POSITIVE[4:]] + [(t, "neg") for t in NEGATIVE[4:]]
    write_csv(tmp_path / "train.csv", train)
    write_csv(tmp_path / "test.csv", test)
    command = [sys.executable, "-m", "hf_frozen.cli", "dect", "--endpoint", server.url,
               "--model_name_or_path", MODEL_NAME, "--train_file", str(tmp_path / "train.csv"),
               "--test_file", str(tmp_path / "test.csv"), "--template", TEMPLATE, "--label_words", *WORDS,
               "--labels", "neg", "pos", "--output_dir", str(tmp_path / "out"),
               "--query_cache_dir", str(tmp_path / "cache")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OPENAI_API_KEY": API_KEY})
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["backbone_queries"] == 8 + 4 + 1, "one query per example, plus the empty input for calibration"
    assert metrics["test"]["dect"]["num_examples"] == 4
    assert metrics["test"]["zero_shot"]["accuracy"] >= 0.75, "SmolLM2 reads these obvious reviews right"
    assert metrics["endpoint_requests"] >= 2 * 13, "a completion and an embedding per query"
    # The key is in no file written and in nothing printed.
    for path in [*(tmp_path / "out").rglob("*"), *(tmp_path / "cache").rglob("*")]:
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path
    assert API_KEY not in done.stdout + done.stderr

    # The head is reloaded onto the endpoint the caller passes, never the recorded URL (the key comes from the
    # environment again); it predicts what the saved head predicts, querying only texts the cache lacks.
    with pytest.raises(ValueError, match="never contacts a URL named in an artifact"):
        AutoFrozenModel.from_pretrained(tmp_path / "out")
    with caplog.at_level(logging.INFO):
        loaded = AutoFrozenModel.from_pretrained(tmp_path / "out", endpoint=Endpoint(server.url, MODEL_NAME))
    assert loaded.record.backbone_kind == "endpoint"
    assert loaded.record.endpoint == {"base_url": server.url, "model": MODEL_NAME, "api_key_env": "OPENAI_API_KEY",
                                      "label_scores": "constrained", "top_logprobs": 20}  # fmt: skip
    predictions = loaded.predict([t for t, _ in test])
    assert np.mean([p == label for p, (_, label) in zip(predictions, test, strict=True)]) == pytest.approx(
        metrics["test"]["dect"]["accuracy"]
    )
    assert API_KEY not in caplog.text


def test_constrained_scores_are_exact_and_the_floor_is_not(server):
    """With top_logprobs=1, every class but the top one misses the top-k: the constrained query recovers its
    exact log-probability (equal to what a top-20 query returns), the floor only bounds it."""
    texts = POSITIVE[:3] + NEGATIVE[:3]
    scores = {}
    for mode, k in [("constrained", 20), ("constrained", 1), ("floor", 1)]:
        dect = get_frozen_model(endpoint(server.url, label_scores=mode, top_logprobs=k), config())
        hidden, scores[mode, k] = dect.extract(texts)
        assert hidden.shape == (6, 576) and dect.num_queries == 6
    np.testing.assert_allclose(scores["constrained", 1], scores["constrained", 20], atol=1e-4)
    floor = scores["floor", 1].numpy()
    assert (floor.min(1) == floor.max(1)).all(), "the floor gives the missing class the top token's score"
    exact = scores["constrained", 20].numpy()
    assert (np.abs(exact[:, 0] - exact[:, 1]) > 1e-3).all()


def test_bad_key_and_unknown_model_are_named(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    with pytest.raises(EndpointError, match="refused the API key .*'OPENAI_API_KEY'") as raised:
        get_frozen_model(endpoint(server.url), config())
    assert "sk-wrong" not in str(raised.value)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    with pytest.raises(ValueError, match="`model` 'gpt-9' is not served at .* it serves \\['smollm2'\\]"):
        get_frozen_model(Endpoint(server.url, "gpt-9"), config())
    with pytest.raises(ValueError, match="`base_url` must be an http"):
        Endpoint("127.0.0.1:8000/v1", MODEL_NAME)
    with pytest.raises(ValueError, match="chat_template=True"):
        get_frozen_model(endpoint(server.url), config(chat_template=True))


def test_rate_limits_and_slow_answers_are_retried(server):
    texts = POSITIVE[:2] + NEGATIVE[:2]
    direct = get_frozen_model(endpoint(server.url), config())
    expected = direct.extract(texts)
    target = server.url.removeprefix("http://").removesuffix("/v1")
    with FaultProxy(target, rate_limited=3) as proxy:
        dect = get_frozen_model(endpoint(proxy.url, concurrency=2), config())
        got = dect.extract(texts)
        assert sum(status == 429 for _, status in proxy.seen) == 3
        assert dect.backbone.client.retries == 3 and dect.num_queries == 4
    with FaultProxy(target, slow=1, delay=3.0) as proxy:
        dect = get_frozen_model(endpoint(proxy.url, timeout=1.0, concurrency=1), config())
        slow = dect.extract(texts)
        assert dect.backbone.client.retries >= 1, "the slow answer timed out and was asked again"
    for answer in (got, slow):
        np.testing.assert_allclose(answer[0], expected[0], atol=1e-4)
        np.testing.assert_allclose(answer[1], expected[1], atol=1e-4)
    with FaultProxy(target, rate_limited=100) as proxy:
        dect = get_frozen_model(endpoint(proxy.url, max_retries=2), config())
        with pytest.raises(EndpointError, match="failed 3 times; last: HTTP 429: Rate limit reached"):
            dect.extract(texts)


def test_a_run_killed_with_the_server_resumes_without_paying_twice(tmp_path):
    """The server dies mid-run: every answer received is cached; after a restart, the run asks only the rest."""
    texts = [f"Review number {i}: " + (POSITIVE + NEGATIVE)[i % 12] for i in range(24)]
    server = LlamaServer().start()
    cache = tmp_path / "cache"
    try:
        # The floor mode sends exactly two requests per query (completion, embedding): the count below is exact.
        killed = endpoint(server.url, concurrency=1, max_retries=1, label_scores="floor")
        dect = get_frozen_model(killed, config(query_cache_dir=str(cache)))
        dect.show_progress = False
        failure: list[BaseException] = []

        def run():
            try:
                dect.extract(texts)
            except BaseException as err:  # noqa: BLE001 - handed to the test thread
                failure.append(err)

        worker = threading.Thread(target=run)
        worker.start()
        deadline = time.monotonic() + 120
        while len(list(cache.rglob("*.safetensors"))) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.kill()
        worker.join(60)
        assert failure and isinstance(failure[0], EndpointError), failure
        assert "Answers received so far are cached" in str(failure[0])
        cached = len(list(cache.rglob("*.safetensors")))
        assert 6 <= cached < 24 and dect.num_queries == cached

        server = LlamaServer(port=server.port).start()
        resumed = get_frozen_model(endpoint(server.url, label_scores="floor"), config(query_cache_dir=str(cache)))
        requests_before = resumed.backbone.client.requests
        hidden, scores = resumed.extract(texts)
        assert resumed.num_queries == 24 - cached, "each cached answer is not paid for again"
        assert resumed.backbone.client.requests - requests_before == 2 * (24 - cached)
        assert hidden.shape == (24, 576) and np.isfinite(scores.numpy()).all()
        fresh = get_frozen_model(endpoint(server.url, label_scores="floor"), config())
        np.testing.assert_allclose(fresh.extract(texts)[1], scores, atol=1e-4)
    finally:
        server.kill()
