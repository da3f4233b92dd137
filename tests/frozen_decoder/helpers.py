"""Shared by the frozen-decoder tests: training modes, snapshots, a trained artifact."""

import torch
from transformers import AutoModelForSeq2SeqLM

from hf_frozen import FrozenDecoderConfig, FrozenDecoderModel, get_frozen_model

from ..tiny_models import tiny_model
from ..trainer_utils import make_trainer

MODES = {
    "full": FrozenDecoderConfig(),
    "full+embeddings": FrozenDecoderConfig(train_encoder_embeddings=True),
    "lora": FrozenDecoderConfig(encoder_training="lora", lora_r=4),
    "lora+embeddings": FrozenDecoderConfig(encoder_training="lora", lora_r=4, train_encoder_embeddings=True),
}


def snapshot(tensors):
    return {name: t.detach().clone() for name, t in tensors.items()}


def assert_decoder_identical(model: FrozenDecoderModel, before: dict) -> None:
    after = model.decoder_tensors()
    assert sorted(after) == sorted(before)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert not changed, f"decoder-side tensors changed: {changed}"


INPUTS = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [20, 21, 22, 23, 24, 25, 26, 27]])


def generations(model) -> dict[str, list]:
    model.eval()
    kwargs = dict(input_ids=INPUTS, attention_mask=torch.ones_like(INPUTS), max_new_tokens=6, min_new_tokens=6)
    return {
        "greedy": model.generate(**kwargs, num_beams=1, do_sample=False).tolist(),
        "beam3": model.generate(**kwargs, num_beams=3, do_sample=False).tolist(),
    }


def trained_artifact(family, mode, tmp_path):
    """Save a base model to disk, fine-tune its encoder for a few real steps, save the encoder artifact."""
    base_dir = tmp_path / f"{family}-base"
    tiny_model(family).save_pretrained(base_dir)
    model = get_frozen_model(AutoModelForSeq2SeqLM.from_pretrained(base_dir), MODES[mode])
    make_trainer(model, str(tmp_path / f"{family}-{mode}-run"), max_steps=4, learning_rate=3e-2).train()
    artifact = tmp_path / f"{family}-{mode}-artifact"
    model.save_pretrained(artifact)
    return model, artifact
