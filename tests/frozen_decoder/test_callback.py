"""`FrozenDecoderCallback` catches what would change the frozen decoder."""

import pytest
import torch

from hf_frozen import FrozenDecoderConfig, get_frozen_model

from ..tiny_models import tiny_model
from ..trainer_utils import make_trainer


def test_callback_refuses_an_optimizer_over_frozen_weights(tmp_path):
    model = get_frozen_model(tiny_model("t5"), FrozenDecoderConfig())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)  # every weight, the decoder included
    trainer = make_trainer(model, str(tmp_path), optimizers=(optimizer, None))
    with pytest.raises(RuntimeError, match="optimizer holds .* frozen tensor"):
        trainer.train()


def test_callback_catches_a_decoder_changed_during_training(tmp_path):
    from transformers import TrainerCallback

    class EditDecoder(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            with torch.no_grad():
                model.get_base_model().decoder.final_layer_norm.weight.add_(1.0)

    from hf_frozen import FrozenDecoderCallback

    model = get_frozen_model(tiny_model("t5"), FrozenDecoderConfig())
    trainer = make_trainer(model, str(tmp_path), callbacks=[FrozenDecoderCallback(), EditDecoder()])
    with pytest.raises(RuntimeError, match="decoder changed"):
        trainer.train()
