"""DecT inside a user's own `Trainer`: `DecTCallback` and `DecTCollator`."""

import pytest
import torch

from ..tiny_dect import make, sentiment


def test_trainer_trains_the_same_head_without_requerying(tmp_path):
    from transformers import Trainer, TrainingArguments

    from hf_frozen import DecTCallback, DecTCollator

    train = sentiment(16)
    dect = make("causal_lm", zero_shot_weight=0.5, head="prototype")
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
    assert dect.head is head.head and dect.record.zero_shot_weight == 0.5 and dect.record.steps == 30

    reference = make("causal_lm", zero_shot_weight=0.5, steps=30, head="prototype")  # the Trainer trains this head
    reference.fit(train)
    for name, tensor in reference.head.state_dict().items():
        torch.testing.assert_close(head.head.state_dict()[name], tensor, atol=1e-4, rtol=1e-4, msg=name)
    test = sentiment(8, seed=4)
    assert dect.evaluate(test)["accuracy"] == reference.evaluate(test)["accuracy"]


@pytest.mark.parametrize("head", ["linear", "auto"])
def test_trainer_honours_head_and_chooses_as_fit_does(tmp_path, head):
    """`head="linear"` solves a linear head at train begin (not a prototype head trained by steps); `"auto"` makes
    the choice `fit` makes. `trainer.predict` and `dect.predict` then agree, and so does a reloaded artifact."""
    from hf_frozen import AutoFrozenModel

    train, test = sentiment(32), sentiment(24, seed=4)
    dect = make("causal_lm", head=head)
    trainer = trainer_for(dect, tmp_path, max_steps=5, train_dataset=train, per_device_eval_batch_size=8)
    trainer.train()
    trainer.save_model()
    reference = make("causal_lm", head=head)
    reference.fit(train)
    assert dect.cv_choice == reference.cv_choice and dect.record.head_type == reference.record.head_type
    if head == "linear":
        assert dect.record.head_type == "linear" and dect.record.steps == 0
    for name, tensor in reference.head.state_dict().items():
        torch.testing.assert_close(dect.head.state_dict()[name], tensor, atol=1e-4, rtol=1e-4, msg=name)
    predicted = trainer.predict(test).predictions.argmax(-1)
    assert [dect.config.labels[i] for i in predicted] == dect.predict(test) == reference.predict(test)
    loaded = AutoFrozenModel.from_pretrained(tmp_path, base_model=dect.backbone.model,
                                             tokenizer=dect.backbone.tokenizer)  # fmt: skip
    assert loaded.predict(test) == dect.predict(test) and loaded.record.head_type == dect.record.head_type


def test_collator_explains_dropped_columns():
    from hf_frozen import DecTCollator

    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        DecTCollator(make("callable"))([{"label": 0}])


def trainer_for(dect, folder, max_steps, train_dataset=None, **overrides):
    from transformers import Trainer, TrainingArguments

    from hf_frozen import DecTCallback, DecTCollator

    args = TrainingArguments(
        str(folder), remove_unused_columns=False, learning_rate=0.01, max_steps=max_steps, weight_decay=0.0,
        per_device_train_batch_size=16, lr_scheduler_type="constant", max_grad_norm=0.0, optim="adamw_torch",
        report_to=[], use_cpu=True, save_strategy="steps", save_steps=10, logging_strategy="no", disable_tqdm=True,
        **overrides,
    )  # fmt: skip
    return Trainer(model=dect.new_head(), args=args, train_dataset=train_dataset or sentiment(16),
                   data_collator=DecTCollator(dect), callbacks=[DecTCallback(dect)])  # fmt: skip


def test_trainer_checkpoints_and_save_model_hold_the_dect_artifact_and_resume(tmp_path):
    from hf_frozen import AutoFrozenModel

    test = sentiment(8, seed=4)
    whole = make("causal_lm", zero_shot_weight=0.5, head="prototype")
    trainer = trainer_for(whole, tmp_path / "whole", max_steps=20)
    trainer.train()
    trainer.save_model()
    expected = whole.decision_scores(test["text"])

    # `save_model()`'s folder and the last checkpoint load as DecT models that score as the trained one.
    for folder in (tmp_path / "whole", tmp_path / "whole" / "checkpoint-20"):
        loaded = AutoFrozenModel.from_pretrained(
            folder, base_model=whole.backbone.model, tokenizer=whole.backbone.tokenizer
        )
        torch.testing.assert_close(loaded.decision_scores(test["text"]), expected, msg=str(folder))
        assert loaded.record.steps == 20 and loaded.record.zero_shot_weight == 0.5
    middle = AutoFrozenModel.from_pretrained(tmp_path / "whole" / "checkpoint-10", base_model=whole.backbone.model,
                                             tokenizer=whole.backbone.tokenizer)  # fmt: skip
    assert middle.record.steps == 10
    assert not torch.allclose(middle.decision_scores(test["text"]), expected), "the checkpoint is the step-10 head"

    # Resuming from the step-10 checkpoint ends where the uninterrupted run ended.
    resumed = make("causal_lm", zero_shot_weight=0.5, head="prototype")
    interrupted = trainer_for(resumed, tmp_path / "resumed", max_steps=20)
    interrupted.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-10"))
    torch.testing.assert_close(resumed.decision_scores(test["text"]), expected, atol=1e-5, rtol=1e-5)
