"""Property-based tests (hypothesis) at the public entry points: whatever a user passes, the answer is a clear
`ValueError`/`TypeError` or a correct result: never a crash inside torch or transformers, never a silent remap."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_frozen import DecTConfig, FrozenDecoderConfig, MultiEncoderModel, get_frozen_model
from hf_frozen.dect.data import read_examples

from .tiny_dect import TEMPLATE, WORDS, ClusterAPI, sentiment
from .tiny_models import tiny_model

CLEAR = (ValueError, TypeError)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

junk = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 100), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.one_of(st.integers(-2, 40), st.text(max_size=6)), max_size=4),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)  # fmt: skip


def config_kwargs(config_class, required: dict):
    """Random values for a random subset of a config's fields, on top of `required`."""
    names = [f.name for f in dataclasses.fields(config_class) if f.init]
    return st.dictionaries(st.sampled_from(names), junk, max_size=4).map(lambda kw: {**required, **kw})


@SETTINGS
@given(config_kwargs(DecTConfig, {"template": TEMPLATE, "label_words": WORDS}))
def test_dect_config_is_valid_or_refused_clearly(kwargs):
    try:
        config = DecTConfig(**kwargs)
    except CLEAR:
        return
    assert DecTConfig.from_dict(config.to_dict()) == config
    assert len(config.labels) == config.num_classes and all(isinstance(name, str) for name in config.labels)


@SETTINGS
@given(config_kwargs(FrozenDecoderConfig, {}))
def test_frozen_decoder_config_is_valid_or_refused_clearly(kwargs):
    try:
        config = FrozenDecoderConfig(**kwargs)
    except CLEAR:
        return
    assert FrozenDecoderConfig.from_dict(config.to_dict()) == config
    assert isinstance(config.lora_r, int) and config.lora_r > 0 and math.isfinite(config.lora_alpha)


names = st.lists(st.one_of(st.text(min_size=1, max_size=5), st.integers(0, 5)), min_size=2, max_size=4)
data_labels = st.lists(st.one_of(st.text(max_size=5), st.integers(-1, 6), st.none(), st.booleans()), min_size=1,
                       max_size=8)  # fmt: skip


@SETTINGS
@given(names, data_labels)
def test_data_labels_map_to_the_class_they_name_or_are_refused(class_names, labels):
    words = [f"w{i}" for i in range(len(class_names))]
    try:
        config = DecTConfig(template=TEMPLATE, label_words=words, labels=class_names)
    except CLEAR:
        assert len({str(n) for n in class_names}) < len(class_names), "only duplicate names are refused"
        return
    try:
        _, _, found = read_examples({"text": ["x"] * len(labels), "label": labels}, config, need_labels=True)
    except CLEAR:
        return
    for label, index in zip(labels, found.tolist(), strict=True):
        named = str(label) if isinstance(label, int) and not isinstance(label, bool) else label
        if named in config.labels:
            assert config.labels[index] == named, f"{label!r} must be the class named {named!r}"
        else:
            assert isinstance(label, int) and not isinstance(label, bool) and index == label


@functools.cache
def fitted_dect():
    dect = get_frozen_model(ClusterAPI(), DecTConfig(template=TEMPLATE, label_words=WORDS, labels=["neg", "pos"]),
                            backbone_name="cluster-api-v1")  # fmt: skip
    dect.show_progress = False
    return dect.fit(sentiment(16))


texts = st.one_of(st.text(max_size=40), st.none(), st.integers(), st.binary(max_size=4))


@SETTINGS
@given(st.one_of(st.lists(texts, max_size=5), st.text(max_size=20), st.none(), st.integers()))
def test_predict_answers_each_text_or_refuses_clearly(inputs):
    dect = fitted_dect()
    try:
        predicted = dect.predict(inputs)
    except CLEAR:
        return
    expected = 1 if isinstance(inputs, str) else len(inputs)
    assert len(predicted) == expected and set(predicted) <= {"neg", "pos"}


@functools.cache
def served_task():
    folder = Path(tempfile.mkdtemp()) / "task"
    get_frozen_model(tiny_model("t5"), FrozenDecoderConfig()).save_pretrained(folder)
    return MultiEncoderModel(tiny_model("t5")), folder


@SETTINGS
@given(st.one_of(st.text(max_size=12), st.sampled_from(["parameters", "training", "update", "..", "a/b"]),
                 st.integers(), st.none()))  # fmt: skip
def test_task_names_never_escape_the_save_folder(name):
    server, artifact = served_task()
    try:
        server.add_task(name, artifact, replace=True)
    except CLEAR:
        return
    with tempfile.TemporaryDirectory() as parent:
        target = Path(parent) / "served"
        server.save_pretrained(target)
        written = [Path(root) / f for root, _, files in os.walk(parent) for f in files]
        assert written and all(target in path.parents for path in written), written
    server.remove_task(name)


@SETTINGS
@given(st.lists(st.one_of(st.integers(-3, 3), st.floats(allow_nan=True), st.booleans()), min_size=5, max_size=5))
def test_task_ids_route_to_the_task_they_name_or_are_refused(ids):
    server, artifact = served_task()
    server.add_task("only", artifact, replace=True)
    batch = torch.arange(3, 43).view(5, 8)
    try:
        tensor_ids = torch.tensor(ids)
    except CLEAR:
        return
    try:
        out = server(input_ids=batch, task_ids=tensor_ids, labels=batch)
    except CLEAR:
        return
    assert all(i == 0 for i in tensor_ids.tolist()) and torch.isfinite(out.loss)


@pytest.mark.parametrize("bad", [{"text": ["a"], "label": [float("nan")]}, {"text": [["a"]], "label": [0]}])
def test_odd_rows_are_refused_by_name(bad):
    with pytest.raises(ValueError, match="must hold texts|not known to the config"):
        fitted_dect().fit(bad)
