"""Temperature-based task mixing (the square-root rule at T = 2), on real datasets and the real Trainer."""

import math
from collections import Counter

import pytest
from datasets import Dataset

from hf_frozen import FrozenDecoderConfig, get_frozen_model, mix_tasks, task_probabilities

from .tiny_models import copy_task_dataset, tiny_model
from .trainer_utils import training_args


def test_square_root_rule():
    p = task_probabilities({"big": 900, "small": 100}, temperature=2.0)
    assert p["big"] == pytest.approx(30 / 40) and p["small"] == pytest.approx(10 / 40)
    assert task_probabilities({"a": 900, "b": 100}, temperature=1.0)["a"] == pytest.approx(0.9)
    uniform = task_probabilities({"a": 900, "b": 100}, temperature=1e9)
    assert uniform["a"] == pytest.approx(0.5, abs=1e-6)


def test_stream_follows_the_probabilities_and_is_reproducible():
    tasks = {"big": Dataset.from_dict({"x": list(range(4000))}), "small": Dataset.from_dict({"x": list(range(1000))})}
    mixed = mix_tasks(tasks, temperature=2.0, seed=0)
    counts = Counter(mixed["task"])
    share = counts["big"] / (counts["big"] + counts["small"])
    expected = math.sqrt(4000) / (math.sqrt(4000) + math.sqrt(1000))  # 2/3
    assert share == pytest.approx(expected, abs=0.03)
    assert mix_tasks(tasks, seed=0)["x"] == mixed["x"]
    assert mix_tasks(tasks, seed=1)["x"] != mixed["x"]
    assert "task" not in mix_tasks(tasks, task_column=None).column_names


@pytest.mark.parametrize("temperature", [0, -1.0, "2"])
def test_bad_temperature(temperature):
    with pytest.raises(ValueError, match="`temperature` must be a positive number"):
        mix_tasks({"a": Dataset.from_dict({"x": [1]})}, temperature=temperature)


def test_empty_task_and_no_tasks():
    with pytest.raises(ValueError, match=r"\['empty'\] are empty"):
        mix_tasks({"a": Dataset.from_dict({"x": [1]}), "empty": Dataset.from_dict({"x": []})})
    with pytest.raises(ValueError, match="at least one task"):
        mix_tasks({})


def test_one_shared_encoder_trains_on_the_mixed_stream(tmp_path):
    from transformers import Seq2SeqTrainer

    from hf_frozen import FrozenDecoderCallback

    stream = mix_tasks({"reverse": copy_task_dataset(64, seed=0), "reverse2": copy_task_dataset(16, seed=1)}, seed=0)
    model = get_frozen_model(tiny_model("t5"), FrozenDecoderConfig())
    trainer = Seq2SeqTrainer(model=model, args=training_args(str(tmp_path), max_steps=4), train_dataset=stream,
                             callbacks=[FrozenDecoderCallback()])  # fmt: skip
    assert trainer.train().global_step == 4
    model.verify_frozen()


def test_shares_follow_the_square_root_rule_to_a_row_and_no_task_is_cut_short():
    sizes = {"big": 900, "mid": 100, "small": 25}
    tasks = {name: Dataset.from_dict({"x": [f"{name}{i}" for i in range(n)]}) for name, n in sizes.items()}
    expected = task_probabilities(sizes, temperature=2.0)  # small: 5 / 45 = 11.1%
    stream = mix_tasks(tasks, num_rows=3000, seed=0)
    assert len(stream) == 3000
    shares = {name: count / 3000 for name, count in Counter(stream["task"]).items()}
    assert all(abs(shares[name] - expected[name]) < 0.01 for name in sizes), shares
    default = mix_tasks(tasks, seed=0)  # long enough for every example of every task
    assert set(default["x"]) == {x for ds in tasks.values() for x in ds["x"]}
    counts = Counter(default["x"])
    assert all(counts[f"big{i}"] == 1 for i in range(900)), "the largest task is not repeated before it is used up"
    for name, count in Counter(default["task"]).items():
        assert abs(count / len(default) - expected[name]) < 0.01


def test_an_endless_stream_for_max_steps_training(tmp_path):
    import itertools

    from transformers import Seq2SeqTrainer

    tasks = {"a": Dataset.from_dict({"x": list(range(30))}), "b": Dataset.from_dict({"x": list(range(5))})}
    stream = mix_tasks(tasks, endless=True, seed=0)
    rows = list(itertools.islice(stream, 1000))
    assert len(rows) == 1000
    share = sum(r["task"] == "b" for r in rows) / 1000
    assert abs(share - task_probabilities({"a": 30, "b": 5})["b"]) < 0.01
    with pytest.raises(ValueError, match="`num_rows` must be a positive integer"):
        mix_tasks(tasks, num_rows=0)

    endless = mix_tasks({"r": copy_task_dataset(16, seed=0), "s": copy_task_dataset(4, seed=1)}, endless=True,
                        task_column=None)  # fmt: skip
    model = get_frozen_model(tiny_model("t5"), FrozenDecoderConfig())
    trainer = Seq2SeqTrainer(model=model, args=training_args(str(tmp_path), max_steps=6), train_dataset=endless)
    assert trainer.train().global_step == 6


@pytest.mark.parametrize("temperature", [float("nan"), True])
def test_non_finite_or_boolean_temperature(temperature):
    with pytest.raises(ValueError, match="`temperature` must be a positive number"):
        mix_tasks({"a": Dataset.from_dict({"x": [1]})}, temperature=temperature)


def test_task_streams_mix_with_the_same_shares_as_datasets():
    """`mix_tasks` on `IterableDataset`s raised "object of type 'IterableDataset' has no len()". A stream gets the
    same task at every position as the `Dataset` of the same rows, counted or given its size; rows keep their
    stream's order, and a stream that runs out starts again."""
    from datasets import IterableDataset

    tasks = {"big": Dataset.from_dict({"x": list(range(400))}), "small": Dataset.from_dict({"x": list(range(100))})}
    streams = {name: IterableDataset.from_generator(lambda d=d: iter(d)) for name, d in tasks.items()}
    expected = mix_tasks(tasks, seed=3)["task"]
    for mixed in (mix_tasks(streams, seed=3), mix_tasks(streams, seed=3, sizes={"big": 400, "small": 100})):
        rows = list(mixed)
        assert [r["task"] for r in rows] == expected
        small = [r["x"] for r in rows if r["task"] == "small"]
        assert small[:100] == list(range(100)) and small[100:] == list(range(len(small) - 100))
    endless = mix_tasks(streams, seed=3, endless=True)
    first = [r["task"] for _, r in zip(range(2000), endless, strict=False)]
    assert first[: len(expected)] == expected
    assert Counter(first)["big"] / 2000 == pytest.approx(math.sqrt(400) / (math.sqrt(400) + math.sqrt(100)), abs=0.01)
    mixed = mix_tasks({"big": streams["big"], "small": tasks["small"]}, seed=3)  # a stream beside a dataset
    assert [r["task"] for r in mixed] == expected
