"""Choosing calibration and the head (its type and settings) on the training cache."""

import numpy as np
import pytest
import torch

from hf_frozen import DecTConfig, get_frozen_model
from hf_frozen.dect.heads import Candidate, DecTHead, LinearHead, PromptOnlyHead
from hf_frozen.dect.selection import pick_candidate

from .. import tiny_dect
from ..tiny_dect import TEMPLATE, WORDS, ClusterAPI, make, sentiment


def test_head_learns_from_hidden_states_when_the_prompt_is_noise():
    dect = make("callable")
    dect.fit(sentiment(64, seed=0))
    assert dect.record.head_type != "prompt", dect.cv_results
    assert abs(dect.record.zero_shot_weight) <= 0.3, dect.cv_results  # chosen (prototype) or learned (linear)
    assert dect.cv_results["prompt_only"]["loss"] > dect.cv_results[dect.cv_choice]["loss"]
    assert dect.evaluate(sentiment(200, seed=1))["accuracy"] > 0.9
    # The fit reports its times (never asserted here: a loaded machine saw 55 s; the floor is bench/'s).
    assert set(dect.fit_seconds) == {"extraction", "training", "total"}


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
    # The prompt dominates: alone, or weighted heavily.
    assert dect.record.head_type == "prompt" or dect.record.zero_shot_weight >= 3.0, dect.cv_results
    assert dect.record.calibrate is False
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


def test_pick_candidate_keeps_the_lowest_held_out_loss_and_the_prompt_on_a_tie():
    prompt = Candidate.of(PromptOnlyHead)
    head = Candidate.of(DecTHead, zero_shot_weight=1.0, steps=10)
    other = Candidate.of(LinearHead, regularization=1.0, scaling="global", zero_shot_weight=None)
    choices = [prompt, head, other]
    per_example = {prompt: [0.5, 0.5, 0.5], head: [0.1, 0.9, 0.4], other: [0.2, 0.2, 1.2]}  # means 0.5, 0.47, 0.53
    losses = {c: torch.tensor(v) for c, v in per_example.items()}
    assert pick_candidate(choices, losses) == head
    losses[head] = torch.tensor([0.5, 0.5, 0.5])  # a tie: the simplest, listed first
    assert pick_candidate(choices, losses) == prompt


def test_calibration_is_used_only_when_it_clearly_helps():
    # The prompt is right, but the empty input leans hard to one class: calibrating would hurt.
    dect = get_frozen_model(LeaningPrompt(lean=[0.0, 0.0], empty=[0.0, 8.0]), DecTConfig(template=TEMPLATE,
                            label_words=WORDS), backbone_name="empty-leans")  # fmt: skip
    dect.show_progress = False
    dect.fit(sentiment(32))
    assert dect.record.calibrate is False
    assert dect.evaluate(sentiment(100, seed=2))["accuracy"] == 1.0
    assert dect.evaluate(sentiment(100, seed=2), scoring="zero_shot")["accuracy"] == 0.5, "calibrated: one class"
    # Every input leans to "positive" as the empty one does: only the calibrated prompt is right.
    dect = get_frozen_model(LeaningPrompt(lean=[0.0, 3.0], empty=[0.0, 3.0]), DecTConfig(template=TEMPLATE,
                            label_words=WORDS), backbone_name="all-lean")  # fmt: skip
    dect.show_progress = False
    dect.fit(sentiment(32))
    assert dect.record.calibrate is True
    assert dect.evaluate(sentiment(100, seed=2), scoring="zero_shot_uncalibrated")["accuracy"] == 0.5
    assert dect.evaluate(sentiment(100, seed=2))["accuracy"] == 1.0


def test_fixed_weight_steps_and_one_shot():
    dect = make("callable", zero_shot_weight=0.25, head="prototype")
    dect.fit(sentiment(8))
    assert dect.record.zero_shot_weight == 0.25 and float(dect.head.zero_shot_weight) == 0.25
    # The steps are still cross-validated, the prompt alone is not a choice.
    assert set(dect.cv_results) == {"weight=0.25, steps=10", "weight=0.25, steps=30"}
    assert dect.record.steps in (10, 30)
    fixed = make("callable", zero_shot_weight=0.25, steps=7, head="prototype")
    fixed.fit(sentiment(8))
    assert fixed.record.steps == 7 and fixed.cv_results == {}, "nothing left to choose"
    one_shot = make("callable")
    one_shot.fit(sentiment(2))  # one example per class: no fold can be held out
    assert one_shot.record.head_type == "prompt" and one_shot.record.zero_shot_weight is None


def test_one_shot_calibrates_on_a_clear_gain_and_drops_a_prompt_wrong_on_the_shots():
    # Every input leans to "positive" as the empty one does. On two examples the calibrated prompt's gain (about
    # 0.5 nats) is within a standard error of zero, but above `CALIBRATION_GAIN`: calibrated, the prompt is kept.
    dect = get_frozen_model(LeaningPrompt(lean=[0.0, 3.0], empty=[0.0, 3.0]), DecTConfig(template=TEMPLATE,
                            label_words=WORDS), backbone_name="all-lean")  # fmt: skip
    dect.show_progress = False
    dect.fit(sentiment(2))
    assert dect.record.calibrate is True and dect.record.head_type == "prompt"
    assert dect.evaluate(sentiment(100, seed=2))["accuracy"] == 1.0

    class ReversedPrompt(ClusterAPI):  # hidden states that separate the classes, label words that name the other
        def __call__(self, prompts, label_words):
            hidden, _ = super().__call__(prompts, label_words)
            positive = np.array([any(w in p.split() for w in tiny_dect.POSITIVE) for p in prompts])
            return hidden, np.stack([positive, ~positive], 1).astype(float) * 4

    dect = get_frozen_model(ReversedPrompt(), DecTConfig(template=TEMPLATE, label_words=WORDS, calibrate=False),
                            backbone_name="reversed")  # fmt: skip
    dect.show_progress = False
    dect.fit(sentiment(2))  # the prompt gets neither example right: the head, without the prompt, is trained
    assert dect.record.head_type == "prototype" and dect.record.zero_shot_weight == 0.0 and dect.record.steps == 30
    assert dect.evaluate(sentiment(100, seed=2))["accuracy"] > 0.9


