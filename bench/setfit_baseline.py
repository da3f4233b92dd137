#!/usr/bin/env python
"""SetFit on all-MiniLM-L6-v2, the few-shot classifier a user would pick instead of DecT: one row of
`bench_dect_peers.py`, run on its own because it is the slow one (contrastive fine-tuning on 2 CPU cores).

SetFit 1.2's documented defaults (`setfit.TrainingArguments()`: batch 16, one epoch of oversampled pairs, body lr
2e-5, a logistic-regression head) on the same fixed splits and shots as the DecT rows. Where the defaults would
draw more than `MAX_DEFAULT_PAIRS` pairs (64 shots on `text_sources`: about 170,000 pairs, hours here), the run
uses `num_iterations=20` (SetFit's pre-1.0 default, 40 pairs per example) and says so in its row.

Each cell (data set, shots, seed) is appended to `bench/results/setfit.json` as soon as it is done, so a stopped
run resumes where it stopped:

    python bench/setfit_baseline.py                       # 4 sets x (4, 16 shots: 3 seeds; 64 shots: 1 seed)
    python bench/setfit_baseline.py --sets rotten_tomatoes --shots 16 --seeds 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
from offline_assets import (  # noqa: E402
    election_tweets,
    few_shot,
    fixed_split,
    minilm_folder,
    rotten_tomatoes,
    sms_spam,
    text_sources,
)

DATASETS = {"rotten_tomatoes": rotten_tomatoes, "sms_spam": sms_spam, "election_tweets": election_tweets,
            "text_sources": text_sources}  # fmt: skip

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "setfit.json")
MAX_DEFAULT_PAIRS = 40_000


def default_pairs(labels: list[int]) -> int:
    """How many pairs SetFit's default "oversampling" draws: twice the larger of the positive and negative pairs."""
    counts = [labels.count(c) for c in set(labels)]
    positive = sum(n * (n - 1) // 2 for n in counts)
    total = len(labels) * (len(labels) - 1) // 2
    return 2 * max(positive, total - positive)


def run_cell(name: str, shots: int, seed: int) -> dict:
    import torch
    from setfit import SetFitModel, Trainer, TrainingArguments

    split = fixed_split(DATASETS[name](), test_size=1000, seed=0)
    train = few_shot(split["pool"], shots, seed=seed)
    pairs = default_pairs(list(train["label"]))
    settings = {} if pairs <= MAX_DEFAULT_PAIRS else {"num_iterations": 20}
    torch.manual_seed(seed)
    model = SetFitModel.from_pretrained(str(minilm_folder()))
    # A throwaway output folder (SetFit's default is ./checkpoints), nothing saved.
    args = TrainingArguments(output_dir=tempfile.mkdtemp(prefix="setfit-"), save_strategy="no", seed=seed,
                             report_to="none", **settings)  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=train)
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    predicted = model.predict(split["test"]["text"], batch_size=64, as_numpy=True)
    test_seconds = time.perf_counter() - start
    accuracy = float((predicted == split["test"]["label"]).mean())
    return {"set": name, "shots": shots, "seed": seed, "accuracy": accuracy, "train_seconds": train_seconds,
            "test_seconds": test_seconds, "settings": settings or "defaults", "default_pairs": pairs,
            "train_examples": len(train), "test_examples": len(split["test"])}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(DATASETS))
    parser.add_argument("--shots", nargs="+", type=int, default=[16, 4, 64])
    parser.add_argument("--seeds", type=int, default=3, help="seeds at 4 and 16 shots (64 shots: one)")
    args = parser.parse_args()
    done = json.load(open(RESULTS)) if os.path.isfile(RESULTS) else []
    have = {(c["set"], c["shots"], c["seed"]) for c in done}
    for shots in args.shots:
        for name in args.sets:
            for seed in range(args.seeds if shots < 64 else 1):
                if (name, shots, seed) in have:
                    continue
                cell = run_cell(name, shots, seed)
                print(json.dumps(cell), flush=True)
                done.append(cell)
                with open(RESULTS + ".tmp", "w") as f:
                    json.dump(done, f, indent=1)
                os.replace(RESULTS + ".tmp", RESULTS)


if __name__ == "__main__":
    main()
