#!/usr/bin/env python
"""DecT's linear-head solver against the joint L-BFGS it replaced and against scikit-learn, on real caches.

For each backbone, set and shots per class, the shots are drawn from the pool caches that
`bench/choose_dect_defaults.py extract` saves (run that first; no bench test example is in them), and the linear
candidates of `head="auto"` (6 zero-shot weights x 5 C x 2 feature scalings) are fitted on 4 folds, 240 problems:

- **batched** - `LinearHead.cross_validate`, the shipped code (`hf_frozen/dect/logistic.py`), here with each
  zero-shot weight fixed (the shipped default learns it instead: one problem where these are six);
- **joint L-BFGS** - the previous release's solver, kept here as the baseline: all problems' losses summed and
  minimised by one `torch.optim.LBFGS` (strong Wolfe, 200 iterations), so one line search serves every problem;
- **scikit-learn** - `LogisticRegression(tol=1e-10)` in float64 fitted per problem, the reference minimum, on the
  problems without the prompt as offset (scikit-learn has no offset). For two classes its binary penalty on
  w1 - w0 equals ours at C' = 2C.

Prints seconds per method and, for each solver, the largest gap between its probabilities and scikit-learn's
over the folds' held-out examples:

    python bench/bench_linear_solver.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from safetensors.torch import load_file
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from torch.nn import functional as F

from hf_frozen import DecTConfig
from hf_frozen.dect.heads import LinearHead, feature_statistics

WEIGHTS = [0.0, 0.1, 0.3, 1.0, 3.0, 10.0]  # `DecTConfig` defaults
REGULARIZATIONS = [0.001, 0.01, 0.1, 1.0, 10.0]
DEV_SIZE = 600  # the dev split comes first in each saved cache; shots are drawn from the rest


def draw(path: str, shots: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden, prompt log-probabilities or zeros, labels) of `shots` pool examples per class."""
    tensors = load_file(path)
    hidden, labels = tensors["hidden"][DEV_SIZE:].float(), tensors["labels"][DEV_SIZE:]
    rng = np.random.default_rng(seed)
    rows = np.concatenate([rng.choice(np.flatnonzero(labels.numpy() == c), shots, replace=False)
                           for c in range(int(labels.max()) + 1)])  # fmt: skip
    raw = tensors.get("raw")
    prior = (
        raw[DEV_SIZE:][rows].float().log_softmax(-1)
        if raw is not None
        else torch.zeros(len(rows), 1 + int(labels.max()))
    )
    return hidden[rows], prior, labels[rows]


def joint_lbfgs(features, offsets, labels, num_classes, strengths, masks, max_iterations=200):
    """The previous release's `solve_logistic`: one L-BFGS over the sum of all problems' losses."""
    m, n, d = features.shape
    weight = torch.zeros(m, d, num_classes, requires_grad=True)
    bias = torch.zeros(m, num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iterations, line_search_fn="strong_wolfe")
    mask, targets = masks.float(), labels.expand(m, -1)

    def closure():
        optimizer.zero_grad()
        logits = torch.bmm(features, weight) + bias.unsqueeze(1) + offsets
        per_example = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        loss = (per_example * mask).sum() + (weight.square().sum((1, 2)) / (2 * strengths)).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return torch.bmm(features, weight.detach()) + bias.detach().unsqueeze(1) + offsets


