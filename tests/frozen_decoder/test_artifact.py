"""The encoder artifact on every family: fresh-process loading and every way loading refuses."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSeq2SeqLM

from hf_frozen import AutoFrozenModel, FrozenDecoderConfig, FrozenDecoderModel, get_frozen_model
from hf_frozen.config import CONFIG_NAME, RECORD_NAME, WEIGHTS_NAME
from hf_frozen.utils.io import sha256_file

from ..tiny_models import FAMILIES, tiny_model
from .helpers import generations, trained_artifact


def test_artifact_holds_encoder_weights_only(tmp_path):
    model, artifact = trained_artifact("t5", "full", tmp_path)
    tensors = load_file(artifact / WEIGHTS_NAME)
    # PEFT's names: the transformers model sits at `base_model.model` in the wrapper, as in a PeftModel.
    assert sorted(tensors) == ["base_model.model." + name for name in model.artifact_keys]
    assert all(name.startswith("base_model.model.encoder.") for name in tensors)
    config = json.loads((artifact / CONFIG_NAME).read_text())
    assert config["base_model_name_or_path"] == str(tmp_path / "t5-base")
    record = json.loads((artifact / RECORD_NAME).read_text())
    assert record["decoder_fingerprint"] == model.decoder_fingerprint()


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("mode", ["full", "lora+embeddings"])
def test_fresh_process_generates_identically(mode, tmp_path):
    expected, artifacts = {}, {}
    for family in FAMILIES:
        model, artifacts[family] = trained_artifact(family, mode, tmp_path)
        expected[family] = generations(model)
    script = f"""
import json, sys, torch
sys.path.insert(0, {ROOT!r})
from hf_frozen import AutoFrozenModel
from tests.frozen_decoder.helpers import generations
artifacts = json.loads(sys.argv[1])
print(json.dumps({{family: generations(AutoFrozenModel.from_pretrained(path)) for family, path in artifacts.items()}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps({f: str(p) for f, p in artifacts.items()})],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == expected


def test_loaded_model_is_frozen_unless_trainable(tmp_path):
    _, artifact = trained_artifact("bart", "lora+embeddings", tmp_path)
    frozen = AutoFrozenModel.from_pretrained(artifact)
    assert isinstance(frozen, FrozenDecoderModel) and not frozen.training
    assert not any(p.requires_grad for p in frozen.parameters())
    trainable = AutoFrozenModel.from_pretrained(artifact, is_trainable=True)
    trained = sorted(n for n, p in trainable.get_base_model().named_parameters() if p.requires_grad)
    assert trained == trainable.artifact_keys


def test_other_decoder_is_refused(tmp_path):
    _, artifact = trained_artifact("t5", "full", tmp_path)
    with pytest.raises(ValueError, match="trained against a different decoder"):
        AutoFrozenModel.from_pretrained(artifact, base_model=tiny_model("t5", seed=1))
    other_dtype = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "t5-base", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="same dtype"):
        AutoFrozenModel.from_pretrained(artifact, base_model=other_dtype)


def test_lora_artifact_refuses_other_frozen_encoder_weights(tmp_path):
    _, artifact = trained_artifact("t5", "lora+embeddings", tmp_path)
    base = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "t5-base")
    with torch.no_grad():
        base.encoder.block[0].layer[0].SelfAttention.q.weight.add_(0.1)  # LoRA's base weight, not in the artifact
    with pytest.raises(ValueError, match="frozen encoder weights"):
        AutoFrozenModel.from_pretrained(artifact, base_model=base)


def rewrite_weights(artifact, tensors):
    """Replace the weights and their recorded checksum, as a save by another architecture or setting would."""
    save_file(tensors, artifact / WEIGHTS_NAME)
    record = json.loads((artifact / RECORD_NAME).read_text())
    record["weights_sha256"] = sha256_file(artifact / WEIGHTS_NAME)
    (artifact / RECORD_NAME).write_text(json.dumps(record))


def test_missing_extra_and_misshaped_weights_are_refused(tmp_path):
    _, artifact = trained_artifact("t5", "full", tmp_path)
    tensors = load_file(artifact / WEIGHTS_NAME)
    file_name = sorted(tensors)[0]
    name = file_name.removeprefix("base_model.model.")

    broken = {k: v for k, v in tensors.items() if k != file_name}
    rewrite_weights(artifact, broken)
    with pytest.raises(ValueError, match=rf"missing \['{name}'\]"):
        AutoFrozenModel.from_pretrained(artifact)

    rewrite_weights(artifact, {**tensors, "base_model.model.encoder.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unexpected \\['encoder.extra.weight'\\]"):
        AutoFrozenModel.from_pretrained(artifact)

    rewrite_weights(artifact, {**tensors, file_name: torch.zeros(3, 3)})
    with pytest.raises(ValueError, match=f"Tensor '{name}' .* has shape \\(3, 3\\)"):
        AutoFrozenModel.from_pretrained(artifact)


def test_artifact_without_base_needs_one(tmp_path):
    model = get_frozen_model(tiny_model("t5"), FrozenDecoderConfig())  # built from a config: no Hub id
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="records no base model"):
        AutoFrozenModel.from_pretrained(tmp_path)
    assert isinstance(AutoFrozenModel.from_pretrained(tmp_path, base_model=tiny_model("t5")), FrozenDecoderModel)


def test_not_an_artifact(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an hf-frozen artifact"):
        AutoFrozenModel.from_pretrained(tmp_path)


def test_save_is_refused_when_the_decoder_changed(tmp_path):
    model = get_frozen_model(tiny_model("t5"), FrozenDecoderConfig())
    model.save_pretrained(tmp_path)
    saved = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    # The decoder was changed behind the adapter's back: saving is refused before anything is written.
    with torch.no_grad():
        model.get_base_model().lm_head.weight.add_(1.0)
    with pytest.raises(RuntimeError, match="decoder changed"):
        model.save_pretrained(tmp_path)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == saved


def test_a_base_whose_decoder_config_differs_is_refused(tmp_path):
    """Same weights, another `layer_norm_epsilon`: the decoder would compute something else."""
    _, artifact = trained_artifact("t5", "full", tmp_path)
    other = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "t5-base", layer_norm_epsilon=1e-3)
    with pytest.raises(ValueError, match=r"another config .*layer_norm_epsilon: 1e-06 -> 0.001"):
        AutoFrozenModel.from_pretrained(artifact, base_model=other)
    same = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "t5-base", dropout_rate=0.3)  # training-only
    AutoFrozenModel.from_pretrained(artifact, base_model=same)


def test_a_reloaded_models_card_counts_the_trained_parameters(tmp_path):
    """A model loaded for inference has nothing trainable; its card still tells what the artifact trained (it said
    "Trainable parameters: 0 of ...")."""
    model = get_frozen_model(tiny_model("t5"), FrozenDecoderConfig(encoder_training="lora", lora_r=4))
    trained = model.get_nb_trainable_parameters()[0]
    model.save_pretrained(tmp_path / "artifact")
    reloaded = AutoFrozenModel.from_pretrained(tmp_path / "artifact", base_model=tiny_model("t5"))
    assert reloaded.get_nb_trainable_parameters()[0] == 0
    for card in (model.model_card(), reloaded.model_card()):
        assert f"Trained parameters (the artifact's): {trained:,d} of " in card
