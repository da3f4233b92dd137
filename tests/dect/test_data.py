"""Reading DecT's data: bad datasets and labels are named."""

import pytest

from ..tiny_dect import make, sentiment


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


def test_a_dataset_dict_is_refused_naming_its_splits_and_a_stream_is_read():
    from datasets import Dataset, DatasetDict

    data = sentiment(8)
    dect = make("callable")
    with pytest.raises(ValueError, match=r"DatasetDict with the splits \['test', 'train'\].*dataset\['test'\]"):
        dect.fit(DatasetDict({"train": data, "test": data}))
    dect.fit(data.to_iterable_dataset())  # a finite stream is read whole
    assert dect.num_queries == 8 + 1
    assert dect.evaluate(Dataset.from_dict(data.to_dict()).to_iterable_dataset())["num_examples"] == 8


def test_transformers_logging_switches_govern_hf_frozen(capfd, caplog):
    """`transformers.logging` verbosity and `disable_progress_bar()` apply to hf-frozen's own lines and bars (the
    lines read through caplog: the test suite lets transformers' logger propagate)."""
    from transformers.utils import logging as transformers_logging

    previous = transformers_logging.get_verbosity()
    try:
        transformers_logging.set_verbosity_info()
        dect = make("callable")
        dect.show_progress = True
        dect.fit(sentiment(6, seed=0))
        assert "DecT fit on 6 examples" in caplog.text and "DecT: querying the backbone" in capfd.readouterr().err
        caplog.clear()
        transformers_logging.set_verbosity_warning()
        transformers_logging.disable_progress_bar()
        dect.fit(sentiment(6, seed=1))
        assert "DecT fit on" not in caplog.text and "DecT: querying the backbone" not in capfd.readouterr().err
    finally:
        transformers_logging.enable_progress_bar()
        transformers_logging.set_verbosity(previous)


def test_predict_gives_the_same_answers_for_data_in_any_shape():
    """A DataFrame was read as its column names, and a `Dataset` refused: every natural shape of the same texts now
    gives the same predictions."""
    from datasets import IterableDataset

    dect = make("callable")
    dect.fit(sentiment(16))
    data = sentiment(10, seed=3)
    texts = list(data["text"])
    expected = dect.predict(texts)
    frame = data.to_pandas()
    shapes = {
        "tuple": tuple(texts), "Dataset": data, "DataFrame": frame, "Series": frame["text"],
        "numpy": frame["text"].to_numpy(), "dict": {"text": texts}, "rows": [{"text": t} for t in texts],
        "IterableDataset": IterableDataset.from_generator(lambda: ({"text": t} for t in texts)),
    }  # fmt: skip
    for shape, value in shapes.items():
        assert dect.predict(value) == expected, shape
    assert len(expected) == 10
