"""`DecTConfig`: bad values are named; it parses with `HfArgumentParser`."""

import pytest
from transformers import HfArgumentParser

from hf_frozen import DecTConfig

from ..tiny_dect import TEMPLATE, WORDS


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"template": "{text} was good"}, "{answer}"),
        ({"template": "It was {answer}."}, "{text}"),
        ({"template": "{text} {label} {answer}"}, "unknown slots \\['label'\\]"),
        ({"template": "{text} {text_pair} {answer}"}, "text_pair_column"),
        ({"label_words": ["bad", ""]}, "Class 1 of `label_words` has no label words"),
        ({"label_words": ["bad"]}, "at least 2 classes"),
        ({"label_words": {"neg": "bad", "pos": "good"}}, "not a dict"),
        ({"labels": ["neg"]}, "one name per class"),
        ({"steps": 0}, "`steps`"),
        ({"steps_candidates": []}, "`steps_candidates`"),
        ({"steps_candidates": [10, 0]}, "`steps_candidates` must be a non-empty list of integers >= 1"),
        ({"zero_shot_weight": -1.0}, "`zero_shot_weight`"),
        ({"response_prefix": "It is"}, "chat_template"),
        ({"hidden_pooling": "cls"}, "`hidden_pooling`"),
        ({"head": "mlp"}, "`head` must be 'auto', 'prototype', 'linear' or 'prompt', got 'mlp'"),
        ({"regularization_candidates": [1.0, 0.0]}, "`regularization_candidates` must be a non-empty list"),
        ({"regularization_candidates": []}, "`regularization_candidates`"),
        ({"combine_features": "yes"}, "`combine_features` must be true, false or unset, got 'yes'"),
        ({"combine_features": 1}, "`combine_features` must be true, false or unset, got 1"),
    ],
)
def test_bad_config_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DecTConfig(**{"template": TEMPLATE, "label_words": WORDS, **kwargs})


def test_config_parses_with_hf_argument_parser():
    (config,) = HfArgumentParser(DecTConfig).parse_args_into_dataclasses(
        ["--template", TEMPLATE, "--label_words", "terrible|bad", "great|good", "--labels", "neg", "pos",
         "--zero_shot_weight", "0.5", "--steps_candidates", "5", "20"]
    )  # fmt: skip
    assert config.label_words == [["terrible", "bad"], ["great", "good"]]
    assert config.labels == ["neg", "pos"] and config.zero_shot_weight == 0.5
    assert config.steps is None and config.steps_candidates == [5, 20]


@pytest.mark.parametrize("field, value", [("steps", 2.5), ("projection_dim", 64.0), ("batch_size", "8"),
                                          ("head_learning_rate", float("nan")), ("max_length", True)])  # fmt: skip
def test_non_integer_or_non_finite_numbers_are_named(field, value):
    with pytest.raises(ValueError, match=f"`{field}` must be a positive"):
        DecTConfig(**{"template": TEMPLATE, "label_words": WORDS, field: value})


def test_non_finite_weight_candidates_are_named():
    with pytest.raises(ValueError, match="`zero_shot_weight_candidates` must be a non-empty list of finite numbers"):
        DecTConfig(template=TEMPLATE, label_words=WORDS, zero_shot_weight_candidates=[0.1, float("nan")])
