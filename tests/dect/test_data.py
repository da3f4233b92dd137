"""Reading DecT's data: bad datasets and labels are named."""

import pytest

from ..tiny_dect import make


def test_bad_data_is_named():
    dect = make("callable")
    with pytest.raises(ValueError, match="not known to the config"):
        dect.fit({"text": ["a", "b"], "label": [0, "maybe"]})
    with pytest.raises(ValueError, match="not known to the config"):
        dect.fit({"text": ["a", "b"], "label": [0, 2]})
    with pytest.raises(ValueError, match="empty"):
        dect.fit({"text": [], "label": []})
    with pytest.raises(ValueError, match="no label column 'label'"):
        dect.fit({"text": ["a"], "y": [0]})
    with pytest.raises(ValueError, match="no text column 'text'"):
        dect.fit({"sentence": ["a"], "label": [0]})
    with pytest.raises(RuntimeError, match="call `fit"):
        make("callable").predict(["a"])
    dect.fit([{"text": "great film", "label": "pos"}, {"text": "bad film", "label": "neg"}])  # names work


def test_labels_are_never_silently_remapped():
    from hf_frozen import DecTConfig
    from hf_frozen.dect.data import read_examples

    with pytest.raises(ValueError, match="`labels` must be a list of class names"):
        DecTConfig(label_words=["bad", "good"], labels="ng")  # a string would be split into characters
    integer_names = DecTConfig(label_words=["bad", "good"], labels=[1, 0])  # class "1" first
    _, _, labels = read_examples({"text": ["x", "y", "z"], "label": [1, 0, "1"]}, integer_names, need_labels=True)
    assert labels.tolist() == [0, 1, 0], "a data label 1 is the class named 1, not the class at index 1"
    named = DecTConfig(label_words=["bad", "good"], labels=["neg", "pos"])
    _, _, labels = read_examples({"text": ["x", "y"], "label": [1, "neg"]}, named, need_labels=True)
    assert labels.tolist() == [1, 0], "indices still work where no class is named by a number"


def test_missing_texts_are_refused_not_queried_as_none():
    dect = make("callable")
    with pytest.raises(ValueError, match=r"Column 'text' must hold texts.*row 1: None"):
        dect.fit({"text": ["a great film", None], "label": [1, 0]})
    dect.fit({"text": ["a great film", "a bad film"], "label": [1, 0]})
    with pytest.raises(ValueError, match="`texts` is empty"):
        dect.predict([])
    with pytest.raises(ValueError, match="must hold texts"):
        dect.predict(["fine", 3])
    assert dect.predict("a great film") == dect.predict(["a great film"])