@pytest.mark.parametrize("standardize", [True, False])
def test_heads_trained_together_match_heads_trained_alone(standardize):
    """Cross-validation trains its (fold, weight) heads in one batch: the same heads as one at a time."""
    from hf_frozen.dect.heads import train_head, train_heads_together

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


def test_linear_cross_validation_fits_what_the_final_fit_fits():
    """Each fold's linear candidates, solved together, are the heads `fit_linear_head` fits on that fold alone
    (the prompt's weight learned, or fixed): cross-validation scores the very head DecT would keep."""
    from hf_frozen.dect.heads import fit_linear_head

    torch.manual_seed(0)
    n, d, c = 36, 50, 3
    hidden = torch.randn(n, d) * torch.linspace(0.1, 20, d)
    scores, labels = torch.randn(n, c), torch.arange(n) % c
    fold_of = torch.arange(n) // 12  # three folds of 12 consecutive examples, 4 per class
    folds = [((fold_of != f).nonzero().squeeze(1), (fold_of == f).nonzero().squeeze(1)) for f in range(3)]
    for fixed in (None, 1.0):
        config = DecTConfig(label_words=WORDS + ["neutral"], regularization_candidates=[0.01, 1.0],
                            zero_shot_weight=fixed)  # fmt: skip
        candidates = LinearHead.candidates(config, [], [])
        logits = LinearHead.cross_validate(hidden, scores, labels, folds, candidates, config)
        for f, (train_idx, _) in enumerate(folds):
            for candidate in candidates:
                head = LinearHead.build(d, config, dict(candidate.settings))
                fit_linear_head(head, hidden[train_idx], scores[train_idx], labels[train_idx])
                with torch.no_grad():
                    torch.testing.assert_close(logits[candidate][f], head(hidden, scores).logits, atol=0.02, rtol=0)


def test_linear_head_learns_how_far_to_trust_the_prompt():
    """The linear head's zero-shot weight is learned with W and b: large where the prompt is right and the
    features are noise, near zero where the prompt is noise."""
    from hf_frozen.dect.heads import fit_linear_head

    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(80) % 2
    noise = torch.randn(80, 8, generator=generator)
    good_prompt = torch.nn.functional.one_hot(labels, 2).float() * 2 - 1
    config = DecTConfig(label_words=WORDS)
    trusted = LinearHead.build(8, config, {"regularization": 0.01, "scaling": "global"})
    fit_linear_head(trusted, noise, good_prompt, labels)
    ignored = LinearHead.build(8, config, {"regularization": 0.01, "scaling": "global"})
    fit_linear_head(ignored, noise + labels.unsqueeze(1) * 3.0, torch.randn(80, 2, generator=generator), labels)
    assert float(trusted.zero_shot_weight) > 2.0, float(trusted.zero_shot_weight)
    assert abs(float(ignored.zero_shot_weight)) < 0.5, float(ignored.zero_shot_weight)


class ManyClassAPI:
    """Six classes: hidden states around a class centre (a probe separates them well), label-word scores that
    name the right class 40% of the time. Deterministic per text, so train and test queries agree."""

    def __init__(self, classes: int = 6, dim: int = 24):
        self.centres = np.random.default_rng(0).normal(size=(classes, dim)) * 1.5
        self.classes = classes

    def __call__(self, prompts, label_words):
        hidden, scores = [], []
        for prompt in prompts:
            words = prompt.split()
            label = int(next((w[1:] for w in words if w.startswith("c") and w[1:].isdigit()), 0))
            rng = np.random.default_rng(abs(hash(prompt)) % 2**32)
            hidden.append(self.centres[label] + rng.normal(size=self.centres.shape[1]))
            named = label if rng.random() < 0.4 else int(rng.integers(self.classes))
            scores.append(np.eye(self.classes)[named] * 3.0)
        return np.array(hidden), np.array(scores)


def many_class_rows(per_class: int, offset: int, classes: int = 6):
    texts = [f"c{c} n{offset + i}" for c in range(classes) for i in range(per_class)]
    return {"text": texts, "label": [c for c in range(classes) for _ in range(per_class)]}


def test_auto_head_beats_a_weak_prompt_and_keeps_up_with_a_linear_probe():
    from sklearn.linear_model import LogisticRegression

    config = DecTConfig(template="{text} {answer}", label_words=[f"w{c}" for c in range(6)], calibrate=False)
    dect = get_frozen_model(ManyClassAPI(), config, backbone_name="many-class-v1")
    dect.show_progress = False
    train, test = many_class_rows(16, 0), many_class_rows(40, 1000)
    dect.fit(train)
    assert dect.record.head_type != "prompt", dect.cv_results
    hidden, _, labels = dect.features(train)
    test_hidden, _, test_labels = dect.features(test)
    probe = LogisticRegression(max_iter=2000).fit(hidden.numpy(), labels.numpy())
    probe_accuracy = (probe.predict(test_hidden.numpy()) == test_labels.numpy()).mean()
    accuracy = dect.evaluate(test)["accuracy"]
    prompt_accuracy = dect.evaluate(test, scoring="zero_shot_uncalibrated")["accuracy"]
    assert accuracy > prompt_accuracy + 0.2 and accuracy >= probe_accuracy - 0.02, (accuracy, probe_accuracy)
