#!/usr/bin/env python
"""Many task encoders on one frozen decoder: serving memory, mixed-batch throughput, and forgetting.

1. Serving memory: a t5-small-sized model (`T5Config` of t5-small, random init) with 1, 2, 4 and 8 full-encoder
   tasks in one `MultiEncoderModel`, against as many separate full models. Each set-up is built in its own
   process; we report the bytes of distinct tensors held and the process's peak RSS.
2. Throughput: 32 examples from 4 tasks (8 each, source 64 tokens, 32 new tokens, greedy and 3 beams) decoded
   as one mixed batch against one task at a time (4 batches of 8), in the same process.
3. Many LoRA tasks (`--only lora`): 100 LoRA task encoders (r=8 on q and v, random adapters) on one
   t5-small-sized base. Encoder throughput of a mixed batch of 64 rows over 32 tasks (2 rows each, 128 tokens),
   through the shared base-encoder pass, against a batch of 64 rows of one task, and against the per-task pass
   (one encoder pass per task group, how a mixed batch ran before). Outputs of the mixed batch against each task
   alone (greedy and 3 beams, 16 new tokens). Memory, each in its own process: peak RSS with the base model alone
   and with the 100 tasks added; floor: the 100 tasks' RSS <= base + 100 x adapter size + 10%.
4. Many full task encoders, few in memory (`--only lru`): 1,000 task names over 20 distinct full-encoder
   artifacts on a t5-mini-sized base (d_model 256, 4+4 layers), registered with `max_resident_encoders=16`: peak
   RSS, and the latency of a request to a warm (resident) task against a cold one (read back from its file);
   100 tasks all resident for comparison.
5. Forgetting (the paper's finding, small): a tiny T5 is pretrained on task A (reverse a sequence) until it
   solves it, then fine-tuned on task B (shift every token by one) with a trainable and with a frozen decoder.
   Exact-match accuracy on both tasks afterwards, 200 held-out examples each.

    python bench/bench_multi_encoder.py          # about 12 minutes on 2 CPU cores
    python bench/bench_multi_encoder.py --only forgetting
    python bench/bench_multi_encoder.py --only lora
    python bench/bench_multi_encoder.py --only lru

Writes bench/results/multi_encoder.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import chain

import torch
from memory import peak_rss, reset_peak_rss
from transformers import T5Config, T5ForConditionalGeneration

SMALL = dict(vocab_size=32128, d_model=512, d_ff=2048, num_layers=6, num_heads=8, d_kv=64,
             decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)  # fmt: skip


def distinct_bytes(modules) -> int:
    tensors = {id(t): t for m in modules for t in chain(m.parameters(), m.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def make_task_artifacts(folder: str, count: int, shape: dict = SMALL, prefix: str = "task") -> list[str]:
    """`count` task encoders: the base encoder with different random perturbations (training is not the point)."""
    from hf_frozen import FrozenDecoderConfig, get_frozen_model

    paths = []
    for i in range(count):
        torch.manual_seed(0)
        model = get_frozen_model(T5ForConditionalGeneration(T5Config(**shape)), FrozenDecoderConfig())
        with torch.no_grad():
            g = torch.Generator().manual_seed(i + 1)
            for p in model.encoder_state_dict().values():
                p.add_(torch.randn(p.shape, generator=g) * 0.01)
        path = os.path.join(folder, f"{prefix}{i}")
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


LORA_TASKS, LORA_MIXED_TASKS, LORA_ROWS, LORA_LENGTH = 100, 32, 64, 128


def make_lora_artifacts(folder: str, count: int) -> dict[str, str]:
    """`count` LoRA task encoders: one LoRA model whose adapter is redrawn and saved per task."""
    from hf_frozen import FrozenDecoderConfig, get_frozen_model

    torch.manual_seed(0)
    config = FrozenDecoderConfig(encoder_training="lora", lora_r=8, lora_alpha=16)
    model = get_frozen_model(T5ForConditionalGeneration(T5Config(**SMALL)), config)
    paths = {}
    for i in range(count):
        g = torch.Generator().manual_seed(i + 1)
        with torch.no_grad():
            for p in model.encoder_state_dict().values():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        paths[f"task{i}"] = os.path.join(folder, f"lora{i}")
        model.save_pretrained(paths[f"task{i}"])
    return paths


def lora_memory_child(count: int, folder: str) -> dict:
    from hf_frozen import MultiEncoderModel

    start = reset_peak_rss(trim=True)
    torch.manual_seed(0)
    base = T5ForConditionalGeneration(T5Config(**SMALL))
    paths = {f"task{i}": os.path.join(folder, f"lora{i}") for i in range(count)}
    server = MultiEncoderModel.from_pretrained(base, paths)
    adapter = sum(t["bytes"] for t in server.tasks().values())
    peak = peak_rss()
    # What stays in use once loaded: the heap's free memory (read files, initialisation temporaries) handed back.
    loaded = reset_peak_rss(trim=True)
    return {"tasks": count, "peak_rss_bytes": peak - start, "rss_bytes": loaded - start,
            "base_bytes": distinct_bytes([base]), "adapter_bytes": adapter,
            "tensor_bytes": distinct_bytes([server])}  # fmt: skip


def bench_lora(folder: str, repeats: int = 5) -> dict:
    from hf_frozen import MultiEncoderModel

    paths = make_lora_artifacts(folder, LORA_TASKS)
    memory = []
    for count in (0, LORA_TASKS):
        done = subprocess.run([sys.executable, __file__, "--lora-memory-child", str(count), folder],
                              capture_output=True, text=True, check=False)  # fmt: skip
        if done.returncode != 0:
            sys.exit(done.stderr[-3000:])
        memory.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base, full = memory
    # Resident memory once loaded (the peak is set by building the base model, whose init needs temporaries).
    allowed = 1.1 * (base["rss_bytes"] + full["adapter_bytes"])
    result: dict = {"memory": memory, "memory_allowed_bytes": allowed, "memory_met": full["rss_bytes"] <= allowed}
    print(f"lora memory: {memory}", file=sys.stderr)

    torch.manual_seed(0)
    server = MultiEncoderModel.from_pretrained(T5ForConditionalGeneration(T5Config(**SMALL)), paths).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 32128, (LORA_ROWS, LORA_LENGTH), generator=g)
    mask = torch.ones_like(ids)
    mixed_tasks = [f"task{i % LORA_MIXED_TASKS}" for i in range(LORA_ROWS)]
    one_task = ["task0"] * LORA_ROWS

    def best_time(tasks: list[str], per_task: bool = False) -> float:
        """Best of `repeats`: the batch in one `encode` call, or (`per_task`) one call per task group, as a mixed
        batch ran before the shared pass."""
        groups = [[i for i, t in enumerate(tasks) if t == task] for task in dict.fromkeys(tasks)]
        calls = (
            [(ids[rows], mask[rows], [tasks[i] for i in rows]) for rows in groups]
            if per_task
            else [(ids, mask, tasks)]
        )
        times = []
        with torch.inference_mode():
            server.encode(ids[:8], mask[:8], tasks[:8])  # warm-up
            for _ in range(repeats):
                start = time.perf_counter()
                for call in calls:
                    server.encode(*call)
                times.append(time.perf_counter() - start)
        return min(times)

    single, mixed, per_task = best_time(one_task), best_time(mixed_tasks), best_time(mixed_tasks, per_task=True)
    result["throughput"] = {"one_task_seconds": single, "mixed_shared_pass_seconds": mixed,
                            "mixed_per_task_pass_seconds": per_task, "ratio": single / mixed,
                            "per_task_pass_ratio": single / per_task, "met": single / mixed >= 0.8}  # fmt: skip
    print(f"lora throughput: {result['throughput']}", file=sys.stderr)

    identical = {}
    short = ids[:, :32]
    for beams in (1, 3):
        kwargs = dict(max_new_tokens=16, min_new_tokens=16, num_beams=beams, do_sample=False)
        out = server.generate(input_ids=short, tasks=mixed_tasks, **kwargs)
        same = True
        for task in dict.fromkeys(mixed_tasks):
            rows = [i for i, t in enumerate(mixed_tasks) if t == task]
            alone = server.generate(input_ids=short[rows], tasks=[task] * len(rows), **kwargs)  # its own encoder
            same &= out[rows].tolist() == alone.tolist()
        identical[f"beams={beams}"] = same
    result["identical_outputs"] = identical
    print(f"lora identical outputs: {identical}", file=sys.stderr)
    return result


# Many full task encoders, few resident: a t5-mini-sized base, so that 1,000 tasks register in about a minute.
MINI = dict(SMALL, d_model=256, d_ff=1024, num_layers=4, num_heads=4)
LRU_TASKS, LRU_DISTINCT, LRU_RESIDENT = 1000, 20, 16


def make_lru_artifacts(folder: str) -> dict[str, str]:
    """`LRU_TASKS` task names over `LRU_DISTINCT` distinct full-encoder artifacts (the rest are symlinks to them)."""
    distinct = make_task_artifacts(folder, LRU_DISTINCT, shape=MINI, prefix="mini")
    paths = {}
    for i in range(LRU_TASKS):
        paths[f"task{i}"] = os.path.join(folder, f"mini-task{i}")
        os.symlink(distinct[i % LRU_DISTINCT], paths[f"task{i}"])
    return paths


def lru_child(folder: str, count: int, resident: int | None) -> dict:
    """Register `count` tasks with at most `resident` in memory; peak RSS, then cold and warm request latency."""
    from hf_frozen import MultiEncoderModel

    start_rss = reset_peak_rss()
    torch.manual_seed(0)
    base = T5ForConditionalGeneration(T5Config(**MINI))
    base_bytes = distinct_bytes([base])
    paths = {f"task{i}": os.path.join(folder, f"mini-task{i}") for i in range(count)}
    start = time.perf_counter()
    server = MultiEncoderModel.from_pretrained(base, paths, max_resident_encoders=resident)
    register_seconds = time.perf_counter() - start
    listing = server.tasks()
    result = {"tasks": count, "max_resident": resident, "register_seconds": register_seconds,
              "resident_after_register": sum(t["resident"] for t in listing.values()),
              "bytes_per_task": listing["task0"]["bytes"], "base_bytes": base_bytes,
              "peak_rss_bytes": peak_rss() - start_rss}  # fmt: skip
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 32128, (8, 64), generator=g)

    def latency(task: str) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            server.generate(input_ids=ids, tasks=[task] * 8, max_new_tokens=8, num_beams=1, do_sample=False)
        return time.perf_counter() - start

    latency(f"task{count - 1}")  # warm-up
    warm = [latency(f"task{count - 1}") for _ in range(5)]
    # Cold: a task evicted long ago (with every task resident, there is no cold task).
    cold = [latency(f"task{i}") for i in range(5)] if resident else []
    result.update(
        warm_seconds=statistics.median(warm),
        cold_seconds=statistics.median(cold) if cold else None,
        resident_after_requests=len(server.encoders),
        peak_rss_after_requests_bytes=peak_rss() - start_rss,
    )
    return result


def bench_lru(folder: str) -> dict:
    make_lru_artifacts(folder)
    runs = []
    for count, resident in ((LRU_TASKS, LRU_RESIDENT), (100, None)):
        done = subprocess.run([sys.executable, __file__, "--lru-child", folder, str(count), str(resident or 0)],
                              capture_output=True, text=True, check=False)  # fmt: skip
        if done.returncode != 0:
            sys.exit(done.stderr[-3000:])
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"lru: {runs[-1]}", file=sys.stderr)
    lazy, eager = runs
    # The bound's evidence: 1,000 tasks with K resident take less memory than 100 tasks all resident.
    met = lazy["peak_rss_after_requests_bytes"] < eager["peak_rss_after_requests_bytes"]
    return {"runs": runs, "eager_bytes_needed_for_all": LRU_TASKS * lazy["bytes_per_task"], "memory_bound_met": met}


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
    if "lora" in results:
        r = results["lora"]
        t, (base, full) = r["throughput"], r["memory"]
        lines += [f"{LORA_TASKS} LoRA tasks, encoder pass over {LORA_ROWS} rows x {LORA_LENGTH} tokens:", "",
                  "| batch | seconds | throughput vs one task |", "|---|---|---|",
                  f"| {LORA_ROWS} rows of one task | {t['one_task_seconds']:.3f} | 1.00x |",
                  f"| {LORA_ROWS} rows over {LORA_MIXED_TASKS} tasks, shared pass | "
                  f"{t['mixed_shared_pass_seconds']:.3f} | "
                  f"{t['ratio']:.2f}x ({'met' if t['met'] else 'not met'}: floor 0.8x) |",
                  f"| the same, one pass per task | {t['mixed_per_task_pass_seconds']:.3f} | "
                  f"{t['per_task_pass_ratio']:.2f}x |", "",
                  f"Identical outputs to each task alone: {r['identical_outputs']}.", "",
                  f"Memory (RSS once loaded, over the start): base alone {base['rss_bytes'] / 2**20:.0f} MiB; "
                  f"with {LORA_TASKS} tasks {full['rss_bytes'] / 2**20:.0f} MiB; adapters "
                  f"{full['adapter_bytes'] / 2**20:.1f} MiB in all; allowed (base + adapters) x 1.1 = "
                  f"{r['memory_allowed_bytes'] / 2**20:.0f} MiB: {'met' if r['memory_met'] else 'not met'}.",
                  ""]  # fmt: skip
    if "lru" in results:
        r = results["lru"]
        lazy, eager = r["runs"]
        mib = 2**20
        lines += [f"{lazy['tasks']:,} full task encoders ({lazy['bytes_per_task'] / mib:.1f} MiB each, t5-mini-sized "
                  f"base), at most {lazy['max_resident']} resident:", "",
                  "| tasks | resident | register (s) | peak RSS over start | warm request (s) | cold request (s) |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for run in (lazy, eager):
            cold = f"{run['cold_seconds']:.3f}" if run["cold_seconds"] is not None else "-"
            rss = run["peak_rss_after_requests_bytes"] / mib
            lines.append(f"| {run['tasks']:,} | {run['max_resident'] or 'all'} | {run['register_seconds']:.1f} | "
                         f"{rss:.0f} MiB | {run['warm_seconds']:.3f} | {cold} |")  # fmt: skip
        verdict = "met" if r["memory_bound_met"] else "not met"
        lines += ["", f"Holding all {lazy['tasks']:,} would need {r['eager_bytes_needed_for_all'] / mib:,.0f} MiB of "
                  f"encoder weights alone. {lazy['tasks']:,} tasks with {lazy['max_resident']} resident take less "
                  f"memory than {eager['tasks']} tasks all resident: {verdict}. A cold request reads the task's "
                  "safetensors file, checks its checksum and fingerprints and builds its encoder; a request is 8 "
                  "rows x 64 tokens, 8 new tokens, greedy.", ""]  # fmt: skip
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
    parser.add_argument("--only", choices=["memory", "throughput", "lora", "lru", "forgetting"])
    parser.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--lora-memory-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--lru-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.lru_child:
        folder, count, resident = args.lru_child
        print(json.dumps(lru_child(folder, int(count), int(resident) or None)))
        return
    if args.lora_memory_child:
        count, folder = args.lora_memory_child
        print(json.dumps(lora_memory_child(int(count), folder)))
        return
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
        if args.only in (None, "lora"):
            results["lora"] = bench_lora(folder)
        if args.only in (None, "lru"):
            results["lru"] = bench_lru(folder)
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
