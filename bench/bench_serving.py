#!/usr/bin/env python
"""Serving many task encoders over HTTP on Ray Serve: one shared decoder against one deployment per task.

The model: a t5-mini-sized T5 (d_model 256, 4+4 layers, t5's 32,128-token vocabulary, random weights: speed and
memory do not depend on training) with a word-level tokenizer; the tasks: LoRA encoders (r=8 on q and v, random
adapters), saved as one multi-encoder set.

Two layouts of the same `hf_frozen.serving` app, on the same Ray instance of 2 logical CPUs (all this machine has):

- shared: one replica deployment (2 CPUs) holds the base once and multiplexes every task onto it; concurrent
  requests of any tasks are batched into one pass (`max_batch_size` 16, wait 20 ms; `SHARED_CPUS=1` in the
  environment reserves 1 CPU instead).
- per task: `ReplicaOptions(deployment_per_task=True)`: one deployment per task, each replica a whole model (base
  plus its one task), the 2 CPUs split evenly among them; each still batches its own task's requests.

Ray gives each replica as many OpenMP threads as the CPUs it reserves (at least 1), so neither layout
oversubscribes the cores much. Load: 32 concurrent clients on 127.0.0.1 (one `requests` session each), each request
one 64-word prompt of a task drawn uniformly at random, 64 new tokens, greedy; `--requests` requests per setting
after a warm-up that touches every task once, stopping early after `--max_seconds`. Memory: the resident set (RSS)
of every replica process of the app, read from /proc. Outputs of a sample of requests are compared with
`MultiEncoderModel.generate` in this process.

    python bench/bench_serving.py                       # about 15 minutes on 2 CPU cores
    python bench/bench_serving.py --tasks 1 10 --requests 60

Writes bench/results/serving.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

MINI = dict(vocab_size=32128, d_model=256, d_ff=1024, num_layers=4, num_heads=4, d_kv=64,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)  # fmt: skip
PORT = 8461
CLIENTS = 32
NEW_TOKENS = 64
PROMPT_WORDS = 64
SHARED_CPUS = float(os.environ.get("SHARED_CPUS", 2))


def word_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def make_set(folder: Path, count: int) -> None:
    """The base (and tokenizer) in `folder/base`, `count` LoRA tasks as one set in `folder/set`."""
    from hf_frozen import FrozenDecoderConfig, MultiEncoderModel

    torch.manual_seed(0)
    T5ForConditionalGeneration(T5Config(**MINI)).save_pretrained(folder / "base")
    word_tokenizer(MINI["vocab_size"]).save_pretrained(folder / "base")
    model = MultiEncoderModel.for_training(AutoModelForSeq2SeqLM.from_pretrained(folder / "base"),
                                           [f"task{i}" for i in range(count)],
                                           FrozenDecoderConfig(encoder_training="lora", lora_r=8))  # fmt: skip
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for task in model.task_configs:
            for tensor in model._task_tensors(task).values():
                tensor.add_(torch.randn(tensor.shape, generator=g) * 0.05)
    model.eval().save_pretrained(folder / "set")


def replica_memory(app: str) -> list[tuple[int, int]]:
    """(RSS, PSS) in bytes of each replica process of `app` (Ray names them `ray::ServeReplica:<app>:<deployment>`),
    the ingress left out. RSS counts the shared libraries' pages in every process that maps them; PSS divides them
    among those processes, so the PSS of all replicas sums to the memory they take together."""
    sizes = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            if title.startswith(f"ray::ServeReplica:{app}:") and "openai_api" not in title:
                lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]  # after the address range
                fields = dict(line.split(":", 1) for line in lines)
                sizes.append((int(fields["Rss"].split()[0]) * 1024, int(fields["Pss"].split()[0]) * 1024))
        except (OSError, KeyError, ValueError):
            continue
    return sizes


def available_memory() -> int:
    line = next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemAvailable"))
    return int(line.split()[1]) * 1024


def load(url: str, work: list[tuple[str, str]], max_seconds: float) -> dict:
    """The requests `work` ((task, prompt) pairs) from `CLIENTS` concurrent clients; latencies and throughput."""
    import requests

    deadline = time.monotonic() + max_seconds
    local = threading.local()  # one connection-keeping session per client thread

    def send(pair):
        if time.monotonic() > deadline:
            return None
        if not hasattr(local, "session"):
            local.session = requests.Session()
        start = time.perf_counter()
        answer = local.session.post(
            url, json={"model": pair[0], "prompt": pair[1], "max_tokens": NEW_TOKENS}, timeout=300
        )
        return time.perf_counter() - start, answer.status_code, pair, answer.json()

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        results = [r for r in pool.map(send, work) if r is not None]
    elapsed = time.perf_counter() - start
    latencies = sorted(r[0] for r in results)
    failed = [r for r in results if r[1] != 200]
    if failed:
        sys.exit(f"{len(failed)} requests failed, e.g. {failed[0][3]}")
    return {
        "requests": len(results),
        "seconds": elapsed,
        "requests_per_second": len(results) / elapsed,
        "p50_latency_s": statistics.median(latencies),
        "p99_latency_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "answers": {(r[2][0], r[2][1]): r[3]["choices"][0]["text"] for r in results},
    }


def run_setting(folder: Path, count: int, layout: str, total: int, max_seconds: float, reference) -> dict:
    from ray import serve

    from hf_frozen.serving import ReplicaOptions, build_app, run_server, task_catalog

    tasks = [f"task{i}" for i in range(count)]
    catalog = {name: task for name, task in task_catalog(sets=[str(folder / "set")]).items() if name in tasks}
    per_task = layout == "per task"
    options = ReplicaOptions(num_cpus=2 / count if per_task else SHARED_CPUS, max_tasks_per_replica=max(count, 1),
                             max_batch_size=32, batch_wait_timeout_s=0.02, deployment_per_task=per_task)  # fmt: skip
    started = time.perf_counter()
    run_server(build_app(catalog, str(folder / "base"), replicas=options), port=PORT, block=False, name="bench")
    url = f"http://127.0.0.1:{PORT}/v1/completions"
    rng = random.Random(0)
    prompts = [" ".join(f"w{rng.randrange(3, MINI['vocab_size'])}" for _ in range(PROMPT_WORDS)) for _ in range(64)]
    load(url, [(task, prompts[0]) for task in tasks], 600)  # warm-up: every task loaded once
    ready = time.perf_counter() - started
    deployments = [f"generation-{i}" for i in range(count)] if per_task else ["generation"]
    before = [serve.get_deployment_handle(d, "bench").stats.remote().result() for d in deployments]
    row = load(url, [(rng.choice(tasks), rng.choice(prompts)) for _ in range(total)], max_seconds)
    after = [serve.get_deployment_handle(d, "bench").stats.remote().result() for d in deployments]
    memory = replica_memory("bench")
    passes = sum(a["passes"] - b["passes"] for a, b in zip(after, before, strict=True))
    busy = sum(a["busy_seconds"] - b["busy_seconds"] for a, b in zip(after, before, strict=True))
    row.update(model_passes=passes, rows_per_pass=row["requests"] / max(passes, 1), replica_busy_seconds=busy)
    serve.delete("bench")
    sample = list(row.pop("answers").items())[:16]
    expected = reference([pair for pair, _ in sample])
    row.update(tasks=count, layout=layout, replicas=len(memory), replica_rss_bytes=sum(m[0] for m in memory),
               replica_pss_bytes=sum(m[1] for m in memory), start_and_warm_up_seconds=ready,
               identical_outputs=[text for _, text in sample] == expected, compared_outputs=len(sample))  # fmt: skip
    print(f"{layout} x{count}: {row['rows_per_pass']:.1f} rows per pass, replicas busy {busy:.1f}s of "
          f"{row['seconds']:.1f}s, {row['requests_per_second']:.2f} req/s, p50 {row['p50_latency_s']:.2f}s, "
          f"p99 {row['p99_latency_s']:.2f}s, PSS {row['replica_pss_bytes'] / 2**30:.2f} GiB in {row['replicas']} "
          f"replica(s), identical: {row['identical_outputs']}", file=sys.stderr)  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 10, 32, 100])
    parser.add_argument("--per_task_up_to", type=int, default=32,
                        help="the per-task layout runs only up to this many tasks (each replica is a process of its "
                             "own: 100 of them do not fit in this machine's 24 GiB)")  # fmt: skip
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--max_seconds", type=float, default=120)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "serving.json"))
    args = parser.parse_args()

    import ray

    from hf_frozen import MultiEncoderModel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_set(folder, max(args.tasks))
        in_process = MultiEncoderModel.from_pretrained(str(folder / "base"), str(folder / "set"))
        tokenizer = AutoTokenizer.from_pretrained(folder / "base")

        def reference(pairs):
            inputs = tokenizer([p for _, p in pairs], return_tensors="pt", padding=True)
            out = in_process.generate(
                **inputs, tasks=[t for t, _ in pairs], max_new_tokens=NEW_TOKENS, do_sample=False
            )
            return tokenizer.batch_decode(out, skip_special_tokens=True)

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        rows = []
        for count in args.tasks:
            for layout in ("shared", "per task"):
                if layout == "per task" and count > args.per_task_up_to:
                    continue
                if layout == "per task" and available_memory() < count * 0.45 * 2**30:
                    print(f"per task x{count}: skipped, {available_memory() / 2**30:.1f} GiB available, about "
                          f"{count * 0.45:.0f} GiB needed", file=sys.stderr)  # fmt: skip
                    continue
                rows.append(run_setting(folder, count, layout, args.requests, args.max_seconds, reference))
        ray.shutdown()
    result = {"model": "T5 d_model 256, 4+4 layers, vocab 32128 (random)", "tasks": "LoRA r=8 on q, v",
              "clients": CLIENTS, "new_tokens": NEW_TOKENS, "prompt_words": PROMPT_WORDS, "cpus": os.cpu_count(),
              "rows": rows}  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("| tasks | layout | replicas | req/s | p50 s | p99 s | memory (PSS) GiB | per replica GiB | identical |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['tasks']} | {r['layout']} | {r['replicas']} | {r['requests_per_second']:.2f} | "
            f"{r['p50_latency_s']:.2f} | {r['p99_latency_s']:.2f} | {r['replica_pss_bytes'] / 2**30:.2f} | "
            f"{r['replica_pss_bytes'] / max(r['replicas'], 1) / 2**30:.2f} | {r['identical_outputs']} "
            f"({r['compared_outputs']}) |"
        )
    shared = {r["tasks"]: r for r in rows if r["layout"] == "shared"}
    for r in rows:
        if r["layout"] == "per task":
            s = shared[r["tasks"]]
            print(
                f"\n{r['tasks']} tasks: shared/per-task throughput "
                f"{s['requests_per_second'] / r['requests_per_second']:.2f}x, "
                f"memory (PSS) {s['replica_pss_bytes'] / r['replica_pss_bytes']:.3f}x"
            )


if __name__ == "__main__":
    main()
