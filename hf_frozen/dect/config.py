"""`DecTConfig`: the prompt, the label words and the prototype decoder of Decoder Tuning (Cui et al., ACL 2023).

Hyperparameters only: what fitting chooses (weight, steps, calibration) is kept in `DecTRecord` (`record.py`).
"""

from __future__ import annotations

import dataclasses
import math
import string
import warnings
from typing import Literal

from ..config import FrozenAdapterConfig, check_positive
from .record import DecTRecord


@dataclasses.dataclass
class DecTConfig(FrozenAdapterConfig):
    """Config of the DecT head: a frozen backbone queried once per example, a tiny prototype decoder on top.

    Args:
        template (`str`, defaults to `"{text} It was {answer}."`):
            The prompt. `{text}` is the input, `{text_pair}` an optional second input (sentence pairs) and
            `{answer}` the answer slot: the mask token for masked LMs, the next token after the prompt for causal
            LMs (so it must come last), the sentinel or first decoder step for seq2seq LMs.
        label_words (`list[str]`):
            One entry per class, in class order: a word, or several alternatives joined by `|`
            (`["terrible|bad", "great|good"]`); in Python also a list of lists. A class scores the max logit over
            its words' first sub-tokens, each written with and without a leading space.
        labels (`list[str]`, *optional*):
            Class names, in the same order; data labels may be these names or their indices. Defaults to the
            first label word of each class.
        chat_template (`bool`, defaults to `False`):
            Causal LMs: send the prompt as the user turn of the tokenizer's chat template; the answer is the
            first token of the assistant's reply (after `response_prefix`).
        response_prefix (`str`, defaults to `""`):
            With `chat_template`: text the assistant's reply starts with, right before the answer (e.g. `"This
            movie review is"`). Instruction-tuned models rarely answer with the bare label word first; a reply
            prefix puts the label word where the answer slot reads it.
        text_column (`str`, defaults to `"text"`), text_pair_column (`str`, *optional*), label_column
            (`str`, defaults to `"label"`): dataset columns.
        head (`str`, defaults to `"auto"`): the head `fit` (and `DecTCallback`) trains: `"prototype"` (the paper's
            prototype decoder), `"linear"` (a regularised logistic regression on the standardised features, the
            prompt's scores as an offset whose weight it learns), `"prompt"` (the prompt alone, nothing trained), or
            `"auto"`: whichever of the three cross-validation on the training cache prefers.
        regularization_candidates (`list[float]`, defaults to `[0.001, 0.01, 0.1, 1.0, 10.0]`): the linear head's
            inverse L2 strengths C (scikit-learn's convention) that cross-validation chooses among, each with both
            feature scalings (per dimension, and one scale for all dimensions).
        projection_dim (`int`, defaults to `128`): size of the prototype space.
        steps (`int`, *optional*): full-batch Adam steps. Unset (the default) picks them by cross-validation on
            the training cache among `steps_candidates`, together with the zero-shot weight: fewer steps keep the
            head closer to its initialisation, which helps when the features separate the classes only weakly.
        steps_candidates (`list[int]`, defaults to `[10, 30]`): the step counts cross-validation chooses among.
        head_learning_rate (`float`, defaults to `0.01`): Adam learning rate of the head.
        zero_shot_weight (`float`, *optional*): weight of the zero-shot scores in the final score.
            Unset (the default) picks it by cross-validation on the training cache among
            `zero_shot_weight_candidates`, head alone (0) and prompt alone included. The reference code's
            1/shots was tuned for RoBERTa's raw logits and can make DecT worse than the prompt alone.
        zero_shot_weight_candidates (`list[float]`): the weights cross-validation chooses among.
        calibrate (`bool`, *optional*): subtract the label-word log-probabilities of an empty input (`True`), or
            not (`False`). Unset (the default): only when the calibrated prompt alone is clearly better on the
            training cache (by more than one standard error of the per-example cross-entropy, or by more than
            0.1 nats per example on average, `selection.CALIBRATION_GAIN`).
        standardize_hidden (`bool`, *optional*): standardise `h` per dimension with the training cache's
            statistics before the projection. Unset (the default): only when a few dimensions dominate `h` (the
            largest per-dimension root mean square over 8 times the median), as in decoder LMs' massive
            activations (SmolLM2: about 23 times); it helps there and hurts already well-scaled sentence
            embeddings (MiniLM: about 2 times), see docs/dect.md.
        feature_model_name_or_path (`str`, *optional*): Hub id or local path of a second model whose pooled
            embedding of the text (not the prompt) is the head's features, in place of the backbone's hidden state;
            filled in from `get_frozen_model(..., feature_model=)`. Unset: the backbone's own hidden states.
        feature_pooling (`str`, defaults to `"auto"`): how the feature model's token states become one vector:
            `"mean"` over the text's tokens, `"cls"` (the first token), `"max"`, `"last"` (the last token, for
            decoders), or `"auto"`: what a sentence-transformers folder declares (`modules.json`,
            `1_Pooling/config.json`, read without the sentence-transformers package), else `"last"` for a decoder
            and `"mean"` for an encoder.
        combine_features (`bool`, *optional*): with a feature model, whether the head reads the backbone's own
            hidden states too, next to the feature model's vectors (each scaled to unit length, then concatenated),
            or the feature model's vectors alone (`False`). Unset (the default): combined, except for an `Endpoint`
            backbone, whose states would cost an embeddings request per example. Combined, DecT met its floor
            against SetFit and both probes at 16 shots on all four offline sets; the feature model alone missed
            it by 1.4 and 3.2 points on SMS spam and election tweets (docs/dect.md).
        hidden_pooling (`str`, defaults to `"answer"`): the hidden state at the answer position, or `"mean"`
            over the prompt's tokens (for encoders trained for mean pooling, such as sentence transformers).
        batch_size (`int`, defaults to `16`): backbone queries per forward pass.
        max_length (`int`, defaults to `512`): prompt tokens kept; the input text is cut, never the answer slot.
        query_cache_dir (`str`, *optional*): where query results are cached on disk; unset keeps them in memory.
        head_seed (`int`, defaults to `0`): seed of the prototypes, the projection and cross-validation folds.
        backbone_name_or_path (`str`, *optional*): Hub id or local path of the frozen backbone; filled in from
            the model when the head is applied.
        backbone_revision (`str`, *optional*): revision of the backbone on the Hub.

    Field names differ from `TrainingArguments`' and `FrozenDecoderConfig`'s, so one `HfArgumentParser` takes
    them all; the names before 0.2 (`learning_rate`, `seed`, `cache_dir`, `base_model_name_or_path`, `revision`)
    are still accepted as keywords, with a `FutureWarning`.
    """

    ADAPTER_TYPE = "dect"
    # `HfArgumentParser` lists these fields under this heading in `--help`.
    _argument_group_name = "DecT head (DecTConfig)"
    # `transformers.pipeline(..., model=dect_model)` reads `model.config._commit_hash` up to at least 5.5.
    _commit_hash = None
    RECORD_CLASS = DecTRecord
    RENAMED_FIELDS = {
        "base_model_name_or_path": "backbone_name_or_path",
        "revision": "backbone_revision",
        "learning_rate": "head_learning_rate",
        "seed": "head_seed",
        "cache_dir": "query_cache_dir",
    }

    backbone_name_or_path: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Hub id or local path of the frozen backbone (filled in from the model if unset)."},
    )
    backbone_revision: str | None = dataclasses.field(
        default=None, metadata={"help": "Revision (branch, tag or commit) of the backbone on the Hub."}
    )

    template: str = dataclasses.field(
        default="{text} It was {answer}.",
        metadata={"help": "Prompt with {text}, optional {text_pair} and the {answer} slot."},
    )
    label_words: list[str] = dataclasses.field(
        default_factory=list,
        # `required`: a command line without it is refused by name, before the config is built.
        metadata={
            "help": "One entry per class, in class order; alternatives joined by '|', e.g. 'great|good'.",
            "required": True,
        },  # fmt: skip
    )
    labels: list[str] | None = dataclasses.field(
        default=None, metadata={"help": "Class names in class order; unset: the first label word of each class."}
    )
    chat_template: bool = dataclasses.field(
        default=False, metadata={"help": "Causal LMs: wrap the prompt in the tokenizer's chat template."}
    )
    response_prefix: str = dataclasses.field(
        default="", metadata={"help": "With chat_template: the start of the assistant's reply, before the answer."}
    )
    text_column: str = dataclasses.field(default="text", metadata={"help": "Dataset column with the input text."})
    text_pair_column: str | None = dataclasses.field(
        default=None, metadata={"help": "Dataset column with the second text of a pair, if any."}
    )
    label_column: str = dataclasses.field(default="label", metadata={"help": "Dataset column with the label."})
    head: Literal["auto", "prototype", "linear", "prompt"] = dataclasses.field(
        default="auto",
        metadata={"help": "The head fit trains: the paper's prototype decoder, a linear head, the prompt alone, or "
                  "auto (by cross-validation)."},
    )  # fmt: skip
    feature_model_name_or_path: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Hub id or local path of a second model (e.g. a sentence encoder) whose pooled embedding "
                  "of the text is the head's features; unset: the backbone's hidden states."},
    )  # fmt: skip
    feature_pooling: Literal["auto", "mean", "cls", "max", "last"] = dataclasses.field(
        default="auto",
        metadata={"help": "Pooling of the feature model's token states; auto: its sentence-transformers config, else "
                  "last token (decoders) or mean (encoders)."},
    )  # fmt: skip
    combine_features: bool | None = dataclasses.field(
        default=None,
        metadata={"help": "With a feature model: read the backbone's hidden states too, next to the feature "
                  "model's vectors (each scaled to unit length). Unset: yes, except for an endpoint backbone."},
    )  # fmt: skip
    regularization_candidates: list[float] = dataclasses.field(
        default_factory=lambda: [0.001, 0.01, 0.1, 1.0, 10.0],
        metadata={"help": "Inverse L2 strengths C of the linear head that cross-validation chooses among."},
    )
    projection_dim: int = dataclasses.field(default=128, metadata={"help": "Size of the prototype space."})
    steps: int | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Full-batch Adam steps on the cached features; unset picks them by cross-validation among "
            "steps_candidates."
        },
    )
    steps_candidates: list[int] = dataclasses.field(
        default_factory=lambda: [10, 30],
        metadata={"help": "Step counts that cross-validation chooses among when steps is unset."},
    )
    head_learning_rate: float = dataclasses.field(default=0.01, metadata={"help": "Adam learning rate of the head."})
    zero_shot_weight: float | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Weight of the zero-shot scores; unset picks it by cross-validation on the training "
            "cache (head alone and prompt alone among the choices)."
        },
    )
    zero_shot_weight_candidates: list[float] = dataclasses.field(
        default_factory=lambda: [0.0, 0.1, 0.3, 1.0, 3.0, 10.0],
        metadata={"help": "Weights that cross-validation chooses among (prompt alone is always a choice too)."},
    )
    calibrate: bool | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Calibrate zero-shot scores against an empty input; unset: only if clearly better on the data."
        },
    )
    standardize_hidden: bool | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Standardise hidden states per dimension with the training cache's statistics; unset: only when "
            "a few dimensions dominate them (massive activations)."
        },
    )
    hidden_pooling: Literal["answer", "mean"] = dataclasses.field(
        default="answer", metadata={"help": "'answer': hidden state at the answer slot; 'mean': mean over tokens."}
    )
    batch_size: int = dataclasses.field(default=16, metadata={"help": "Backbone queries per forward pass."})
    max_length: int = dataclasses.field(
        default=512, metadata={"help": "Prompt tokens kept (the input text is cut, never the answer slot)."}
    )
    query_cache_dir: str | None = dataclasses.field(
        default=None, metadata={"help": "Folder for the on-disk query cache (unset: in memory only)."}
    )
    head_seed: int = dataclasses.field(default=0, metadata={"help": "Seed of prototypes, projection and CV folds."})

    # The names before 0.2, still accepted (with a FutureWarning) but no longer fields: they clashed with
    # `TrainingArguments` (learning_rate, seed), with run_*.py scripts' own `cache_dir`, and with
    # `FrozenDecoderConfig` (base_model_name_or_path, revision) in one `HfArgumentParser`.
    learning_rate: dataclasses.InitVar[float | None] = None
    seed: dataclasses.InitVar[int | None] = None
    cache_dir: dataclasses.InitVar[str | None] = None
    base_model_name_or_path: dataclasses.InitVar[str | None] = None
    revision: dataclasses.InitVar[str | None] = None

    def __post_init__(
        self,
        learning_rate: float | None,
        seed: int | None,
        cache_dir: str | None,
        base_model_name_or_path: str | None,
        revision: str | None,
    ) -> None:
        old_names = dict(learning_rate=learning_rate, seed=seed, cache_dir=cache_dir,
                         base_model_name_or_path=base_model_name_or_path, revision=revision)  # fmt: skip
        for old, value in old_names.items():
            if value is not None:
                new = self.RENAMED_FIELDS[old]
                warnings.warn(f"DecTConfig's `{old}` is now `{new}`; the old name will be removed in 0.3.",
                              FutureWarning, stacklevel=3)  # fmt: skip
                setattr(self, new, value)
        for name in ("text_column", "label_column", "text_pair_column"):
            value = getattr(self, name)
            if not (isinstance(value, str) and value) and not (name == "text_pair_column" and value is None):
                unset = " or unset (None)" if name == "text_pair_column" else ""
                raise ValueError(f"`{name}` must name a dataset column (a non-empty string){unset}, got {value!r}.")
        self.label_words = _normalize_label_words(self.label_words)
        if self.labels is None:
            self.labels = [words[0] for words in self.label_words]
        if isinstance(self.labels, str) or not isinstance(self.labels, (list, tuple)):
            raise ValueError(
                f"`labels` must be a list of class names, one per class, got {self.labels!r}: for example "
                "`labels=['negative', 'positive']`."
            )
        # Names are strings, so that a data label 1 means the class named "1" when there is one (labels=[1, 0]),
        # and the class with index 1 only when no class is named so.
        self.labels = [str(name) for name in self.labels]
        if len(self.labels) != len(self.label_words):
            raise ValueError(
                f"`labels` has {len(self.labels)} names but `label_words` has {len(self.label_words)} classes: "
                "give one name per class, in the same order."
            )
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"`labels` must be distinct, got {self.labels}.")
        _check_template(self.template, self.text_pair_column)
        if self.response_prefix and not self.chat_template:
            raise ValueError(
                f"`response_prefix` ({self.response_prefix!r}) only applies with `chat_template=True`; without a chat "
                "template, write it into `template` before {answer}."
            )
        for name in ("projection_dim", "batch_size", "max_length"):
            check_positive(self, name, integer=True)
        check_positive(self, "head_learning_rate")
        if self.steps is not None:
            check_positive(self, "steps", integer=True)
        if not self.steps_candidates or any(
            isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.steps_candidates
        ):
            raise ValueError(
                f"`steps_candidates` must be a non-empty list of integers >= 1 (e.g. [10, 30]), got "
                f"{self.steps_candidates!r}."
            )
        if self.head not in ("auto", "prototype", "linear", "prompt"):
            raise ValueError(f"`head` must be 'auto', 'prototype', 'linear' or 'prompt', got {self.head!r}.")
        if self.combine_features is not None and not isinstance(self.combine_features, bool):
            raise ValueError(f"`combine_features` must be true, false or unset, got {self.combine_features!r}.")
        if self.feature_pooling not in ("auto", "mean", "cls", "max", "last"):
            raise ValueError(
                f"`feature_pooling` must be 'auto', 'mean', 'cls', 'max' or 'last', got {self.feature_pooling!r}."
            )
        if not self.regularization_candidates or any(
            isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c <= 0
            for c in self.regularization_candidates
        ):
            raise ValueError(
                f"`regularization_candidates` must be a non-empty list of finite numbers > 0 (e.g. [0.1, 1.0, 10.0]), "
                f"got {self.regularization_candidates!r}."
            )
        if self.zero_shot_weight is not None:
            check_positive(self, "zero_shot_weight", allow_zero=True)
        if not self.zero_shot_weight_candidates or any(
            isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0
            for w in self.zero_shot_weight_candidates
        ):
            raise ValueError(
                f"`zero_shot_weight_candidates` must be a non-empty list of finite numbers >= 0, got "
                f"{self.zero_shot_weight_candidates!r}."
            )
        if self.calibrate not in (True, False, None):
            raise ValueError(f"`calibrate` must be True, False or unset, got {self.calibrate!r}.")
        if self.hidden_pooling not in ("answer", "mean"):
            raise ValueError(f"`hidden_pooling` must be 'answer' or 'mean', got {self.hidden_pooling!r}.")

    @property
    def num_classes(self) -> int:
        return len(self.label_words)


