"""Encoder-only artifacts: save, load in a fresh process, refuse what does not fit, never lose saved work."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSeq2SeqLM

import hf_frozen.hub
import hf_frozen.io
from hf_frozen import AutoFrozenModel, FrozenDecoderConfig, FrozenDecoderModel, get_frozen_model
from hf_frozen.config import CONFIG_NAME
from hf_frozen.frozen_decoder.model import WEIGHTS_NAME

from .tiny_models import FAMILIES, tiny_model
from .trainer_utils import make_trainer

INPUTS = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [20, 21, 22, 23, 24, 25, 26, 27]])
MODES = {"full": FrozenDecoderConfig(), "lora+embeddings": FrozenDecoderConfig(
    encoder_training="lora", lora_r=4, train_encoder_embeddings=True)}  # fmt: skip


def generations(model) -> dict[str, list]:
    model.eval()
    kwargs = dict(input_ids=INPUTS, attention_mask=torch.ones_like(INPUTS), max_new_tokens=6, min_new_tokens=6)
    return {
        "greedy": model.generate(**kwargs, num_beams=1, do_sample=False).tolist(),
        "beam3": model.generate(**kwargs, num_beams=3, do_sample=False).tolist(),
    }


def trained_artifact(family, mode, tmp_path):
    """Save a base model to disk, fine-tune its encoder for a few real steps, save the encoder artifact."""
    base_dir = tmp_path / f"{family}-base"
    tiny_model(family).save_pretrained(base_dir)
    model = get_frozen_model(AutoModelForSeq2SeqLM.from_pretrained(base_dir), MODES[mode])
    make_trainer(model, str(tmp_path / f"{family}-{mode}-run"), max_steps=4, learning_rate=3e-2).train()
    artifact = tmp_path / f"{family}-{mode}-artifact"
    model.save_pretrained(artifact)
    return model, artifact


def test_artifact_holds_encoder_weights_only(tmp_path):
    model, artifact = trained_artifact("t5", "full", tmp_path)
    tensors = load_file(artifact / WEIGHTS_NAME)
    assert sorted(tensors) == model.artifact_keys
    assert all(name.startswith("encoder.") for name in tensors)
    config = json.loads((artifact / CONFIG_NAME).read_text())
    assert config["base_model_name_or_path"] == str(tmp_path / "t5-base")
    assert config["decoder_fingerprint"] == model.decoder_fingerprint()


@pytest.mark.parametrize("mode", MODES)
def test_fresh_process_generates_identically(mode, tmp_path):
    expected, artifacts = {}, {}
    for family in FAMILIES:
        model, artifacts[family] = trained_artifact(family, mode, tmp_path)
        expected[family] = generations(model)
    script = f"""
import json, sys, torch
sys.path.insert(0, {os.path.dirname(os.path.dirname(__file__))!r})
from hf_frozen import AutoFrozenModel
from tests.test_save_load import generations
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
    assert sorted(n for n, p in trainable.base_model.named_parameters() if p.requires_grad) == trainable.artifact_keys


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


def test_missing_extra_and_misshaped_weights_are_refused(tmp_path):
    _, artifact = trained_artifact("t5", "full", tmp_path)
    tensors = load_file(artifact / WEIGHTS_NAME)
    name = sorted(tensors)[0]

    broken = {k: v for k, v in tensors.items() if k != name}
    save_file(broken, artifact / WEIGHTS_NAME)
    with pytest.raises(ValueError, match=rf"missing \['{name}'\]"):
        AutoFrozenModel.from_pretrained(artifact)

    save_file({**tensors, "encoder.extra.weight": torch.zeros(1)}, artifact / WEIGHTS_NAME)
    with pytest.raises(ValueError, match="unexpected \\['encoder.extra.weight'\\]"):
        AutoFrozenModel.from_pretrained(artifact)

    save_file({**tensors, name: torch.zeros(3, 3)}, artifact / WEIGHTS_NAME)
    with pytest.raises(ValueError, match=f"Tensor '{name}' .* has shape \\(3, 3\\)"):
        AutoFrozenModel.from_pretrained(artifact)


def test_corrupted_or_missing_weights_file(tmp_path):
    _, artifact = trained_artifact("t5", "full", tmp_path)
    path = artifact / WEIGHTS_NAME
    path.write_bytes(path.read_bytes()[:1000])  # truncated download
    with pytest.raises(ValueError, match="corrupted or truncated"):
        AutoFrozenModel.from_pretrained(artifact)
    path.unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
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


def test_failed_save_keeps_the_previous_artifact(tmp_path, monkeypatch):
    model = get_frozen_model(tiny_model("t5"), FrozenDecoderConfig())
    model.save_pretrained(tmp_path)
    saved = {name: (tmp_path / name).read_bytes() for name in (WEIGHTS_NAME, CONFIG_NAME)}

    # 1. The decoder was changed behind the adapter's back: saving is refused before anything is written.
    original = model.base_model.lm_head.weight.detach().clone()
    with torch.no_grad():
        model.base_model.lm_head.weight.add_(1.0)
    with pytest.raises(RuntimeError, match="decoder changed"):
        model.save_pretrained(tmp_path)
    assert {name: (tmp_path / name).read_bytes() for name in saved} == saved
    with torch.no_grad():
        model.base_model.lm_head.weight.copy_(original)

    # 2. The write itself fails half way (disk full): the old file stays, no temporary file is left.
    def failing_save_file(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(hf_frozen.io, "save_file", failing_save_file)
    with pytest.raises(OSError, match="No space"):
        model.save_pretrained(tmp_path)
    assert {name: (tmp_path / name).read_bytes() for name in saved} == saved
    assert sorted(os.listdir(tmp_path)) == sorted(saved)


class FakeHub:
    """Stands in for the Hub's servers (the only thing mocked): records repos and serves uploaded files."""

    def __init__(self, root):
        self.root = root
        self.created = []

    def api(self, token=None):
        hub = self

        class Api:
            def create_repo(self, repo_id, private=None, exist_ok=False, repo_type=None):
                hub.created.append((repo_id, private))

            def upload_folder(self, repo_id, folder_path, commit_message, revision=None):
                shutil.copytree(folder_path, hub.root / repo_id, dirs_exist_ok=True)
                return f"https://huggingface.co/{repo_id}/commit/0"

        return Api()

    def download(self, repo_id, filename, revision=None, token=None):
        path = self.root / repo_id / filename
        if not path.is_file():
            from huggingface_hub.errors import EntryNotFoundError

            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(path)


def test_push_to_hub_and_load_back(tmp_path, monkeypatch):
    hub = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(hf_frozen.hub, "HfApi", hub.api)
    monkeypatch.setattr(hf_frozen.hub, "hf_hub_download", hub.download)
    model, _ = trained_artifact("t5", "lora+embeddings", tmp_path)

    url = model.push_to_hub("me/t5-task-encoder", private=True)

    assert url.endswith("/commit/0") and hub.created == [("me/t5-task-encoder", True)]
    uploaded = hub.root / "me" / "t5-task-encoder"
    assert sorted(os.listdir(uploaded)) == ["README.md", CONFIG_NAME, WEIGHTS_NAME]
    card = (uploaded / "README.md").read_text()
    assert "library_name: hf-frozen" in card and f"base_model: {tmp_path / 't5-base'}" in card
    assert model.frozen_config.decoder_fingerprint in card
    loaded = AutoFrozenModel.from_pretrained("me/t5-task-encoder")
    assert generations(loaded) == generations(model)
    with pytest.raises(FileNotFoundError, match="Could not find hf_frozen_config.json"):
        AutoFrozenModel.from_pretrained("me/missing-repo")
