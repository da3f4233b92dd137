"""A model behind an OpenAI-compatible HTTP endpoint (vLLM, llama.cpp's server, TGI, a hosted API) as DecT's backbone.

One query per example, from the API's outputs only:

- **Label-word scores** from the completion route: one token (`max_tokens=1`, temperature 0) with the top-k
  log-probabilities of the next token (`logprobs=k`). A class scores its best label token found there. A class
  with none of its tokens in the top-k is, by `label_scores`:
  - `"constrained"` (default): asked once more, with `logit_bias` +100 on its label tokens only, so the reply is
    the class's most likely label token; servers report log-probabilities before the bias (OpenAI, vLLM,
    llama.cpp), so that token's log-probability is its true one. Exact, at one extra request per such class.
  - `"floor"`: given the smallest log-probability in the top-k, an upper bound on its true one. No extra
    request, but all such classes tie. docs/dect.md measures both against the exact scores.
- **Hidden states** from the embeddings route, on the same prompt: the last token's vector when the server
  returns one per token (the causal answer position, as the local backbone reads it), else the pooled one.

Label words' token ids come from the server's tokenize route (llama-cpp-python's `/extras/tokenize`, or the
`/tokenize` of vLLM and llama.cpp), so they match the served model's vocabulary.

The cache key holds the base URL, the model, its `/v1/models` entry, the label tokens and the scoring mode: a
different server, model or mode is a miss. The API key is read from the environment when the backbone is
built; it is never saved with a head, put in a cache key or logged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any, Literal

import numpy as np

from ...utils.fingerprint import fingerprint_json
from ..config import DecTConfig
from ..prompt import PromptTemplate
from .base import check_answer_comes_last
from .http_client import MAX_RESPONSE_BYTES, EndpointError, HTTPClient

LOGIT_BIAS = 100  # the largest bias OpenAI accepts: makes the biased tokens certain under greedy decoding
# The largest hidden size accepted from an embeddings route (the largest models have 16,384): a bigger vector is
# a broken or hostile server, not a model.
MAX_HIDDEN_SIZE = 1 << 16


@dataclasses.dataclass
class Endpoint:
    """Where and how to query a model behind an OpenAI-compatible API. Pass it to `get_frozen_model` as the model.

    Args:
        base_url (`str`): the API's base URL, with its version prefix, e.g. `"http://127.0.0.1:8000/v1"`.
        model (`str`): the served model's name, as `/v1/models` lists it.
        api_key_env (`str`, defaults to `"OPENAI_API_KEY"`): the environment variable holding the API key (unset or
            empty: no key is sent). Only the variable's name is ever saved.
        label_scores (`str`, defaults to `"constrained"`): what a class gets when none of its label tokens is in the
            returned top-k: `"constrained"` asks again with a logit bias on its tokens (exact), `"floor"` gives it
            the smallest returned log-probability (no extra request).
        top_logprobs (`int`, defaults to `20`): log-probabilities asked for per query (vLLM's default cap is 20,
            OpenAI's legacy completions allow 5).
        concurrency (`int`, defaults to `4`): requests in flight at once.
        timeout (`float`, defaults to `60.0`): seconds to wait for one response before retrying.
        max_retries (`int`, defaults to `5`): retries of a request after a timeout, a lost connection, 429 or 5xx.
        backoff (`float`, defaults to `1.0`): seconds before the first retry, doubled for each next one.
        max_response_bytes (`int`, defaults to 16 MiB): the largest answer accepted; a larger one is an error.
    """

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    label_scores: Literal["constrained", "floor"] = "constrained"
    top_logprobs: int = 20
    concurrency: int = 4
    timeout: float = 60.0
    max_retries: int = 5
    backoff: float = 1.0
    max_response_bytes: int = MAX_RESPONSE_BYTES

    def __post_init__(self) -> None:
        if not isinstance(self.base_url, str) or not self.base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"`base_url` must be an http(s) URL such as 'http://127.0.0.1:8000/v1', got {self.base_url!r}."
            )
        self.base_url = self.base_url.rstrip("/")
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"`model` must name the served model (as /v1/models lists it), got {self.model!r}.")
        if self.label_scores not in ("constrained", "floor"):
            raise ValueError(f"`label_scores` must be 'constrained' or 'floor', got {self.label_scores!r}.")
        for name in ("top_logprobs", "concurrency", "max_response_bytes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)!r}.")
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"`max_retries` must be a non-negative integer, got {self.max_retries!r}.")
        for name in ("timeout", "backoff"):
            value = getattr(self, name)
            if (
                not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
                or (name == "timeout" and value == 0)
            ):
                raise ValueError(f"`{name}` must be a positive number of seconds, got {value!r}.")

    @property
    def server_root(self) -> str:
        """The URL without its version prefix, where servers put their tokenize routes."""
        root = self.base_url
        for suffix in ("/v1", "/openai/v1"):
            if root.endswith(suffix):
                return root[: -len(suffix)]
        return root

    def client(self) -> HTTPClient:
        """An HTTP client for this endpoint, its API key read from the environment now (never stored)."""
        return HTTPClient(self.base_url, os.environ.get(self.api_key_env) or None, self.timeout, self.max_retries,
                          self.backoff, self.max_response_bytes)  # fmt: skip

    def saved_settings(self) -> dict[str, Any]:
        """What a saved head records to find the endpoint again: no key, only the variable that holds it."""
        fields = ("base_url", "model", "api_key_env", "label_scores", "top_logprobs")
        return {name: getattr(self, name) for name in fields}


class EndpointBackbone:
    """Queries an `Endpoint`: label-word scores from the completion route, hidden states from the embeddings route.

    `query_each` yields each example's answer as soon as it arrives, so the cache keeps every answer paid for
    even when a run stops halfway.
    """

    kind = "endpoint"

    def __init__(self, endpoint: Endpoint, config: DecTConfig, want_hidden: bool = True) -> None:
        if config.chat_template:
            raise ValueError(
                "`chat_template=True` needs the tokenizer's chat template, which an endpoint's completion route does "
                "not apply: write the chat turn into `template` yourself, or set `chat_template=False`."
            )
        self.endpoint = endpoint
        self.config = config
        self.prompt = PromptTemplate(config.template)
        check_answer_comes_last(self.prompt, "an endpoint backbone")
        self.client = endpoint.client()
        self.want_hidden = want_hidden  # False beside a feature model: the scorer's vectors would go unused
        self.hidden_size: int | None = None  # the embeddings route's size, from its first answer
        self.model_entry = served_model_entry(self.client, endpoint)
        self.label_ids = [self._label_token_ids(words) for words in config.label_words]
        self.token_class = self._token_strings()
        self.fingerprint = hashlib.sha256(
            fingerprint_json(["endpoint", endpoint.base_url, endpoint.model, self.model_entry]).encode()
        ).hexdigest()
        scoring = {"label_ids": self.label_ids, "label_scores": endpoint.label_scores}
        if not want_hidden:
            scoring["hidden"] = False  # cached answers without vectors are other answers
        if endpoint.label_scores == "floor":
            scoring["top_logprobs"] = endpoint.top_logprobs  # only the floor depends on k
        self.settings_fingerprint = fingerprint_json(scoring)

    # -- what the server serves ------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` in the served model's vocabulary, without special tokens."""
        root = self.endpoint.server_root
        attempts = [
            (f"{root}/extras/tokenize", {"input": text, "model": self.endpoint.model}),  # llama-cpp-python
            (
                f"{root}/tokenize",
                {"prompt": text, "content": text, "model": self.endpoint.model, "add_special_tokens": False},
            ),  # fmt: skip  # vLLM, llama.cpp's server
        ]
        for url, payload in attempts:
            try:
                answer = self.client.post(url, payload)
            except EndpointError as err:
                if err.status in (404, 405):
                    continue
                raise
            tokens = answer.get("tokens")
            if isinstance(tokens, list) and tokens and isinstance(tokens[0], dict):  # llama.cpp's `with_pieces`
                tokens = [t.get("id") if isinstance(t, dict) else None for t in tokens]
            if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
                raise EndpointError(
                    f"POST {url} answered {str(answer)[:200]}, without a `tokens` list of token ids: DecT cannot find "
                    "its label words' tokens on this server."
                )
            return tokens
        raise ValueError(
            f"{self.endpoint.base_url} offers no tokenize route (tried /extras/tokenize and /tokenize), so DecT "
            "cannot find its label words' tokens. Serve the model with llama-cpp-python, llama.cpp or vLLM."
        )

    def detokenize(self, token: int) -> str:
        """The text of one token, as the completion route writes it in `top_logprobs`."""
        root = self.endpoint.server_root
        for url in (f"{root}/extras/detokenize", f"{root}/detokenize"):
            try:
                answer = self.client.post(url, {"tokens": [token], "model": self.endpoint.model})
            except EndpointError as err:
                if err.status in (404, 405):
                    continue
                raise
            for key in ("text", "prompt", "content"):
                if isinstance(answer.get(key), str):
                    return answer[key]
            raise EndpointError(f"POST {url} answered {str(answer)[:200]}, without the token's text.")
        raise ValueError(
            f"{self.endpoint.base_url} offers no detokenize route (tried /extras/detokenize and /detokenize)."
        )

    def _label_token_ids(self, words: list[str]) -> list[int]:
        """The first token of each label word, written with and without a leading space (as for local models)."""
        special = self.tokenize("")  # what the tokenize route adds to any text (a BOS), to strip it
        ids: list[int] = []
        for word in words:
            for variant in (word, " " + word):
                pieces = self.tokenize(variant)
                if pieces[: len(special)] == special:
                    pieces = pieces[len(special) :]
                if pieces and pieces[0] not in ids:
                    ids.append(pieces[0])
        return ids

    def _token_strings(self) -> dict[str, int]:
        """Label tokens' texts (as `top_logprobs` keys them) -> class; a clear error when classes share one."""
        owner: dict[str, int] = {}
        for cls, ids in enumerate(self.label_ids):
            for token in ids:
                text = self.detokenize(token)
                if owner.setdefault(text, cls) != cls:
                    raise ValueError(
                        f"Label words of classes {self.config.labels[owner[text]]!r} and {self.config.labels[cls]!r} "
                        f"start with the same token {text!r}: DecT scores a word by its first token, so choose "
                        "words that differ there."
                    )
        return owner

    # -- queries ---------------------------------------------------------------------------------------------

    def render(self, text: str, text_pair: str | None) -> str:
        return self.prompt.render(text, text_pair, None)

    def query(self, inputs: Sequence[tuple[str, str | None]]) -> tuple[np.ndarray, np.ndarray | None]:
        answers = dict((row, (h, z)) for row, h, z in self.query_each(inputs))
        hidden = np.stack([answers[row][0] for row in range(len(inputs))])
        return hidden, np.stack([answers[row][1] for row in range(len(inputs))])

    def query_each(self, inputs: Sequence[tuple[str, str | None]]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(row, hidden, label-word scores) for each input, in the order the answers arrive."""
        prompts = [self.render(text, pair) for text, pair in inputs]
        pool = ThreadPoolExecutor(self.endpoint.concurrency, thread_name_prefix="hf-frozen-endpoint")
        try:
            pending = {pool.submit(self._answer, prompt): row for row, prompt in enumerate(prompts)}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                failed = [future for future in done if future.exception() is not None]
                for future in done:
                    row = pending.pop(future)
                    if future.exception() is None:  # every answer received is handed over, even beside a failure
                        yield row, *future.result()
                if failed:
                    raise failed[0].exception()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # a failure stops the queue, not requests in flight

    def _answer(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        return self._hidden(prompt), self._label_scores(prompt)

    def _label_scores(self, prompt: str) -> np.ndarray:
        top = self._complete(prompt, self.endpoint.top_logprobs)["top_logprobs"][0]
        if not isinstance(top, dict) or not all(_is_logprob(v) for v in top.values()):
            raise EndpointError(
                f"{self.endpoint.base_url}/completions answered `top_logprobs` {str(top)[:200]}, not an object of "
                "token -> log-probability."
            )
        scores = np.full(self.config.num_classes, -np.inf)
        for token, logprob in top.items():
            cls = self.token_class.get(token)
            if cls is not None:
                scores[cls] = max(scores[cls], logprob)
        for cls in np.flatnonzero(np.isinf(scores)):
            if self.endpoint.label_scores == "floor":
                scores[cls] = min(top.values())
                continue
            bias = {str(token): LOGIT_BIAS for token in self.label_ids[cls]}
            answer = self._complete(prompt, 1, bias)
            try:
                token, logprob = answer["tokens"][0], answer["token_logprobs"][0]
            except (KeyError, IndexError, TypeError):
                token, logprob = None, None
            if not isinstance(token, str) or not _is_logprob(logprob):
                raise EndpointError(
                    f"{self.endpoint.base_url}/completions answered {str(answer)[:200]}, without `tokens` and "
                    "`token_logprobs`: use `label_scores='floor'` with this server."
                )
            if self.token_class.get(token) != cls:
                raise EndpointError(
                    f"{self.endpoint.base_url} ignored `logit_bias` (answered {token!r}, not a label token of class "
                    f"{self.config.labels[cls]!r}). Use `label_scores='floor'` with this server."
                )
            scores[cls] = logprob
        return scores.astype(np.float32)

    def _complete(self, prompt: str, top_logprobs: int, logit_bias: dict[str, int] | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": self.endpoint.model, "prompt": prompt, "max_tokens": 1,
                                   "temperature": 0.0, "logprobs": top_logprobs}  # fmt: skip
        if logit_bias:
            payload["logit_bias"] = logit_bias
        answer = self.client.post("completions", payload)
        try:
            logprobs = answer["choices"][0]["logprobs"]
            if not isinstance(logprobs["top_logprobs"], list) or not logprobs["top_logprobs"][0]:
                raise KeyError("top_logprobs")
        except (KeyError, IndexError, TypeError) as err:
            raise EndpointError(
                f"{self.endpoint.base_url}/completions returned no log-probabilities ({err!r} missing in "
                f"{str(answer)[:200]}): DecT needs a server that honours `logprobs` (llama-cpp-python needs "
                "`logits_all=True`)."
            ) from None
        return logprobs

    def _hidden(self, prompt: str) -> np.ndarray:
        if not self.want_hidden:  # a feature model gives the features: no embeddings request
            return np.zeros(0, dtype=np.float32)
        vector = embedding(self.client, self.endpoint, prompt, per_token="last")  # the answer position
        if self.hidden_size is None:
            self.hidden_size = len(vector)
        elif len(vector) != self.hidden_size:
            raise EndpointError(
                f"{self.endpoint.base_url}/embeddings returned an embedding of size {len(vector)} after ones of size "
                f"{self.hidden_size}: the server changed model mid-run. Answers received so far are cached; run again "
                "once the server serves one model."
            )
        return vector


def _is_logprob(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value) and value <= 0


def served_model_entry(client: HTTPClient, endpoint: Endpoint) -> dict[str, Any]:
    """The model's `/v1/models` entry (less its timestamp); a clear error when the server does not serve it."""
    try:
        listing = client.get("models")
    except EndpointError as err:
        if err.status in (401, 403):
            raise EndpointError(
                f"{endpoint.base_url} refused the API key (HTTP {err.status}). Put a valid key in the "
                f"environment variable {endpoint.api_key_env!r} (set by `api_key_env`).",
                err.status,
            ) from None
        raise
    data = listing.get("data")
    if not isinstance(data, list) or not all(isinstance(entry, dict) for entry in data):
        raise EndpointError(
            f"GET {endpoint.base_url}/models answered {str(listing)[:200]}, not a model list "
            '(`{"data": [{"id": ...}, ...]}`): is this an OpenAI-compatible server?'
        )
    entries = {entry.get("id"): entry for entry in data}
    if endpoint.model not in entries:
        raise ValueError(
            f"`model` {endpoint.model!r} is not served at {endpoint.base_url}; it serves {sorted(map(str, entries))}."
        )
    return {k: v for k, v in entries[endpoint.model].items() if k != "created"}


def embedding(client: HTTPClient, endpoint: Endpoint, text: str, per_token: Literal["last", "mean"]) -> np.ndarray:
    """One vector for `text` from the embeddings route; where the server answers one vector per token, the last
    (the causal answer position) or their mean (`per_token`)."""
    answer = client.post("embeddings", {"model": endpoint.model, "input": [text]})
    try:
        vector = np.asarray(answer["data"][0]["embedding"], dtype=np.float32)
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise EndpointError(
            f"{endpoint.base_url}/embeddings returned no embedding ({err!r}; got {str(answer)[:200]})."
        ) from None
    if vector.ndim == 2 and len(vector):
        vector = vector[-1] if per_token == "last" else vector.mean(0)
    if vector.ndim != 1 or not 0 < len(vector) <= MAX_HIDDEN_SIZE:
        raise EndpointError(
            f"{endpoint.base_url}/embeddings returned an embedding of shape {vector.shape}: DecT needs one "
            f"vector (or one per token) of at most {MAX_HIDDEN_SIZE:,d} numbers."
        )
    return vector
