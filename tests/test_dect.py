"""DecT on every backbone kind: one query per example, the cache, the head, save/load, bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import HfArgumentParser

import hf_frozen.hub
from hf_frozen import AutoFrozenModel, DecTConfig, DecTModel, get_frozen_model
from hf_frozen.dect.cache import entry_key
from hf_frozen.dect.head import PROMPT_ONLY, choice_name

from . import tiny_dect
from .test_save_load import FakeHub
from .tiny_dect import BACKBONES, ClusterAPI, backbone, sentiment

TEMPLATE = "review : {text} . sentiment : {answer} ."
WORDS = ["terrible|bad", "great|good"]


def make(kind, **overrides):
    config = DecTConfig(**{"template": TEMPLATE, "label_words": WORDS, "labels": ["neg", "pos"], "batch_size": 4,
                           **overrides})  # fmt: skip
    if kind == "callable":
        dect = get_frozen_model(ClusterAPI(), config, backbone_name="cluster-api-v1")
    else:
        dect = get_frozen_model(backbone(kind), config, tokenizer=tiny_dect.tokenizer())
    dect.show_progress = False
    return dect


# -- config ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"template": "{text} was good"}, "{answer}"),
        ({"template": "It was {answer}."}, "{text}"),
        ({"template": "{text} {label} {answer}"}, "unknown slots \\['label'\\]"),
        ({"template": "{text} {text_pair} {answer}"}, "text_pair_column"),
        ({"label_words": ["bad", ""]}, "Class 1 of `label_words` has no label words"),
        ({"label_words": ["bad"]}, "at least 2 classes"),
        ({"label_words": {"neg": "bad", "pos": "good"}}, "not a dict"),
        ({"labels": ["neg"]}, "one name per class"),
        ({"steps": 0}, "`steps`"),
        ({"steps_candidates": []}, "`steps_candidates`"),
        ({"steps_candidates": [10, 0]}, "`steps_candidates` must be a non-empty list of integers >= 1"),
        ({"zero_shot_weight": -1.0}, "`zero_shot_weight`"),
        ({"response_prefix": "It is"}, "chat_template"),
        ({"hidden_pooling": "cls"}, "`hidden_pooling`"),
    ],
)
def test_bad_config_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DecTConfig(**{"template": TEMPLATE, "label_words": WORDS, **kwargs})


def test_config_parses_with_hf_argument_parser():
    (config,) = HfArgumentParser(DecTConfig).parse_args_into_dataclasses(
        ["--template", TEMPLATE, "--label_words", "terrible|bad", "great|good", "--labels", "neg", "pos",
         "--zero_shot_weight", "0.5", "--steps_candidates", "5", "20"]
    )  # fmt: skip
    assert config.label_words == [["terrible", "bad"], ["great", "good"]]
    assert config.labels == ["neg", "pos"] and config.zero_shot_weight == 0.5
    assert config.steps is None and config.steps_candidates == [5, 20]


# -- queries and the cache ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [*BACKBONES, "callable"])
def test_one_query_per_example_on_every_backbone(kind):
    dect = make(kind)
    train, test = sentiment(16, seed=0), sentiment(8, seed=1)
    dect.fit(train)
    calibration = 1 if kind != "encoder" else 0  # the empty-input query (only with label-word scores)
    assert dect.num_queries == 16 + calibration
    if kind == "encoder":  # no label-word scores: the head alone, its steps cross-validated
        assert set(dect.cv_results) == {"weight=0.0, steps=10", "weight=0.0, steps=30"}
    assert dect.config.backbone_kind == kind
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


def test_answer_position_matches_a_full_forward():
    """The hooked head must give exactly what a plain forward gives at the answer position."""
    tok = tiny_dect.tokenizer()
    for kind in ("masked_lm", "causal_lm", "seq2seq_lm"):
        model = backbone(kind)
        dect = get_frozen_model(model, DecTConfig(template=TEMPLATE, label_words=WORDS), tokenizer=tok)
        dect.show_progress = False
        text = "the plot was superb"
        hidden, scores = dect.extract([text])
        prompt = dect.backbone.render(text, None)
        ids = torch.tensor([dect.backbone.encode(prompt)])
        with torch.no_grad():
            if kind == "seq2seq_lm":
                logits = model(input_ids=ids, decoder_input_ids=torch.tensor([dect.backbone.decoder_prefix])).logits[
                    0, -1
                ]
            elif kind == "masked_lm":
                logits = model(input_ids=ids).logits[0, ids[0].tolist().index(tok.mask_token_id)]
            else:
                logits = model(input_ids=ids).logits[0, -1]
        expected = torch.stack([logits[ids_].max() for ids_ in dect.backbone.label_ids])
        torch.testing.assert_close(scores[0], expected, msg=kind)


def test_disk_cache_is_reused_and_survives_corruption(tmp_path, caplog):
    first = make("causal_lm", cache_dir=str(tmp_path))
    data = sentiment(6)
    first.fit(data)
    assert first.num_queries == 7
    files = sorted(p for p in tmp_path.rglob("*.safetensors"))
    assert len(files) == 7

    second = make("causal_lm", cache_dir=str(tmp_path))
    second.fit(data)
    assert second.num_queries == 0, "a new process finds everything on disk"

    # Corrupt one entry (truncated), make another foreign (a copy of a different entry), tamper with a third.
    files[0].write_bytes(files[0].read_bytes()[:40])
    files[2].write_bytes(files[1].read_bytes())
    raw = bytearray(files[3].read_bytes())
    raw[-4:] = b"\x00\x00\x80\x7f"  # flip the last float to +inf, keeping the header intact
    files[3].write_bytes(bytes(raw))
    third = make("causal_lm", cache_dir=str(tmp_path))
    third.fit(data)
    assert third.num_queries == 3 and third.cache.rejected == 3
    assert "cannot be read" in caplog.text and "holds the entry" in caplog.text and "checksum" in caplog.text
    fourth = make("causal_lm", cache_dir=str(tmp_path))
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


# -- the head -------------------------------------------------------------------------------------------------


def test_head_learns_from_hidden_states_when_the_prompt_is_noise():
    dect = make("callable")
    dect.fit(sentiment(64, seed=0))
    selected, steps = dect.config.selected_zero_shot_weight, dect.config.selected_steps
    assert selected in (0.0, 0.1, 0.3) and steps in (10, 30), dect.cv_results
    assert dect.cv_results["prompt_only"]["loss"] > dect.cv_results[choice_name(selected, steps)]["loss"]
    assert dect.evaluate(sentiment(200, seed=1))["accuracy"] > 0.9
    assert dect.fit_seconds["training"] < 5


def test_weight_selection_keeps_the_prompt_when_it_is_better():
    class PromptKnows(ClusterAPI):
        def __call__(self, prompts, label_words):
            hidden, _ = super().__call__(prompts, label_words)
            positive = np.array([any(w in p.split() for w in tiny_dect.POSITIVE) for p in prompts])
            scores = np.stack([~positive, positive], 1).astype(float) * 4
            return self.rng.normal(size=hidden.shape), scores  # hidden states are pure noise

    dect = get_frozen_model(PromptKnows(), DecTConfig(template=TEMPLATE, label_words=WORDS, calibrate=False),
                            backbone_name="prompt-knows")  # fmt: skip
    dect.show_progress = False
    dect.fit(sentiment(32))
    assert dect.config.selected_zero_shot_weight in (PROMPT_ONLY, 10.0), dect.cv_results  # the prompt dominates
    assert dect.config.selected_calibrate is False
    assert dect.cv_results["prompt_only"]["accuracy"] == 1.0
    assert dect.evaluate(sentiment(100, seed=2))["accuracy"] == 1.0


class LeaningPrompt(ClusterAPI):
    """Informative label-word scores plus a lean: `lean` is added to every input's scores, `empty` replaces the
    empty (calibration) input's."""

    def __init__(self, lean, empty):
        super().__init__()
        self.lean, self.empty = np.array(lean), np.array(empty)

    def __call__(self, prompts, label_words):
        hidden, _ = super().__call__(prompts, label_words)
        positive = np.array([any(w in p.split() for w in tiny_dect.POSITIVE) for p in prompts])
        scores = np.stack([~positive, positive], 1).astype(float) * 2.0 + self.lean
        is_empty = np.array([p.split() == ["review", ":", ".", "sentiment", ":"] for p in prompts])
        scores[is_empty] = self.empty
        return self.rng.normal(size=hidden.shape), scores


