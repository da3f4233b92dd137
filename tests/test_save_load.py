"""Save and load, written once and run over both adapters: a matrix of tiny models x configs, as PEFT's common
testers are written. Each case builds a trained adapter model whose base lies in a folder, and names the outputs
that must survive every round trip (generations for the frozen decoder, class scores for DecT)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoModelForSeq2SeqLM, AutoTokenizer

import hf_frozen.config
import hf_frozen.utils.hub
from hf_frozen import AutoFrozenModel, DecTConfig, DecTModel, FrozenDecoderModel, get_frozen_model
from hf_frozen.config import CONFIG_NAME, RECORD_NAME, WEIGHTS_NAME
from hf_frozen.registry import get_adapter

from . import tiny_dect
from .fake_hub import FakeHub
from .frozen_decoder.helpers import generations, trained_artifact

ROOT = Path(__file__).resolve().parent.parent
FIXTURES_0_1 = Path(__file__).resolve().parent / "fixtures" / "hf_frozen_0.1"
TEXTS = list(tiny_dect.sentiment(10, seed=3)["text"])


def dect_on_disk(kind: str, tmp_path: Path, **config: Any) -> DecTModel:
    """A DecT head fitted on a tiny backbone loaded from a folder, so that the artifact records where it lies."""
    folder = tmp_path / kind
    tiny_dect.backbone(kind).save_pretrained(folder)
    tiny_dect.tokenizer().save_pretrained(folder)
    loader = {"masked_lm": AutoModelForMaskedLM, "seq2seq_lm": AutoModelForSeq2SeqLM}[kind]
    dect = get_frozen_model(loader.from_pretrained(folder),
                            DecTConfig(template=tiny_dect.TEMPLATE, label_words=tiny_dect.WORDS, **config),
                            tokenizer=AutoTokenizer.from_pretrained(folder))  # fmt: skip
    dect.show_progress = False
    dect.fit(tiny_dect.sentiment(16))
    return dect


def dect_scores(model: DecTModel) -> list:
    model.show_progress = False
    return model.decision_scores(TEXTS).tolist()


def frozen_outputs(model: FrozenDecoderModel) -> list:
    found = generations(model)
    return found["greedy"] + found["beam3"]


@dataclasses.dataclass
class Case:
    build: Callable[[Path], Any]  # tmp_path -> a trained adapter model
    outputs: Callable[[Any], list]  # what must survive a round trip
    card: Callable[[Any, Path], list[str]]  # (model, tmp_path) -> text the model card must hold


CASES = {
    "frozen_decoder-t5-full": Case(
        lambda tmp: trained_artifact("t5", "full", tmp)[0], frozen_outputs,
        lambda m, tmp: ["library_name: hf-frozen", "pipeline_tag: text2text-generation", "- frozen-decoder",
                        'from_pretrained("me/task")', m.record.decoder_fingerprint],
    ),
    "frozen_decoder-bart-lora+embeddings": Case(
        lambda tmp: trained_artifact("bart", "lora+embeddings", tmp)[0], frozen_outputs,
        lambda m, tmp: ["library_name: hf-frozen", "pipeline_tag: text2text-generation", m.record.decoder_fingerprint],
    ),
    "dect-masked_lm": Case(
        lambda tmp: dect_on_disk("masked_lm", tmp), dect_scores,
        lambda m, tmp: ["library_name: hf-frozen", "pipeline_tag: text-classification", "- dect",
                        f"Head: `{m.record.head_type}`"],
    ),
    "dect-seq2seq_lm-fixed-weight": Case(
        lambda tmp: dect_on_disk("seq2seq_lm", tmp, zero_shot_weight=0.5, steps=7, head="prototype"), dect_scores,
        lambda m, tmp: ["library_name: hf-frozen", "Zero-shot weight in use: `0.5`",
                        "Head: `prototype`, training steps: `7`"],
    ),
}  # fmt: skip


def assert_same_outputs(found: list, expected: list) -> None:
    np.testing.assert_allclose(np.array(found), np.array(expected), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_round_trip_in_a_fresh_process(case, tmp_path):
    model = CASES[case].build(tmp_path)
    model.save_pretrained(tmp_path / "artifact")
    assert sorted(os.listdir(tmp_path / "artifact")) == sorted([CONFIG_NAME, RECORD_NAME, WEIGHTS_NAME])
    config = json.loads((tmp_path / "artifact" / CONFIG_NAME).read_text())
    record = json.loads((tmp_path / "artifact" / RECORD_NAME).read_text())
    config_class = get_adapter(config["adapter_type"]).config_class
    assert set(config) == {f.name for f in dataclasses.fields(config_class)} | {"adapter_type", "hf_frozen_version"}
    assert set(record) == {f.name for f in dataclasses.fields(config_class.RECORD_CLASS)} | {"hf_frozen_version"}
    script = (
        f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); from hf_frozen import AutoFrozenModel; "
        f"from tests.test_save_load import CASES; model = AutoFrozenModel.from_pretrained(sys.argv[1]); "
        f"print(json.dumps(CASES[{case!r}].outputs(model)))"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "artifact")], capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_outputs(json.loads(done.stdout.strip().splitlines()[-1]), CASES[case].outputs(model))


@pytest.mark.parametrize("case", CASES)
def test_push_to_hub_and_load_back(case, tmp_path, monkeypatch):
    hub = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(hf_frozen.utils.hub, "HfApi", hub.api)
    monkeypatch.setattr(hf_frozen.utils.hub, "hf_hub_download", hub.download)
    model = CASES[case].build(tmp_path)

    url = model.push_to_hub("me/task", private=True)

    assert url.endswith("/commit/0") and hub.created == [("me/task", True)]
    uploaded = hub.root / "me" / "task"
    assert sorted(os.listdir(uploaded)) == sorted(["README.md", CONFIG_NAME, RECORD_NAME, WEIGHTS_NAME])
    card = (uploaded / "README.md").read_text()
    for text in CASES[case].card(model, tmp_path):
        assert text in card
    assert "base_model:" not in card, "a local path is no base model for the Hub"
    assert_same_outputs(CASES[case].outputs(AutoFrozenModel.from_pretrained("me/task")), CASES[case].outputs(model))
    with pytest.raises(FileNotFoundError, match="Could not find hf_frozen_config.json"):
        AutoFrozenModel.from_pretrained("me/missing-repo")


@pytest.mark.parametrize("case", CASES)
def test_corrupted_or_missing_weights_file(case, tmp_path):
    CASES[case].build(tmp_path).save_pretrained(tmp_path / "artifact")
    path = tmp_path / "artifact" / WEIGHTS_NAME
    path.write_bytes(path.read_bytes()[:1000])  # truncated download
    with pytest.raises(ValueError, match="corrupted or truncated"):
        AutoFrozenModel.from_pretrained(tmp_path / "artifact")
    path.unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        AutoFrozenModel.from_pretrained(tmp_path / "artifact")


@pytest.mark.parametrize("case", CASES)
def test_failed_save_keeps_the_previous_artifact(case, tmp_path, monkeypatch):
    model = CASES[case].build(tmp_path)
    model.save_pretrained(tmp_path / "artifact")
    saved = {path.name: path.read_bytes() for path in (tmp_path / "artifact").iterdir()}

    # The weights' write itself fails half way (disk full): the old file stays, no temporary file is left.
    def failing_tensor_writer(tensors, metadata):
        def write(path):
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError("No space left on device")

        return write

    monkeypatch.setattr(hf_frozen.config, "tensor_writer", failing_tensor_writer)
    with pytest.raises(OSError, match="No space"):
        model.save_pretrained(tmp_path / "artifact")
    assert {path.name: path.read_bytes() for path in (tmp_path / "artifact").iterdir()} == saved


def test_artifacts_written_by_hf_frozen_0_1_still_load():
    """Real files written by hf-frozen 0.1.0 (tests/fixtures/hf_frozen_0.1/make_fixtures.py): the record's
    fields sat in the config then. They load, with their record, and give what 0.1.0 gave."""
    expected = json.loads((FIXTURES_0_1 / "expected.json").read_text())

    base = AutoModelForSeq2SeqLM.from_pretrained(FIXTURES_0_1 / "t5-base")
    encoder = AutoFrozenModel.from_pretrained(FIXTURES_0_1 / "frozen_decoder", base_model=base)
    assert encoder.record.decoder_fingerprint == encoder.decoder_fingerprint()
    inputs = torch.tensor(expected["frozen_decoder"]["input_ids"])
    beam3 = encoder.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=6,
                             min_new_tokens=6, num_beams=3, do_sample=False)  # fmt: skip
    assert beam3.tolist() == expected["frozen_decoder"]["beam3"]

    dect = AutoFrozenModel.from_pretrained(FIXTURES_0_1 / "dect",
                                           base_model=AutoModelForMaskedLM.from_pretrained(FIXTURES_0_1 / "mlm"),
                                           tokenizer=AutoTokenizer.from_pretrained(FIXTURES_0_1 / "mlm"))  # fmt: skip
    assert (dect.record.backbone_kind, dect.record.zero_shot_weight, dect.record.steps) == ("masked_lm", 0.5, 10)
    dect.show_progress = False
    assert_same_outputs(dect.decision_scores(expected["dect"]["texts"]).tolist(), expected["dect"]["scores"])


@pytest.mark.parametrize("case", CASES)
def test_a_flipped_byte_in_the_weights_is_refused(case, tmp_path):
    CASES[case].build(tmp_path).save_pretrained(tmp_path / "artifact")
    path = tmp_path / "artifact" / WEIGHTS_NAME
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x01  # inside the last tensor's data: the file still parses
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=f"{WEIGHTS_NAME} is corrupted"):
        AutoFrozenModel.from_pretrained(tmp_path / "artifact")
