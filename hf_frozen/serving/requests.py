"""Reading the JSON requests of the OpenAI-compatible API: every field checked, every refusal a 4xx that names it.

Pure functions (no Ray), so the checks are tested without a server. Errors follow OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}`, so that OpenAI clients show them as they show OpenAI's own.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ..config import check_positive
from .catalog import CLASSIFICATION, GENERATION, ServedTask

ROUTES = {GENERATION: "POST /v1/completions", CLASSIFICATION: "POST /v1/classifications"}


@dataclasses.dataclass(frozen=True)
class ApiLimits:
    """What one request may ask for; larger requests are refused with 413 or 400 before any model work.

    Args:
        max_request_bytes (`int`, defaults to 1 MiB): the largest request body.
        max_prompts (`int`, defaults to 64): prompts (or texts) in one request.
        max_tokens (`int`, defaults to 512): the largest `max_tokens`.
        max_num_beams (`int`, defaults to 8): the largest `num_beams`.
        default_max_tokens (`int`, defaults to 16): `max_tokens` when a request gives none (OpenAI's default).
    """

    max_request_bytes: int = 1 << 20
    max_prompts: int = 64
    max_tokens: int = 512
    max_num_beams: int = 8
    default_max_tokens: int = 16

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            check_positive(self, field.name, integer=True)


class ApiError(Exception):
    """An HTTP error answer: `status`, and OpenAI's error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 **extra: Any) -> None:  # fmt: skip
        super().__init__(message)
        kind = "invalid_request_error" if status < 500 else "server_error"
        self.status = status
        self.body = {"error": {"message": message, "type": kind, "param": param, "code": code, **extra}}


def parse_json(body: bytes, limits: ApiLimits) -> dict[str, Any]:
    if len(body) > limits.max_request_bytes:
        raise too_large(limits)
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError(400, f"The request body is not valid JSON ({err}).", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"The request body must be a JSON object, got {type(data).__name__}.",
                       code="invalid_json")  # fmt: skip
    return data


def too_large(limits: ApiLimits) -> ApiError:
    return ApiError(413, f"The request body is larger than this server takes ({limits.max_request_bytes} bytes): "
                    "send fewer or shorter prompts per request.", code="request_too_large")  # fmt: skip


def task_of(data: dict[str, Any], catalog: dict[str, ServedTask], kind: str) -> str:
    """The task id in `"model"`: a 404 listing the tasks when unknown, a 400 naming the route when of another kind."""
    name = data.get("model")
    if not isinstance(name, str) or not name:
        raise ApiError(400, f"`model` must be a task id (a string): one of {sorted(catalog)[:50]}, got {name!r:.80}.",
                       param="model", code="missing_model")  # fmt: skip
    if name not in catalog:
        raise ApiError(404, f"The task {name!r:.200} does not exist. This server has {len(catalog)} task(s): "
                       f"{', '.join(sorted(catalog)[:50])}. GET /v1/models lists them.", param="model",
                       code="model_not_found", tasks=sorted(catalog))  # fmt: skip
    if catalog[name].kind != kind:
        raise ApiError(400, f"The task {name!r} is a {catalog[name].kind} task: send it to "
                       f"{ROUTES[catalog[name].kind]}.", param="model", code="wrong_route")  # fmt: skip
    return name


def texts_of(data: dict[str, Any], field: str, limits: ApiLimits) -> list[str]:
    """A string or a non-empty list of strings in `field`, at most `max_prompts` of them."""
    value = data.get(field)
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ApiError(400, f"`{field}` must be a string or a non-empty list of strings, got {value!r:.80}.",
                       param=field, code="invalid_value")  # fmt: skip
    if len(texts) > limits.max_prompts:
        raise ApiError(413, f"`{field}` holds {len(texts)} texts; this server takes at most {limits.max_prompts} "
                       "per request: split them over several requests.", param=field,
                       code="request_too_large")  # fmt: skip
    return texts


def integer_in(data: dict[str, Any], field: str, default: int, largest: int) -> int:
    value = data.get(field, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= largest:
        raise ApiError(400, f"`{field}` must be an integer from 1 to {largest}, got {value!r:.40}.", param=field,
                       code="invalid_value")  # fmt: skip
    return value


# Fields of OpenAI's completions request that change what is generated: accepted only at the value that means
# greedy or beam search, one choice, no stream (the decoding this server does).
_ONLY_AT = {"stream": (False,), "n": (1,), "best_of": (1,), "echo": (False,), "temperature": (0, 0.0),
            "logprobs": (None,), "suffix": (None,)}  # fmt: skip
_COMPLETION_FIELDS = {"model", "prompt", "max_tokens", "num_beams", "user", *_ONLY_AT}


def parse_completion(
    body: bytes, catalog: dict[str, ServedTask], limits: ApiLimits
) -> tuple[str, list[str], int, int]:
    """(task, prompts, max_tokens, num_beams) of a `POST /v1/completions` body."""
    data = parse_json(body, limits)
    unknown = sorted(set(data) - _COMPLETION_FIELDS)
    if unknown:
        raise ApiError(400, f"Unsupported field(s) {unknown[:10]}: this server takes {sorted(_COMPLETION_FIELDS)}.",
                       param=unknown[0], code="unsupported_field")  # fmt: skip
    for field, allowed in _ONLY_AT.items():
        if field in data and data[field] not in allowed and data[field] is not None:
            raise ApiError(400, f"`{field}`={data[field]!r:.40} is not supported: this server decodes greedily or by "
                           f"beam search (`num_beams`), one choice per prompt, without streaming.", param=field,
                           code="unsupported_value")  # fmt: skip
    task = task_of(data, catalog, GENERATION)
    prompts = texts_of(data, "prompt", limits)
    max_tokens = integer_in(data, "max_tokens", limits.default_max_tokens, limits.max_tokens)
    num_beams = integer_in(data, "num_beams", 1, limits.max_num_beams)
    return task, prompts, max_tokens, num_beams


def parse_classification(body: bytes, catalog: dict[str, ServedTask], limits: ApiLimits) -> tuple[str, list[str]]:
    """(task, texts) of a `POST /v1/classifications` body: `{"model": <task>, "input": <text or list of texts>}`."""
    data = parse_json(body, limits)
    unknown = sorted(set(data) - {"model", "input", "user"})
    if unknown:
        raise ApiError(400, f"Unsupported field(s) {unknown[:10]}: this route takes 'model', 'input' and 'user'.",
                       param=unknown[0], code="unsupported_field")  # fmt: skip
    task = task_of(data, catalog, CLASSIFICATION)
    return task, texts_of(data, "input", limits)
