"""`DecTModel`: query a frozen backbone once per example, then fit, use, save and load the DecT head."""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from torch.nn import functional as F
from tqdm.auto import tqdm
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM, AutoTokenizer

from ..hub import HubMixin, resolve_file
from ..io import load_tensors, save_tensors
from .backbones import Backbone, CallableBackbone, HFBackbone, detect_kind
from .cache import QueryCache, entry_key
from .config import DecTConfig
from .distributed import my_share, rank_and_world_size, union_across_processes
from .head import PROMPT_ONLY, DecTHead, clearly_worse, cross_validate_head, train_head

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "hf_frozen_model.safetensors"
_AUTO_CLASSES = {
    "masked_lm": AutoModelForMaskedLM,
    "causal_lm": AutoModelForCausalLM,
    "seq2seq_lm": AutoModelForSeq2SeqLM,
    "encoder": AutoModel,
}


class DecTModel(HubMixin):
    """A frozen backbone plus a DecT head. Create with `hf_frozen.get_frozen_model(backbone, DecTConfig(...))`.

    Example:
        ```python
        config = DecTConfig(template="{text} It was {answer}.", label_words=["terrible", "great"])
        dect = get_frozen_model(AutoModelForMaskedLM.from_pretrained("roberta-base"), config, tokenizer=tokenizer)
        dect.fit(train_dataset)          # one backbone query per example, then seconds of training
        dect.evaluate(test_dataset)      # {"accuracy": ..., "macro_f1": ..., "backbone_queries": ...}
        dect.predict(["A gripping, beautiful film."])  # ["great"]
        ```
    """

    def __init__(self, backbone: Backbone, config: DecTConfig) -> None:
        self.backbone = backbone
        self.config = copy.deepcopy(config)
        self.config.backbone_kind = backbone.kind
        self.config.backbone_fingerprint = backbone.fingerprint
        self.cache = QueryCache(config.cache_dir)
        self.num_queries = 0  # backbone queries made by this object: one per uncached example
        self.head: DecTHead | None = None
        self.calibration: torch.Tensor | None = None  # label-word scores of the empty input, (C,)
        # Per choice of the last fit's cross-validation (named by `choice_name`): held-out loss and accuracy.
        self.cv_results: dict[str, dict[str, float]] = {}
        self.fit_seconds: dict[str, float] = {}
        self.show_progress = True

    @classmethod
    def from_base_model(
        cls,
        model: Any,
        config: DecTConfig,
        tokenizer: Any = None,
        backbone_name: str | None = None,
        answer_placeholder: str | None = None,
    ) -> DecTModel:
        """What `hf_frozen.get_frozen_model` calls.

        Args:
            model: a transformers masked, causal or seq2seq LM or plain encoder, or a callable
                `fn(prompts, label_words) -> (hidden_states, label_word_scores or None)` for a model behind an API.
            config: the `DecTConfig`.
            tokenizer: the model's tokenizer (transformers models only).
            backbone_name: for callables, a name and version of the model behind it, part of the cache key.
            answer_placeholder: for callables, the text put in the `{answer}` slot (default: prompt cut there).
        """
        config = copy.deepcopy(config)
        if detect_kind(model) == "callable":
            backbone: Backbone = CallableBackbone(model, config, backbone_name or "", answer_placeholder)
            config.base_model_name_or_path = config.base_model_name_or_path or backbone_name
        else:
            backbone = HFBackbone(model, tokenizer, config)
            if config.base_model_name_or_path is None:
                config.base_model_name_or_path = getattr(model.config, "_name_or_path", None) or None
        return cls(backbone, config)

    # -- queries -------------------------------------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        """Everything besides backbone and text that changes a query's answer: part of every cache key."""
        c = self.config
        return {
            "template": c.template,
            "label_words": c.label_words,
            "chat_template": c.chat_template,
            "response_prefix": c.response_prefix,
            "hidden_pooling": c.hidden_pooling,
            "max_length": c.max_length,
        }  # (head settings such as `standardize_hidden` do not change a query's answer)

    def extract(
        self,
        texts: Sequence[str],
        text_pairs: Sequence[str | None] | None = None,
        split_across_processes: bool = False,
    ) -> tuple:
        """Hidden states (N, d) and raw label-word scores (N, C) or None, querying only uncached examples.

        Uncached examples are queried in batches of `batch_size`, sorted by input length so that padding is
        small, and each answer is cached before the next batch runs.

        Args:
            split_across_processes (`bool`, defaults to `False`): in a distributed run (torchrun, accelerate,
                DeepSpeed), share the uncached examples among the processes and gather every answer to every
                process, so that each example is queried once overall. Every process must then call this together.
        """
        pairs = list(text_pairs) if text_pairs is not None else [None] * len(texts)
        settings, fingerprint = self._settings(), self.backbone.fingerprint
        keys = [entry_key(fingerprint, settings, t, p) for t, p in zip(texts, pairs, strict=True)]
        entries: dict[str, Any] = {}
        missing: dict[str, tuple[str, str | None]] = {}
        for key, text, pair in zip(keys, texts, pairs, strict=True):
            if key in entries or key in missing:
                continue
            found = self.cache.get(key)
            if found is None:
                missing[key] = (text, pair)
            else:
                entries[key] = found
        rank, world_size = rank_and_world_size()
        if split_across_processes and world_size > 1:
            # Decided together, so that each example is queried once, by one process, and all get the answers.
            missing = union_across_processes(missing)
            order = sorted(missing, key=lambda k: (len(missing[k][0]) + len(missing[k][1] or ""), k))
            share = my_share(order, rank, world_size)
            answers = {k: entry for k in share if (entry := self.cache.get(k)) is not None}  # cached here only
            answers.update(self._query({k: missing[k] for k in share if k not in answers}))
            for key, entry in union_across_processes(answers).items():
                if key not in answers:
                    self.cache.put(key, *entry, persist=False)  # the process that queried it stored it
                entries[key] = entry
        elif missing:
            entries.update(self._query(missing))
        hidden = torch.from_numpy(np.stack([entries[k][0] for k in keys]))
        has_scores = entries[keys[0]][1] is not None
        scores = torch.from_numpy(np.stack([entries[k][1] for k in keys])) if has_scores else None
        return hidden, scores

    def _query(self, inputs: dict[str, tuple[str, str | None]]) -> dict[str, Any]:
        """Query the backbone for `inputs` (key -> (text, pair)), caching and returning each answer by key."""
        answers = {}
        # Input length in characters orders prompts well enough to keep padding small, without tokenizing every
        # prompt an extra time just to sort.
        todo = sorted(inputs, key=lambda k: len(inputs[k][0]) + len(inputs[k][1] or ""))
        size = self.config.batch_size
        batches = [todo[s : s + size] for s in range(0, len(todo), size)]
        bar = tqdm(batches, desc="DecT: querying the backbone", unit="batch", disable=not self.show_progress)
        for batch in bar:
            hidden, scores = self.backbone.query([inputs[k] for k in batch])
            self.num_queries += len(batch)
            for row, key in enumerate(batch):
                entry = (hidden[row], None if scores is None else scores[row])
                self.cache.put(key, *entry)
                answers[key] = entry
        return answers

    def zero_shot_scores(self, raw_scores: torch.Tensor, calibrate: bool | None = None) -> torch.Tensor:
        """Label-word log-probabilities (over the classes), minus those of the empty input when calibrating.

        The reference code divides raw logits by `z0 / mean(z0)`; that is only meaningful for positive logits.
        Subtracting log-probabilities is the log-space form of contextual calibration (Zhao et al., 2021):
        it removes the prompt's prior preference for some label words, whatever the logits' sign and scale.
        """
        scores = raw_scores.float().log_softmax(-1)
        if self.calibration_in_use() if calibrate is None else calibrate:
            if self.calibration is None:
                _, raw_empty = self.extract(*self.calibration_input())
                self.calibration = raw_empty[0].float().log_softmax(-1)
            scores = scores - self.calibration
        return scores

    def calibration_input(self) -> tuple[list[str], list[str] | None]:
        """(texts, text pairs) of the content-free input whose label-word scores calibrate the prompt."""
        return [""], [""] if self.config.text_pair_column else None

    def extract_for_training(
        self, texts: Sequence[str], pairs: Sequence[str | None] | None, split_across_processes: bool
    ) -> tuple:
        """`extract` for the training set, also caching the calibration input (a shared query when split)."""
        if split_across_processes:
            self.extract(*self.calibration_input(), split_across_processes=True)
        return self.extract(texts, pairs, split_across_processes=split_across_processes)

    def calibration_in_use(self) -> bool:
        """Whether zero-shot scores are calibrated: as chosen by `fit`, else as configured (unset: yes)."""
        c = self.config
        return c.selected_calibrate if c.selected_calibrate is not None else c.calibrate is not False

    def choose_head_settings(
        self,
        hidden: torch.Tensor,
        raw_scores: torch.Tensor | None,
        labels: torch.Tensor,
        steps: list[int] | None = None,
    ) -> tuple[float | str, int, bool | None]:
        """Pick whether to calibrate (see `calibration_helps`), then the zero-shot weight and the number of steps
        (among `steps`, by default the configured ones) by cross-validation on the training cache.

        Returns:
            The weight (`PROMPT_ONLY`, or a float: 0 without label-word scores), the steps, and whether the
            zero-shot scores are calibrated (`None` without label-word scores).
        """
        c = self.config
        if steps is None:
            steps = [c.steps] if c.steps is not None else c.steps_candidates
        if raw_scores is None:  # no label-word scores (a plain encoder): the head alone
            calibrate, scores, weights = None, None, [0.0]
        else:
            calibrate = self.calibration_helps(raw_scores, labels) if c.calibrate is None else c.calibrate
            scores = self.zero_shot_scores(raw_scores, calibrate=calibrate)
            weights = c.zero_shot_weight_candidates if c.zero_shot_weight is None else [c.zero_shot_weight]
        weight, chosen_steps, self.cv_results = cross_validate_head(
            hidden, scores, labels, weights, steps, self.new_head(hidden.shape[1]), c.learning_rate, c.seed,
            include_prompt=c.zero_shot_weight is None,
        )  # fmt: skip
        return weight, chosen_steps, calibrate

    def calibration_helps(self, raw_scores: torch.Tensor, labels: torch.Tensor) -> bool:
        """Whether the calibrated prompt alone is clearly better than the uncalibrated one on the training cache.

        Calibration against an empty input is a heuristic: it undoes a prompt's lean towards some label words,
        but measured here it cost SmolLM2 14 points of zero-shot accuracy on SMS spam and 0.5 on Rotten Tomatoes.
        So it is used only when the prompt's held-in cross-entropy with it beats that without it by more than
        one standard error, a comparison that trains nothing and so is far less noisy than cross-validating
        both (which, at 4 shots on SMS spam, kept the calibrated prompt for 2 of 5 seeds at 69% accuracy).
        """
        with_calibration = F.cross_entropy(self.zero_shot_scores(raw_scores, True), labels, reduction="none")
        without = F.cross_entropy(self.zero_shot_scores(raw_scores, False), labels, reduction="none")
        return clearly_worse(without, with_calibration)

    def features(self, dataset: Any) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(hidden, zero-shot scores as in use or None, labels or None) of a dataset, from the cache."""
        texts, pairs, labels = self._read(dataset, need_labels=False)
        hidden, raw = self.extract(texts, pairs)
        return hidden, None if raw is None else self.zero_shot_scores(raw), labels

    # -- training and inference ----------------------------------------------------------------------------

    def new_head(self, hidden_size: int | None = None) -> DecTHead:
        """A fresh, untrained head sized for this backbone (to train in a `Trainer`, see `DecTCallback`)."""
        if hidden_size is None:
            # The empty input is the calibration query anyway: its answer tells the hidden size.
            hidden_size = self.config.hidden_size or self.extract(*self.calibration_input())[0].shape[1]
        c = self.config
        return DecTHead(hidden_size, c.num_classes, c.projection_dim, c.seed, standardize=c.standardize_hidden)

    def fit(self, dataset: Any, split_across_processes: bool = False) -> DecTModel:
        """Query the backbone for uncached examples, then train the head on the cache.

        Args:
            dataset: a `datasets.Dataset`, a dict of columns or a list of row dicts, with `text_column`,
                `label_column` (class indices or names from `labels`) and, for pairs, `text_pair_column`.
            split_across_processes (`bool`, defaults to `False`): in a distributed run, share the queries among
                the processes (see `extract`); every process must call `fit` then, and all end with the same head.
        """
        start = time.perf_counter()
        queries_before = self.num_queries
        texts, pairs, labels = self._read(self._require_labels(dataset), need_labels=True)
        hidden, raw = self.extract_for_training(texts, pairs, split_across_processes)
        extracted = time.perf_counter()
        config = self.config
        config.hidden_size = hidden.shape[1]
        weight, steps, config.selected_calibrate = self.choose_head_settings(hidden, raw, labels)
        config.selected_zero_shot_weight, config.selected_steps = weight, steps
        scores = None if raw is None else self.zero_shot_scores(raw)
        self.head = self.new_head(hidden.shape[1])
        self.head.zero_shot_weight.fill_(0.0 if weight == PROMPT_ONLY else weight)
        train_head(self.head, hidden, scores, labels, steps, config.learning_rate)
        done = time.perf_counter()
        self.fit_seconds = {"extraction": extracted - start, "training": done - extracted, "total": done - start}
        logger.info(
            "DecT fit on %d examples: %d backbone queries, zero-shot weight %s (calibrated: %s), %d steps, "
            "%.1fs extraction, %.2fs training",
            len(labels), self.num_queries - queries_before, weight, config.selected_calibrate, steps,
            extracted - start, done - extracted,
        )  # fmt: skip
        return self

    def decision_scores(self, texts: Sequence[str], text_pairs: Sequence[str | None] | None = None) -> torch.Tensor:
        """The final class scores (N, C) for raw texts."""
        if self.head is None:
            raise RuntimeError("The DecT head is not trained yet: call `fit(dataset)` first.")
        hidden, raw = self.extract(texts, text_pairs)
        scores = None if raw is None else self.zero_shot_scores(raw)
        if self.config.selected_zero_shot_weight == PROMPT_ONLY:
            return scores
        with torch.no_grad():
            return self.head(hidden, scores).logits

    def predict(self, texts: str | Sequence[str], text_pairs: Sequence[str | None] | None = None) -> list[str]:
        """Class names for raw texts (one query per text not yet cached)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        predicted = self.decision_scores(texts, text_pairs).argmax(-1).tolist()
        return [self.config.labels[i] for i in predicted]

    def evaluate(self, dataset: Any, scoring: str = "dect") -> dict[str, float]:
        """Accuracy and macro-F1 (scikit-learn, offline) on a labelled dataset, with the queries it cost.

        Args:
            dataset: labelled data, as for `fit`.
            scoring (`str`, defaults to `"dect"`): `"dect"` for the fitted model; `"zero_shot"` or
                `"zero_shot_uncalibrated"` for the prompt alone (argmax of the label-word scores), which needs no fit.
        """
        texts, pairs, labels = self._read(self._require_labels(dataset), need_labels=True)
        queries_before = self.num_queries
        if scoring == "dect":
            predicted = self.decision_scores(texts, pairs).argmax(-1).numpy()
        elif scoring in ("zero_shot", "zero_shot_uncalibrated"):
            _, raw = self.extract(texts, pairs)
            if raw is None:
                raise ValueError(
                    f"A {self.backbone.kind} backbone gives no label-word scores: no zero-shot prediction."
                )
            predicted = self.zero_shot_scores(raw, calibrate=scoring == "zero_shot").argmax(-1).numpy()
        else:
            raise ValueError(f"`scoring` must be 'dect', 'zero_shot' or 'zero_shot_uncalibrated', got {scoring!r}.")
        return {
            "accuracy": float(accuracy_score(labels.numpy(), predicted)),
            "macro_f1": float(f1_score(labels.numpy(), predicted, average="macro")),
            "num_examples": len(texts),
            "backbone_queries": self.num_queries - queries_before,
        }

    # -- data --------------------------------------------------------------------------------------------------

    def _require_labels(self, dataset: Any) -> Any:
        dataset = _as_columns(dataset)
        columns = _columns(dataset)
        if self.config.label_column not in columns:
            raise ValueError(
                f"The dataset has no label column {self.config.label_column!r} (columns: {sorted(columns)}): "
                "set `label_column`."
            )
        return dataset

    def _read(self, dataset: Any, need_labels: bool) -> tuple[list[str], list[str | None] | None, torch.Tensor | None]:
        config = self.config
        dataset = _as_columns(dataset)
        columns = _columns(dataset)
        rows = len(dataset[config.text_column]) if config.text_column in columns else 0
        if config.text_column not in columns:
            raise ValueError(f"The dataset has no text column {config.text_column!r} (columns: {sorted(columns)}).")
        if rows == 0:
            raise ValueError("The dataset is empty: DecT needs at least one example per class to fit.")
        texts = [str(t) for t in dataset[config.text_column]]
        pairs = None
        if config.text_pair_column is not None:
            if config.text_pair_column not in columns:
                raise ValueError(f"The dataset has no text-pair column {config.text_pair_column!r}.")
            pairs = [str(t) for t in dataset[config.text_pair_column]]
        labels = None
        if config.label_column in columns:
            labels = torch.tensor(self._label_indices(dataset[config.label_column]))
        elif need_labels:
            raise ValueError(f"The dataset has no label column {config.label_column!r}.")
        return texts, pairs, labels

    def _label_indices(self, values: Iterable[Any]) -> list[int]:
        names = {name: i for i, name in enumerate(self.config.labels)}
        indices, unknown = [], set()
        for value in values:
            if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value < len(names):
                indices.append(int(value))
            elif isinstance(value, str) and value in names:
                indices.append(names[value])
            else:
                unknown.add(value)
        if unknown:
            raise ValueError(
                f"Labels {sorted(map(repr, unknown))[:10]} in the data are not known to the config: use class indices "
                f"0..{len(names) - 1} or the names in `labels` ({self.config.labels})."
            )
        return indices

    # -- save / load ---------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Write the head (`hf_frozen_model.safetensors`) and config (`hf_frozen_config.json`)."""
        if self.head is None:
            raise RuntimeError("Nothing to save: the DecT head is not trained yet (call `fit`).")
        tensors = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        if self.calibration is not None:
            tensors["calibration"] = self.calibration
        save_tensors(tensors, os.path.join(save_directory, WEIGHTS_NAME), {"adapter_type": self.config.ADAPTER_TYPE})
        self.config.save_pretrained(save_directory)

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        base_model: Any = None,
        tokenizer: Any = None,
        revision: str | None = None,
        token: str | bool | None = None,
        backbone_name: str | None = None,
        answer_placeholder: str | None = None,
        **base_model_kwargs: Any,
    ) -> DecTModel:
        """Load a saved head onto its backbone (the recorded one, or `base_model`), checking its fingerprint."""
        config = DecTConfig.from_pretrained(path_or_repo_id, revision=revision, token=token)
        tensors = load_tensors(resolve_file(path_or_repo_id, WEIGHTS_NAME, revision=revision, token=token))
        if config.backbone_kind == "callable":
            if not callable(base_model):
                raise ValueError("This DecT head was fitted on a callable backbone: pass it again as `base_model=`.")
            backbone_name = backbone_name or config.base_model_name_or_path
        elif base_model is None or isinstance(base_model, str):
            base_id = base_model or config.base_model_name_or_path
            if not base_id:
                raise ValueError(f"{path_or_repo_id} records no backbone: pass `base_model=` (a model or its id).")
            base_model = _AUTO_CLASSES[config.backbone_kind].from_pretrained(base_id, **base_model_kwargs)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(base_id)
        fresh = copy.deepcopy(config)
        model = cls.from_base_model(base_model, fresh, tokenizer, backbone_name, answer_placeholder)
        if model.backbone.fingerprint != config.backbone_fingerprint:
            raise ValueError(
                f"The DecT head in {path_or_repo_id} was fitted on another backbone than the one given "
                f"(fingerprint {str(config.backbone_fingerprint)[:16]}... vs {model.backbone.fingerprint[:16]}...): "
                f"its hidden states would not match. Use the recorded backbone {config.base_model_name_or_path!r} "
                "with its tokenizer."
            )
        model.config = config
        model.head = model.new_head(config.hidden_size)
        head_state = {k.removeprefix("head."): v for k, v in tensors.items() if k.startswith("head.")}
        try:
            model.head.load_state_dict(head_state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"The head weights in {path_or_repo_id} do not fit its config: {err}") from err
        model.head.eval()
        model.calibration = tensors.get("calibration")
        return model

    def model_card(self) -> str:
        c = self.config
        classes = ", ".join(f"{name} = {'|'.join(words)}" for name, words in zip(c.labels, c.label_words, strict=True))
        return f"""---
library_name: hf-frozen
base_model: {c.base_model_name_or_path or "unknown"}
tags:
- hf-frozen
- dect
---

# DecT head

A [Decoder Tuning](https://arxiv.org/abs/2212.08408) head for the frozen backbone
`{c.base_model_name_or_path}` ({c.backbone_kind}): a {c.projection_dim}-dimensional prototype decoder over the
backbone's hidden state at the answer slot, combined with the prompt's label-word scores.

- Template: `{c.template}`
- Classes and label words: {classes}
- Zero-shot weight in use: `{c.selected_zero_shot_weight}` (calibrated: `{c.selected_calibrate}`)
- Training steps: `{c.selected_steps}`

## Usage

```python
from hf_frozen import AutoFrozenModel

dect = AutoFrozenModel.from_pretrained("<this repo id>")
dect.predict(["some text"])
```
"""


def _as_columns(dataset: Any) -> Any:
    """A `datasets.Dataset` or dict of columns as it is; a list of row dicts or a DataFrame as a dict of columns."""
    if hasattr(dataset, "column_names") or isinstance(dataset, dict):
        return dataset
    if hasattr(dataset, "to_dict") and hasattr(dataset, "columns"):  # pandas
        return {name: list(dataset[name]) for name in dataset.columns}
    if isinstance(dataset, list) and all(isinstance(row, dict) for row in dataset):
        return {name: [row.get(name) for row in dataset] for name in dict.fromkeys(k for row in dataset for k in row)}
    raise TypeError(
        f"DecT reads a `datasets.Dataset`, a dict of columns, a list of row dicts or a DataFrame; got "
        f"{type(dataset).__name__}."
    )


def _columns(dataset: Any) -> set[str]:
    names = dataset.column_names if hasattr(dataset, "column_names") else list(dataset)
    return set(names if isinstance(names, list) else [])