def _normalize_label_words(label_words: object) -> list[list[str]]:
    if isinstance(label_words, dict):
        raise ValueError(
            "`label_words` must be a list in class order, not a dict: pass `labels=list(d)` and "
            "`label_words=list(d.values())`."
        )
    if not isinstance(label_words, (list, tuple)) or len(label_words) < 2:
        raise ValueError(
            f"`label_words` needs one entry per class and at least 2 classes, got {label_words!r}. Example: "
            "`label_words=['terrible|bad', 'great|good']`."
        )
    normalized = []
    for i, entry in enumerate(label_words):
        if not isinstance(entry, (str, list, tuple)):
            raise ValueError(
                f"Class {i} of `label_words` must be a word, words joined by '|', or a list of words; got {entry!r}."
            )
        words = entry.split("|") if isinstance(entry, str) else list(entry)
        if not any(isinstance(w, str) and w.strip() for w in words):
            raise ValueError(
                f"Class {i} of `label_words` has no label words (got {entry!r}): give at least one word per class."
            )
        bad = [w for w in words if not isinstance(w, str) or not w.strip()]
        if bad:
            raise ValueError(
                f"Class {i} of `label_words` holds {bad[0]!r}, not a word (got {entry!r}): each label "
                "word must be a non-empty string, e.g. `label_words=[['bad', 'awful'], ['good']]`."
            )
        normalized.append([w.strip() for w in words])
    return normalized


def _check_template(template: str, text_pair_column: str | None) -> None:
    try:
        slots = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise ValueError(f"`template` is not a valid format string ({err}): {template!r}.") from err
    for required in ("text", "answer"):
        if required not in slots:
            raise ValueError(
                f"`template` must contain the {{{required}}} slot, got {template!r}. "
                "Example: '{text} It was {answer}.'"
            )
    unknown = slots - {"text", "text_pair", "answer"}
    if unknown:
        raise ValueError(
            f"`template` has unknown slots {sorted(unknown)}; allowed: {{text}}, {{text_pair}}, {{answer}}. "
            "Write a literal brace as '{{' or '}}'."
        )
    if text_pair_column is not None and "text_pair" not in slots:
        raise ValueError(f"`text_pair_column` is set but `template` has no {{text_pair}} slot: {template!r}.")
    if "text_pair" in slots and text_pair_column is None:
        raise ValueError("`template` has a {text_pair} slot: set `text_pair_column` to the dataset column.")
