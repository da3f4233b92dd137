"""`DecTModel` save/load: a fresh process, another backbone, a callable, the Hub."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import hf_frozen.utils.hub
from hf_frozen import AutoFrozenModel, DecTConfig, DecTModel, get_frozen_model

from .. import tiny_dect
from ..fake_hub import FakeHub
from ..tiny_dect import TEMPLATE, WORDS, ClusterAPI, backbone, make, sentiment


def test_save_and_load_in_a_fresh_process(tmp_path):
    tok = tiny_dect.tokenizer()
    backbone("masked_lm").save_pretrained(tmp_path / "mlm")
    tok.save_pretrained(tmp_path / "mlm")
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    dect = get_frozen_model(AutoModelForMaskedLM.from_pretrained(tmp_path / "mlm"),
                            DecTConfig(template=TEMPLATE, label_words=WORDS),
                            tokenizer=AutoTokenizer.from_pretrained(tmp_path / "mlm"))  # fmt: skip
    dect.show_progress = False
    dect.fit(sentiment(16))
    dect.save_pretrained(tmp_path / "head")
    test = list(sentiment(10, seed=3)["text"])
    expected = dect.decision_scores(test).tolist()
    script = (
        "import json, sys; from hf_frozen import AutoFrozenModel;"
        f"m = AutoFrozenModel.from_pretrained({str(tmp_path / 'head')!r}); m.show_progress = False;"
        f"record = json.loads(m.record.to_json_string());"
        f"print(json.dumps([m.decision_scores({test!r}).tolist(), m.num_queries, record]))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    scores, queries, record = json.loads(done.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    assert queries == 10, "the saved calibration needs no new empty-input query"
    choice = ("head_type", "zero_shot_weight", "steps", "calibrate", "regularization", "scaling")
    assert {k: record[k] for k in choice} == {k: getattr(dect.record, k) for k in choice}, "the choice survives"


def test_load_refuses_another_backbone_and_needs_the_callable(tmp_path):
    dect = make("masked_lm")
    dect.fit(sentiment(8))
    dect.save_pretrained(tmp_path / "head")
    with pytest.raises(ValueError, match="fitted on another backbone"):
        DecTModel.from_pretrained(tmp_path / "head", base_model=backbone("masked_lm", seed=1),
                                  tokenizer=tiny_dect.tokenizer())  # fmt: skip
    api = make("callable")
    api.fit(sentiment(8))
    api.save_pretrained(tmp_path / "api")
    with pytest.raises(ValueError, match="callable backbone"):
        AutoFrozenModel.from_pretrained(tmp_path / "api")
    loaded = AutoFrozenModel.from_pretrained(tmp_path / "api", base_model=ClusterAPI())
    assert loaded.config.backbone_name_or_path == "cluster-api-v1"


def test_push_to_hub(tmp_path, monkeypatch):
    hub = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(hf_frozen.utils.hub, "HfApi", hub.api)
    monkeypatch.setattr(hf_frozen.utils.hub, "hf_hub_download", hub.download)
    dect = make("callable", head="prototype")
    dect.fit(sentiment(8))
    dect.push_to_hub("me/dect-head")
    assert "tags:\n- hf-frozen\n- dect" in (hub.root / "me" / "dect-head" / "README.md").read_text()
    loaded = AutoFrozenModel.from_pretrained("me/dect-head", base_model=ClusterAPI())
    assert torch.equal(loaded.head.radius, dect.head.radius)


def test_a_saved_head_refuses_a_backbone_with_another_config(tmp_path):
    dect = make("masked_lm")
    dect.fit(sentiment(8))
    dect.save_pretrained(tmp_path / "head")
    other = backbone("masked_lm")
    other.config.layer_norm_eps = 1e-3
    with pytest.raises(ValueError, match="its config or tokenizer settings differ"):
        DecTModel.from_pretrained(tmp_path / "head", base_model=other, tokenizer=tiny_dect.tokenizer())
    DecTModel.from_pretrained(tmp_path / "head", base_model=backbone("masked_lm"), tokenizer=tiny_dect.tokenizer())


def test_a_tampered_backbone_kind_is_refused(tmp_path):
    dect = make("masked_lm")
    dect.fit(sentiment(8))
    dect.save_pretrained(tmp_path / "head")
    record = json.loads((tmp_path / "head" / "hf_frozen_record.json").read_text())
    record["backbone_kind"] = "diffusion"
    (tmp_path / "head" / "hf_frozen_record.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="backbone kind 'diffusion'"):
        DecTModel.from_pretrained(tmp_path / "head", base_model="some/model")
