"""The example scripts, run as users run them, on a tiny model and local files."""

import json
import os
import subprocess
import sys

from hf_frozen import AutoFrozenModel

from .tiny_models import save_tiny_t5_with_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_jsonl(path, n, seed):
    import random

    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            words = [f"w{rng.randrange(3, 99)}" for _ in range(6)]
            f.write(json.dumps({"text": " ".join(words), "summary": " ".join(reversed(words))}) + "\n")


def test_run_frozen_decoder_trains_saves_and_evaluates(tmp_path):
    save_tiny_t5_with_tokenizer(tmp_path / "base")
    write_jsonl(tmp_path / "train.jsonl", 48, seed=0)
    write_jsonl(tmp_path / "valid.jsonl", 8, seed=1)
    out = tmp_path / "out"
    args = [
        "--model_name_or_path", str(tmp_path / "base"), "--train_file", str(tmp_path / "train.jsonl"),
        "--validation_file", str(tmp_path / "valid.jsonl"), "--max_target_length", "8",
        "--encoder_training", "lora", "--lora_r", "4", "--output_dir", str(out), "--do_train", "--do_eval",
        "--predict_with_generate", "--max_steps", "4", "--per_device_train_batch_size", "8", "--save_steps", "2",
        "--learning_rate", "1e-2", "--report_to", "none", "--use_cpu",
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "run_frozen_decoder.py"), *args],
        capture_output=True, text=True, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert "trainable params:" in done.stdout
    results = json.loads((out / "eval_results.json").read_text())
    assert 0.0 <= results["eval_token_f1"] <= 1.0 and "eval_exact_match" in results
    assert len((out / "generated_predictions.txt").read_text().splitlines()) == 8
    assert (out / "checkpoint-2" / "adapter_model.safetensors").is_file()
    assert results["eval_num_beams"] == 3, "beam search with the paper's 3 beams is the default"
    model = AutoFrozenModel.from_pretrained(out)
    assert model.frozen_config.encoder_training == "lora"
    assert model.frozen_config.base_model_name_or_path == str(tmp_path / "base")
