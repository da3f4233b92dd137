#!/usr/bin/env python
"""How DecT's default head choice was picked: on pool data only, never on the bench's test splits.

`bench_dect.py` reports each method once on a fixed 1,000-example test split per set. Every setting DecT uses by
default was chosen here instead, on examples drawn from the rest (the pool): per backbone and set, a dev split of
600 pool examples (stratified, seed 1) to score on, and up to 200 other pool examples per class to draw shots
from. The backbone is queried once per example and the answers are kept in a folder (`--features`), so that
comparing head settings afterwards costs seconds, not backbone time.

The comparison runs the real `DecTModel.fit` on a callable backbone that answers from those saved features, so
what is measured is the shipped code path, with the configured or overridden `DecTConfig` fields:

    python bench/choose_dect_defaults.py extract                  # the backbone queries (about 15 minutes)
    python bench/choose_dect_defaults.py compare                  # defaults: the floor table on the dev splits
    python bench/choose_dect_defaults.py compare --set regularization_candidates=[0.1,1,10]

Prints, per backbone, set and shots per class, DecT's dev accuracy, the probe's, the calibrated prompt's and the
floor's verdict (as in `bench_dect.py`), over `--seeds` draws of the shots (seeds 100 and up, so that even the
shots differ from the bench's).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_dect import DATASETS, SHOTS, choice_label, config_for, load_backbone  # noqa: E402
from offline_assets import few_shot, fixed_split  # noqa: E402

from hf_frozen import DecTConfig, get_frozen_model  # noqa: E402

DEV_SIZE = 600
SHOT_POOL_PER_CLASS = 200
FIRST_SEED = 100


def pool_splits(dataset_name: str) -> tuple[Dataset, Dataset]:
    """(dev split, shot pool): both inside the bench's pool, so no bench test example is ever in either."""
    loader, _ = DATASETS[dataset_name]
    pool = fixed_split(loader(), test_size=1000, seed=0)["pool"]
    split = pool.train_test_split(test_size=DEV_SIZE, seed=1, stratify_by_column="label")
    rest = split["train"]
    shot_pool = few_shot(rest, min(SHOT_POOL_PER_CLASS, min(np.bincount(rest["label"]))), seed=1)
    return split["test"], shot_pool


def extract(args: argparse.Namespace) -> None:
    os.makedirs(args.features, exist_ok=True)
    for backbone_name in args.backbones:
        model, tokenizer = load_backbone(backbone_name)
        for dataset_name in args.datasets:
            path = os.path.join(args.features, f"{backbone_name}_{dataset_name}.safetensors")
            if os.path.exists(path):
                continue
            _, prompt = DATASETS[dataset_name]
            dect = get_frozen_model(model, config_for(backbone_name, prompt), tokenizer=tokenizer)
            dect.show_progress = False
            dev, shot_pool = pool_splits(dataset_name)
            texts = list(dev["text"]) + list(shot_pool["text"])
            hidden, raw = dect.extract(texts)
            tensors = {"hidden": hidden.float(), "labels": torch.tensor(list(dev["label"]) + list(shot_pool["label"]))}
            if raw is not None:
                tensors["raw"] = raw.float()
                empty_hidden, empty_raw = dect.extract(*dect.calibration_input())
                tensors["empty_hidden"], tensors["empty_raw"] = empty_hidden.float(), empty_raw.float()
            save_file(tensors, path, metadata={"texts": json.dumps(texts), "dev_size": str(len(dev))})
            print(f"[{backbone_name}/{dataset_name}] {dect.num_queries} queries saved to {path}", file=sys.stderr)


