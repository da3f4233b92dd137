"""`DecTModel`: a frozen backbone behind a query cache, plus a DecT head: fit, predict, evaluate, save and load.

How the pieces fit (docs/architecture.md draws it): `data.py` reads examples, `cache.py` answers them from the
cache or the backbone (`backbones/`, one query per example) and, with a second model, the features from it
(`features.py`), `selection.py` chooses calibration and the head on the training cache, `heads/` trains it, and
`record.py` keeps what fitting chose.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Sequence
from typing import Any

import torch
from sklearn.metrics import accuracy_score, f1_score

from ..config import CONFIG_NAME, RECORD_NAME, load_adapter_files, save_adapter_files
from ..errors import ArtifactError
from ..registry import register_adapter
from ..utils.hub import HubMixin, loading_recorded_base
from ..utils.logging import get_logger
from .backbones import AUTO_CLASSES, Backbone, Endpoint, build_backbone, load_backbone
from .cache import CachedQueries
from .card import model_card
from .config import DecTConfig
from .data import is_table, read_examples
from .features import (
    FeatureModel,
    build_feature_model,
    check_recorded_features,
    combined_features,
    feature_model_to_reload,
    feature_query_settings,
)
from .heads import HEADS, Head
from .record import DecTRecord
from .selection import choose_head_settings

logger = get_logger(__name__)


class DecTModel(CachedQueries, HubMixin):
    """A frozen backbone behind a query cache (`CachedQueries`: `extract`, `num_queries`, `cache`), plus a DecT
    head. Create with `hf_frozen.get_frozen_model(backbone, DecTConfig(...))`.

    Attributes:
        config ([`DecTConfig`]): the hyperparameters.
        record ([`DecTRecord`]): the backbone and the choices of the last fit, saved with the head.
        cv_results (`dict`): per choice of the last fit's cross-validation, held-out loss and accuracy.
        cv_choice (`str`): the key of the choice the last fit made in `cv_results`.

    Example:
        ```python
        config = DecTConfig(template="{text} It was {answer}.", label_words=["terrible", "great"])
        dect = get_frozen_model(AutoModelForMaskedLM.from_pretrained("roberta-base"), config, tokenizer=tokenizer)
        dect.fit(train_dataset)          # one backbone query per example, then seconds of training
        dect.evaluate(test_dataset)      # {"accuracy": ..., "macro_f1": ..., "backbone_queries": ...}
        dect.predict(["A gripping, beautiful film."])  # ["great"]
        ```
    """

    # The `hf_frozen.pipeline` tasks this model runs.
    PIPELINE_TASKS = ("text-classification", "sentiment-analysis")

    def __init__(self, backbone: Backbone, config: DecTConfig, features: FeatureModel | None = None) -> None:
        self.config = copy.deepcopy(config)
        super().__init__(backbone, self.config)
        self.record = DecTRecord(backbone_kind=backbone.kind, backbone_fingerprint=backbone.fingerprint,
                                 backbone_settings_fingerprint=backbone.settings_fingerprint)  # fmt: skip
        # The second model the head's features come from (None: the backbone's hidden states), cached apart.
        self.feature_queries = None
        if features is not None:
            self.feature_queries = CachedQueries(features, self.config, feature_query_settings(self.config))
        self.head: Head | None = None
        self.calibration: torch.Tensor | None = None  # label-word log-probabilities of the empty input, (C,)
        self.cv_results: dict[str, dict[str, float]] = {}
        self.cv_choice = ""  # the key of the last fit's choice in `cv_results`
        self.fit_seconds: dict[str, float] = {}

    @property
    def device(self) -> torch.device:
        """Where the backbone runs (CPU for a callable backbone)."""
        return getattr(self.backbone, "device", torch.device("cpu"))

    @classmethod
    def from_base_model(
        cls,
        model: Any,
        config: DecTConfig,
        tokenizer: Any = None,
        backbone_name: str | None = None,
        answer_placeholder: str | None = None,
        feature_model: Any = None,
        feature_tokenizer: Any = None,
        feature_name: str | None = None,
    ) -> DecTModel:
        """What `hf_frozen.get_frozen_model` calls.

        Args:
            model: a transformers masked, causal or seq2seq LM or plain encoder; an `Endpoint` (a model behind an
                OpenAI-compatible API); or a callable `fn(prompts, label_words) -> (hidden_states, label_word_scores
                or None)` for any other API.
            config: the `DecTConfig`.
            tokenizer: the model's tokenizer (transformers models only).
            backbone_name: for callables, a name and version of the model behind it, part of the cache key.
            answer_placeholder: for callables, the text put in the `{answer}` slot (default: prompt cut there).
            feature_model: a second model whose pooled embedding of the text is the head's features (a
                transformers model, an `Endpoint` or a callable `fn(texts) -> (N, d)`; see `features.py`); unset:
                the backbone's hidden states. The backbone then only gives the prompt's label-word scores.
            feature_tokenizer: the feature model's tokenizer (transformers models only).
            feature_name: for a callable feature model, its name and version, part of its cache key.
        """
        config = copy.deepcopy(config)
        features = None
        if feature_model is not None:
            features = build_feature_model(feature_model, feature_tokenizer, config, feature_name)
            if config.feature_model_name_or_path is None:
                config.feature_model_name_or_path = features.source.name_or_path
            if config.combine_features is None:  # a transformers model's states come with its scores for free
                config.combine_features = not isinstance(model, Endpoint)
        backbone = build_backbone(model, config, tokenizer, backbone_name, answer_placeholder,
                                  want_hidden=features is None or config.combine_features)  # fmt: skip
        if config.backbone_name_or_path is None:
            if backbone.kind == "callable":
                config.backbone_name_or_path = backbone_name
            elif backbone.kind == "endpoint":
                config.backbone_name_or_path = model.model
            else:
                config.backbone_name_or_path = getattr(model.config, "_name_or_path", None) or None
        dect = cls(backbone, config, features)
        if backbone.kind == "endpoint":
            dect.record.endpoint = model.saved_settings()
        return dect

    # -- zero-shot scores and features ------------------------------------------------------------------------

    def zero_shot_scores(self, raw_scores: torch.Tensor, calibrate: bool | None = None) -> torch.Tensor:
        """Label-word log-probabilities (over the classes), minus those of the empty input when calibrating
        (`calibrate`, or as fitted when unset).

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

    def calibration_in_use(self) -> bool:
        """Whether zero-shot scores are calibrated: as chosen by `fit`, else as configured (unset: yes)."""
        return self.record.calibrate if self.record.calibrate is not None else self.config.calibrate is not False

    def extract(
        self,
        texts: Sequence[str],
        text_pairs: Sequence[str | None] | None = None,
        split_across_processes: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The head's features (N, d) and the raw label-word scores (N, C) or None, each example queried once: with
        a feature model its vectors, next to the backbone's states unless `combine_features` is off
        (`features.combined_features`); else the backbone's states (`CachedQueries.extract`)."""
        hidden, raw = super().extract(texts, text_pairs, split_across_processes)
        if self.feature_queries is not None:
            features, _ = self.feature_queries.extract(texts, text_pairs, split_across_processes)
            hidden = combined_features(hidden, features) if self.config.combine_features else features
        return hidden, raw

    def features(self, dataset: Any) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(hidden, zero-shot scores as in use or None, labels or None) of a dataset, from the cache."""
        texts, pairs, labels = read_examples(dataset, self.config, need_labels=False)
        hidden, raw = self.extract(texts, pairs)
        return hidden, None if raw is None else self.zero_shot_scores(raw), labels

    def training_features(self, dataset: Any, split_across_processes: bool = False) -> tuple:
        """(hidden, raw label-word scores or None, labels) of a labelled training set, and the calibration input's
        answer cached too (queried together by all processes when split; see `extract`)."""
        texts, pairs, labels = read_examples(dataset, self.config, need_labels=True)
        if split_across_processes:
            self.extract(*self.calibration_input(), split_across_processes=True)
        hidden, raw = self.extract(texts, pairs, split_across_processes=split_across_processes)
        return hidden, raw, labels

    # -- training (selection.py, head.py) --------------------------------------------------------------------

    def hidden_size(self) -> int:
        """The size of the features the head reads: as fitted, else from the empty input's answer (which is the
        calibration query anyway)."""
        return self.record.hidden_size or self.extract(*self.calibration_input())[0].shape[1]

    def build_head(self, hidden_size: int | None = None) -> Head:
        """A fresh, untrained head of the type and settings the last fit chose (the prototype head before any)."""
        settings = {name: getattr(self.record, name) for name in ("zero_shot_weight", "steps", "regularization",
                                                                   "scaling")}  # fmt: skip
        return HEADS[self.record.head_type or "prototype"].build(hidden_size or self.hidden_size(), self.config,
                                                                 settings)  # fmt: skip

    def new_head(self, hidden_size: int | None = None):
        """The module a `Trainer` trains: `DecTCallback` chooses the head inside it at train begin, as `fit`
        does (see `callback.DecTTrainerHead`). `hidden_size` unset: the feature size, from the empty input's
        answer (in a distributed run, pass it, or every process queries that input on its own)."""
        from .callback import DecTTrainerHead

        return DecTTrainerHead(self, hidden_size)

    def choose_head(self, hidden: torch.Tensor, raw: torch.Tensor | None, labels: torch.Tensor,
                    steps: list[int] | None = None) -> None:  # fmt: skip
        """Choose calibration, the head type and its settings on the training cache (`selection.py`), and record
        them (a head that learns its zero-shot weight records it once fitted, `use_head`)."""
        choice = choose_head_settings(hidden, raw, labels, self.config, self.zero_shot_scores, steps)
        self.cv_results, self.cv_choice = choice.cv_results, choice.name
        r = self.record
        r.hidden_size, r.calibrate, r.head_type = hidden.shape[1], choice.calibrate, choice.candidate.head.kind
        r.zero_shot_weight = r.steps = r.regularization = r.scaling = None
        for name, value in choice.candidate.settings:
            setattr(r, name, value)
        if self.feature_queries is not None:
            r.feature_model = self.feature_queries.backbone.record()

    def use_head(self, head: Head) -> None:
        """Make a trained head the one `predict` uses, recording its settings."""
        self.head = head.eval()
        self.record.head_type = head.kind
        for name, value in head.settings().items():
            setattr(self.record, name, value)

    def fit(self, dataset: Any, split_across_processes: bool = False) -> DecTModel:
        """Query the backbone for uncached examples, then train the head on the cache.

        Args:
            dataset: a `datasets.Dataset`, a dict of columns or a list of row dicts, with `text_column`,
                `label_column` (class indices or names from `labels`) and, for pairs, `text_pair_column`.
            split_across_processes (`bool`, defaults to `False`): in a distributed run, share the queries among
                the processes (see `extract`); every process must call `fit` then, and all end with the same head.
        """
        start, queries_before = time.perf_counter(), self.num_queries
        hidden, raw, labels = self.training_features(dataset, split_across_processes)
        extracted = time.perf_counter()
        self.choose_head(hidden, raw, labels)
        head = self.build_head(hidden.shape[1])
        head.fit(hidden, None if raw is None else self.zero_shot_scores(raw), labels, self.config)
        self.use_head(head)
        done = time.perf_counter()
        self.fit_seconds = {"extraction": extracted - start, "training": done - extracted, "total": done - start}
        logger.info(
            "DecT fit on %d examples: %d backbone queries, %s head, zero-shot weight %s (calibrated: %s), %d steps, "
            "%.1fs extraction, %.2fs training",
            len(labels), self.num_queries - queries_before, self.record.head_type, self.record.zero_shot_weight,
            self.record.calibrate, self.record.steps, extracted - start, done - extracted,
        )  # fmt: skip
        return self

    # -- inference -------------------------------------------------------------------------------------------

    def decision_scores(self, texts: Sequence[str], text_pairs: Sequence[str | None] | None = None) -> torch.Tensor:
        """The final class scores (N, C) for raw texts."""
        if self.head is None:
            raise RuntimeError("The DecT head is not trained yet: call `fit(dataset)` first.")
        hidden, raw = self.extract(texts, text_pairs)
        scores = None if raw is None else self.zero_shot_scores(raw)
        with torch.no_grad():
            return self.head(hidden, scores).logits

    def predict(self, texts: Any, text_pairs: Sequence[str | None] | None = None) -> list[str]:
        """Class names, one per text (one query per text not yet cached).

        Args:
            texts: a text; a sequence of texts (list, tuple, pandas Series, numpy array); or a table read through
                the configured columns (`datasets.Dataset` or `IterableDataset`, DataFrame, dict of columns, list
                of row dicts), its labels ignored. Every shape of the same texts gives the same predictions.
            text_pairs: the second texts of a pair template, for a sequence of texts.
        """
        if isinstance(texts, str):
            texts = [texts]
        elif is_table(texts):
            if text_pairs is not None:
                raise ValueError("A table carries its own text pairs (`text_pair_column`): pass no `text_pairs`.")
            texts, text_pairs, _ = read_examples(texts, self.config, need_labels=False)
        else:
            texts = list(texts)
        predicted = self.decision_scores(texts, text_pairs).argmax(-1).tolist()
        return [self.config.labels[i] for i in predicted]

    def evaluate(self, dataset: Any, scoring: str = "dect") -> dict[str, float]:
        """Accuracy and macro-F1 (scikit-learn, offline) on a labelled dataset, with the queries it cost.

        Args:
            dataset: labelled data, as for `fit`.
            scoring (`str`, defaults to `"dect"`): `"dect"` for the fitted model; `"zero_shot"` or
                `"zero_shot_uncalibrated"` for the prompt alone (argmax of the label-word scores), which needs no fit.
        """
        texts, pairs, labels = read_examples(dataset, self.config, need_labels=True)
        queries_before = self.num_queries
        features_before = 0 if self.feature_queries is None else self.feature_queries.num_queries
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
        queries = (
            {}
            if self.feature_queries is None
            else {"feature_queries": self.feature_queries.num_queries - features_before}
        )
        return {
            **queries,
            "accuracy": float(accuracy_score(labels.numpy(), predicted)),
            "macro_f1": float(f1_score(labels.numpy(), predicted, average="macro")),
            "num_examples": len(texts),
            "backbone_queries": self.num_queries - queries_before,
        }

    # -- save / load -----------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Write the head's weights (and the calibration scores), its record and its config."""
        if self.head is None:
            raise RuntimeError("Nothing to save: the DecT head is not trained yet (call `fit`).")
        tensors = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        if self.calibration is not None:
            tensors["calibration"] = self.calibration
        save_adapter_files(save_directory, tensors, self.config, self.record)

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
        endpoint: Endpoint | None = None,
        query_cache_dir: str | None = None,
        feature_model: Any = None,
        feature_tokenizer: Any = None,
        feature_endpoint: Endpoint | None = None,
        feature_name: str | None = None,
        **base_model_kwargs: Any,
    ) -> DecTModel:
        """Load a saved head onto its backbone (the recorded one, or `base_model`), checking its fingerprint.

        `query_cache_dir` is where this process caches its queries (unset: in memory). The folder a saved config
        names is never used: it is the saver's folder, and loading writes nothing outside the artifact.

        A head fitted on an endpoint is reloaded only onto the endpoint the caller passes (`endpoint=` or
        `base_model=`): the URL an artifact records is shown and compared, never queried, so that a stranger's
        artifact cannot make loading send an API key anywhere.

        A head that reads a second model's features reloads it too: a transformers feature model from the recorded
        id (or `feature_model=` and `feature_tokenizer=`), an endpoint only from `feature_endpoint=`, a callable only
        from `feature_model=`; its fingerprint is checked like the backbone's.
        """
        config, record, tensors = load_adapter_files(path_or_repo_id, DecTConfig, revision, token)
        config.query_cache_dir = query_cache_dir
        if endpoint is not None:
            if base_model is not None:
                raise ValueError("Pass the backbone once: `endpoint=` or `base_model=`, not both.")
            base_model = endpoint
        if record.backbone_kind == "callable":
            if not callable(base_model):
                raise ValueError("This DecT head was fitted on a callable backbone: pass it again as `base_model=`.")
            backbone_name = backbone_name or config.backbone_name_or_path
        elif record.backbone_kind == "endpoint":
            recorded = {k: (record.endpoint or {}).get(k) for k in ("base_url", "model")}
            if not isinstance(base_model, Endpoint):
                raise ValueError(
                    f"The DecT head in {path_or_repo_id} was fitted on a model behind an API (recorded: "
                    f"{recorded['model']!r} at {recorded['base_url']!r}). Loading never contacts a URL named in an "
                    "artifact: pass the endpoint yourself, `from_pretrained(path, endpoint=Endpoint(base_url, "
                    "model))`."
                )
            if (base_model.base_url, base_model.model) != (recorded["base_url"], recorded["model"]):
                logger.warning(
                    "The DecT head in %s was fitted on %r at %r; loading it onto %r at %r as asked (its fingerprint "
                    "is checked next).", path_or_repo_id, recorded["model"], recorded["base_url"], base_model.model,
                    base_model.base_url,
                )  # fmt: skip
        elif base_model is None or isinstance(base_model, str):
            base_id = base_model or config.backbone_name_or_path
            if not base_id:
                raise ValueError(f"{path_or_repo_id} records no backbone: pass `base_model=` (a model or its id).")
            if record.backbone_kind not in AUTO_CLASSES:
                raise ValueError(
                    f"{path_or_repo_id} records the backbone kind {record.backbone_kind!r}, which is none of "
                    f"{sorted(AUTO_CLASSES)} or 'callable': its {RECORD_NAME} is damaged. Save the head again."
                )
            with contextlib.nullcontext() if base_model else loading_recorded_base(base_id, path_or_repo_id):
                base_model, loaded_tokenizer = load_backbone(base_id, record.backbone_kind, **base_model_kwargs)
            tokenizer = tokenizer or loaded_tokenizer
        feature_model, feature_tokenizer, feature_name = feature_model_to_reload(
            record, config, path_or_repo_id, feature_model, feature_tokenizer, feature_endpoint, feature_name
        )
        model = cls.from_base_model(base_model, config, tokenizer, backbone_name, answer_placeholder, feature_model,
                                    feature_tokenizer, feature_name)  # fmt: skip
        if model.feature_queries is not None:
            check_recorded_features(model.feature_queries.backbone, record, path_or_repo_id)
        settings_changed = record.backbone_settings_fingerprint not in (None, model.backbone.settings_fingerprint)
        if model.record.backbone_fingerprint != record.backbone_fingerprint or settings_changed:
            raise ValueError(
                f"The DecT head in {path_or_repo_id} was fitted on another backbone than the one given "
                f"({'its config or tokenizer settings differ' if settings_changed else 'other weights or vocabulary'}"
                f"): its hidden states would not match. Use the recorded backbone "
                f"{config.backbone_name_or_path!r} with its config and tokenizer unchanged."
            )
        model.record = record
        stored = {k.removeprefix("head."): v for k, v in tensors.items() if k.startswith("head.")}
        _check_head_shapes(model, stored, tensors.get("calibration"), path_or_repo_id)
        head = model.build_head(record.hidden_size)
        head.load_state_dict(stored)
        model.head = head.eval()
        model.calibration = tensors.get("calibration")
        return model

    def model_card(self, repo_id: str | None = None) -> str:
        return model_card(self.config, self.record, self.head, repo_id)


def _check_head_shapes(
    model: DecTModel, stored: dict[str, torch.Tensor], calibration: torch.Tensor | None, source: Any
) -> None:
    """Refuse head weights that do not fit the config and record they came with, before a head is built from them:
    built on the meta device, the expected head allocates nothing, however large a damaged record makes it."""
    with torch.device("meta"):
        expected = {
            name: tuple(t.shape) for name, t in model.build_head(model.record.hidden_size).state_dict().items()
        }
    expected["calibration"] = (model.config.num_classes,)
    found = {name: tuple(t.shape) for name, t in stored.items()}
    if calibration is not None:
        found["calibration"] = tuple(calibration.shape)
    else:
        expected.pop("calibration")
    if found != expected:
        raise ArtifactError(
            f"The head weights in {source} do not fit its {CONFIG_NAME} and {RECORD_NAME} (tensor shapes expected "
            f"{expected}, found {found}): the artifact is damaged. Save the head again, or download it again."
        )


register_adapter(DecTConfig, DecTModel)
