"""Leaving hf-frozen: a LoRA encoder opens as a PEFT adapter, and any frozen-decoder model exports to a plain
transformers checkpoint. Each is checked in a fresh process against the generations of the adapter model."""

import json
import os
import subprocess
import sys

import pytest
from transformers import AutoModelForSeq2SeqLM

from hf_frozen import AutoFrozenModel

from .helpers import generations, trained_artifact

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def generations_in_fresh_process(loader: str, *paths) -> dict:
    """`loader` is an expression over `paths` that builds the model; nothing of hf-frozen is imported."""
    script = f"""
import json, sys
sys.path.insert(0, {ROOT!r})
from peft import PeftModel
from transformers import AutoModelForSeq2SeqLM
paths = sys.argv[1:]
model = {loader}
assert not any(name.startswith("hf_frozen") for name in sys.modules), "hf-frozen was imported"
from tests.frozen_decoder.helpers import generations
print(json.dumps(generations(model)))
"""
    done = subprocess.run([sys.executable, "-c", script, *map(str, paths)], capture_output=True, text=True,
                          check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_lora_encoder_is_a_peft_adapter(family, tmp_path):
    model, artifact = trained_artifact(family, "lora", tmp_path)
    expected = generations(model)
    peft_config = json.loads((artifact / "adapter_config.json").read_text())
    assert peft_config["peft_type"] == "LORA" and peft_config["task_type"] == "SEQ_2_SEQ_LM"
    assert peft_config["base_model_name_or_path"] == str(tmp_path / f"{family}-base")

    opened = "PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(paths[0]), paths[1])"
    assert generations_in_fresh_process(opened, tmp_path / f"{family}-base", artifact) == expected
    # PEFT adapted the encoder's layers only, never the decoder's layers of the same names.
    merged = f"{opened}.merge_and_unload()"
    assert generations_in_fresh_process(merged, tmp_path / f"{family}-base", artifact) == expected


def test_peft_adapter_targets_the_encoder_only(tmp_path):
    from peft import PeftModel

    model, artifact = trained_artifact("t5", "lora", tmp_path)
    opened = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "t5-base"), artifact)
    adapted = sorted(name for name, _ in opened.named_modules() if name.endswith((".q", ".v")) and
                     hasattr(opened.get_submodule(name), "lora_A"))  # fmt: skip
    assert adapted and all(".encoder." in name for name in adapted)
    assert len(adapted) == sum(1 for name in model.artifact_keys if name.endswith("lora_A.default.weight"))


@pytest.mark.parametrize("mode", ["full", "lora"])
@pytest.mark.parametrize("family", ["t5", "bart"])
def test_export_to_plain_checkpoint_generates_identically(family, mode, tmp_path):
    model, artifact = trained_artifact(family, mode, tmp_path)
    expected = generations(AutoFrozenModel.from_pretrained(artifact))
    AutoFrozenModel.from_pretrained(artifact).merge_and_unload().save_pretrained(tmp_path / "plain")
    assert not (tmp_path / "plain" / "adapter_config.json").exists()
    assert generations_in_fresh_process("AutoModelForSeq2SeqLM.from_pretrained(paths[0])", tmp_path / "plain") == (
        expected
    )


def test_export_refuses_a_private_encoder_embedding(tmp_path):
    _, artifact = trained_artifact("t5", "full+embeddings", tmp_path)
    with pytest.raises(ValueError, match="own input embeddings"):
        AutoFrozenModel.from_pretrained(artifact).merge_and_unload()


def test_no_peft_config_where_peft_could_not_rebuild_the_encoder(tmp_path):
    for mode in ("full", "lora+embeddings"):
        _, artifact = trained_artifact("t5", mode, tmp_path / mode)
        assert not (artifact / "adapter_config.json").exists()