def answering_backbone(path: str):
    """A callable backbone that answers each text (the prompt is the text itself) from the saved features."""
    tensors = load_file(path)
    with safe_open(path, "pt") as f:
        metadata = f.metadata()
    texts = json.loads(metadata["texts"])
    rows = {t.rstrip(): i for i, t in enumerate(texts)}  # the prompt is the text, cut at the slot: rstripped
    hidden, raw = tensors["hidden"].numpy(), tensors.get("raw")
    if raw is not None:
        raw = raw.numpy()
        rows[""] = len(texts)
        hidden = np.concatenate([hidden, tensors["empty_hidden"].numpy()])
        raw = np.concatenate([raw, tensors["empty_raw"].numpy()])

    def answer(prompts: list[str], label_words: list[list[str]]):
        index = [rows[p] for p in prompts]
        return hidden[index], None if raw is None else raw[index]

    dev_size = int(metadata["dev_size"])
    labels = tensors["labels"].tolist()
    dev = Dataset.from_dict({"text": texts[:dev_size], "label": labels[:dev_size]})
    shot_pool = Dataset.from_dict({"text": texts[dev_size:], "label": labels[dev_size:]})
    return answer, dev, shot_pool, raw is not None


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    overrides = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        overrides[key] = json.loads(value)
    return overrides


def compare(args: argparse.Namespace) -> dict[str, Any]:
    overrides = parse_overrides(args.set)
    results, met, total = {}, 0, 0
    print(f"| run | shots | DecT | probe | calibrated prompt | floor | verdict | choices |\n|{'---|' * 8}")
    for backbone_name in args.backbones:
        for dataset_name in args.datasets:
            path = os.path.join(args.features, f"{backbone_name}_{dataset_name}.safetensors")
            answer, dev, shot_pool, has_scores = answering_backbone(path)
            _, prompt = DATASETS[dataset_name]
            base = config_for(backbone_name, prompt).to_dict()
            base.update(template="{text}{answer}", chat_template=False, response_prefix="", **overrides)
            config = DecTConfig.from_dict(base)
            dect = get_frozen_model(answer, config, backbone_name=f"saved:{path}")
            dect.show_progress = False
            dev_hidden, _, dev_labels = dect.features(dev)
            prompt_accuracy = None
            if has_scores:
                prompt_accuracy = dect.evaluate(dev, scoring="zero_shot")["accuracy"]
            for k in args.shots:
                rows = {"dect": [], "probe": [], "choice": []}
                for seed in range(FIRST_SEED, FIRST_SEED + args.seeds):
                    train = few_shot(shot_pool, k, seed=seed)
                    dect.fit(train)
                    rows["dect"].append(dect.evaluate(dev)["accuracy"])
                    rows["choice"].append(choice_label(dect.record))
                    hidden, _, labels = dect.features(train)
                    probe = LogisticRegression(max_iter=2000).fit(hidden.numpy(), labels.numpy())
                    rows["probe"].append(float((probe.predict(dev_hidden.numpy()) == dev_labels.numpy()).mean()))
                dect_mean, probe_mean = float(np.mean(rows["dect"])), float(np.mean(rows["probe"]))
                floor = max(probe_mean, prompt_accuracy or 0.0) - 0.01
                ok = round(dect_mean, 4) >= round(floor, 4)
                met, total = met + ok, total + 1
                key = f"{backbone_name}/{dataset_name}"
                results[f"{key}/{k}"] = {**rows, "prompt": prompt_accuracy, "met": ok}
                verdict = "met" if ok else f"not met ({100 * (dect_mean - floor - 0.01):+.1f})"
                prompt_text = f"{prompt_accuracy:.1%}" if prompt_accuracy is not None else "-"
                print(f"| {key} | {k} | {dect_mean:.1%} | {probe_mean:.1%} | {prompt_text} | {floor:.1%} | "
                      f"{verdict} | {', '.join(rows['choice'])} |", flush=True)  # fmt: skip
    print(f"\nFloor met in {met} of {total} cells (dev splits, overrides {overrides or 'none'}).")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["extract", "compare"])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--features", default=os.path.join(here, "pool_features"))
    parser.add_argument("--backbones", nargs="+", default=["smollm2", "minilm"])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--shots", nargs="+", type=int, default=list(SHOTS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--set", nargs="*", default=[], help="DecTConfig overrides, FIELD=JSON")
    parser.add_argument("--output", help="write the per-seed results here (JSON)")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    if args.action == "extract":
        extract(args)
        return
    results = compare(args)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
