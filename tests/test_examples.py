"""The example scripts, run as users run them, on a tiny model and local files."""

import json
import os
import subprocess
import sys

from hf_frozen import AutoFrozenModel

from .test_distributed import free_port
from .tiny_models import save_tiny_t5_with_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_jsonl(path, n, seed):
    import random

    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            words = [f"w{rng.randrange(3, 99)}" for _ in range(6)]
            f.write(json.dumps({"text": " ".join(words), "summary": " ".join(reversed(words))}) + "\n")


def run_example(tmp_path, launcher: list[str], extra: list[str], out: str = "out") -> subprocess.CompletedProcess:
    args = [
        "--model_name_or_path", str(tmp_path / "base"), "--train_file", str(tmp_path / "train.jsonl"),
        "--validation_file", str(tmp_path / "valid.jsonl"), "--test_file", str(tmp_path / "test.jsonl"),
        "--max_target_length", "8", "--encoder_training", "lora", "--lora_r", "4", "--output_dir",
        str(tmp_path / out), "--do_eval", "--do_predict", "--predict_with_generate",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "4", "--save_steps", "2",
        "--learning_rate", "1e-2", "--report_to", "none", "--use_cpu", *extra,
    ]  # fmt: skip
    done = subprocess.run([sys.executable, *launcher, os.path.join(ROOT, "examples", "run_frozen_decoder.py"), *args],
                          capture_output=True, text=True, cwd=tmp_path, check=False, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def write_data(tmp_path):
    save_tiny_t5_with_tokenizer(tmp_path / "base")
    write_jsonl(tmp_path / "train.jsonl", 48, seed=0)
    write_jsonl(tmp_path / "valid.jsonl", 7, seed=1)  # 7 rows: uneven over 2 processes and batches of 4
    write_jsonl(tmp_path / "test.jsonl", 5, seed=2)


def test_run_frozen_decoder_trains_saves_evaluates_and_resumes(tmp_path):
    write_data(tmp_path)
    out = tmp_path / "out"
    done = run_example(tmp_path, [], ["--do_train", "--max_steps", "2"])
    assert "trainable params:" in done.stdout
    results = json.loads((out / "eval_results.json").read_text())
    assert {"eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_exact_match"} <= set(results)
    assert all(0.0 <= results[k] <= 100.0 for k in ("eval_rouge1", "eval_rougeL"))
    assert results["eval_num_beams"] == 3, "beam search with the paper's 3 beams is the default"
    assert len((out / "generated_predictions.txt").read_text().splitlines()) == 5
    assert (out / "checkpoint-2" / "adapter_model.safetensors").is_file()
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    model = AutoFrozenModel.from_pretrained(out)
    assert model.frozen_config.encoder_training == "lora"
    assert model.frozen_config.base_model_name_or_path == str(tmp_path / "base")

    # The same command with more steps finds checkpoint-2 and resumes from it, as transformers' examples do.
    done = run_example(tmp_path, [], ["--do_train", "--max_steps", "4", "--log_level", "info"])
    assert "Checkpoint detected, resuming training at" in done.stdout + done.stderr
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4


def test_run_frozen_decoder_evaluates_on_two_processes(tmp_path):
    """Two processes each generate for part of the rows (7 evaluation rows: one process gets a padded share);
    the gathered predictions are cut to the dataset and scored against their own references, so metrics and
    predictions equal those of one process."""
    write_data(tmp_path)
    torchrun = ["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port())]
    run_example(tmp_path, torchrun, ["--ddp_backend", "gloo"], out="two")
    run_example(tmp_path, [], [], out="one")
    results = [json.loads((tmp_path / out / "eval_results.json").read_text()) for out in ("two", "one")]
    for key in ("eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_exact_match"):
        assert results[0][key] == results[1][key], key
    predictions = [(tmp_path / out / "generated_predictions.txt").read_text() for out in ("two", "one")]
    assert predictions[0] == predictions[1] and len(predictions[0].splitlines()) == 5


def write_sentiment_csv(path, n, seed, labels=True):
    from .tiny_dect import sentiment

    data = sentiment(n, seed=seed)
    (data if labels else data.remove_columns("label")).to_csv(str(path), index=False)


def run_dect_example(tmp_path, extra: list[str]) -> subprocess.CompletedProcess:
    from .tiny_dect import TEMPLATE, WORDS

    args = [
        "--model_name_or_path", str(tmp_path / "backbone"), "--train_file", str(tmp_path / "train.csv"),
        "--validation_file", str(tmp_path / "valid.csv"), "--test_file", str(tmp_path / "test.csv"),
        "--template", TEMPLATE, "--label_words", *WORDS, "--labels", "neg", "pos", "--zero_shot_weight", "0.5",
        "--output_dir", str(tmp_path / "out"), "--per_device_train_batch_size", "16", "--learning_rate", "0.01",
        "--lr_scheduler_type", "constant", "--save_steps", "5", "--report_to", "none", "--use_cpu", *extra,
    ]  # fmt: skip
    done = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "run_dect.py"), *args],
                          capture_output=True, text=True, cwd=tmp_path, check=False, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def test_run_dect_trains_saves_evaluates_predicts_and_resumes(tmp_path):
    from . import tiny_dect

    tiny_dect.backbone("causal_lm").save_pretrained(tmp_path / "backbone")
    tiny_dect.tokenizer().save_pretrained(tmp_path / "backbone")
    write_sentiment_csv(tmp_path / "train.csv", 32, seed=0)
    write_sentiment_csv(tmp_path / "valid.csv", 12, seed=1)
    write_sentiment_csv(tmp_path / "test.csv", 6, seed=2, labels=False)
    out = tmp_path / "out"

    # The prototype head (trained by the Trainer's steps, so that resuming has steps to resume).
    run_dect_example(tmp_path, ["--do_train", "--do_eval", "--do_predict", "--max_steps", "10", "--head", "prototype"])
    results = json.loads((out / "eval_results.json").read_text())
    assert {"eval_accuracy", "eval_macro_f1", "eval_prompt_accuracy"} <= set(results)
    assert json.loads((out / "train_results.json").read_text())["backbone_queries"] == 32 + 1, (
        "one per example + the empty input"
    )
    predictions = (out / "predict_results.txt").read_text().splitlines()
    assert len(predictions) == 7 and {line.split("\t")[1] for line in predictions[1:]} <= {"neg", "pos"}
    assert (out / "checkpoint-5" / "adapter_model.safetensors").is_file()
    dect = AutoFrozenModel.from_pretrained(out)  # the backbone recorded: the folder given as the model
    assert dect.record.steps == 10
    test_texts = tiny_dect.sentiment(6, seed=2)["text"]
    assert [line.split("\t")[1] for line in predictions[1:]] == dect.predict(test_texts)

    # Run again into the same folder with more steps: it resumes from checkpoint-10.
    done = run_dect_example(
        tmp_path, ["--do_train", "--max_steps", "15", "--log_level", "info", "--head", "prototype"]
    )
    assert "resuming training at" in done.stdout + done.stderr
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 15
    assert AutoFrozenModel.from_pretrained(out).record.steps == 15

    # --do_eval alone evaluates the head saved in --output_dir.
    (out / "eval_results.json").unlink()
    run_dect_example(tmp_path, ["--do_eval"])
    assert "eval_accuracy" in json.loads((out / "eval_results.json").read_text())
