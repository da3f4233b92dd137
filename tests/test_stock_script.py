"""A stock `run_summarization.py` (tests/scripts/) gains the frozen decoder with four lines, and every path it
walks by habit saves the encoder-only artifact: checkpoints, resuming, `save_model`, `push_to_hub` (the Hub's
servers faked). The results load in fresh processes, as an hf-frozen model and as a plain export."""

import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import hf_frozen.utils.hub
from hf_frozen import AutoFrozenModel
from hf_frozen.config import CONFIG_NAME, RECORD_NAME, WEIGHTS_NAME

from .tiny_models import save_tiny_t5_with_tokenizer

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "scripts" / "run_summarization.py"
TEXTS = ["w5 w6 w7 w8 w9", "w10 w11 w12 w13", "w20 w21 w22 w23 w24 w25", "w30 w31 w32"] * 4


class FakeTrainerHub:
    """The Hub's servers as the Trainer calls them (`hf_api().create_repo` / `.upload_folder`), kept in a folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def create_repo(self, repo_id, token=None, private=None, exist_ok=False, **kwargs):
        (self.root / repo_id).mkdir(parents=True, exist_ok=True)
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, repo_id, folder_path, commit_message=None, ignore_patterns=(), **kwargs):
        shutil.copytree(folder_path, self.root / repo_id, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(*ignore_patterns))  # fmt: skip
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/0")

    def download(self, repo_id, filename, revision=None, token=None):
        path = self.root / repo_id / filename
        if not path.is_file():
            from huggingface_hub.errors import EntryNotFoundError

            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(path)


def write_jsonl(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": t, "summary": " ".join(t.split()[::-1])}) + "\n" for t in texts))


def run_script(argv: list[str]) -> None:
    old = sys.argv
    sys.argv = [str(SCRIPT), *argv]
    try:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    finally:
        sys.argv = old


def generate_in_fresh_process(loader: str, path: Path) -> list:
    code = (
        "import json, sys, torch; from transformers import AutoModelForSeq2SeqLM; "
        "from hf_frozen import AutoFrozenModel; "
        f"m = {loader}(sys.argv[1]).eval(); "
        "print(json.dumps(m.generate(input_ids=torch.tensor([[5, 6, 7, 8, 1]]), max_new_tokens=5, num_beams=3, "
        "do_sample=False).tolist()))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=False,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("encoder_training", ["full", "lora"])
def test_stock_run_summarization(encoder_training, tmp_path, monkeypatch):
    import transformers.trainer

    hub = FakeTrainerHub(tmp_path / "hub")
    if hasattr(transformers.trainer, "hf_api"):  # transformers >= 5.x: hf_api().create_repo / .upload_folder
        monkeypatch.setattr(transformers.trainer, "hf_api", lambda *a, **k: hub)
    else:  # transformers 5.0: the functions themselves
        monkeypatch.setattr(transformers.trainer, "create_repo", lambda *a, **k: hub.create_repo(*a, **k))
        monkeypatch.setattr(transformers.trainer, "upload_folder", lambda *a, **k: hub.upload_folder(*a, **k))
    monkeypatch.setattr(hf_frozen.utils.hub, "hf_hub_download", hub.download)
    base = tmp_path / "t5-base"
    save_tiny_t5_with_tokenizer(base)
    write_jsonl(tmp_path / "train.jsonl", TEXTS)
    write_jsonl(tmp_path / "validation.jsonl", TEXTS[:4])
    out = tmp_path / "out"
    # One JSON file carries the script's own arguments, the TrainingArguments and the FrozenDecoderConfig.
    arguments = {
        "model_name_or_path": str(base), "train_file": str(tmp_path / "train.jsonl"),
        "validation_file": str(tmp_path / "validation.jsonl"), "output_dir": str(out), "do_train": True,
        "do_eval": True, "max_steps": 2, "save_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 3e-2,
        "report_to": [], "use_cpu": True, "disable_tqdm": True, "encoder_training": encoder_training,
        "lora_r": 4, "push_to_hub": True, "hub_model_id": "user/t5-frozen", "hub_strategy": "end",
    }  # fmt: skip
    (tmp_path / "args.json").write_text(json.dumps(arguments))
    run_script([str(tmp_path / "args.json")])
    for folder in (out / "checkpoint-2", out):
        assert (folder / WEIGHTS_NAME).is_file() and (folder / CONFIG_NAME).is_file()
        assert not (folder / "model.safetensors").exists(), "no full model beside the artifact"
    assert (out / "tokenizer_config.json").is_file(), "the tokenizer travels with the artifact"
    assert (out / "adapter_config.json").is_file() == (encoder_training == "lora")

    # The same script again, from the command line and with more steps: it finds the last checkpoint and resumes.
    command_line = [f"--{k}={v}" for k, v in arguments.items() if not isinstance(v, (bool, list))]
    command_line += [
        "--do_train",
        "--do_eval",
        "--push_to_hub",
        "--report_to=none",
        "--use_cpu",
        "--disable_tqdm=true",
    ]
    run_script([a for a in command_line if not a.startswith("--max_steps")] + ["--max_steps=4"])
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and (out / "checkpoint-4" / WEIGHTS_NAME).is_file()

    in_process = AutoFrozenModel.from_pretrained(out)
    expected = in_process.generate(input_ids=torch.tensor([[5, 6, 7, 8, 1]]), max_new_tokens=5, num_beams=3,
                                   do_sample=False).tolist()  # fmt: skip
    assert generate_in_fresh_process("AutoFrozenModel.from_pretrained", out) == expected

    # The push: the artifact, its record and the tokenizer, without checkpoints; loadable by repo id.
    repo = tmp_path / "hub" / "user/t5-frozen"
    assert {WEIGHTS_NAME, CONFIG_NAME, RECORD_NAME, "tokenizer_config.json", "README.md"} <= {
        p.name for p in repo.iterdir()
    }
    assert not any(p.name.startswith("checkpoint-") for p in repo.iterdir())
    from_hub = AutoFrozenModel.from_pretrained("user/t5-frozen")
    torch.testing.assert_close(from_hub.encoder_state_dict(), in_process.encoder_state_dict(), rtol=0, atol=0)

    # The plain export generates the same, with transformers alone.
    AutoFrozenModel.from_pretrained(out).merge_and_unload().save_pretrained(tmp_path / "plain")
    assert generate_in_fresh_process("AutoModelForSeq2SeqLM.from_pretrained", tmp_path / "plain") == expected
