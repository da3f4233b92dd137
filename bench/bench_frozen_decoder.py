#!/usr/bin/env python
"""Frozen decoder vs full fine-tuning on a t5-base-sized model: step time, peak memory, optimizer state, artifact.

Each method runs in its own fresh process (so peak memory is its own), on the same random-init model
(`T5Config` of t5-base: d_model 768, 12+12 layers, vocab 32,128), the same batches (source 128 tokens, target 32)
and the same AdamW (weight decay 0.01). Ratios are against full fine-tuning measured in the same run.

    python bench/bench_frozen_decoder.py                 # t5-base shapes, batch 8, 2 warm-up + 5 timed steps
    python bench/bench_frozen_decoder.py --size small    # quicker check

Writes bench/results/frozen_decoder.json and prints a Markdown table.
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

SIZES = {
    "base": dict(d_model=768, d_ff=3072, num_layers=12, num_heads=12, d_kv=64),
    "small": dict(d_model=512, d_ff=2048, num_layers=6, num_heads=8, d_kv=64),
}
METHODS = {
    "full fine-tuning": None,
    "frozen decoder (full encoder)": dict(encoder_training="full"),
    "frozen decoder (encoder LoRA r=16)": dict(encoder_training="lora", lora_r=16, lora_alpha=32),
}


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".safetensors"))


def run_one(method: str, size: str, batch_size: int, warmup: int, steps: int) -> dict:
    """Runs in a child process: build, train `warmup + steps` steps, measure, save."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from hf_frozen import FrozenDecoderConfig, get_frozen_model

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    model = T5ForConditionalGeneration(
        T5Config(
            vocab_size=32128, dropout_rate=0.1, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, **SIZES[size]
        )
    )
    if METHODS[method] is not None:
        model = get_frozen_model(model, FrozenDecoderConfig(**METHODS[method]))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.randint(2, 32128, (batch_size, 128), generator=g),
            torch.randint(2, 32128, (batch_size, 32), generator=g),
        )
        for _ in range(warmup + steps)
    ]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for i, (source, target) in enumerate(batches):
        start = time.perf_counter()
        loss = model(input_ids=source, labels=target).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    optimizer_bytes = sum(
        t.numel() * t.element_size()
        for state in optimizer.state.values()
        for t in state.values()
        if torch.is_tensor(t)
    )
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        artifact = folder_bytes(folder)
    return {
        "method": method,
        "trainable_params": sum(p.numel() for p in params),
        "step_seconds_median": statistics.median(times),
        "step_seconds_all": times,
        "peak_rss_bytes": peak,
        "rss_before_training_bytes": rss_before,
        "optimizer_state_bytes": optimizer_bytes,
        "artifact_bytes": artifact,
    }


def flop_floor(size: str, src: int = 128, tgt: int = 32) -> float:
    """(3E + 2D) / (3E + 3D): frozen decoder weights skip their weight-gradient matmuls (1 of 3 units of work)."""
    s = SIZES[size]
    d, ff, layers, vocab = s["d_model"], s["d_ff"], s["num_layers"], 32128
    attn = 4 * d * (s["num_heads"] * s["d_kv"])
    enc = src * layers * (attn + 2 * d * ff)
    # Decoder: self-attention and FFN over target tokens, cross-attention Q/O over target and K/V over source,
    # and the LM head over target tokens.
    dec = tgt * layers * (attn + 2 * d * ff) + layers * (tgt + src) * attn / 2 + tgt * d * vocab
    return (3 * enc + 2 * dec) / (3 * enc + 3 * dec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="base")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "frozen_decoder.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(run_one(args.child, args.size, args.batch_size, args.warmup, args.steps)))
        return

    results = []
    for method in METHODS:
        cmd = [sys.executable, __file__, "--child", method, "--size", args.size, "--batch-size", str(args.batch_size),
               "--warmup", str(args.warmup), "--steps", str(args.steps)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"{method} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"done: {method}", file=sys.stderr)

    full = results[0]
    floor = flop_floor(args.size)
    lines = [
        f"t5-{args.size} shapes, batch {args.batch_size}, source 128 / target 32, {args.steps} timed steps "
        f"after {args.warmup} warm-up, {os.cpu_count()} CPU threads; FLOP floor for step time: {floor:.2f}x",
        "",
        "| method | trainable params | step time (s) | step time | peak RSS | optimizer state | artifact |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['method']} | {r['trainable_params'] / 1e6:.1f} M | {r['step_seconds_median']:.2f} | "
            f"{r['step_seconds_median'] / full['step_seconds_median']:.2f}x | "
            f"{r['peak_rss_bytes'] / 2**30:.2f} GiB ({r['peak_rss_bytes'] / full['peak_rss_bytes']:.2f}x) | "
            f"{r['optimizer_state_bytes'] / 2**20:.0f} MiB "
            f"({r['optimizer_state_bytes'] / full['optimizer_state_bytes']:.2f}x) | "
            f"{r['artifact_bytes'] / 2**20:.0f} MiB ({r['artifact_bytes'] / full['artifact_bytes']:.2f}x) |"
        )
    table = "\n".join(lines)
    print(table)
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump({"args": vars(args), "flop_floor": floor, "results": results, "table": table}, f, indent=2)


if __name__ == "__main__":
    main()
