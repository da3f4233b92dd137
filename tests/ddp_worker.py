"""Run by `torchrun --nproc_per_node 2` from test_distributed.py: a frozen-decoder Trainer run under DDP."""

import json
import os
import sys

import torch
from transformers import AutoModelForSeq2SeqLM

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hf_frozen import FrozenDecoderConfig, get_frozen_model  # noqa: E402
from hf_frozen.fingerprint import fingerprint_tensors  # noqa: E402
from tests.trainer_utils import make_trainer  # noqa: E402


def main(folder: str) -> None:
    model = get_frozen_model(AutoModelForSeq2SeqLM.from_pretrained(os.path.join(folder, "base")),
                             FrozenDecoderConfig())  # fmt: skip
    decoder_before = {k: v.clone() for k, v in model._sides().decoder.items()}
    encoder_before = fingerprint_tensors(model.encoder_state_dict())
    trainer = make_trainer(model, os.path.join(folder, "run"), max_steps=3, save_strategy="steps", save_steps=3,
                           ddp_backend="gloo")  # fmt: skip
    trainer.train()
    report = {
        "rank": int(os.environ["RANK"]),
        "world_size": trainer.args.world_size,
        "wrapper": type(trainer.model_wrapped).__name__,
        "decoder_identical": all(torch.equal(decoder_before[k], t) for k, t in model._sides().decoder.items()),
        "encoder_before": encoder_before,
        "encoder_after": fingerprint_tensors(model.encoder_state_dict()),
        "optimizer_tensors": len(trainer.optimizer.state),
        "trainable_tensors": sum(1 for p in model.parameters() if p.requires_grad),
    }
    with open(os.path.join(folder, f"rank{report['rank']}.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1])
