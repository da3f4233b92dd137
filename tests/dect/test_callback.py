"""DecT inside a user's own `Trainer`: `DecTCallback` and `DecTCollator`."""

import pytest
import torch

from ..tiny_dect import make, sentiment


def test_trainer_trains_the_same_head_without_requerying(tmp_path):
    from transformers import Trainer, TrainingArguments

    from hf_frozen import DecTCallback, DecTCollator

    train = sentiment(16)
    dect = make("causal_lm", zero_shot_weight=0.5)
    head = dect.new_head()
    # Full-batch Adam as in `fit`: AdamW without weight decay or clipping, constant lr, one batch per epoch.
    args = TrainingArguments(
        str(tmp_path), remove_unused_columns=False, learning_rate=0.01, num_train_epochs=30, weight_decay=0.0,
        per_device_train_batch_size=16, lr_scheduler_type="constant", max_grad_norm=0.0, optim="adamw_torch",
        report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(model=head, args=args, train_dataset=train, data_collator=DecTCollator(dect),
                      callbacks=[DecTCallback(dect)])  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == 30
    assert dect.num_queries == 16 + 1, "30 epochs, still one query per example (+ the empty input)"
    assert dect.head is head and dect.record.zero_shot_weight == 0.5 and dect.record.steps == 30

    reference = make("causal_lm", zero_shot_weight=0.5, steps=30)
    reference.fit(train)
    for name, tensor in reference.head.state_dict().items():
        torch.testing.assert_close(head.state_dict()[name], tensor, atol=1e-4, rtol=1e-4, msg=name)
    test = sentiment(8, seed=4)
    assert dect.evaluate(test)["accuracy"] == reference.evaluate(test)["accuracy"]


def test_collator_explains_dropped_columns():
    from hf_frozen import DecTCollator

    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        DecTCollator(make("callable"))([{"label": 0}])