def test_calibration_is_used_only_when_it_clearly_helps():
    # The prompt is right, but the empty input leans hard to one class: calibrating would hurt.
    dect = get_frozen_model(LeaningPrompt(lean=[0.0, 0.0], empty=[0.0, 8.0]), DecTConfig(template=TEMPLATE,
                            label_words=WORDS), backbone_name="empty-leans")  # fmt: skip
    dect.show_progress = False
    dect.fit(sentiment(32))
    assert dect.config.selected_calibrate is False
    assert dect.evaluate(sentiment(100, seed=2))["accuracy"] == 1.0
    assert dect.evaluate(sentiment(100, seed=2), scoring="zero_shot")["accuracy"] == 0.5, "calibrated: one class"
    # Every input leans to "positive" as the empty one does: only the calibrated prompt is right.
    dect = get_frozen_model(LeaningPrompt(lean=[0.0, 3.0], empty=[0.0, 3.0]), DecTConfig(template=TEMPLATE,
                            label_words=WORDS), backbone_name="all-lean")  # fmt: skip
    dect.show_progress = False
    dect.fit(sentiment(32))
    assert dect.config.selected_calibrate is True
    assert dect.evaluate(sentiment(100, seed=2), scoring="zero_shot_uncalibrated")["accuracy"] == 0.5
    assert dect.evaluate(sentiment(100, seed=2))["accuracy"] == 1.0