def run(path: str, shots: int, seed: int) -> dict:
    hidden, prior, labels = draw(path, shots, seed)
    num_classes = prior.shape[1]
    config = DecTConfig(label_words=[str(c) for c in range(num_classes)], regularization_candidates=REGULARIZATIONS)
    choices = []  # (weight, candidate) for every fixed weight, as the previous release's grid had them
    for weight in WEIGHTS:
        config.zero_shot_weight = weight
        choices += [(weight, c) for c in LinearHead.candidates(config, [], [])]
    splitter = StratifiedKFold(n_splits=min(4, shots), shuffle=True, random_state=seed)
    folds = [(torch.from_numpy(t), torch.from_numpy(v)) for t, v in splitter.split(np.zeros(len(labels)), labels)]

    start = time.perf_counter()
    solved = {}
    for weight in WEIGHTS:
        config.zero_shot_weight = weight
        solved.update(LinearHead.cross_validate(hidden, prior, labels, folds, [c for w, c in choices if w == weight],
                                                config))  # fmt: skip
    batched = torch.stack([solved[c] for _, c in choices], dim=1)  # (folds, choices, N, C)
    batched_seconds = time.perf_counter() - start

    features, offsets, masks, strengths = [], [], [], []
    for train_idx, _ in folds:
        scaled = {s: feature_statistics(hidden[train_idx], s) for s in {c.get("scaling") for _, c in choices}}
        mask = torch.zeros(len(labels), dtype=torch.bool)
        mask[train_idx] = True
        for weight, c in choices:
            mean, scale = scaled[c.get("scaling")]
            features.append((hidden - mean) / scale)
            offsets.append(weight * prior)
            masks.append(mask)
            strengths.append(c.get("regularization"))
    start = time.perf_counter()
    joint = joint_lbfgs(torch.stack(features), torch.stack(offsets), labels, num_classes, torch.tensor(strengths),
                        torch.stack(masks)).view(len(folds), len(choices), -1, num_classes)  # fmt: skip
    joint_seconds = time.perf_counter() - start

    gaps = {"batched": 0.0, "joint L-BFGS": 0.0}
    start = time.perf_counter()
    for f, (train_idx, val_idx) in enumerate(folds):
        for p, (weight, c) in enumerate(choices):
            if weight != 0.0:
                continue
            x = features[f * len(choices) + p].double().numpy()
            strength = c.get("regularization") * (2 if num_classes == 2 else 1)
            model = LogisticRegression(C=strength, tol=1e-10, max_iter=20000).fit(x[train_idx], labels[train_idx])
            reference = model.predict_proba(x[val_idx])
            for name, logits in (("batched", batched), ("joint L-BFGS", joint)):
                probabilities = logits[f, p, val_idx].double().softmax(-1).numpy()
                gaps[name] = max(gaps[name], float(abs(probabilities - reference).max()))
    sklearn_seconds = time.perf_counter() - start
    problems = len(folds) * len(choices)
    return {"examples": len(labels), "dimensions": hidden.shape[1], "classes": num_classes, "problems": problems,
            "batched_seconds": batched_seconds, "joint_seconds": joint_seconds,
            "sklearn_seconds_weight_0_only": sklearn_seconds, "max_probability_gap": gaps}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--features", default=os.path.join(here, "pool_features"))
    default_runs = ["smollm2_rotten_tomatoes:16", "smollm2_sms_spam:4", "minilm_election_tweets:64",
                    "smollm2_text_sources:16", "smollm2_text_sources:64"]  # fmt: skip
    parser.add_argument("--runs", nargs="+", default=default_runs, help="CACHE:SHOTS, CACHE as in --features")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--output", default=os.path.join(here, "results", "linear_solver.json"))
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    results = {}
    print(
        "| cache | shots | examples x dims, classes | batched (s) | joint L-BFGS (s) | speed-up | "
        "max prob. gap to scikit-learn: batched / joint |\n|---|---|---|---|---|---|---|"
    )
    for run_name in args.runs:
        name, shots = run_name.rsplit(":", 1)
        path = os.path.join(args.features, f"{name}.safetensors")
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: run `python bench/choose_dect_defaults.py extract` first.")
        r = results[run_name] = run(path, int(shots), args.seed)
        gap = r["max_probability_gap"]
        print(f"| {name} | {shots} | {r['examples']} x {r['dimensions']}, {r['classes']} | "
              f"{r['batched_seconds']:.2f} | {r['joint_seconds']:.2f} | "
              f"{r['joint_seconds'] / r['batched_seconds']:.1f}x | "
              f"{gap['batched']:.1e} / {gap['joint L-BFGS']:.1e} |", flush=True)  # fmt: skip
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
