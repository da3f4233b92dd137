"""Every `hub_strategy` of the Trainer pushes a repo that `AutoFrozenModel.from_pretrained(repo_id)` loads, equal to
the state at that push, resumed runs included. The Hub's servers are faked; every upload is recorded."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transformers.trainer

import hf_frozen.utils.hub
from hf_frozen import AutoFrozenModel, FrozenDecoderConfig, get_frozen_model

from .tiny_models import tiny_model
from .trainer_utils import make_trainer

REPO = "me/frozen"


class RecordingHub:
    """`hf_api()` as the Trainer calls it: each upload lands in the repo (at `path_in_repo`) and the repo root
    after it is kept as one snapshot."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.snapshots: list[Path] = []

    def create_repo(self, repo_id, **kwargs):
        (self.root / repo_id).mkdir(parents=True, exist_ok=True)
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, repo_id, folder_path, path_in_repo=None, ignore_patterns=(), **kwargs):
        target = self.root / repo_id / (path_in_repo or "")
        shutil.copytree(folder_path, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*ignore_patterns or ()))
        if not path_in_repo:
            snapshot = self.root.parent / f"snapshot-{len(self.snapshots)}"
            shutil.copytree(self.root / repo_id, snapshot, ignore=shutil.ignore_patterns("checkpoint-*", "last-*"))
            self.snapshots.append(snapshot)
        return SimpleNamespace(commit_url="https://huggingface.co/x/commit/0", done=lambda: True, is_done=lambda: True)

    def download(self, repo_id, filename, revision=None, token=None):
        return str(self.root / repo_id / filename)


def encoder_weights(folder: Path) -> dict:
    model = AutoFrozenModel.from_pretrained(folder, base_model=tiny_model("t5"))
    return {k: v.clone() for k, v in model.encoder_state_dict().items()}


@pytest.mark.parametrize("hub_strategy", ["every_save", "checkpoint", "all_checkpoints", "end"])
@pytest.mark.parametrize("encoder_training", ["full", "lora"])
def test_every_push_loads_as_the_state_it_pushed(hub_strategy, encoder_training, tmp_path, monkeypatch):
    hub = RecordingHub(tmp_path / "hub")
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda *a, **k: hub)
    monkeypatch.setattr(hf_frozen.utils.hub, "hf_hub_download", hub.download)
    config = FrozenDecoderConfig(encoder_training=encoder_training, lora_r=4)
    out = tmp_path / "out"
    push = dict(push_to_hub=True, hub_model_id=REPO, hub_strategy=hub_strategy, save_strategy="steps", save_steps=2)
    for max_steps, resume in ((2, False), (4, True)):  # a run, then the same run resumed to more steps
        model = get_frozen_model(tiny_model("t5"), config)
        trainer = make_trainer(model, str(out), max_steps=max_steps, learning_rate=3e-2, **push)
        trainer.train(resume_from_checkpoint=resume)
        if hub_strategy == "end":
            trainer.push_to_hub()
    if hub_strategy != "end":
        assert len(hub.snapshots) >= 2, "one push per save"
    # Each push of the repo root loads, and holds the checkpoint of its step (the last: the final state).
    final = encoder_weights(out / "checkpoint-4")
    checkpoints = [encoder_weights(out / f"checkpoint-{step}") for step in (2, 4)]
    for snapshot in hub.snapshots:
        loaded = encoder_weights(snapshot)
        matches = [c for c in checkpoints if all(torch.equal(loaded[k], v) for k, v in c.items())]
        assert matches, f"{snapshot.name} holds the state of no checkpoint"
    assert all(torch.equal(encoder_weights(hub.snapshots[-1])[k], v) for k, v in final.items())
    from_hub = AutoFrozenModel.from_pretrained(REPO, base_model=tiny_model("t5"))
    assert all(torch.equal(from_hub.encoder_state_dict()[k], v) for k, v in final.items())
    if hub_strategy in ("checkpoint", "all_checkpoints"):
        pushed = hub.root / REPO / ("last-checkpoint" if hub_strategy == "checkpoint" else "checkpoint-4")
        assert all(torch.equal(encoder_weights(pushed)[k], v) for k, v in final.items())


def head_weights(folder: Path, dect) -> dict:
    from hf_frozen import DecTModel

    loaded = DecTModel.from_pretrained(folder, base_model=dect.backbone.model, tokenizer=dect.backbone.tokenizer)
    return {k: v.clone() for k, v in loaded.head.state_dict().items()}


@pytest.mark.parametrize("hub_strategy", ["every_save", "checkpoint", "all_checkpoints"])
def test_every_push_of_a_dect_head_loads_as_the_state_it_pushed(hub_strategy, tmp_path, monkeypatch):
    from .dect.test_callback import trainer_for
    from .tiny_dect import make

    hub = RecordingHub(tmp_path / "hub")
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda *a, **k: hub)
    dect = make("masked_lm", zero_shot_weight=0.5)
    trainer = trainer_for(dect, tmp_path / "out", max_steps=20, push_to_hub=True, hub_model_id=REPO,
                          hub_strategy=hub_strategy)  # fmt: skip
    trainer.train()
    assert len(hub.snapshots) == 2, "a push per save, at steps 10 and 20"
    for step, snapshot in zip((10, 20), hub.snapshots, strict=True):
        expected = head_weights(tmp_path / "out" / f"checkpoint-{step}", dect)
        assert all(torch.equal(head_weights(snapshot, dect)[k], v) for k, v in expected.items()), step


@pytest.mark.parametrize("hub_strategy", ["every_save", "checkpoint"])
def test_every_push_of_a_multi_encoder_set_loads_as_the_state_it_pushed(hub_strategy, tmp_path, monkeypatch):
    from transformers import Seq2SeqTrainer

    from hf_frozen import FrozenDecoderCallback, MultiEncoderModel, mix_tasks

    from .tiny_models import copy_task_dataset
    from .trainer_utils import training_args

    hub = RecordingHub(tmp_path / "hub")
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda *a, **k: hub)
    model = MultiEncoderModel.for_training(tiny_model("t5"), ["a", "b"])
    stream = model.add_task_ids(mix_tasks({"a": copy_task_dataset(16, seed=0), "b": copy_task_dataset(16, seed=1)}))
    args = training_args(str(tmp_path / "out"), max_steps=4, save_strategy="steps", save_steps=2, push_to_hub=True,
                         hub_model_id=REPO, hub_strategy=hub_strategy, remove_unused_columns=False)  # fmt: skip
    Seq2SeqTrainer(model=model, args=args, train_dataset=stream.remove_columns(["task"]),
                   callbacks=[FrozenDecoderCallback()]).train()  # fmt: skip
    assert len(hub.snapshots) == 2
    for step, snapshot in zip((2, 4), hub.snapshots, strict=True):
        pushed = MultiEncoderModel.from_pretrained(tiny_model("t5"), snapshot)
        saved = MultiEncoderModel.from_pretrained(tiny_model("t5"), tmp_path / "out" / f"checkpoint-{step}")
        for task in "ab":
            assert all(torch.equal(pushed._task_tensors(task)[k], v) for k, v in saved._task_tensors(task).items())