def test_fixed_weight_steps_and_one_shot():
    dect = make("callable", zero_shot_weight=0.25)
    dect.fit(sentiment(8))
    assert dect.config.selected_zero_shot_weight == 0.25 and float(dect.head.zero_shot_weight) == 0.25
    # The steps are still cross-validated, the prompt alone is not a choice.
    assert set(dect.cv_results) == {"weight=0.25, steps=10", "weight=0.25, steps=30"}
    assert dect.config.selected_steps in (10, 30)
    fixed = make("callable", zero_shot_weight=0.25, steps=7)
    fixed.fit(sentiment(8))
    assert fixed.config.selected_steps == 7 and fixed.cv_results == {}, "nothing left to choose"
    one_shot = make("callable")
    one_shot.fit(sentiment(2))  # one example per class: no fold can be held out
    assert one_shot.config.selected_zero_shot_weight == PROMPT_ONLY


# -- save / load ----------------------------------------------------------------------------------------------


def test_save_and_load_in_a_fresh_process(tmp_path):
    tok = tiny_dect.tokenizer()
    backbone("masked_lm").save_pretrained(tmp_path / "mlm")
    tok.save_pretrained(tmp_path / "mlm")
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    dect = get_frozen_model(AutoModelForMaskedLM.from_pretrained(tmp_path / "mlm"),
                            DecTConfig(template=TEMPLATE, label_words=WORDS),
                            tokenizer=AutoTokenizer.from_pretrained(tmp_path / "mlm"))  # fmt: skip
    dect.show_progress = False
    dect.fit(sentiment(16))
    dect.save_pretrained(tmp_path / "head")
    test = list(sentiment(10, seed=3)["text"])
    expected = dect.decision_scores(test).tolist()
    script = (
        "import json, sys; from hf_frozen import AutoFrozenModel;"
        f"m = AutoFrozenModel.from_pretrained({str(tmp_path / 'head')!r}); m.show_progress = False;"
        f"print(json.dumps([m.decision_scores({test!r}).tolist(), m.num_queries, m.config.selected_steps]))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    scores, queries, steps = json.loads(done.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    assert queries == 10, "the saved calibration needs no new empty-input query"
    assert steps == dect.config.selected_steps in (10, 30), "the recorded choice survives the round trip"


def test_load_refuses_another_backbone_and_needs_the_callable(tmp_path):
    dect = make("masked_lm")
    dect.fit(sentiment(8))
    dect.save_pretrained(tmp_path / "head")
    with pytest.raises(ValueError, match="fitted on another backbone"):
        DecTModel.from_pretrained(tmp_path / "head", base_model=backbone("masked_lm", seed=1),
                                  tokenizer=tiny_dect.tokenizer())  # fmt: skip
    api = make("callable")
    api.fit(sentiment(8))
    api.save_pretrained(tmp_path / "api")
    with pytest.raises(ValueError, match="callable backbone"):
        AutoFrozenModel.from_pretrained(tmp_path / "api")
    loaded = AutoFrozenModel.from_pretrained(tmp_path / "api", base_model=ClusterAPI())
    assert loaded.config.base_model_name_or_path == "cluster-api-v1"


def test_push_to_hub(tmp_path, monkeypatch):
    hub = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(hf_frozen.hub, "HfApi", hub.api)
    monkeypatch.setattr(hf_frozen.hub, "hf_hub_download", hub.download)
    dect = make("callable")
    dect.fit(sentiment(8))
    dect.push_to_hub("me/dect-head")
    assert "tags:\n- hf-frozen\n- dect" in (hub.root / "me" / "dect-head" / "README.md").read_text()
    loaded = AutoFrozenModel.from_pretrained("me/dect-head", base_model=ClusterAPI())
    assert torch.equal(loaded.head.radius, dect.head.radius)


# -- bad input ------------------------------------------------------------------------------------------------


def test_bad_data_is_named():
    dect = make("callable")
    with pytest.raises(ValueError, match="not known to the config"):
        dect.fit({"text": ["a", "b"], "label": [0, "maybe"]})
    with pytest.raises(ValueError, match="not known to the config"):
        dect.fit({"text": ["a", "b"], "label": [0, 2]})
    with pytest.raises(ValueError, match="empty"):
        dect.fit({"text": [], "label": []})
    with pytest.raises(ValueError, match="no label column 'label'"):
        dect.fit({"text": ["a"], "y": [0]})
    with pytest.raises(ValueError, match="no text column 'text'"):
        dect.fit({"sentence": ["a"], "label": [0]})
    with pytest.raises(RuntimeError, match="call `fit"):
        make("callable").predict(["a"])
    dect.fit([{"text": "great film", "label": "pos"}, {"text": "bad film", "label": "neg"}])  # names work


def test_bad_backbones_and_label_words_are_named():
    tok = tiny_dect.tokenizer()
    with pytest.raises(ValueError, match="Label word 'fantastic' is not in the vocabulary"):
        get_frozen_model(backbone("masked_lm"), DecTConfig(template=TEMPLATE, label_words=["bad", "fantastic"]),
                         tokenizer=tok)  # fmt: skip
    with pytest.raises(ValueError, match="start with the same token"):
        get_frozen_model(backbone("masked_lm"), DecTConfig(template=TEMPLATE, label_words=["bad|good", "good"]),
                         tokenizer=tok)  # fmt: skip
    with pytest.raises(TypeError, match="transformers model or a callable"):
        get_frozen_model(object(), DecTConfig(template=TEMPLATE, label_words=WORDS))
    from transformers import BertConfig, BertForSequenceClassification

    with pytest.raises(ValueError, match="cannot query BertForSequenceClassification"):
        get_frozen_model(BertForSequenceClassification(BertConfig(**tiny_dect._BERT)),
                         DecTConfig(template=TEMPLATE, label_words=WORDS), tokenizer=tok)  # fmt: skip
    with pytest.raises(ValueError, match="needs its tokenizer"):
        get_frozen_model(backbone("masked_lm"), DecTConfig(template=TEMPLATE, label_words=WORDS))
    with pytest.raises(ValueError, match="backbone_name"):
        get_frozen_model(ClusterAPI(), DecTConfig(template=TEMPLATE, label_words=WORDS))


def test_api_returning_wrong_shapes_is_named():
    bad = get_frozen_model(lambda prompts, words: (np.zeros((1, 4)), None),
                           DecTConfig(template=TEMPLATE, label_words=WORDS), backbone_name="bad")  # fmt: skip
    bad.show_progress = False
    with pytest.raises(ValueError, match="hidden states of shape \\(1, 4\\), expected \\(3, d\\)"):
        bad.extract(["a", "b", "c"])


# -- inside a user's Trainer ----------------------------------------------------------------------------------


def test_trainer_trains_the_same_head_without_requerying(tmp_path):
    from transformers import Trainer, TrainingArguments

    from hf_frozen import DecTCallback, DecTCollator

    train = sentiment(16)
    dect = make("causal_lm", zero_shot_weight=0.5)
    head = dect.new_head()
    # Full-batch Adam as in `fit`: AdamW without weight decay or clipping, constant lr, one batch per epoch.
    args = TrainingArguments(
        str(tmp_path), remove_unused_columns=False, learning_rate=0.01, num_train_epochs=30, weight_decay=0.0,
        per_device_train_batch_size=16, lr_scheduler_type="constant", max_grad_norm=0.0, optim="adamw_torch",
        report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(model=head, args=args, train_dataset=train, data_collator=DecTCollator(dect),
                      callbacks=[DecTCallback(dect)])  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == 30
    assert dect.num_queries == 16 + 1, "30 epochs, still one query per example (+ the empty input)"
    assert dect.head is head and dect.config.selected_zero_shot_weight == 0.5 and dect.config.selected_steps == 30

    reference = make("causal_lm", zero_shot_weight=0.5, steps=30)
    reference.fit(train)
    for name, tensor in reference.head.state_dict().items():
        torch.testing.assert_close(head.state_dict()[name], tensor, atol=1e-4, rtol=1e-4, msg=name)
    test = sentiment(8, seed=4)
    assert dect.evaluate(test)["accuracy"] == reference.evaluate(test)["accuracy"]


def test_collator_explains_dropped_columns():
    from hf_frozen import DecTCollator

    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        DecTCollator(make("callable"))([{"label": 0}])


# -- the command ----------------------------------------------------------------------------------------------


def test_command_fits_evaluates_and_saves(tmp_path):
    import shutil

    backbone("masked_lm").save_pretrained(tmp_path / "mlm")
    tiny_dect.tokenizer().save_pretrained(tmp_path / "mlm")
    sentiment(40, seed=0).to_csv(tmp_path / "train.csv")
    sentiment(12, seed=1).to_csv(tmp_path / "test.csv")
    # pip puts the command next to the interpreter (the venv's bin/, which need not be on PATH).
    command = os.path.join(os.path.dirname(sys.executable), "hf-frozen")
    assert os.path.isfile(command) or shutil.which("hf-frozen"), "pip install creates the `hf-frozen` command"
    command = command if os.path.isfile(command) else shutil.which("hf-frozen")
    done = subprocess.run(
        [command, "dect", "--model_name_or_path", str(tmp_path / "mlm"), "--train_file", str(tmp_path / "train.csv"),
         "--test_file", str(tmp_path / "test.csv"), "--shots", "8", "--template", TEMPLATE,
         "--label_words", "terrible|bad", "great|good", "--output_dir", str(tmp_path / "out")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["train_examples"] == 16
    assert metrics["backbone_queries"] == 16 + 12 + 1
    assert metrics["test"]["dect"]["num_examples"] == 12 and "zero_shot" in metrics["test"]
    loaded = AutoFrozenModel.from_pretrained(tmp_path / "out")
    assert loaded.config.backbone_kind == "masked_lm"

    bad = subprocess.run([command, "dect", "--model_name_or_path", str(tmp_path / "mlm"), "--output_dir", "x",
                          "--train_file", str(tmp_path / "train.csv"), "--template", "{text}",
                          "--label_words", "bad", "good"], capture_output=True, text=True, check=False)  # fmt: skip
    assert bad.returncode != 0 and "must contain the {answer} slot" in bad.stderr


def test_standardisation_is_fitted_and_can_be_switched_off():
    on, off = make("callable", standardize_hidden=True), make("callable", standardize_hidden=False)
    on.fit(sentiment(16))
    off.fit(sentiment(16))
    hidden, _, _ = on.features(sentiment(16))
    torch.testing.assert_close(on.head.feature_mean, hidden.mean(0))
    assert torch.equal(off.head.feature_mean, torch.zeros_like(off.head.feature_mean))
    assert torch.equal(off.head.feature_scale, torch.ones_like(off.head.feature_scale))


@pytest.mark.parametrize("standardize", [True, False])
def test_heads_trained_together_match_heads_trained_alone(standardize):
    """Cross-validation trains its (fold, weight) heads in one batch: the same heads as one at a time."""
    from hf_frozen.dect.head import DecTHead, train_head, train_heads_together

    torch.manual_seed(0)
    n, d, c = 40, 24, 3
    hidden = torch.randn(n, d) * torch.linspace(0.1, 20, d)  # a few large dimensions, as in decoder LMs
    scores, labels = torch.randn(n, c), torch.arange(n) % c
    in_training, weights = torch.rand(5, n) > 0.3, torch.tensor([0.0, 0.1, 1.0, 3.0, 10.0])
    together = train_heads_together(DecTHead(d, c, 16, seed=3, standardize=standardize), hidden, scores, labels,
                                    in_training, weights, checkpoints=[10, 30], learning_rate=0.01)  # fmt: skip
    assert sorted(together) == [10, 30]
    for steps in (10, 30):
        for m in range(5):
            head = DecTHead(d, c, 16, seed=3, standardize=standardize)
            head.zero_shot_weight.fill_(weights[m])
            rows = in_training[m].nonzero().squeeze(1)
            train_head(head, hidden[rows], scores[rows], labels[rows], steps=steps, learning_rate=0.01)
            with torch.no_grad():
                torch.testing.assert_close(together[steps][m], head(hidden, scores).logits, atol=1e-4, rtol=1e-4)


def test_shared_prompt_prefix_is_read_once_and_changes_nothing():
    """Causal LMs reuse the keys and values of the start all prompts share; answers equal full forwards."""
    config = DecTConfig(template="the story the film the plot : {text} . sentiment : {answer}", label_words=WORDS,
                        batch_size=4)  # fmt: skip
    dect = get_frozen_model(backbone("causal_lm"), config, tokenizer=tiny_dect.tokenizer())
    hf = dect.backbone
    assert hf.tokenizer.convert_ids_to_tokens(hf.shared_prefix) == ["[CLS]", "the", "story", "the", "film", "the"]
    inputs = [(t, None) for t in sentiment(6)["text"]] + [("", None)]
    lengths = []
    hf.model.base_model.register_forward_pre_hook(
        lambda m, a, kw: lengths.append(kw["input_ids"].shape if "input_ids" in kw else a[0].shape), with_kwargs=True
    )
    hidden, scores = hf.query(inputs[:4])
    more_hidden, more_scores = hf.query(inputs[4:])
    hf.shared_prefix = []  # the plain path: every prompt read from its first token
    plain_hidden, plain_scores = hf.query(inputs)
    assert lengths[0] == (1, 6), "the shared prefix, read once"
    full = lengths[3][1]  # the plain path pads all 7 prompts to the longest: the longest suffix is 6 shorter
    assert max(shape[1] for shape in lengths[1:3]) == full - 6, "afterwards, only the prompts' own tokens"
    np.testing.assert_allclose(np.concatenate([hidden, more_hidden]), plain_hidden, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.concatenate([scores, more_scores]), plain_scores, atol=1e-5, rtol=1e-5)


def test_standardisation_by_default_only_when_a_few_dimensions_dominate():
    from hf_frozen.dect.head import DecTHead

    torch.manual_seed(0)
    even = torch.randn(32, 16)
    massive = even.clone()
    massive[:, 3] = 20 + massive[:, 3]  # one massive activation dimension, as in decoder LMs
    labels = torch.arange(32) % 2
    for hidden, standardized in ((even, False), (massive, True)):
        head = DecTHead(16, 2, 8)
        head.fit_statistics(hidden)
        head.init_radius(hidden, labels)
        assert bool((head.feature_scale != 1).any()) is standardized
