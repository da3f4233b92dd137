import json
import logging

import pytest

import hf_frozen
from hf_frozen import DecTConfig, FrozenDecoderConfig
from hf_frozen.config import CONFIG_NAME, RECORD_NAME, read_json_object
from hf_frozen.frozen_decoder import FrozenDecoderRecord


def test_defaults_and_round_trip(tmp_path):
    config = FrozenDecoderConfig(encoder_training="lora", lora_r=4, base_model_name_or_path="t5-small")
    config.save_pretrained(tmp_path)
    text = (tmp_path / CONFIG_NAME).read_text()
    data = json.loads(text)
    assert list(data) == sorted(data), "keys are written sorted"
    assert data["adapter_type"] == "frozen_decoder"
    assert data["hf_frozen_version"] == hf_frozen.__version__
    loaded = FrozenDecoderConfig.from_pretrained(tmp_path)
    assert loaded == config


def test_fingerprints_survive_round_trip_but_are_not_arguments(tmp_path):
    # Fingerprints are what applying the adapter learned: they live in the record, beside the config.
    record = FrozenDecoderRecord(decoder_fingerprint="ab" * 32)
    record.save_pretrained(tmp_path)
    assert FrozenDecoderRecord.from_dict(read_json_object(tmp_path / RECORD_NAME)).decoder_fingerprint == "ab" * 32
    with pytest.raises(TypeError):
        FrozenDecoderConfig(decoder_fingerprint="abc")


def test_unknown_field_from_same_version_is_an_error(tmp_path):
    data = FrozenDecoderConfig().to_dict()
    data["lora_rank"] = 8  # a typo of lora_r
    (tmp_path / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="lora_rank"):
        FrozenDecoderConfig.from_pretrained(tmp_path)


def test_unknown_field_from_newer_version_is_dropped_with_warning(tmp_path, caplog):
    data = FrozenDecoderConfig(lora_r=4).to_dict()
    data["hf_frozen_version"] = "99.0.0"
    data["some_future_option"] = True
    (tmp_path / CONFIG_NAME).write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        config = FrozenDecoderConfig.from_pretrained(tmp_path)
    assert config.lora_r == 4
    assert "some_future_option" in caplog.text


def test_other_adapter_type_is_refused(tmp_path):
    data = FrozenDecoderConfig().to_dict()
    data["adapter_type"] = "dect"
    (tmp_path / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="`dect` adapter"):
        FrozenDecoderConfig.from_pretrained(tmp_path)


def test_not_json(tmp_path):
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        FrozenDecoderConfig.from_pretrained(tmp_path)


def test_missing_folder_or_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=CONFIG_NAME):
        FrozenDecoderConfig.from_pretrained(tmp_path)


def test_one_argument_parser_for_both_configs_and_the_training_arguments(tmp_path):
    from transformers import HfArgumentParser, Seq2SeqTrainingArguments

    parser = HfArgumentParser((FrozenDecoderConfig, DecTConfig, Seq2SeqTrainingArguments))  # raises on any clash
    argv = ["--output_dir", str(tmp_path), "--learning_rate", "3e-4", "--seed", "7", "--encoder_training", "lora",
            "--head_learning_rate", "0.05", "--head_seed", "3", "--label_words", "bad", "good",
            "--base_model_name_or_path", "t5-small", "--backbone_name_or_path", "SmolLM2"]  # fmt: skip
    frozen, dect, training = parser.parse_args_into_dataclasses(argv)
    assert (training.learning_rate, training.seed) == (3e-4, 7)
    assert (dect.head_learning_rate, dect.head_seed, dect.label_words) == (0.05, 3, [["bad"], ["good"]])
    assert (frozen.encoder_training, frozen.base_model_name_or_path) == ("lora", "t5-small")
    assert dect.backbone_name_or_path == "SmolLM2"

    (tmp_path / "args.json").write_text(json.dumps({"output_dir": str(tmp_path), "learning_rate": 3e-4,
                                                    "head_learning_rate": 0.05, "label_words": ["bad", "good"],
                                                    "lora_r": 4}))  # fmt: skip
    frozen, dect, training = parser.parse_json_file(str(tmp_path / "args.json"))
    assert (training.learning_rate, dect.head_learning_rate, frozen.lora_r) == (3e-4, 0.05, 4)


def test_dect_names_before_0_2_still_work_with_a_warning():
    with pytest.warns(FutureWarning, match="`learning_rate` is now `head_learning_rate`"):
        config = DecTConfig(label_words=["bad", "good"], learning_rate=0.2, seed=5, cache_dir="c")
    assert (config.head_learning_rate, config.head_seed, config.query_cache_dir) == (0.2, 5, "c")
    # A config file written under the old names reads without warning.
    old = {**DecTConfig(label_words=["bad", "good"]).to_dict(), "learning_rate": 0.3, "seed": 2}
    del old["head_learning_rate"], old["head_seed"]
    assert (DecTConfig.from_dict(old).head_learning_rate, DecTConfig.from_dict(old).head_seed) == (0.3, 2)
