"""Many task encoders on one frozen decoder: mixed-task generation equals each task alone."""

import shutil

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSeq2SeqLM

from hf_frozen import AutoFrozenModel, FrozenDecoderConfig, MultiEncoderModel, get_frozen_model

from ..tiny_models import tiny_model
from ..trainer_utils import make_trainer

MODES = {
    "full": FrozenDecoderConfig(),
    "full+embeddings": FrozenDecoderConfig(train_encoder_embeddings=True),
    "lora": FrozenDecoderConfig(encoder_training="lora", lora_r=4),
}


def train_task(base_dir, mode, out, seed):
    model = get_frozen_model(AutoModelForSeq2SeqLM.from_pretrained(base_dir), MODES[mode])
    make_trainer(model, str(out / "run"), max_steps=3, learning_rate=3e-2, seed=seed).train()
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    found = {}
    for family in ("t5", "bart"):
        tiny_model(family).save_pretrained(root / family)
        found[family] = {
            mode: train_task(root / family, mode, root / f"{family}-{mode}", seed=i) for i, mode in enumerate(MODES)
        }
    return root, found


def batch(family):
    pad = 0 if family == "t5" else 1
    ids = torch.tensor(
        [[5, 6, 7, 8, 9, 10, 11, 12], [20, 21, 22, pad, pad, pad, pad, pad], [30, 31, 32, 33, 34, pad, pad, pad],
         [40, 41, 42, 43, 44, 45, pad, pad], [50, 51, pad, pad, pad, pad, pad, pad]]
    )  # fmt: skip
    return ids, (ids != pad).long()


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("family", ["t5", "bart"])
def test_mixed_batch_equals_each_task_alone(artifacts, family, num_beams):
    root, found = artifacts
    server = MultiEncoderModel.from_pretrained(str(root / family), found[family])
    ids, mask = batch(family)
    tasks = ["lora", "full", "full+embeddings", "full", "lora"]
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, num_beams=num_beams, do_sample=False)
    mixed = server.generate(input_ids=ids, attention_mask=mask, tasks=tasks, **kwargs)
    for task in MODES:
        rows = [i for i, t in enumerate(tasks) if t == task]
        alone = AutoFrozenModel.from_pretrained(found[family][task])
        width = int(mask[rows].sum(1).max())  # the group padded only as far as it needs
        expected = alone.generate(input_ids=ids[rows][:, :width], attention_mask=mask[rows][:, :width], **kwargs)
        assert mixed[rows].tolist() == expected.tolist(), task


def test_decoder_is_held_once_and_tasks_are_listed(artifacts):
    root, found = artifacts
    server = MultiEncoderModel.from_pretrained(str(root / "t5"), found["t5"])
    listing = server.tasks()
    assert sorted(listing) == sorted(MODES)
    encoder_params = sum(p.numel() for p in server.get_base_model().get_encoder().parameters())
    embedding = server.get_base_model().shared.weight.numel()
    assert listing["full"]["parameters"] == encoder_params - embedding  # the tied embedding stays shared
    assert listing["full+embeddings"]["parameters"] == encoder_params
    assert 0 < listing["lora"]["parameters"] < listing["full"]["parameters"] // 4  # only the LoRA weights
    assert listing["full"]["bytes"] == 4 * listing["full"]["parameters"]
    shared = server.get_base_model().shared.weight
    assert server.encoders["full"].get_input_embeddings().weight is shared  # the same object, not a copy
    # A served LoRA task holds its adapter alone, no copy of the encoder: only LoRA tensors, the listed size.
    assert "lora" not in server.encoders
    adapter = dict(server.lora_adapters["lora"].named_parameters())
    assert adapter and all(".lora_" in f".{n}" for n in adapter)
    assert sum(p.numel() for p in adapter.values()) == listing["lora"]["parameters"]
    assert server.encoders["full+embeddings"].get_input_embeddings().weight is not shared
    assert all(p.data_ptr() != server.get_base_model().decoder.block[0].layer[0].SelfAttention.q.weight.data_ptr()
               for e in server.encoders.values() for p in e.parameters())  # fmt: skip


