"""The frozen decoder in real 2-process runs: plain DDP, DeepSpeed ZeRO-2/3 (with and without offload), Accelerate.

Each engine is started the way users start it (`torchrun`, `deepspeed`, `accelerate launch`) on the CPU with the
gloo backend, with the configs shipped in `examples/deepspeed/`. Every run trains 4 steps and checkpoints at
steps 2 and 4; a second run resumes from step 2 and must end where the first one did.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_frozen import AutoFrozenModel
from hf_frozen.config import WEIGHTS_NAME
from hf_frozen.utils.fingerprint import fingerprint_tensors

from .tiny_models import tiny_model

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "examples" / "deepspeed"
WORKER = Path(__file__).resolve().parent / "distributed_worker.py"
START_LOG = "Frozen decoder: training"

pytest.importorskip("deepspeed")

# engine -> (launcher, engine-specific script arguments)
ENGINES = {
    "ddp": ("torchrun", ["--use_cpu", "--ddp_backend", "gloo"]),
    "zero2": ("deepspeed", ["--deepspeed", str(CONFIGS / "zero2.json")]),
    "zero2_offload": ("torchrun", ["--deepspeed", str(CONFIGS / "zero2_offload.json")]),
    "zero3": ("deepspeed", ["--deepspeed", str(CONFIGS / "zero3.json")]),
    "zero3_offload": ("torchrun", ["--deepspeed", str(CONFIGS / "zero3_offload.json")]),
    "accelerate_zero2": ("accelerate", ["--ddp_backend", "gloo"]),
    # DDP on a machine without GPUs through `accelerate launch`: `--multi_gpu` with gloo (docs/distributed.md;
    # `accelerate launch --cpu --num_processes 2` starts accelerate's multi-CPU mode, which transformers' Trainer
    # does not set up).
    "accelerate_ddp_cpu": ("accelerate_cpu", ["--use_cpu", "--ddp_backend", "gloo"]),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(launcher: str, script_args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    port = str(free_port())
    prefix = {
        "torchrun": ["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", port],
        "deepspeed": ["-m", "deepspeed.launcher.runner", "--num_accelerators", "2", "--master_port", port],
        "accelerate": ["-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "accelerate_zero2.yaml"),
                       "--main_process_port", port],
        "accelerate_cpu": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--main_process_port", port],
    }[launcher]  # fmt: skip
    done = subprocess.run(
        [sys.executable, *prefix, str(WORKER), *script_args],
        cwd=cwd, capture_output=True, text=True, check=False, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, f"{launcher} run failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done


def run(
    engine: str, folder: Path, base: Path, resume_from: Path | None = None, extra_args: tuple[str, ...] = ()
) -> tuple[list[dict], str]:
    launcher, engine_args = ENGINES[engine]
    engine_args = [*engine_args, *extra_args]
    folder.mkdir()
    args = [
        "--base", str(base), "--report_dir", str(folder), "--output_dir", str(folder / "out"),
        "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--per_device_train_batch_size", "4",
        "--learning_rate", "1e-2", "--weight_decay", "0.1", "--lr_scheduler_type", "constant",
        "--logging_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--seed", "0",
        "--save_only_model", "false", "--push_to_hub", "--hub_model_id", "me/frozen", "--hub_strategy", "every_save",
        "--fake_hub", str(folder / "hub"), *engine_args,
    ]  # fmt: skip
    if "--deepspeed" in engine_args:  # see `use_deepspeed_on_cpu` in the worker
        (folder / "accelerator.json").write_text(json.dumps({"use_configured_state": True}))
        args += ["--accelerator_config", str(folder / "accelerator.json")]
    if resume_from is not None:
        args += ["--resume_from_checkpoint", str(resume_from)]
    done = launch(launcher, args, cwd=ROOT)
    reports = sorted((json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)), key=lambda r: r["rank"])
    return reports, done.stdout + done.stderr


def generate_in_fresh_process(artifact: Path, prompt: list[list[int]]) -> list[list[int]]:
    code = (
        "import json, sys, torch; from hf_frozen import AutoFrozenModel; "
        "m = AutoFrozenModel.from_pretrained(sys.argv[1]).eval(); "
        "print(json.dumps(m.generate(input_ids=torch.tensor(json.loads(sys.argv[2])), max_new_tokens=8, "
        "do_sample=False, num_beams=1).tolist()))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(artifact), json.dumps(prompt)], capture_output=True,
                          text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("base") / "t5"
    tiny_model("t5").save_pretrained(folder)
    return folder


# The CPU-offload engines are the slowest (about 140 s of the default run's 13 minutes): a CI step of their own,
# `make test-offload`, runs them.
@pytest.mark.parametrize(
    "engine", [pytest.param(e, marks=pytest.mark.offload) if e.endswith("_offload") else e for e in ENGINES]
)
def test_frozen_decoder_two_processes(engine, base, tmp_path):
    reports, log = run(engine, tmp_path / "run", base)
    sharded = engine not in ("ddp", "accelerate_ddp_cpu")  # the others run DeepSpeed
    for report in reports:
        assert report["world_size"] == 2 and report["global_step"] == 4
        assert report["wrapper"] == ("DeepSpeedEngine" if sharded else "DistributedDataParallel")
        assert report["partitioned"] == engine.startswith("zero3")
        assert report["decoder_identical"], "every decoder-side tensor is bit-identical after training"
        assert report["encoder_after"] != report["encoder_before"]
        # The optimizer works on exactly the trainable parameters, and holds state for nothing else.
        assert report["optimized_tensors"] == report["trainable_tensors"]
        if sharded:  # ZeRO shards the state: each process holds part of it, both together hold all (plus padding)
            assert report["optimizer_state_numel"] < report["trainable_numel"]
        else:
            assert report["optimizer_state_numel"] == report["trainable_numel"]
    if sharded:
        total = sum(r["optimizer_state_numel"] for r in reports)
        assert reports[0]["trainable_numel"] <= total <= reports[0]["trainable_numel"] + 1024
    assert reports[0]["encoder_after"] == reports[1]["encoder_after"], "the processes agree on the encoder"
    assert reports[0]["generated"] == reports[1]["generated"]
    # The callbacks act once: one start-of-training log line, artifacts written by the main process only.
    assert log.count(START_LOG) == 1, log[-3000:]
    # `save_model("final")` with `push_to_hub` also pushes, saving into output_dir ("out") first, as the Trainer does.
    assert reports[0]["artifact_writes"] == ["checkpoint-2", "checkpoint-4", "final", "out"]
    assert reports[1]["artifact_writes"] == []
    # The Trainer saved the encoder-only artifact as the model: no full model, and no DeepSpeed shards from
    # `save_model` (DeepSpeed's resumable state lives in the checkpoints only).
    out = tmp_path / "run" / "out"
    for folder in ("checkpoint-2", "checkpoint-4", "final"):
        assert (out / folder / WEIGHTS_NAME).is_file() and not (out / folder / "model.safetensors").exists()
    assert sorted(p.name for p in (out / "final").iterdir() if p.name.startswith(("global_step", "latest"))) == []
    assert (
        fingerprint_tensors(AutoFrozenModel.from_pretrained(out / "final").encoder_state_dict())
        == reports[0]["encoder_after"]
    )

    # The Trainer pushed after each save (`hub_strategy="every_save"`): the repo loads as the trained encoder.
    pushed = AutoFrozenModel.from_pretrained(tmp_path / "run" / "hub" / "me" / "frozen")
    assert fingerprint_tensors(pushed.encoder_state_dict()) == reports[0]["encoder_after"]

    # The encoder-only artifact in the last checkpoint is complete (gathered under ZeRO-3) and, loaded in a
    # fresh single process onto the base model, generates exactly what the trained model generated.
    artifact = tmp_path / "run" / "out" / "checkpoint-4"
    loaded = AutoFrozenModel.from_pretrained(artifact)
    assert fingerprint_tensors(loaded.encoder_state_dict()) == reports[0]["encoder_after"]
    assert generate_in_fresh_process(artifact, [[5, 17, 42, 8, 23, 61, 9, 30]]) == reports[0]["generated"]

    # Resuming from the step-2 checkpoint carries on to the same end point.
    resumed, _ = run(engine, tmp_path / "resumed", base, resume_from=tmp_path / "run" / "out" / "checkpoint-2")
    assert all(r["global_step"] == 4 for r in resumed)
    if "offload" not in engine:
        assert resumed[0]["encoder_after"] == reports[0]["encoder_after"]
    else:  # DeepSpeed's CPU Adam is not bit-reproducible across a restart: seen 2.5e-7, against 2e-2 of training
        ends = [load_file(tmp_path / r / "out" / "checkpoint-4" / WEIGHTS_NAME) for r in ("run", "resumed")]
        middle = load_file(tmp_path / "run" / "out" / "checkpoint-2" / WEIGHTS_NAME)
        assert max((ends[0][k] - ends[1][k]).abs().max().item() for k in middle) < 1e-5
        assert max((ends[0][k] - middle[k]).abs().max().item() for k in middle) > 1e-3


@pytest.mark.parametrize("engine", ["ddp", "zero2"])
def test_bf16_decoder_with_an_fp32_encoder_two_processes(engine, base, tmp_path):
    """Mixed dtypes in one engine: a bf16 frozen decoder (`decoder_dtype`) and an fp32 encoder and optimizer."""
    reports, _ = run(engine, tmp_path / "run", base, extra_args=("--decoder_dtype", "bfloat16"))
    for report in reports:
        assert report["global_step"] == 4 and report["decoder_dtypes"] == ["torch.bfloat16"]
        assert report["trainable_dtypes"] == ["torch.float32"]
        assert report["decoder_identical"] and report["encoder_after"] != report["encoder_before"]
        assert report["optimized_tensors"] == report["trainable_tensors"]
    assert reports[0]["encoder_after"] == reports[1]["encoder_after"]
    # Loaded in a fresh process onto the fp32 base, the artifact casts the decoder again and generates the same.
    artifact = tmp_path / "run" / "out" / "checkpoint-4"
    assert generate_in_fresh_process(artifact, [[5, 17, 42, 8, 23, 61, 9, 30]]) == reports[0]["generated"]


# -- DecT: the backbone queries are shared among the processes ----------------------------------------------------


def test_dect_extraction_split_across_processes(tmp_path):
    from .tiny_dect import make, sentiment

    port = str(free_port())
    worker = Path(__file__).resolve().parent / "dect_distributed_worker.py"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", port, str(worker),
         str(tmp_path)], cwd=ROOT, capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-6000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    examples = 16 + 1  # the training set and the empty calibration input
    for report in reports:
        assert report["world_size"] == 2 and report["trainer_wrapper"] == "DistributedDataParallel"
        assert 0 < report["fit_queries"] < examples, "each process queried a share"
        assert report["queries_after_fit"] == 0, "every process holds every answer"
        assert report["global_step"] == 30
    assert sum(r["fit_queries"] for r in reports) == examples, "one query per example overall"
    assert sum(r["trainer_queries"] for r in reports) == examples
    for key in ("features", "fit_head", "trainer_head"):
        assert reports[0][key] == reports[1][key], f"the processes agree on {key}"
    assert (done.stdout + done.stderr).count("DecT head trained in the Trainer") == 1, "logged by the main process"

    # Two processes with 8 examples each take the same full-batch steps as one process with all 16.
    reference = make("causal_lm", zero_shot_weight=0.5, steps=30, head="prototype")  # the Trainer ran 30 steps
    reference.fit(sentiment(16))
    head = load_file(tmp_path / "head.safetensors")
    for name, tensor in reference.head.state_dict().items():
        torch.testing.assert_close(head[name], tensor, atol=1e-4, rtol=1e-4, msg=name)
