#!/usr/bin/env python
"""Many task encoders on one frozen decoder: serving memory, mixed-batch throughput, and forgetting.

1. Serving memory: a t5-small-sized model (`T5Config` of t5-small, random init) with 1, 2, 4 and 8 full-encoder
   tasks in one `MultiEncoderModel`, against as many separate full models. Each set-up is built in its own
   process; we report the bytes of distinct tensors held and the process's peak RSS.
2. Throughput: 32 examples from 4 tasks (8 each, source 64 tokens, 32 new tokens, greedy and 3 beams) decoded
   as one mixed batch against one task at a time (4 batches of 8), in the same process.
3. Forgetting (the paper's finding, small): a tiny T5 is pretrained on task A (reverse a sequence) until it
   solves it, then fine-tuned on task B (shift every token by one) with a trainable and with a frozen decoder.
   Exact-match accuracy on both tasks afterwards, 200 held-out examples each.

    python bench/bench_multi_encoder.py          # about 10 minutes on 2 CPU cores
    python bench/bench_multi_encoder.py --only forgetting

Writes bench/results/multi_encoder.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from itertools import chain

import torch
from transformers import T5Config, T5ForConditionalGeneration

SMALL = dict(vocab_size=32128, d_model=512, d_ff=2048, num_layers=6, num_heads=8, d_kv=64,
             decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)  # fmt: skip


def distinct_bytes(modules) -> int:
    tensors = {id(t): t for m in modules for t in chain(m.parameters(), m.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def make_task_artifacts(folder: str, count: int) -> list[str]:
    """`count` task encoders: the base encoder with different random perturbations (training is not the point)."""
    from hf_frozen import FrozenDecoderConfig, get_frozen_model

    paths = []
    for i in range(count):
        torch.manual_seed(0)
        model = get_frozen_model(T5ForConditionalGeneration(T5Config(**SMALL)), FrozenDecoderConfig())
        with torch.no_grad():
            g = torch.Generator().manual_seed(i + 1)
            for p in model.encoder_state_dict().values():
                p.add_(torch.randn(p.shape, generator=g) * 0.01)
        path = os.path.join(folder, f"task{i}")
        model.save_pretrained(path)
        paths.append(path)
    return paths


def memory_child(kind: str, count: int, folder: str) -> dict:
    from hf_frozen import AutoFrozenModel, MultiEncoderModel

    paths = [os.path.join(folder, f"task{i}") for i in range(count)]
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.manual_seed(0)
    if kind == "multi":
        held = [MultiEncoderModel.from_pretrained(T5ForConditionalGeneration(T5Config(**SMALL)),
                                                  {f"task{i}": p for i, p in enumerate(paths)})]  # fmt: skip
    else:
        held = []
        for p in paths:
            torch.manual_seed(0)
            held.append(AutoFrozenModel.from_pretrained(p, base_model=T5ForConditionalGeneration(T5Config(**SMALL))))
    return {
        "kind": kind,
        "tasks": count,
        "tensor_bytes": distinct_bytes(held),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_at_start": base_rss,
    }


def bench_memory(folder: str) -> list[dict]:
    rows = []
    for count in (1, 2, 4, 8):
        for kind in ("separate", "multi"):
            done = subprocess.run([sys.executable, __file__, "--memory-child", kind, str(count), folder],
                                  capture_output=True, text=True, check=False)  # fmt: skip
            if done.returncode != 0:
                sys.exit(done.stderr[-3000:])
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"memory: {kind} x{count} done", file=sys.stderr)
    return rows


def bench_throughput(folder: str, repeats: int = 3) -> list[dict]:
    from hf_frozen import MultiEncoderModel

    torch.manual_seed(0)
    paths = {f"task{i}": os.path.join(folder, f"task{i}") for i in range(4)}
    server = MultiEncoderModel.from_pretrained(T5ForConditionalGeneration(T5Config(**SMALL)), paths)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 32128, (32, 64), generator=g)
    tasks = [f"task{i % 4}" for i in range(32)]
    rows = []
    for beams in (1, 3):
        kwargs = dict(max_new_tokens=32, min_new_tokens=32, num_beams=beams, do_sample=False)
        server.generate(input_ids=ids[:4], tasks=tasks[:4], **kwargs)  # warm-up
        mixed, alone = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            out_mixed = server.generate(input_ids=ids, tasks=tasks, **kwargs)
            mixed.append(time.perf_counter() - start)
            start = time.perf_counter()
            out_alone = {}
            for task in paths:
                rows_ = [i for i, t in enumerate(tasks) if t == task]
                out_alone[task] = (rows_, server.generate(input_ids=ids[rows_], tasks=[task] * len(rows_), **kwargs))
            alone.append(time.perf_counter() - start)
        same = all(out_mixed[r].tolist() == o.tolist() for r, o in out_alone.values())
        rows.append({"num_beams": beams, "examples": 32, "mixed_seconds": min(mixed), "one_task_at_a_time_seconds":
                     min(alone), "speedup": min(alone) / min(mixed), "identical_outputs": same})  # fmt: skip
        print(f"throughput beams={beams}: {rows[-1]}", file=sys.stderr)
    return rows


def bench_forgetting(seed: int = 0) -> dict:
    """Task A: reverse; task B: shift by one. A task token (3 or 4) starts each input."""
    from hf_frozen import FrozenDecoderConfig, get_frozen_model

    vocab, length = 24, 6
    config = dict(vocab_size=vocab + 6, d_model=64, d_ff=128, num_layers=2, num_heads=4, d_kv=16,
                  decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0)  # fmt: skip

    def data(task: str, n: int, data_seed: int):
        g = torch.Generator().manual_seed(data_seed)
        x = torch.randint(6, 6 + vocab - 1, (n, length), generator=g)
        y = x.flip(1) if task == "A" else x + 1
        marker = torch.full((n, 1), 3 if task == "A" else 4)
        return torch.cat([marker, x], 1), y

    def exact_match(model, task: str) -> float:
        x, y = data(task, 200, 999 if task == "A" else 998)
        model.eval()
        with torch.no_grad():
            out = model.generate(input_ids=x, max_new_tokens=length, min_new_tokens=length, do_sample=False)
        model.train()
        return float((out[:, 1 : length + 1] == y).all(1).float().mean())

    def train(model, task: str, steps: int, lr: float, stop_at: float | None = None) -> int:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
        for step in range(1, steps + 1):
            x, y = data(task, 64, seed * 100000 + step)
            loss = model(input_ids=x, labels=y).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if stop_at is not None and step % 200 == 0 and exact_match(model, task) >= stop_at:
                return step
        return steps

    torch.manual_seed(seed)
    pretrained = T5ForConditionalGeneration(T5Config(**config))
    steps_a = train(pretrained, "A", 6000, 3e-3, stop_at=0.98)
    state = {k: v.clone() for k, v in pretrained.state_dict().items()}
    result = {"pretraining_steps_on_A": steps_a, "after_pretraining": {"A": exact_match(pretrained, "A"),
                                                                       "B": exact_match(pretrained, "B")}}  # fmt: skip
    for name in ("trainable decoder", "frozen decoder"):
        model = T5ForConditionalGeneration(T5Config(**config))
        model.load_state_dict(state)
        if name == "frozen decoder":
            model = get_frozen_model(model, FrozenDecoderConfig())
        train(model, "B", 1500, 1e-3)
        result[name] = {"A": exact_match(model, "A"), "B": exact_match(model, "B")}
        print(f"forgetting: {name}: {result[name]}", file=sys.stderr)
    return result


def markdown(results: dict) -> str:
    lines = []
    if "memory" in results:
        lines += ["| tasks | separate models: tensors | one decoder + encoders: tensors | ratio | separate: peak RSS "
                  "| one decoder: peak RSS |", "|---|---|---|---|---|---|"]  # fmt: skip
        by = {(r["kind"], r["tasks"]): r for r in results["memory"]}
        for n in (1, 2, 4, 8):
            s, m = by[("separate", n)], by[("multi", n)]
            lines.append(f"| {n} | {s['tensor_bytes'] / 2**20:.0f} MiB | {m['tensor_bytes'] / 2**20:.0f} MiB | "
                         f"{m['tensor_bytes'] / s['tensor_bytes']:.2f}x | {s['peak_rss_bytes'] / 2**20:.0f} MiB | "
                         f"{m['peak_rss_bytes'] / 2**20:.0f} MiB |")  # fmt: skip
        lines.append("")
    if "throughput" in results:
        lines += ["| beams | mixed batch (s) | one task at a time (s) | speed-up | identical outputs |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for r in results["throughput"]:
            lines.append(f"| {r['num_beams']} | {r['mixed_seconds']:.2f} | {r['one_task_at_a_time_seconds']:.2f} | "
                         f"{r['speedup']:.2f}x | {r['identical_outputs']} |")  # fmt: skip
        lines.append("")
    if "forgetting" in results:
        f = results["forgetting"]
        lines += [f"Pretrained on A for {f['pretraining_steps_on_A']} steps, then 1,500 steps on B:", "",
                  "| model | task A exact match | task B exact match |", "|---|---|---|",
                  f"| after pretraining on A | {f['after_pretraining']['A']:.1%} | "
                  f"{f['after_pretraining']['B']:.1%} |"]  # fmt: skip
        for name in ("trainable decoder", "frozen decoder"):
            lines.append(f"| fine-tuned on B, {name} | {f[name]['A']:.1%} | {f[name]['B']:.1%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["memory", "throughput", "forgetting"])
    parser.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        kind, count, folder = args.memory_child
        print(json.dumps(memory_child(kind, int(count), folder)))
        return
    results: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        if args.only in (None, "memory", "throughput"):
            make_task_artifacts(folder, 8)
        if args.only in (None, "memory"):
            results["memory"] = bench_memory(folder)
        if args.only in (None, "throughput"):
            results["throughput"] = bench_throughput(folder)
    if args.only in (None, "forgetting"):
        results["forgetting"] = bench_forgetting()
    table = markdown(results)
    os.makedirs(args.output, exist_ok=True)
    name = "multi_encoder" + (f"_{args.only}" if args.only else "")
    with open(os.path.join(args.output, f"{name}.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(table)


if __name__ == "__main__":
    main()
