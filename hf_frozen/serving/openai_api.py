"""The HTTP front of a server: an OpenAI-compatible API on a FastAPI ingress deployment.

    GET  /v1/models            the tasks, as OpenAI's model list
    POST /v1/completions       {"model": <task>, "prompt": <text or list>, "max_tokens": n, "num_beams": k}
    POST /v1/classifications   {"model": <DecT task>, "input": <text or list>} -> labels and class probabilities

Each prompt goes to the replica deployment of its task's kind as one request, tagged with its task id
(`multiplexed_model_id`), so that Ray Serve routes it to a replica that holds the task and batches it with what
other clients send meanwhile. A replica that dies while answering gives 503 (retry); a task whose files changed
since the start gives 500 naming it.
"""

import asyncio
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import RayError, RayTaskError
from ray.serve.exceptions import RayServeException

from ..errors import ArtifactError
from .catalog import ServedTask
from .requests import ApiError, ApiLimits, parse_classification, parse_completion, too_large

api = FastAPI(title="hf-frozen", description="Task encoders on one frozen decoder, and DecT heads, over HTTP.")


@serve.ingress(api)
class OpenAIServer:
    """The ingress: checks requests, fans prompts out to the replicas, gathers the answers.

    Args:
        catalog: the server's tasks.
        replicas (`dict`): task -> handle of the deployment that serves it.
        limits ([`ApiLimits`]): what one request may ask for.
    """

    def __init__(self, catalog: dict[str, ServedTask], replicas: dict[str, Any], limits: ApiLimits) -> None:
        self.catalog, self.replicas, self.limits = catalog, replicas, limits

    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "hf-frozen", "task": task.kind,
                 **({"labels": list(task.labels)} if task.labels else {})}
                for name, task in self.catalog.items()]  # fmt: skip
        return {"object": "list", "data": data}

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> JSONResponse:
        try:
            task, prompts, max_tokens, num_beams = parse_completion(await self._body(request), self.catalog,
                                                                    self.limits)  # fmt: skip
            answers = await self._ask(task, [{"task": task, "prompt": p, "max_tokens": max_tokens,
                                                          "num_beams": num_beams} for p in prompts])  # fmt: skip
        except ApiError as err:
            return JSONResponse(err.body, status_code=err.status)
        usage = {"prompt_tokens": sum(a["prompt_tokens"] for a in answers),
                 "completion_tokens": sum(a["completion_tokens"] for a in answers)}  # fmt: skip
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return JSONResponse({
            "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()), "model": task,
            "choices": [{"index": i, "text": a["text"], "logprobs": None, "finish_reason": a["finish_reason"]}
                        for i, a in enumerate(answers)],
            "usage": usage,
        })  # fmt: skip

    @api.post("/v1/classifications")
    async def classifications(self, request: Request) -> JSONResponse:
        try:
            task, texts = parse_classification(await self._body(request), self.catalog, self.limits)
            answers = await self._ask(task, [{"task": task, "text": t} for t in texts])
        except ApiError as err:
            return JSONResponse(err.body, status_code=err.status)
        return JSONResponse({"object": "list", "model": task,
                             "data": [{"index": i, **a} for i, a in enumerate(answers)]})  # fmt: skip

    async def _body(self, request: Request) -> bytes:
        """The body, read no further than the size limit (a larger declared length is refused unread)."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limits.max_request_bytes:
            raise too_large(self.limits)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.limits.max_request_bytes:
                raise too_large(self.limits)
        return bytes(body)

    async def _ask(self, task: str, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        handle = self.replicas[task].options(multiplexed_model_id=task)
        try:
            return await asyncio.gather(*(handle.handle.remote(r) for r in requests))
        except ArtifactError as err:  # raised in the replica: Ray's error is also an instance of the cause
            raise ApiError(500, self._cause_message(err), param="model", code="task_refused") from None
        except RayTaskError as err:
            raise ApiError(500, f"The replica failed on this request: {self._cause_message(err)}",
                           code="server_error") from None  # fmt: skip
        except (
            RayError,
            RayServeException,
        ) as err:  # the replica died or is unreachable: the request can be sent again
            raise ApiError(503, f"No replica could answer ({type(err).__name__}): the request was not completed. "
                           "Send it again.", code="replica_unavailable") from None  # fmt: skip

    @staticmethod
    def _cause_message(err: Exception) -> str:
        """The message of the replica's exception (Ray's wrapper adds the remote traceback)."""
        cause = getattr(err, "cause", None) or err
        return " ".join(str(cause).split())[:1000]
