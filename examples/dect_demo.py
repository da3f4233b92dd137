#!/usr/bin/env python
"""DecT on a real, offline default: two frozen models on two tasks, all shipped in PyPI packages.

SmolLM2-135M-Instruct answers the prompt (its label-word scores and its hidden state at the answer position);
all-MiniLM-L6-v2, a 22M-parameter sentence encoder, embeds the text (`feature_model=`). The head reads both
models' vectors beside the prompt's scores. Each model is queried once per example.

- Rotten Tomatoes (is a review fresh or rotten?): SmolLM2's prompt alone is already good; MiniLM's embeddings
  alone are weak.
- 2016 election tweets (did Trump or Clinton write it?): the prompt alone is weak; the head has to earn its keep.

For each, 16 shots per class for training and a fixed 1,000-example test split; the head is chosen and trained on
the cached answers in seconds, cross-validation included. The demo prints the prompt's accuracy, a probe on MiniLM's
features alone, DecT on SmolLM2 alone and DecT on both models, and what cross-validation chose, in plain words.
Answers are cached on disk, so a second run makes no query at all.

    python examples/dect_demo.py                 # or `make demo` on a fresh machine
    python examples/dect_demo.py --shots 64 --seed 1 --tasks election_tweets
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from sklearn.linear_model import LogisticRegression
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from offline_assets import (  # noqa: E402
    CACHE,
    election_tweets,
    few_shot,
    fixed_split,
    minilm_folder,
    rotten_tomatoes,
    smollm2_folder,
)

from hf_frozen import DecTConfig, get_frozen_model  # noqa: E402

# The prompt used in docs/dect.md and bench/: a chat-template instruction, with the start of the reply given so
# that the next token is the label word. The instruction comes before the review so that a causal LM reads it
# once for all queries (the shared prefix, see docs/dect.md); chosen on pool examples, never the test split.
ROTTEN_TOMATOES_PROMPT = dict(
    template="Classify the sentiment of the movie review as positive or negative.\nReview: {text}{answer}",
    chat_template=True,
    response_prefix="This movie review is",
    label_words=["negative", "positive"],
    labels=["rotten", "fresh"],
)
# Written once, before any test accuracy was seen, and not tuned.
ELECTION_PROMPT = dict(
    template="Tweet: {text}\nWho wrote this tweet, Donald Trump or Hillary Clinton? Answer with one name.{answer}",
    chat_template=True,
    response_prefix="This tweet was written by",
    label_words=["Donald|Trump", "Hillary|Clinton"],
    labels=["trump", "clinton"],
)
TASKS = {
    "rotten_tomatoes": ("Rotten Tomatoes (fresh or rotten?)", rotten_tomatoes, ROTTEN_TOMATOES_PROMPT),
    "election_tweets": ("2016 election tweets (Trump or Clinton?)", election_tweets, ELECTION_PROMPT),
}


# What the demo prints for each task. The README shows a real run of it; tests/test_readme.py checks that the
# README's block still has this form.
SUMMARY = """{title}, {shots} training examples per class, {test_examples} test examples:
  SmolLM2's prompt alone:     {calibrated:.1%} (calibrated), {uncalibrated:.1%} (uncalibrated)
  MiniLM's features alone:    {minilm:.1%} (a logistic-regression probe on the same examples)
  DecT on SmolLM2 alone:      {dect_lm:.1%}
  DecT on SmolLM2 + MiniLM:   {dect:.1%} ({gain:+.1f} points over the prompt's better scoring)
  Cross-validation on the training examples chose {choice}.
  Choosing and training the head took {head_seconds:.2f}s; {queries} SmolLM2 and {feature_queries} MiniLM queries."""


def explain(dect) -> str:
    """What cross-validation on the training examples chose, and what each model contributes to it, in words."""
    r = dect.record
    features = "SmolLM2's states and MiniLM's features" if dect.config.combine_features else "MiniLM's features"
    if r.head_type == "prompt":
        return f"SmolLM2's prompt alone (no trained head on {features} did better on held-out training examples)"
    if r.head_type == "linear":
        how = f"a linear head on {features} (a regularised logistic regression, C={r.regularization})"
    else:
        how = f"the paper's prototype head on {features} ({r.steps} training steps)"
    if abs(r.zero_shot_weight) < 0.005:
        return f"{how}, ignoring SmolLM2's answer"
    return f"{how}, plus SmolLM2's label-word scores at weight {r.zero_shot_weight:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shots", type=int, default=16, help="training examples per class")
    parser.add_argument("--seed", type=int, default=0, help="which shots are drawn")
    parser.add_argument("--test-size", type=int, default=1000, help="size of each fixed test split")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--output-dir", default="output/dect-smollm2", help="where the heads are saved")
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    start = time.perf_counter()
    folder = smollm2_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    backbone = AutoModelForCausalLM.from_pretrained(folder)
    encoder = AutoModel.from_pretrained(minilm_folder())
    encoder_tokenizer = AutoTokenizer.from_pretrained(minilm_folder())
    print(f"SmolLM2-135M-Instruct and all-MiniLM-L6-v2 loaded in {time.perf_counter() - start:.1f}s")
    summaries, lines = {}, []
    for task in args.tasks:
        title, loader, prompt = TASKS[task]
        split = fixed_split(loader(), test_size=args.test_size, seed=0)
        train, test = few_shot(split["pool"], args.shots, seed=args.seed), split["test"]
        config = DecTConfig(**prompt, query_cache_dir=str(CACHE / "dect-queries"))
        # SmolLM2 alone: its scores and its own hidden states (the answer cache is shared with the model below).
        lm_only = get_frozen_model(backbone, config, tokenizer=tokenizer)
        lm_only.fit(train)
        # SmolLM2's scores, SmolLM2's states next to MiniLM's features.
        dect = get_frozen_model(backbone, config, tokenizer=tokenizer, feature_model=encoder,
                                feature_tokenizer=encoder_tokenizer)  # fmt: skip
        dect.fit(train)
        test_start = time.perf_counter()
        # The probe reads MiniLM's features alone (the feature model's cache).
        (features, _), labels = dect.feature_queries.extract(train["text"]), dect.features(train)[2]
        (test_features, _), test_labels = dect.feature_queries.extract(test["text"]), dect.features(test)[2]
        probe = LogisticRegression(max_iter=2000).fit(features.numpy(), labels.numpy())
        results = {
            "zero_shot_uncalibrated": dect.evaluate(test, scoring="zero_shot_uncalibrated")["accuracy"],
            "zero_shot_calibrated": dect.evaluate(test, scoring="zero_shot")["accuracy"],
            "minilm_probe": float((probe.predict(test_features.numpy()) == test_labels.numpy()).mean()),
            "dect_smollm2": lm_only.evaluate(test)["accuracy"],
            "dect": dect.evaluate(test)["accuracy"],
        }
        dect.save_pretrained(os.path.join(args.output_dir, task))
        summaries[task] = {
            "accuracy": results,
            "choice": dect.cv_choice,
            "calibrated": dect.record.calibrate,
            "fit_seconds": dect.fit_seconds,
            "test_seconds": round(time.perf_counter() - test_start, 2),
            "backbone_queries": dect.num_queries + lm_only.num_queries,
            "feature_queries": dect.feature_queries.num_queries,
            "train_examples": len(train),
            "test_examples": len(test),
        }
        prompt_best = max(results["zero_shot_calibrated"], results["zero_shot_uncalibrated"])
        lines += SUMMARY.format(
            title=title, shots=args.shots, test_examples=len(test), calibrated=results["zero_shot_calibrated"],
            uncalibrated=results["zero_shot_uncalibrated"], minilm=results["minilm_probe"],
            dect_lm=results["dect_smollm2"], dect=results["dect"], gain=100 * (results["dect"] - prompt_best),
            choice=explain(dect), head_seconds=dect.fit_seconds["training"],
            queries=summaries[task]["backbone_queries"], feature_queries=summaries[task]["feature_queries"],
        ).splitlines()  # fmt: skip
    print(json.dumps(summaries, indent=2))
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
