#!/usr/bin/env python
"""DecT on a real, offline default: SmolLM2-135M-Instruct on Rotten Tomatoes, both shipped in PyPI packages.

Queries the frozen model once per example (16 shots per class for training, a fixed 1,000-example test
split), trains the DecT head on the cached answers in well under a second, and prints zero-shot and DecT
accuracy, timings and the number of backbone queries. Answers are cached on disk, so a second run makes no
query at all.

    python examples/dect_demo.py                 # or `make demo` on a fresh machine
    python examples/dect_demo.py --shots 64 --seed 1
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
from offline_assets import CACHE, few_shot, fixed_split, rotten_tomatoes, smollm2_folder  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shots", type=int, default=16, help="training examples per class")
    parser.add_argument("--seed", type=int, default=0, help="which shots are drawn")
    parser.add_argument("--test-size", type=int, default=1000, help="size of the fixed test split")
    parser.add_argument("--output-dir", default="output/dect-smollm2-rotten-tomatoes", help="where the head is saved")
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    start = time.perf_counter()
    folder = smollm2_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    backbone = AutoModelForCausalLM.from_pretrained(folder)
    split = fixed_split(rotten_tomatoes(), test_size=args.test_size, seed=0)
    train = few_shot(split["pool"], args.shots, seed=args.seed)
    print(f"SmolLM2-135M-Instruct and Rotten Tomatoes loaded in {time.perf_counter() - start:.1f}s: "
          f"{len(train)} training examples ({args.shots} per class), {len(split['test'])} test examples")  # fmt: skip

    config = DecTConfig(**ROTTEN_TOMATOES_PROMPT, query_cache_dir=str(CACHE / "dect-queries"))
    dect = get_frozen_model(backbone, config, tokenizer=tokenizer)
    dect.fit(train)
    test_start = time.perf_counter()
    results = {
        "zero_shot_uncalibrated": dect.evaluate(split["test"], scoring="zero_shot_uncalibrated")["accuracy"],
        "zero_shot_calibrated": dect.evaluate(split["test"], scoring="zero_shot")["accuracy"],
        "dect": dect.evaluate(split["test"])["accuracy"],
    }
    test_seconds = time.perf_counter() - test_start
    dect.save_pretrained(args.output_dir)

    summary = {
        "accuracy": results,
        "zero_shot_weight": dect.record.zero_shot_weight,
        "calibrated": dect.record.calibrate,
        "steps": dect.record.steps,
        "fit_seconds": dect.fit_seconds,
        "test_seconds": round(test_seconds, 2),
        "backbone_queries": dect.num_queries,
        "queries_from_cache": len(train) + len(split["test"]) + 1 - dect.num_queries,
        "saved_to": args.output_dir,
    }
    print(json.dumps(summary, indent=2))
    print(
        f"\nZero-shot {results['zero_shot_calibrated']:.1%} (calibrated), {results['zero_shot_uncalibrated']:.1%} "
        f"(uncalibrated); DecT {results['dect']:.1%} after {dect.fit_seconds['training']:.2f}s of head training; "
        f"{dect.num_queries} backbone queries this run."
    )


if __name__ == "__main__":
    main()
