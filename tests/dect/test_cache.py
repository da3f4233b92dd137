"""The query cache: one query per example on every backbone, batching, the disk cache, keys."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_frozen import DecTConfig, get_frozen_model
from hf_frozen.dect.cache import entry_key

from .. import tiny_dect
from ..tiny_dect import BACKBONES, TEMPLATE, WORDS, ClusterAPI, backbone, make, sentiment


@pytest.mark.parametrize("kind", [*BACKBONES, "callable"])
def test_one_query_per_example_on_every_backbone(kind):
    dect = make(kind)
    train, test = sentiment(16, seed=0), sentiment(8, seed=1)
    dect.fit(train)
    calibration = 1 if kind != "encoder" else 0  # the empty-input query (only with label-word scores)
    assert dect.num_queries == 16 + calibration
    if kind == "encoder":  # no label-word scores: the head alone (either type), cross-validated, no prompt
        expected = {"weight=0.0, steps=10", "weight=0.0, steps=30", "linear, learned weight, C=1.0, global scaling"}
        assert expected <= set(dect.cv_results)
        assert "prompt_only" not in dect.cv_results
    assert dect.record.backbone_kind == kind
    results = dect.evaluate(test)
    assert results["backbone_queries"] == 8 and results["num_examples"] == 8
    dect.fit(train)
    dect.evaluate(test)
    assert dect.num_queries == 16 + 8 + calibration, "a second fit or evaluate on the same data makes no query"
    assert dect.predict(test["text"][:3]) == [dect.config.labels[i] for i in
                                               dect.decision_scores(test["text"][:3]).argmax(-1).tolist()]  # fmt: skip


def test_duplicates_are_queried_once():
    dect = make("callable")
    data = {"text": ["the film was great"] * 5 + ["the film was bad"] * 5, "label": [1] * 5 + [0] * 5}
    dect.fit(data)
    assert dect.num_queries == 2 + 1


def test_queries_are_batched_sorted_by_length_and_inference_only():
    api = ClusterAPI()
    dect = get_frozen_model(api, DecTConfig(template=TEMPLATE, label_words=WORDS, batch_size=3), backbone_name="x")
    dect.show_progress = False
    texts = ["great " * n + "film" for n in (5, 1, 9, 3, 7, 2, 8)]
    dect.extract(texts)
    lengths = [len(p) for call in api.calls for p in call]
    assert lengths == sorted(lengths) and max(len(c) for c in api.calls) == 3

    model = backbone("causal_lm")
    seen = []
    head = model.get_output_embeddings()
    head.register_forward_hook(lambda m, args, out: seen.append((torch.is_inference_mode_enabled(), args[0].shape)))
    hf = get_frozen_model(model, DecTConfig(template=TEMPLATE, label_words=WORDS, batch_size=4),
                          tokenizer=tiny_dect.tokenizer())  # fmt: skip
    hf.show_progress = False
    hf.extract(sentiment(6)["text"])
    assert seen == [(True, torch.Size([4, 1, 32])), (True, torch.Size([2, 1, 32]))], "logits at the answer only"


def test_disk_cache_is_reused_and_survives_corruption(tmp_path, caplog):
    first = make("causal_lm", query_cache_dir=str(tmp_path))
    data = sentiment(6)
    first.fit(data)
    assert first.num_queries == 7
    files = sorted(p for p in tmp_path.rglob("*.safetensors"))
    assert len(files) == 7

    second = make("causal_lm", query_cache_dir=str(tmp_path))
    second.fit(data)
    assert second.num_queries == 0, "a new process finds everything on disk"

    # Corrupt one entry (truncated), make another foreign (a copy of a different entry), tamper with a third.
    files[0].write_bytes(files[0].read_bytes()[:40])
    files[2].write_bytes(files[1].read_bytes())
    raw = bytearray(files[3].read_bytes())
    raw[-4:] = b"\x00\x00\x80\x7f"  # flip the last float to +inf, keeping the header intact
    files[3].write_bytes(bytes(raw))
    third = make("causal_lm", query_cache_dir=str(tmp_path))
    third.fit(data)
    assert third.num_queries == 3 and third.cache.rejected == 3
    assert "cannot be read" in caplog.text and "holds the entry" in caplog.text and "checksum" in caplog.text
    fourth = make("causal_lm", query_cache_dir=str(tmp_path))
    fourth.fit(data)
    assert fourth.num_queries == 0, "recomputed entries were written back"


def test_cache_key_covers_backbone_prompt_and_text():
    base = entry_key("model-a", {"template": TEMPLATE}, "text", None)
    assert base != entry_key("model-b", {"template": TEMPLATE}, "text", None)
    assert base != entry_key("model-a", {"template": TEMPLATE + "!"}, "text", None)
    assert base != entry_key("model-a", {"template": TEMPLATE}, "text.", None)
    assert base != entry_key("model-a", {"template": TEMPLATE}, "text", "pair")
    dect = make("causal_lm")
    dect.fit(sentiment(4))
    other_words = make("causal_lm", label_words=["awful|bad", "superb|good"])
    other_words.cache = dect.cache  # same cache, other label words: every entry misses
    other_words.fit(sentiment(4))
    assert other_words.num_queries == 5


def test_an_entry_removed_by_another_process_meanwhile_is_no_crash(tmp_path, monkeypatch):
    """Two processes that meet the same corrupted entry both discard it: the slower one finds it gone."""
    import hf_frozen.dect.cache as cache_module

    first = make("callable", query_cache_dir=str(tmp_path))
    first.fit(sentiment(4))
    entry = next(tmp_path.rglob("*.safetensors"))
    entry.write_bytes(b"garbage")
    real_open = cache_module.safe_open

    def other_process_removes_it(path, *args, **kwargs):
        os.remove(path)  # the other process discards the entry first...
        return real_open(path, *args, **kwargs)  # ...so this read fails, and so would our removal

    monkeypatch.setattr(cache_module, "safe_open", other_process_removes_it)
    second = make("callable", query_cache_dir=str(tmp_path))
    second.fit(sentiment(4))
    assert second.cache.rejected == 5 and second.num_queries == 5


def test_two_processes_share_one_cache_folder(tmp_path):
    """Two processes fit on one cache folder at once, its entries corrupted: both finish, with the same head."""
    make("causal_lm", query_cache_dir=str(tmp_path / "cache")).fit(sentiment(24))
    for entry in (tmp_path / "cache").rglob("*.safetensors"):
        entry.write_bytes(entry.read_bytes()[:40])
    root = Path(__file__).resolve().parent.parent.parent
    script = (
        f"import json, sys; sys.path.insert(0, {str(root)!r}); from tests.tiny_dect import make, sentiment; "
        f"d = make('causal_lm', query_cache_dir={str(tmp_path / 'cache')!r}); d.fit(sentiment(24)); "
        "print(json.dumps(d.decision_scores(['the film was great'])[0].tolist()))"
    )
    runs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]  # fmt: skip
    outputs = [run.communicate(timeout=300) for run in runs]
    for run, (_, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err[-3000:]
    assert json.loads(outputs[0][0].splitlines()[-1]) == pytest.approx(json.loads(outputs[1][0].splitlines()[-1]))
    assert not list((tmp_path / "cache").rglob("*.tmp")), "no temporary file stays behind"


def test_answers_of_a_backbone_with_another_config_or_tokenizer_are_not_served(tmp_path):
    """The weights alone do not say what a backbone answers: its config and its tokenizer's pipeline count too."""
    from tokenizers import normalizers

    first = make("causal_lm", query_cache_dir=str(tmp_path))
    first.fit(sentiment(4))
    assert first.num_queries == 5

    config = DecTConfig(template=TEMPLATE, label_words=WORDS, labels=["neg", "pos"], batch_size=4,
                        query_cache_dir=str(tmp_path))  # fmt: skip
    model = backbone("causal_lm")
    model.config.layer_norm_epsilon = 1e-2  # same weights, other numerics
    other_config = get_frozen_model(model, config, tokenizer=tiny_dect.tokenizer())
    other_config.show_progress = False
    other_config.fit(sentiment(4))
    assert other_config.num_queries == 5, "every entry misses"

    lowercasing = tiny_dect.tokenizer()
    lowercasing.backend_tokenizer.normalizer = normalizers.Lowercase()  # same vocabulary, other normalisation
    other_tokenizer = get_frozen_model(backbone("causal_lm"), config, tokenizer=lowercasing)
    other_tokenizer.show_progress = False
    other_tokenizer.fit(sentiment(4))
    assert other_tokenizer.num_queries == 5, "every entry misses"
