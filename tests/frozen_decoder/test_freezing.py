"""The frozen-decoder invariant on every supported family, after real Trainer optimizer steps."""

import dataclasses

import pytest
import torch
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, TrainingArguments

from hf_frozen import FrozenDecoderConfig, get_frozen_model

from ..tiny_models import FAMILIES, tiny_model
from ..trainer_utils import make_trainer
from .helpers import MODES, assert_decoder_identical, snapshot


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_only_encoder_side_trains(family, mode):
    model = get_frozen_model(tiny_model(family), MODES[mode])
    trainable = [n for n, p in model.get_base_model().named_parameters() if p.requires_grad]
    assert trainable, "something must train"
    assert all(n.startswith(model.encoder_prefix) for n in trainable)
    assert not any(t.requires_grad for t in model.decoder_tensors().values())
    assert model.artifact_keys == sorted(trainable)
    if mode.startswith("lora"):
        assert any("lora_A" in n for n in trainable)
        assert all("lora_" in n or "embed_tokens" in n for n in trainable)
    embedding = model.get_base_model().get_encoder().get_input_embeddings().weight
    assert embedding.requires_grad == mode.endswith("embeddings")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_trainer_steps_leave_decoder_bit_identical(family, mode, tmp_path):
    model = get_frozen_model(tiny_model(family), MODES[mode])
    decoder_before = snapshot(model.decoder_tensors())
    encoder_before = snapshot(model.encoder_state_dict())

    trainer = make_trainer(model, str(tmp_path))
    result = trainer.train()

    assert result.global_step == 3
    assert_decoder_identical(model, decoder_before)
    assert model.decoder_fingerprint() == model.record.decoder_fingerprint
    after = model.encoder_state_dict()
    changed = [n for n in encoder_before if not torch.equal(encoder_before[n], after[n])]
    # LoRA's B matrices start at zero and A only moves once B does, so some tensors may lag; most must move.
    assert len(changed) >= len(after) // 2, f"the encoder barely trained: {len(changed)}/{len(after)} changed"
    # The optimizer held state for the trainable tensors and nothing else.
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in trainer.optimizer.state} <= trainable
    assert len(trainer.optimizer.state) == len(trainable)


@pytest.mark.parametrize("mode", ["full", "lora"])
@pytest.mark.parametrize("family", ["t5", "bart"])
def test_gradient_checkpointing_still_trains_encoder_only(family, mode, tmp_path):
    model = get_frozen_model(tiny_model(family), MODES[mode])
    decoder_before = snapshot(model.decoder_tensors())
    encoder_before = snapshot(model.encoder_state_dict())
    # transformers renamed gradient checkpointing to activation checkpointing (the old names warn until v6).
    renamed = "activation_checkpointing" in {f.name for f in dataclasses.fields(TrainingArguments)}
    make_trainer(
        model, str(tmp_path), **{"activation_checkpointing" if renamed else "gradient_checkpointing": True}
    ).train()
    base = model.get_base_model()
    assert base.is_activation_checkpointing if renamed else base.is_gradient_checkpointing
    assert_decoder_identical(model, decoder_before)
    after = model.encoder_state_dict()
    assert sum(not torch.equal(encoder_before[n], after[n]) for n in after) >= len(after) // 2


def test_tie_weights_cannot_retie_a_private_encoder_embedding():
    model = get_frozen_model(tiny_model("t5"), FrozenDecoderConfig(train_encoder_embeddings=True))
    base = model.get_base_model()
    assert base.encoder.embed_tokens.weight is not base.shared.weight
    base.tie_weights()
    assert base.encoder.embed_tokens.weight is not base.shared.weight
    assert base.decoder.embed_tokens.weight is base.shared.weight


def test_frozen_sinusoidal_positions_stay_frozen():
    model = get_frozen_model(tiny_model("marian"), FrozenDecoderConfig())
    assert not model.get_base_model().model.encoder.embed_positions.weight.requires_grad


@pytest.mark.parametrize(
    "base, kind",
    [
        (lambda: GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)), "decoder-only"),
        (lambda: BertModel(BertConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2,
                                      intermediate_size=16, vocab_size=50)), "encoder-only"),
    ],
)  # fmt: skip
def test_wrong_family_is_refused(base, kind):
    with pytest.raises(ValueError, match=f"encoder-decoder model.*{kind}.*DecT"):
        get_frozen_model(base(), FrozenDecoderConfig())


def test_not_a_model_is_refused():
    with pytest.raises(TypeError, match="encoder-decoder model"):
        get_frozen_model(torch.nn.Linear(2, 2), FrozenDecoderConfig())
