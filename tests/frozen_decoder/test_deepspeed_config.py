"""DeepSpeed configs that would change the decoder are refused before training starts."""

from __future__ import annotations

import pytest
import torch

from hf_frozen import FrozenDecoderConfig, MultiEncoderModel, get_frozen_model

from ..tiny_models import tiny_model
from ..trainer_utils import make_trainer


def ds_config(**sections) -> dict:
    config = {"train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
              "zero_optimization": {"stage": 2}}  # fmt: skip
    config.update(sections)
    return config


@pytest.mark.parametrize("key", ["bf16", "fp16"])
def test_half_precision_config_refused_for_fp32_decoder(key, tmp_path):
    model = get_frozen_model(tiny_model("t5"), FrozenDecoderConfig())
    with pytest.raises(ValueError, match=rf"`{key}\.enabled` is true.*decoder_dtype="):
        make_trainer(model, str(tmp_path), deepspeed=ds_config(**{key: {"enabled": True}}), use_cpu=False)


def test_half_precision_config_accepted_when_decoder_already_half(tmp_path):
    model = get_frozen_model(tiny_model("t5").to(torch.bfloat16), FrozenDecoderConfig())
    trainer = make_trainer(model, str(tmp_path), deepspeed=ds_config(bf16={"enabled": True}), use_cpu=False)
    assert trainer.args.hf_deepspeed_config.config["bf16"]["enabled"] is True


def test_zero3_gather_on_save_required_for_a_frozen_decoder_model_refused_for_multi_encoder_training():
    from hf_frozen.frozen_decoder.deepspeed_config import check_deepspeed_config

    model = get_frozen_model(tiny_model("t5"), FrozenDecoderConfig())
    config = ds_config(zero_optimization={"stage": 3, "stage3_gather_16bit_weights_on_model_save": False})
    with pytest.raises(ValueError, match=r"stage3_gather_16bit_weights_on_model_save` is False.*Set it to true"):
        check_deepspeed_config(config, model)
    del config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]
    with pytest.raises(ValueError, match=r"is None"):
        check_deepspeed_config(config, model)
    config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    check_deepspeed_config(config, model)

    multi = MultiEncoderModel.for_training(tiny_model("t5"), ["a", "b"])
    with pytest.raises(ValueError, match=r"tied tensors .* Set it to false"):
        check_deepspeed_config(config, multi)
    config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = False
    check_deepspeed_config(config, multi)


def test_compression_training_refused():
    from hf_frozen.frozen_decoder.deepspeed_config import check_deepspeed_config

    model = get_frozen_model(tiny_model("t5"), FrozenDecoderConfig())
    config = ds_config(compression_training={"weight_quantization": {"shared_parameters": {"enabled": True}}})
    with pytest.raises(ValueError, match=r"compression_training\.weight_quantization\.shared_parameters\.enabled"):
        check_deepspeed_config(config, model)