def test_add_replace_remove(artifacts):
    root, found = artifacts
    server = MultiEncoderModel.from_pretrained(str(root / "t5"), {"a": found["t5"]["full"]})
    ids, mask = batch("t5")
    before = server.generate(input_ids=ids, attention_mask=mask, tasks=["a"] * 5, max_new_tokens=4)
    with pytest.raises(ValueError, match="already exists"):
        server.add_task("a", found["t5"]["lora"])
    server.add_task("a", found["t5"]["lora"], replace=True)
    assert server.tasks()["a"]["encoder_training"] == "lora"
    after = server.generate(input_ids=ids, attention_mask=mask, tasks=["a"] * 5, max_new_tokens=4)
    assert after.tolist() != before.tolist()
    server.add_task("b", AutoFrozenModel.from_pretrained(found["t5"]["full"]))  # an in-memory model works too
    server.remove_task("a")
    assert list(server.tasks()) == ["b"]


def test_bad_input_is_named(artifacts):
    root, found = artifacts
    server = MultiEncoderModel.from_pretrained(str(root / "t5"), {"a": found["t5"]["full"]})
    ids, mask = batch("t5")
    with pytest.raises(ValueError, match=r"Unknown task\(s\) \['nope'\]"):
        server.generate(input_ids=ids, attention_mask=mask, tasks=["a", "a", "nope", "a", "a"])
    with pytest.raises(ValueError, match="names 2 task\\(s\\) but the batch holds 5"):
        server.generate(input_ids=ids, attention_mask=mask, tasks=["a", "a"])
    with pytest.raises(ValueError, match="Task 'bart-task': the encoder .* trained against a different decoder"):
        server.add_task("bart-task", found["bart"]["full"])
    other = MultiEncoderModel(tiny_model("t5", seed=5))
    with pytest.raises(ValueError, match="different decoder"):
        other.add_task("a", found["t5"]["full"])
    assert list(server.tasks()) == ["a"], "a failed add leaves the served tasks as they were"


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_joint_training_of_one_encoder_per_task(tmp_path, mode):
    from transformers import Seq2SeqTrainer

    from hf_frozen import mix_tasks

    from ..tiny_models import copy_task_dataset
    from ..trainer_utils import training_args

    tiny_model("bart").save_pretrained(tmp_path / "base")
    base = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "base")
    model = MultiEncoderModel.for_training(base, ["reverse", "copy"], MODES[mode])
    decoder_before = {n: t.clone() for n, t in model.get_base_model().get_decoder().state_dict().items()}
    reverse = copy_task_dataset(32, seed=0)
    copy_ = copy_task_dataset(32, seed=1).map(lambda row: {"labels": row["input_ids"]})
    stream = model.add_task_ids(mix_tasks({"reverse": reverse, "copy": copy_}, seed=0))
    encoders_before = {t: {n: p.clone() for n, p in e.named_parameters() if p.requires_grad}
                       for t, e in model.encoders.items()}  # fmt: skip
    args = training_args(str(tmp_path / "run"), max_steps=4, remove_unused_columns=False)
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=stream.remove_columns(["task"]))
    trainer.train()

    decoder_after = model.get_base_model().get_decoder().state_dict()
    assert all(torch.equal(decoder_before[n], decoder_after[n]) for n in decoder_before)
    for task, before in encoders_before.items():
        after = dict(model.encoders[task].named_parameters())
        assert sum(not torch.equal(before[n], after[n]) for n in before) >= len(before) // 2, task
    model.save_pretrained(tmp_path / "tasks")
    artifacts = {t: str(tmp_path / "tasks" / t) for t in ("reverse", "copy")}
    server = MultiEncoderModel.from_pretrained(str(tmp_path / "base"), artifacts)
    ids, mask = batch("bart")
    tasks = ["reverse", "copy", "copy", "reverse", "copy"]
    with torch.no_grad():
        trained = model.eval().generate(input_ids=ids, attention_mask=mask, tasks=tasks, max_new_tokens=5)
    assert (
        server.generate(input_ids=ids, attention_mask=mask, tasks=tasks, max_new_tokens=5).tolist() == trained.tolist()
    )
    alone = AutoFrozenModel.from_pretrained(tmp_path / "tasks" / "copy")  # each artifact also loads on its own
    assert alone.frozen_config.encoder_training == mode


