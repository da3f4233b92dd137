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
