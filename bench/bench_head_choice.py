#!/usr/bin/env python
"""How long DecT's head choice takes, at the scale where it is slowest: 64 shots x 20 classes on this machine.

The head choice is everything `DecTModel.fit` does after the queries (`fit_seconds["training"]`): calibration,
cross-validation of every candidate head (the prompt alone, the prototype decoder at 6 zero-shot weights x 2 step
counts, the linear head at 5 C x 2 feature scalings, its prompt weight learned), and the final fit. The features
are drawn, not queried, so that only the choice is timed: class centres (scale 0.12: the classes overlap, and a
probe gets 40% to 50% right) in d dimensions (d = 384, MiniLM's width; 576, SmolLM2's; 960, both side by side as
`combine_features` gives them) with unit noise, and label-word scores that name the right class 30% of the time; a
callable backbone returns them at once. The baseline in the same run is what a user would fit instead on the same
features: scikit-learn's `LogisticRegression()` (one C, no cross-validation).

    python bench/bench_head_choice.py                 # 3 repeats per setting, about 2 minutes
    python bench/bench_head_choice.py --classes 7 --shots 64

Floor (issue 25): head choice at most 5 s at 64 shots x 20 classes on 2 cores. Writes
bench/results/head_choice.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from hf_frozen import DecTConfig, get_frozen_model

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "head_choice.json")


class DrawnFeatures:
    """A callable backbone: for prompt "c<k> n<i>", a point near class k's centre and scores naming class k 30% of
    the time (else a random class), the same answer for the same prompt."""

    def __init__(self, classes: int, dim: int) -> None:
        self.centres = np.random.default_rng(0).normal(size=(classes, dim)) * 0.12
        self.classes = classes

    def __call__(self, prompts, label_words):
        hidden, scores = [], []
        for prompt in prompts:
            words = prompt.split()
            label = int(next((w[1:] for w in words if w.startswith("c") and w[1:].isdigit()), 0))
            rng = np.random.default_rng(abs(hash(prompt)) % 2**32)
            hidden.append(self.centres[label] + rng.normal(size=self.centres.shape[1]))
            named = label if rng.random() < 0.3 else int(rng.integers(self.classes))
            scores.append(np.eye(self.classes)[named] * 2.0 + rng.normal(size=self.classes) * 0.5)
        return np.array(hidden, dtype=np.float32), np.array(scores, dtype=np.float32)


def rows(classes: int, per_class: int, offset: int) -> dict:
    texts = [f"c{c} n{offset + i}" for c in range(classes) for i in range(per_class)]
    return {"text": texts, "label": [c for c in range(classes) for _ in range(per_class)]}


def run(classes: int, shots: int, dim: int, repeats: int) -> dict:
    config = DecTConfig(template="{text} {answer}", label_words=[f"w{c}" for c in range(classes)])
    api = DrawnFeatures(classes, dim)
    train, test = rows(classes, shots, 0), rows(classes, 50, 10_000)
    choice, baseline, accuracy = [], [], {}
    for repeat in range(repeats):
        dect = get_frozen_model(api, config, backbone_name=f"drawn-{classes}x{dim}")
        dect.show_progress = False
        dect.extract(train["text"])  # queried before the clock starts: only the choice is timed
        dect.fit(train)
        choice.append(dect.fit_seconds["training"])
        hidden, _, labels = dect.features(train)
        start = time.perf_counter()
        probe = LogisticRegression(max_iter=2000).fit(hidden.numpy(), labels.numpy())
        baseline.append(time.perf_counter() - start)
        if repeat == 0:
            test_hidden, _, test_labels = dect.features(test)
            accuracy = {"dect": dect.evaluate(test)["accuracy"],
                        "sklearn_probe": float((probe.predict(test_hidden.numpy()) == test_labels.numpy()).mean()),
                        "prompt": dect.evaluate(test, scoring="zero_shot_uncalibrated")["accuracy"],
                        "choice": dect.cv_choice}  # fmt: skip
    median = statistics.median(choice)
    return {"classes": classes, "shots": shots, "dim": dim, "train_examples": classes * shots,
            "head_choice_seconds": choice, "head_choice_median": median,
            "sklearn_logistic_regression_seconds": baseline,
            "ratio_to_sklearn": median / statistics.median(baseline), "torch_threads": torch.get_num_threads(),
            **accuracy}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--shots", type=int, default=64)
    parser.add_argument("--dims", type=int, nargs="+", default=[384, 576, 960])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = []
    for dim in args.dims:
        result = run(args.classes, args.shots, dim, args.repeats)
        print(json.dumps(result), flush=True)
        results.append(result)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
