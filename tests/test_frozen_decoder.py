"""The frozen-decoder invariant on every supported family, after real Trainer optimizer steps."""

import pytest
import torch
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

from hf_frozen import FrozenDecoderConfig, FrozenDecoderModel, get_frozen_model

from .tiny_models import FAMILIES, copy_task_dataset, tiny_model
from .trainer_utils import make_trainer

MODES = {
    "full": FrozenDecoderConfig(),
    "full+embeddings": FrozenDecoderConfig(train_encoder_embeddings=True),
    "lora": FrozenDecoderConfig(encoder_training="lora", lora_r=4),
    "lora+embeddings": FrozenDecoderConfig(encoder_training="lora", lora_r=4, train_encoder_embeddings=True),
}


def snapshot(tensors):
    return {name: t.detach().clone() for name, t in tensors.items()}


def assert_decoder_identical(model: FrozenDecoderModel, before: dict) -> None:
    after = model._sides().decoder
    assert sorted(after) == sorted(before)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert not changed, f"decoder-side tensors changed: {changed}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_only_encoder_side_trains(family, mode):
    model = get_frozen_model(tiny_model(family), MODES[mode])
    trainable = [n for n, p in model.base_model.named_parameters() if p.requires_grad]
    assert trainable, "something must train"
    assert all(n.startswith(model.encoder_prefix) for n in trainable)
    assert not any(t.requires_grad for t in model._sides().decoder.values())
    assert model.artifact_keys == sorted(trainable)
    if mode.startswith("lora"):
        assert any("lora_A" in n for n in trainable)
        assert all("lora_" in n or "embed_tokens" in n for n in trainable)
    embedding = model.base_model.get_encoder().get_input_embeddings().weight
    assert embedding.requires_grad == mode.endswith("embeddings")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_trainer_steps_leave_decoder_bit_identical(family, mode, tmp_path):
    model = get_frozen_model(tiny_model(family), MODES[mode])
    decoder_before = snapshot(model._sides().decoder)
    encoder_before = snapshot(model.encoder_state_dict())

    trainer = make_trainer(model, str(tmp_path))
    result = trainer.train()

    assert result.global_step == 3
    assert_decoder_identical(model, decoder_before)
    assert model.decoder_fingerprint() == model.frozen_config.decoder_fingerprint
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
    decoder_before = snapshot(model._sides().decoder)
    encoder_before = snapshot(model.encoder_state_dict())
    make_trainer(model, str(tmp_path), gradient_checkpointing=True).train()
    assert model.base_model.is_gradient_checkpointing
    assert_decoder_identical(model, decoder_before)
    after = model.encoder_state_dict()
    assert sum(not torch.equal(encoder_before[n], after[n]) for n in after) >= len(after) // 2


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_resume_from_checkpoint_matches_uninterrupted_run(family, tmp_path):
    config = FrozenDecoderConfig(train_encoder_embeddings=True)
    straight = get_frozen_model(tiny_model(family), config)
    make_trainer(straight, str(tmp_path / "straight"), max_steps=4).train()

    first = get_frozen_model(tiny_model(family), config)
    make_trainer(first, str(tmp_path / "resumed"), max_steps=4, save_strategy="steps", save_steps=2).train()
    checkpoint = tmp_path / "resumed" / "checkpoint-2"
    # The callback wrote the encoder-only artifact into the Trainer checkpoint.
    assert (checkpoint / "hf_frozen_model.safetensors").is_file()
    assert (checkpoint / "hf_frozen_config.json").is_file()

    resumed = get_frozen_model(tiny_model(family), config)
    decoder_before = snapshot(resumed._sides().decoder)
    trainer = make_trainer(resumed, str(tmp_path / "resumed"), max_steps=4)
    trainer.train(resume_from_checkpoint=str(checkpoint))
    assert trainer.state.global_step == 4
    assert_decoder_identical(resumed, decoder_before)
    for name, tensor in straight.encoder_state_dict().items():
        torch.testing.assert_close(resumed.encoder_state_dict()[name], tensor, msg=f"{name} differs after resume")


def test_state_dict_has_no_tied_duplicates_and_loads_strictly():
    model = get_frozen_model(tiny_model("t5"), FrozenDecoderConfig())
    state = model.state_dict()
    assert "base_model.shared.weight" not in state or "base_model.lm_head.weight" not in state
    other = get_frozen_model(tiny_model("t5", seed=1), FrozenDecoderConfig())
    other.load_state_dict(state, strict=True)
    assert other.base_model.lm_head.weight is other.base_model.shared.weight, "ties survive loading"
    torch.testing.assert_close(other.base_model.lm_head.weight, model.base_model.lm_head.weight)


def test_tie_weights_cannot_retie_a_private_encoder_embedding():
    model = get_frozen_model(tiny_model("t5"), FrozenDecoderConfig(train_encoder_embeddings=True))
    base = model.base_model
    assert base.encoder.embed_tokens.weight is not base.shared.weight
    base.tie_weights()
    assert base.encoder.embed_tokens.weight is not base.shared.weight
    assert base.decoder.embed_tokens.weight is base.shared.weight


def test_frozen_sinusoidal_positions_stay_frozen():
    model = get_frozen_model(tiny_model("marian"), FrozenDecoderConfig())
    assert not model.base_model.model.encoder.embed_positions.weight.requires_grad


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


def test_wrapping_twice_is_refused():
    base = tiny_model("t5")
    get_frozen_model(base, FrozenDecoderConfig())
    with pytest.raises(ValueError, match="already carries an hf-frozen adapter"):
        get_frozen_model(base, FrozenDecoderConfig())


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
                model.base_model.decoder.final_layer_norm.weight.add_(1.0)

    from hf_frozen import FrozenDecoderCallback

    model = get_frozen_model(tiny_model("t5"), FrozenDecoderConfig())
    trainer = make_trainer(model, str(tmp_path), callbacks=[FrozenDecoderCallback(), EditDecoder()])
    with pytest.raises(RuntimeError, match="decoder changed"):
        trainer.train()


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