def test_lora_task_refuses_other_frozen_encoder_weights(artifacts):
    root, found = artifacts
    base = AutoModelForSeq2SeqLM.from_pretrained(root / "t5")
    with torch.no_grad():
        base.encoder.block[0].layer[0].SelfAttention.q.weight.add_(0.1)  # LoRA's frozen base weight
    server = MultiEncoderModel(base)
    server.add_task("full", found["t5"]["full"])  # a full encoder replaces that weight: fine
    with pytest.raises(ValueError, match="Task 'lora': .* frozen encoder weights"):
        server.add_task("lora", found["t5"]["lora"])


def test_task_ids_and_task_names_are_checked(artifacts, tmp_path):
    root, found = artifacts
    server = MultiEncoderModel.from_pretrained(str(root / "t5"), {"a": found["t5"]["full"]})
    ids, mask = batch("t5")
    with pytest.raises(ValueError, match=r"`task_ids` must be integers in 0..0.*got \[-1\]"):
        server(input_ids=ids, attention_mask=mask, task_ids=torch.tensor([0, 0, -1, 0, 0]))
    for name in ("../outside", "a/b", "a.b", "", " a", "-a"):
        with pytest.raises(ValueError, match="A task name must be"):
            server.add_task(name, found["t5"]["full"])
    for name in ("parameters", "keys", "training"):  # found by tests/test_properties.py
        with pytest.raises(ValueError, match=f"task name '{name}' is taken"):
            server.add_task(name, found["t5"]["full"])
    with pytest.raises(ValueError, match="A task name must be"):
        MultiEncoderModel.for_training(tiny_model("t5"), ["ok", "../escape"])


def test_tasks_given_as_one_string_are_refused(artifacts):
    root, found = artifacts
    server = MultiEncoderModel.from_pretrained(str(root / "t5"), {"a": found["t5"]["full"], "b": found["t5"]["lora"]})
    ids, mask = batch("t5")
    with pytest.raises(TypeError, match="one task name per example, got the string 'abab'"):
        server.generate(input_ids=ids[:4], attention_mask=mask[:4], tasks="abab", max_new_tokens=2)


LORA_TASKS = {  # plain LoRA task encoders of different ranks and targets, and one that also trains embeddings
    "lora_r4": (FrozenDecoderConfig(encoder_training="lora", lora_r=4), 0),
    "lora_r8": (FrozenDecoderConfig(encoder_training="lora", lora_r=8, lora_alpha=32), 1),
    "lora_other_layers": (FrozenDecoderConfig(encoder_training="lora", lora_r=4, lora_target_modules=["k", "o"]), 2),
    "lora+embeddings": (FrozenDecoderConfig(encoder_training="lora", lora_r=4, train_encoder_embeddings=True), 3),
}


@pytest.fixture(scope="module")
def lora_artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed-lora")
    tiny_model("t5").save_pretrained(root / "base")
    found = {}
    for name, (config, seed) in LORA_TASKS.items():
        model = get_frozen_model(AutoModelForSeq2SeqLM.from_pretrained(root / "base"), config)
        make_trainer(model, str(root / name / "run"), max_steps=3, learning_rate=5e-2, seed=seed).train()
        model.save_pretrained(root / name)
        found[name] = root / name
    return root, found


