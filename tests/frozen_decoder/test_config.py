"""`FrozenDecoderConfig`: bad values are named; it parses next to `Seq2SeqTrainingArguments`."""

import json

import pytest
from transformers import HfArgumentParser, Seq2SeqTrainingArguments

from hf_frozen import FrozenDecoderConfig


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"encoder_training": "decoder"}, "encoder_training"),
        ({"lora_r": 0}, "lora_r"),
        ({"lora_alpha": -1}, "lora_alpha"),
        ({"lora_dropout": 1.5}, "lora_dropout"),
        ({"lora_target_modules": []}, "lora_target_modules"),
        ({"train_encoder_embeddings": "yes"}, "train_encoder_embeddings"),
    ],
)
def test_bad_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"`{field}`") as err:
        FrozenDecoderConfig(**kwargs)
    assert repr(next(iter(kwargs.values()))) in str(err.value), "the error echoes the bad value"


def test_parses_with_hf_argument_parser_next_to_training_arguments(tmp_path):
    parser = HfArgumentParser((FrozenDecoderConfig, Seq2SeqTrainingArguments))
    config, args = parser.parse_args_into_dataclasses(
        [
            "--encoder_training", "lora", "--lora_r", "4", "--lora_target_modules", "q", "k",
            "--train_encoder_embeddings", "--output_dir", str(tmp_path), "--num_train_epochs", "2",
        ]
    )  # fmt: skip
    assert config == FrozenDecoderConfig(
        encoder_training="lora", lora_r=4, lora_target_modules=["q", "k"], train_encoder_embeddings=True
    )
    assert args.num_train_epochs == 2
    # ... and from one JSON file, as transformers' example scripts allow.
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"encoder_training": "full", "output_dir": str(tmp_path)}))
    config, _ = parser.parse_json_file(str(path))
    assert config.encoder_training == "full"
    with pytest.raises(SystemExit):
        parser.parse_args_into_dataclasses(["--encoder_training", "decoder", "--output_dir", str(tmp_path)])


@pytest.mark.parametrize("value", [2.5, "8", float("inf"), True])
def test_lora_rank_must_be_a_positive_integer(value):
    with pytest.raises(ValueError, match="`lora_r` must be a positive integer"):
        FrozenDecoderConfig(encoder_training="lora", lora_r=value)
