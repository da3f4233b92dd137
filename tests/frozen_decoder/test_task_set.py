"""A multi-encoder set is one artifact: `save_pretrained(dir)`, `MultiEncoderModel.from_pretrained(base, dir)`,
`AutoFrozenModel.from_pretrained(dir)`, `push_to_hub(repo)` and loading by repo id all give the same model; each
task also loads alone; a task replaced inside the set is refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

import hf_frozen.utils.hub
from hf_frozen import ArtifactError, AutoFrozenModel, FrozenDecoderConfig, FrozenDecoderModel, MultiEncoderModel
from hf_frozen.config import CONFIG_NAME, RECORD_NAME
from hf_frozen.registry import registered_adapters

from ..fake_hub import FakeHub
from ..tiny_models import tiny_model

ROOT = Path(__file__).resolve().parents[2]
MODES = {
    "full": FrozenDecoderConfig(),
    "lora": FrozenDecoderConfig(encoder_training="lora", lora_r=4),
    "bf16-decoder": FrozenDecoderConfig(decoder_dtype="bfloat16"),
}
IDS = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0], [12, 13, 0, 0]])
TASKS = ["summarize", "translate", "summarize"]


def trained_set(base_dir: Path, config: FrozenDecoderConfig) -> MultiEncoderModel:
    """Two task encoders with different weights (as after training), on a base saved in `base_dir`."""
    model = MultiEncoderModel.for_training(AutoModelForSeq2SeqLM.from_pretrained(base_dir), ["summarize", "translate"],
                                           config)  # fmt: skip
    torch.manual_seed(0)
    with torch.no_grad():
        for task in model.task_configs:
            for tensor in model._task_tensors(task).values():
                tensor.add_(torch.randn_like(tensor) * 0.5)
    return model.eval()


def generations(model) -> list:
    mask = (IDS != 0).long()
    kwargs = dict(input_ids=IDS, attention_mask=mask, tasks=TASKS, max_new_tokens=5, min_new_tokens=5)
    return [model.generate(**kwargs, num_beams=beams, do_sample=False).tolist() for beams in (1, 3)]


@pytest.mark.parametrize("mode", MODES)
def test_a_set_round_trips_on_every_path(mode, tmp_path, monkeypatch):
    tiny_model("t5").save_pretrained(tmp_path / "base")
    model = trained_set(tmp_path / "base", MODES[mode])
    expected = generations(model)
    model.save_pretrained(tmp_path / "set")
    assert json.loads((tmp_path / "set" / CONFIG_NAME).read_text())["tasks"] == ["summarize", "translate"]

    base = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "base")
    assert generations(MultiEncoderModel.from_pretrained(base, tmp_path / "set")) == expected
    assert generations(AutoFrozenModel.from_pretrained(tmp_path / "set")) == expected  # the recorded base
    lazy = MultiEncoderModel.from_pretrained(None, str(tmp_path / "set"), max_resident_encoders=1)
    assert generations(lazy) == expected
    alone = AutoFrozenModel.from_pretrained(tmp_path / "set" / "translate")  # one task of the set, alone
    assert isinstance(alone, FrozenDecoderModel)

    hub = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(hf_frozen.utils.hub, "HfApi", hub.api)
    monkeypatch.setattr(hf_frozen.utils.hub, "hf_hub_download", hub.download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot)
    model.push_to_hub("me/task-set")
    card = (hub.root / "me" / "task-set" / "README.md").read_text()
    assert "| `translate` |" in card and "multi-encoder" in card
    assert generations(AutoFrozenModel.from_pretrained("me/task-set")) == expected


def test_a_set_loads_in_a_fresh_process(tmp_path):
    tiny_model("bart").save_pretrained(tmp_path / "base")
    model = trained_set(tmp_path / "base", MODES["lora"])
    model.save_pretrained(tmp_path / "set")
    script = (
        "import json, sys, torch; sys.path.insert(0, sys.argv[2]);"
        "from hf_frozen import AutoFrozenModel; from tests.frozen_decoder.test_task_set import generations;"
        "print(json.dumps(generations(AutoFrozenModel.from_pretrained(sys.argv[1]))))"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "set"), str(ROOT)], capture_output=True,
                          text=True, check=False, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == generations(model)


def test_a_task_replaced_inside_a_set_is_refused(tmp_path):
    tiny_model("t5").save_pretrained(tmp_path / "base")
    trained_set(tmp_path / "base", MODES["full"]).save_pretrained(tmp_path / "set")
    shutil.rmtree(tmp_path / "set" / "summarize")
    shutil.copytree(tmp_path / "set" / "translate", tmp_path / "set" / "summarize")
    with pytest.raises(ArtifactError, match="'summarize' of the multi-encoder set .* holds other weights"):
        AutoFrozenModel.from_pretrained(tmp_path / "set")
    record = json.loads((tmp_path / "set" / RECORD_NAME).read_text())
    record["task_weights_sha256"].pop("summarize")
    (tmp_path / "set" / RECORD_NAME).write_text(json.dumps(record))
    with pytest.raises(ArtifactError, match="its checksums name the tasks"):
        AutoFrozenModel.from_pretrained(tmp_path / "set")


def test_the_set_is_a_registered_adapter_type():
    assert "multi_encoder" in registered_adapters()
