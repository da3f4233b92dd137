#!/usr/bin/env python
"""DecT on a real, offline default: SmolLM2-135M-Instruct on two tasks, all shipped in PyPI packages.

- Rotten Tomatoes (is a review fresh or rotten?): the prompt alone is already good.
- 2016 election tweets (did Trump or Clinton write it?): the prompt alone is weak; the head has to earn its keep.

For each, the frozen model is queried once per example (16 shots per class for training, a fixed 1,000-example
test split); the head is chosen and trained on the cached answers in seconds, cross-validation included. The demo
prints the prompt's accuracy, DecT's, and what cross-validation chose, in plain words. Answers are cached on
disk, so a second run makes no query at all.

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
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from offline_assets import (  # noqa: E402
    CACHE,
    election_tweets,
    few_shot,
    fixed_split,
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


# What the demo prints for each task. The README shows a real run of it; tests/test_examples.py checks that the
# README's block still has this form.
SUMMARY = """{title}, {shots} training examples per class, {test_examples} test examples:
  the prompt alone: {calibrated:.1%} (calibrated), {uncalibrated:.1%} (uncalibrated)
  DecT:             {dect:.1%} ({gain:+.1f} points over the prompt's better scoring)
  Cross-validation on the training examples chose {choice}.
  Choosing and training the head took {head_seconds:.2f}s; {queries} backbone queries this run."""


def explain(dect) -> str:
    """What cross-validation on the training examples chose, in words."""
    r = dect.record
    if r.zero_shot_weight == "prompt_only":
        return "the prompt alone (no trained head did better on the held-out training examples)"
    if r.head_type == "linear":
        how = "a linear head on the model's hidden states (a regularised logistic regression"
        how += f", C={r.regularization})"
    else:
        how = f"the paper's prototype head ({r.steps} training steps)"
    if not r.zero_shot_weight:
        return f"{how}, ignoring the prompt's own answer"
    return f"{how}, added to the prompt's scores at weight {r.zero_shot_weight}"


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
    print(f"SmolLM2-135M-Instruct loaded in {time.perf_counter() - start:.1f}s")
    summaries, lines = {}, []
    for task in args.tasks:
        title, loader, prompt = TASKS[task]
        split = fixed_split(loader(), test_size=args.test_size, seed=0)
        train = few_shot(split["pool"], args.shots, seed=args.seed)
        config = DecTConfig(**prompt, query_cache_dir=str(CACHE / "dect-queries"))
        dect = get_frozen_model(backbone, config, tokenizer=tokenizer)
        dect.fit(train)
        test_start = time.perf_counter()
        results = {
            "zero_shot_uncalibrated": dect.evaluate(split["test"], scoring="zero_shot_uncalibrated")["accuracy"],
            "zero_shot_calibrated": dect.evaluate(split["test"], scoring="zero_shot")["accuracy"],
            "dect": dect.evaluate(split["test"])["accuracy"],
        }
        dect.save_pretrained(os.path.join(args.output_dir, task))
        summaries[task] = {
            "accuracy": results,
            "choice": dect.cv_choice,
            "calibrated": dect.record.calibrate,
            "fit_seconds": dect.fit_seconds,
            "test_seconds": round(time.perf_counter() - test_start, 2),
            "backbone_queries": dect.num_queries,
            "train_examples": len(train),
            "test_examples": len(split["test"]),
        }
        prompt_best = max(results["zero_shot_calibrated"], results["zero_shot_uncalibrated"])
        lines += SUMMARY.format(
            title=title, shots=args.shots, test_examples=len(split["test"]),
            calibrated=results["zero_shot_calibrated"], uncalibrated=results["zero_shot_uncalibrated"],
            dect=results["dect"], gain=100 * (results["dect"] - prompt_best), choice=explain(dect),
            head_seconds=dect.fit_seconds["training"], queries=dect.num_queries,
        ).splitlines()  # fmt: skip
    print(json.dumps(summaries, indent=2))
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
