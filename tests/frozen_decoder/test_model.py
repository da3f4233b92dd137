"""`FrozenDecoderModel` in the Trainer: resuming, its state dict, wrapping, parameter counts."""

import pytest
import torch

from hf_frozen import FrozenDecoderConfig, get_frozen_model
from hf_frozen.config import CONFIG_NAME, WEIGHTS_NAME

from ..tiny_models import copy_task_dataset, tiny_model
from ..trainer_utils import make_trainer
from .helpers import assert_decoder_identical, snapshot


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_resume_from_checkpoint_matches_uninterrupted_run(family, tmp_path):
    config = FrozenDecoderConfig(train_encoder_embeddings=True)
    straight = get_frozen_model(tiny_model(family), config)
    make_trainer(straight, str(tmp_path / "straight"), max_steps=4).train()

    first = get_frozen_model(tiny_model(family), config)
    make_trainer(first, str(tmp_path / "resumed"), max_steps=4, save_strategy="steps", save_steps=2).train()
    checkpoint = tmp_path / "resumed" / "checkpoint-2"
    # The Trainer itself wrote the encoder-only artifact as the checkpoint's model, and no full model.
    assert (checkpoint / WEIGHTS_NAME).is_file() and (checkpoint / CONFIG_NAME).is_file()
    assert not (checkpoint / "model.safetensors").exists()

    resumed = get_frozen_model(tiny_model(family), config)
    decoder_before = snapshot(resumed.decoder_tensors())
    trainer = make_trainer(resumed, str(tmp_path / "resumed"), max_steps=4)
    trainer.train(resume_from_checkpoint=str(checkpoint))
    assert trainer.state.global_step == 4
    assert_decoder_identical(resumed, decoder_before)
    for name, tensor in straight.encoder_state_dict().items():
        torch.testing.assert_close(resumed.encoder_state_dict()[name], tensor, msg=f"{name} differs after resume")


def test_state_dict_has_no_tied_duplicates_and_loads_strictly():
    model = get_frozen_model(tiny_model("t5"), FrozenDecoderConfig())
    state = model.state_dict()
    assert "base_model.model.shared.weight" not in state or "base_model.model.lm_head.weight" not in state
    other = get_frozen_model(tiny_model("t5", seed=1), FrozenDecoderConfig())
    other.load_state_dict(state, strict=True)
    assert other.get_base_model().lm_head.weight is other.get_base_model().shared.weight, "ties survive loading"
    torch.testing.assert_close(other.get_base_model().lm_head.weight, model.get_base_model().lm_head.weight)


def test_wrapping_twice_is_refused():
    base = tiny_model("t5")
    get_frozen_model(base, FrozenDecoderConfig())
    with pytest.raises(ValueError, match="already carries an hf-frozen adapter"):
        get_frozen_model(base, FrozenDecoderConfig())


def test_trainer_keeps_dataset_columns(tmp_path):
    model = get_frozen_model(tiny_model("t5"), FrozenDecoderConfig())
    trainer = make_trainer(model, str(tmp_path))
    columns = trainer._remove_unused_columns(copy_task_dataset()).column_names
    assert sorted(columns) == ["attention_mask", "input_ids", "labels"]


def test_print_trainable_parameters(capsys):
    model = get_frozen_model(tiny_model("t5"), FrozenDecoderConfig(encoder_training="lora", lora_r=4))
    model.print_trainable_parameters()
    trainable, total = model.get_nb_trainable_parameters()
    assert f"trainable params: {trainable:,d} || all params: {total:,d}" in capsys.readouterr().out
    assert 0 < trainable < total
