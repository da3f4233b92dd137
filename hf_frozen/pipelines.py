"""`transformers` pipelines for hf-frozen models: DecT as `text-classification`, the frozen decoder as
`text2text-generation` / `summarization` / `translation`.

Both classes are ordinary `transformers.Pipeline` subclasses, so the stock factory takes them as `pipeline_class`:

```python
pipe = transformers.pipeline("text-classification", model=dect_model, pipeline_class=DecTClassificationPipeline)
pipe("A gripping, beautiful film.")  # [{"label": "positive", "score": 0.93}]
```

transformers 5 removed the `text2text-generation`, `summarization` and `translation` tasks from its factory (it
refuses those names before looking at `pipeline_class`), so `hf_frozen.pipeline(task, model=...)` builds the
right pipeline for any hf-frozen model or artifact id, with the task names users know.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
from transformers import AutoTokenizer, Pipeline

from .auto import AutoFrozenModel
from .dect.model import DecTModel
from .frozen_decoder.base import FrozenDecoderBase
from .frozen_decoder.multi_encoder import MultiEncoderModel
from .registry import adapter_of, registered_adapters

CLASSIFICATION_TASKS = ("text-classification", "sentiment-analysis")
# The key each generation task's results use, as transformers 4's pipelines named them.
GENERATION_TASKS = {"text2text-generation": "generated_text", "summarization": "summary_text",
                    "translation": "translation_text"}  # fmt: skip


def _use_model_device(model: Any, kwargs: dict[str, Any]) -> None:
    """Run where the model already is: `Pipeline` would otherwise move it to device 0 (a DecT backbone, which may
    sit behind an API, cannot be moved by the pipeline at all)."""
    requested = kwargs.get("device")
    if requested is None:
        kwargs["device"] = model.device
    elif isinstance(model, DecTModel) and torch.device(requested) != model.device:
        raise ValueError(
            f"`device={requested!r}` but the DecT backbone is on {model.device}: move the backbone before "
            "`get_frozen_model`, and leave `device` unset."
        )


class DecTClassificationPipeline(Pipeline):
    """`text-classification` with a [`DecTModel`]: labels and scores, as `TextClassificationPipeline` gives them.

    Inputs are texts, or `{"text": ..., "text_pair": ...}` dicts for pair templates. A list is answered in one
    batched call to the backbone (each text queried once, then cached).

    Call arguments:
        top_k (`int` or `None`): return this many labels per text, best first (`None`: all). Without it, each
            text gets its best label only.
        function_to_apply (`"softmax"` or `"none"`, defaults to `"softmax"`): probabilities or the raw DecT
            scores.
    """

    _load_tokenizer = False  # the backbone holds its tokenizer (or is an API)
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    @classmethod
    def for_model(
        cls, model: DecTModel, task: str, tokenizer: Any = None, source: Any = None, **kwargs: Any
    ) -> Pipeline:
        """What `hf_frozen.pipeline` builds for a DecT model (its backbone holds the tokenizer, or is an API)."""
        if tokenizer is not None:
            raise ValueError("A DecT pipeline takes no `tokenizer=`: the backbone's own is used.")
        return cls(model=model, task="text-classification", **kwargs)

    def __init__(self, model: DecTModel, task: str = "text-classification", **kwargs: Any) -> None:
        if not isinstance(model, DecTModel):
            raise TypeError(f"DecTClassificationPipeline needs a DecTModel, got {type(model).__name__}.")
        if model.head is None:
            raise ValueError("The DecT model is not fitted: call `fit(train_dataset)` before building a pipeline.")
        _use_model_device(model, kwargs)
        super().__init__(model=model, task=task, **kwargs)

    def _sanitize_parameters(self, top_k: Any = "", function_to_apply: str | None = None, **kwargs: Any) -> tuple:
        if kwargs:
            raise TypeError(f"DecTClassificationPipeline got unexpected arguments {sorted(kwargs)}.")
        postprocess: dict[str, Any] = {}
        if top_k != "":  # `None` is a value here: every label
            postprocess["top_k"] = top_k
        if function_to_apply is not None:
            if str(function_to_apply).lower() not in ("softmax", "none"):
                raise ValueError(f"`function_to_apply` must be 'softmax' or 'none', got {function_to_apply!r}.")
            postprocess["function_to_apply"] = str(function_to_apply).lower()
        return {}, {}, postprocess

    def __call__(self, inputs: Any, **kwargs: Any) -> list:
        items = [inputs] if isinstance(inputs, (str, dict)) else list(inputs)
        texts, pairs = zip(*(self._text_and_pair(item) for item in items), strict=True) if items else ((), ())
        # One batched pass over every text not cached yet; the per-item steps below then read the cache.
        self.model.extract(list(texts), None if all(p is None for p in pairs) else list(pairs))
        results = super().__call__(items, **kwargs)
        if not isinstance(inputs, str):
            return results
        # transformers' shapes for one text: its ranked labels with `top_k`, else a list holding its best label.
        return results[0] if isinstance(results[0], list) else [results[0]]

    @staticmethod
    def _text_and_pair(item: Any) -> tuple[str, str | None]:
        if isinstance(item, str):
            return item, None
        if isinstance(item, dict) and isinstance(item.get("text"), str):
            return item["text"], item.get("text_pair")
        raise ValueError(
            f"DecTClassificationPipeline takes texts or {{'text': ..., 'text_pair': ...}} dicts, got {item!r}."
        )

    def preprocess(self, inputs: Any) -> dict[str, Any]:
        text, pair = self._text_and_pair(inputs)
        return {"texts": [text], "text_pairs": None if pair is None else [pair]}

    def get_iterator(self, inputs: Any, num_workers: int, batch_size: int, preprocess_params: dict,
                     forward_params: dict, postprocess_params: dict) -> Iterator[Any]:  # fmt: skip
        """`batch_size` texts per `_forward`. transformers' own batching pads token ids with the tokenizer, which a
        DecT pipeline does not hold (the backbone has it, or is an API): its inputs are texts, joined here."""
        items = list(inputs)
        for start in range(0, len(items), batch_size):
            batch = [self.preprocess(item, **preprocess_params) for item in items[start : start + batch_size]]
            pairs = [pair for b in batch for pair in (b["text_pairs"] or [None])]
            joined = {"texts": [t for b in batch for t in b["texts"]],
                      "text_pairs": None if all(p is None for p in pairs) else pairs}  # fmt: skip
            logits = self.forward(joined, **forward_params)["logits"]
            for row in range(len(batch)):
                yield self.postprocess({"logits": logits[row : row + 1]}, **postprocess_params)

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"logits": self.model.decision_scores(model_inputs["texts"], model_inputs["text_pairs"])}

    def postprocess(self, model_outputs: dict[str, torch.Tensor], top_k: Any = "",
                    function_to_apply: str = "softmax") -> Any:  # fmt: skip
        scores = model_outputs["logits"][0].float()
        if function_to_apply == "softmax":
            scores = scores.softmax(-1)
        ranked = [{"label": self.model.config.labels[i], "score": scores[i].item()}
                  for i in scores.argsort(descending=True).tolist()]  # fmt: skip
        if top_k == "":
            return ranked[0]  # no `top_k` given: transformers' legacy shape, the best label as one dict
        return ranked if top_k is None else ranked[:top_k]


class FrozenDecoderGenerationPipeline(Pipeline):
    """`text2text-generation`, `summarization` or `translation` with a [`FrozenDecoderModel`] or a
    [`MultiEncoderModel`] (whose call takes `task="name"`: the task encoder to use).

    Call arguments: `task` (multi-encoder models; `task_name=` when building the pipeline), generation arguments
    (`max_new_tokens`, `num_beams`, ...), `truncation`/`max_length` for the tokenizer. Results are
    `[{"generated_text": ...}]` (`summary_text`, `translation_text` for the other tasks), one list per input
    when a list is given.
    """

    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    @classmethod
    def for_model(cls, model: FrozenDecoderBase, task: str, tokenizer: Any = None, source: Any = None,
                  **kwargs: Any) -> Pipeline:  # fmt: skip
        """What `hf_frozen.pipeline` builds for a frozen-decoder model: the tokenizer named, else the one saved
        beside the artifact `source`, else the base model's."""
        if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = _load_tokenizer(tokenizer, source, model)
        return cls(model=model, tokenizer=tokenizer, task=task, **kwargs)

    def __init__(self, model: FrozenDecoderBase, tokenizer: Any = None, task: str = "text2text-generation",
                 **kwargs: Any) -> None:  # fmt: skip
        if not isinstance(model, FrozenDecoderBase):
            raise TypeError(
                f"FrozenDecoderGenerationPipeline needs a FrozenDecoderModel or MultiEncoderModel, got "
                f"{type(model).__name__}."
            )
        if task not in GENERATION_TASKS:
            raise ValueError(f"`task` must be one of {sorted(GENERATION_TASKS)}, got {task!r}.")
        if tokenizer is None:
            raise ValueError("A frozen-decoder pipeline needs the base model's tokenizer: pass `tokenizer=`.")
        _use_model_device(model, kwargs)
        super().__init__(model=model, tokenizer=tokenizer, task=task, **kwargs)

    def _sanitize_parameters(self, task: str | None = None, task_name: str | None = None,
                             truncation: bool | None = None, max_length: int | None = None,
                             **generate_kwargs: Any) -> tuple:  # fmt: skip
        # `task` at call time; at construction `task` is the pipeline's own (summarization, ...), so `task_name`.
        task = task if task is not None else task_name
        preprocess = {k: v for k, v in (("truncation", truncation), ("max_length", max_length)) if v is not None}
        forward: dict[str, Any] = {"generate_kwargs": generate_kwargs}
        if task is not None:
            if not isinstance(self.model, MultiEncoderModel):
                raise ValueError("`task=` picks a task encoder of a MultiEncoderModel; this model has one encoder.")
            self.model._check_tasks([task])
            forward["task"] = task
        return preprocess, forward, {}

    def __call__(self, inputs: str | list[str], **kwargs: Any) -> list:
        results = super().__call__(inputs, **kwargs)
        if isinstance(inputs, list) and all(len(r) == 1 for r in results):
            return [r[0] for r in results]  # one sequence per input: a flat list, as transformers 4 gave
        return results

    def preprocess(self, inputs: str, **tokenizer_kwargs: Any) -> dict[str, torch.Tensor]:
        if not isinstance(inputs, str):
            raise ValueError(f"{self.task} takes texts (a string or a list of strings), got {inputs!r}.")
        prefix = getattr(self.model.get_base_model().config, "prefix", None) or ""
        return self.tokenizer(prefix + inputs, return_tensors="pt", **tokenizer_kwargs)

    def _forward(self, model_inputs: dict[str, torch.Tensor], generate_kwargs: dict[str, Any],
                 task: str | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
        inputs = {"input_ids": model_inputs["input_ids"], "attention_mask": model_inputs.get("attention_mask")}
        rows = inputs["input_ids"].shape[0]
        if isinstance(self.model, MultiEncoderModel):
            if task is None:
                raise ValueError(
                    f"This MultiEncoderModel serves the tasks {sorted(self.model.task_configs)}: call the pipeline "
                    "with `task='name'` (or build it with `task_name=`)."
                )
            inputs["tasks"] = [task] * rows
        output_ids = self.model.generate(**inputs, **generate_kwargs)
        # (rows, sequences per row, length): the pipeline splits a batch along the first dimension.
        return {"output_ids": output_ids.reshape(rows, -1, output_ids.shape[-1])}

    def postprocess(self, model_outputs: dict[str, torch.Tensor]) -> list[dict[str, str]]:
        key = GENERATION_TASKS[self.task]
        texts = self.tokenizer.batch_decode(model_outputs["output_ids"][0], skip_special_tokens=True)
        return [{key: text.strip()} for text in texts]


def pipeline(task: str, model: Any, tokenizer: Any = None, **kwargs: Any) -> Pipeline:
    """`transformers.pipeline` for hf-frozen models: the right pipeline class for the model and task.

    Args:
        task (`str`): `"text-classification"` for DecT; `"text2text-generation"`, `"summarization"` or
            `"translation"` for a frozen-decoder model.
        model: a `DecTModel`, `FrozenDecoderModel` or `MultiEncoderModel`, or the folder or Hub id of an
            hf-frozen artifact (loaded with `AutoFrozenModel`).
        tokenizer (*optional*): for a frozen-decoder model; defaults to the tokenizer saved with the artifact,
            else the base model's.
        kwargs: passed to the pipeline (`device`, `batch_size`, generation defaults, ...).

    Example:
        ```python
        summarizer = hf_frozen.pipeline("summarization", model="me/t5-news-encoder")
        summarizer("A long article ...", max_new_tokens=60)  # [{"summary_text": ...}]
        ```
    """
    source = model if isinstance(model, (str, os.PathLike)) else None
    if source is not None:
        model = AutoFrozenModel.from_pretrained(source)
    adapter = adapter_of(model)  # the registry says which adapter type the model is, and so which tasks it runs
    if adapter is None:
        raise TypeError(
            f"hf_frozen.pipeline takes a model of a registered hf-frozen adapter type ({registered_adapters()}) or "
            f"an artifact id, got {type(model).__name__}: use `transformers.pipeline` for other models."
        )
    tasks = adapter.model_class.PIPELINE_TASKS
    if task not in tasks:
        raise ValueError(f"A {type(model).__name__} runs the pipeline tasks {list(tasks)}, not {task!r}.")
    return PIPELINE_CLASSES[task].for_model(model, task, tokenizer=tokenizer, source=source, **kwargs)


def _load_tokenizer(name: str | os.PathLike | None, source: str | os.PathLike | None,
                    model: FrozenDecoderBase) -> Any:  # fmt: skip
    """The named tokenizer; else the one saved beside the artifact (Trainer saves it there); else the base's."""
    if name is not None:
        return AutoTokenizer.from_pretrained(name)
    candidates = [source, model.get_base_model().config._name_or_path]
    errors = []
    for candidate in (c for c in candidates if c):
        try:
            return AutoTokenizer.from_pretrained(candidate)
        except (OSError, ValueError, ImportError) as err:  # transformers 5.0 raises ImportError for "none here"
            errors.append(f"{candidate}: {type(err).__name__}: {str(err).strip().splitlines()[0]}")
    raise ValueError(
        "No tokenizer found with the artifact or its base model; pass `tokenizer=`. Tried: " + "; ".join(errors)
    )


# The pipeline class of each task name: `pipeline` looks up the model's adapter type in the registry, checks the
# task against what its model class runs (`PIPELINE_TASKS`), and builds the pipeline of that task.
PIPELINE_CLASSES: dict[str, type] = {
    **dict.fromkeys(CLASSIFICATION_TASKS, DecTClassificationPipeline),
    **dict.fromkeys(GENERATION_TASKS, FrozenDecoderGenerationPipeline),
}