@pytest.mark.parametrize("num_beams", [1, 3])
def test_lora_tasks_share_one_encoder_pass_and_equal_each_task_alone(lora_artifacts, num_beams):
    root, found = lora_artifacts
    server = MultiEncoderModel.from_pretrained(str(root / "base"), found)
    assert {name for name, parts in server.lora_parts.items() if parts} == {"lora_r4", "lora_r8", "lora_other_layers"}
    passes = {"base": 0, **{name: 0 for name in found}}
    server.get_base_model().get_encoder().register_forward_hook(
        lambda *_: passes.__setitem__("base", passes["base"] + 1)
    )
    for name, encoder in server.encoders.items():
        encoder.register_forward_hook(lambda *_, n=name: passes.__setitem__(n, passes[n] + 1))
    ids, mask = batch("t5")
    tasks = ["lora_r8", "lora_r4", "lora+embeddings", "lora_other_layers", "lora_r4"]
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, num_beams=num_beams, do_sample=False)
    hidden, _ = server.encode(ids, mask, tasks)
    assert passes == {"base": 1, "lora_r4": 0, "lora_r8": 0, "lora_other_layers": 0, "lora+embeddings": 1}
    mixed = server.generate(input_ids=ids, attention_mask=mask, tasks=tasks, **kwargs)
    for task in found:
        rows = [i for i, t in enumerate(tasks) if t == task]
        alone = AutoFrozenModel.from_pretrained(found[task])
        width = int(mask[rows].sum(1).max())
        alone_ids, alone_mask = ids[rows][:, :width], mask[rows][:, :width]
        expected = alone.generate(input_ids=alone_ids, attention_mask=alone_mask, **kwargs)
        assert mixed[rows].tolist() == expected.tolist(), task
        states = alone.get_base_model().get_encoder()(input_ids=alone_ids, attention_mask=alone_mask)
        np_mask = alone_mask.bool()
        torch.testing.assert_close(hidden[rows][:, :width][np_mask], states.last_hidden_state[np_mask], atol=1e-5,
                                   rtol=1e-5)  # fmt: skip
    # Served LoRA tasks hold no encoder copy: one alone also runs in the shared pass.
    assert sorted(server.lora_adapters) == ["lora_other_layers", "lora_r4", "lora_r8"]
    passes.update(dict.fromkeys(passes, 0))
    server.encode(ids[:1], mask[:1], ["lora_r4"])
    assert passes["base"] == 1
    # Saved again, each task is the same artifact, and loads as it did.
    server.save_pretrained(root / "resaved")
    for task in found:
        again = AutoFrozenModel.from_pretrained(root / "resaved" / task, base_model=str(root / "base"))
        original = AutoFrozenModel.from_pretrained(found[task])
        assert again.encoder_state_dict().keys() == original.encoder_state_dict().keys()
        assert all(torch.equal(t, original.encoder_state_dict()[k]) for k, t in again.encoder_state_dict().items())


def test_lora_tasks_in_training_keep_a_pass_of_their_own():
    """In training mode (LoRA dropout on, gradients per task) each `for_training` encoder runs its own pass."""
    config = FrozenDecoderConfig(encoder_training="lora", lora_r=4)
    model = MultiEncoderModel.for_training(tiny_model("t5"), ["a", "b"], config)
    passes = {"base": 0, "a": 0, "b": 0}
    model.get_base_model().get_encoder().register_forward_hook(
        lambda *_: passes.__setitem__("base", 1 + passes["base"])
    )
    for name, encoder in model.encoders.items():
        encoder.register_forward_hook(lambda *_, n=name: passes.__setitem__(n, passes[n] + 1))
    ids, mask = batch("t5")
    model.encode(ids[:2], mask[:2], ["a", "b"])
    assert passes == {"base": 0, "a": 1, "b": 1}
    model.eval()  # evaluation inside training: the two share one pass
    model.encode(ids[:2], mask[:2], ["a", "b"])
    assert passes == {"base": 1, "a": 1, "b": 1}


def test_at_most_k_encoders_stay_resident_and_evicted_ones_come_back_identical(artifacts, tmp_path):
    root, found = artifacts
    # Six full task encoders, each its own artifact on disk.
    paths = {}
    for i in range(6):  # six different learning rates: six different encoders
        model = get_frozen_model(AutoModelForSeq2SeqLM.from_pretrained(root / "t5"), FrozenDecoderConfig())
        make_trainer(model, str(tmp_path / "run"), max_steps=3, learning_rate=0.01 * (i + 1)).train()
        model.save_pretrained(tmp_path / f"task{i}")
        paths[f"task{i}"] = tmp_path / f"task{i}"
    eager = MultiEncoderModel.from_pretrained(str(root / "t5"), paths)
    lazy = MultiEncoderModel.from_pretrained(str(root / "t5"), paths, max_resident_encoders=2)
    assert sorted(lazy.encoders) == ["task4", "task5"], "every artifact was read and checked, the last two kept"
    assert [name for name, t in lazy.tasks().items() if t["resident"]] == ["task4", "task5"]
    assert lazy.tasks()["task0"]["bytes"] == eager.tasks()["task0"]["bytes"]

    ids, mask = batch("t5")
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, num_beams=3, do_sample=False)
    hidden = eager.encode(ids[:1].repeat(6, 1), None, list(paths))[0]
    assert all(not torch.equal(hidden[0], hidden[i]) for i in range(1, 6)), "six different encoders"
    for tasks in (
        ["task0"] * 5,
        ["task1", "task0", "task1", "task0", "task1"],
        ["task5", "task2", "task3"] + ["task0"] * 2,
    ):
        n = len(tasks)
        expected = eager.generate(input_ids=ids[:n], attention_mask=mask[:n], tasks=tasks, **kwargs)
        got = lazy.generate(input_ids=ids[:n], attention_mask=mask[:n], tasks=tasks, **kwargs)
        assert got.tolist() == expected.tolist(), tasks
        assert torch.equal(lazy.encode(ids[:n], mask[:n], tasks)[0], eager.encode(ids[:n], mask[:n], tasks)[0])
        assert len(lazy.encoders) <= 2
    # Least recently used leaves first: task0 was used last, then task3.
    assert sorted(lazy.encoders) == ["task0", "task3"]
    lazy.generate(input_ids=ids[:1], attention_mask=mask[:1], tasks=["task4"], **kwargs)
    assert sorted(lazy.encoders) == ["task0", "task4"]
    # task_ids keep their meaning whatever is resident.
    assert lazy.add_task_ids(Dataset.from_dict({"task": ["task2"]}))["task_ids"] == [2]

    # An artifact changed on disk after it was added is checked again when it is read back, and refused.
    (paths["task1"] / "adapter_model.safetensors").write_bytes(b"not the weights")
    with pytest.raises(ValueError):
        lazy.generate(input_ids=ids[:1], attention_mask=mask[:1], tasks=["task1"], **kwargs)
    assert sorted(lazy.encoders) == ["task0", "task4"], "a failed read-back leaves the served tasks as they were"
    # A folder replaced by another valid artifact of the same base is refused too: its weights are not those added.
    shutil.rmtree(paths["task2"])
    shutil.copytree(paths["task3"], paths["task2"])
    with pytest.raises(ValueError, match="'task2': .* changed after the task was added"):
        lazy.generate(input_ids=ids[:1], attention_mask=mask[:1], tasks=["task2"], **kwargs)
    with pytest.raises(
        ValueError, match=r"`max_resident_encoders` must be a positive integer or None \(keep every task\), got 0"
    ):
        MultiEncoderModel(tiny_model("t5"), max_resident_encoders=0)


def test_evicted_lora_tasks_come_back_into_the_shared_pass(lora_artifacts):
    root, found = lora_artifacts
    plain = {name: path for name, path in found.items() if name != "lora+embeddings"}
    eager = MultiEncoderModel.from_pretrained(str(root / "base"), plain)
    lazy = MultiEncoderModel.from_pretrained(str(root / "base"), plain, max_resident_encoders=1)
    assert [name for name, t in lazy.tasks().items() if t["resident"]] == ["lora_other_layers"]
    ids, mask = batch("t5")
    tasks = ["lora_r8", "lora_r4", "lora_other_layers", "lora_r8", "lora_r4"]
    torch.testing.assert_close(lazy.encode(ids, mask, tasks)[0], eager.encode(ids, mask, tasks)[0], atol=0, rtol=0)
    # The batch held all three; afterwards the one touched last (in order of first appearance) stays.
    assert [name for name, t in lazy.tasks().items() if t["resident"]] == ["lora_other_layers"]
