"""One process of a 2-process DecT run under `torchrun`: `fit` with shared queries, then the head in a DDP Trainer.

Each process writes `rank<N>.json`; the main process also writes the Trainer-trained head's tensors.
"""

import json
import os
import sys

import transformers
from safetensors.torch import save_file
from transformers import Trainer, TrainingArguments

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hf_frozen import DecTCallback, DecTCollator  # noqa: E402
from hf_frozen.utils.fingerprint import fingerprint_tensors  # noqa: E402
from tests.tiny_dect import make, sentiment  # noqa: E402
from tests.worker_exit import leave_together  # noqa: E402


def main(folder: str) -> None:
    # The test counts the callback's log line: hf-frozen logs through transformers' logging.
    transformers.logging.set_verbosity_info()
    train = sentiment(16)
    # The Trainer's arguments first: they start the process group (gloo) that `fit` shares its queries over.
    args = TrainingArguments(
        os.path.join(folder, "out"), remove_unused_columns=False, learning_rate=0.01, num_train_epochs=30,
        weight_decay=0.0, per_device_train_batch_size=8, lr_scheduler_type="constant", max_grad_norm=0.0,
        optim="adamw_torch", report_to=[], use_cpu=True, ddp_backend="gloo", save_strategy="no",
        logging_strategy="no", disable_tqdm=True,
    )  # fmt: skip

    # The prototype head: the one the Trainer trains, so that both heads can be compared.
    fitted = make("causal_lm", zero_shot_weight=0.5, head="prototype", query_cache_dir=os.path.join(folder, "cache"))
    fitted.fit(train, split_across_processes=True)
    fit_queries = fitted.num_queries
    hidden, scores = fitted.extract(train["text"])  # all cached now, on every process

    dect = make("causal_lm", zero_shot_weight=0.5, head="prototype")  # memory cache only: queries again, shared
    head = dect.new_head(hidden.shape[1])
    trainer = Trainer(model=head, args=args, train_dataset=train, data_collator=DecTCollator(dect),
                      callbacks=[DecTCallback(dect)])  # fmt: skip
    trainer.train()
    report = {
        "rank": args.process_index,
        "world_size": args.world_size,
        "fit_queries": fit_queries,
        "queries_after_fit": fitted.num_queries - fit_queries,
        "features": fingerprint_tensors({"hidden": hidden, "scores": scores}),
        "fit_head": fingerprint_tensors(fitted.head.state_dict()),
        "trainer_queries": dect.num_queries,
        "trainer_wrapper": type(trainer.model_wrapped).__name__,
        "trainer_head": fingerprint_tensors(dict(head.head.state_dict())),
        "global_step": trainer.state.global_step,
    }
    if trainer.is_world_process_zero():
        save_file({k: v.contiguous() for k, v in head.head.state_dict().items()},
                  os.path.join(folder, "head.safetensors"))  # fmt: skip
    with open(os.path.join(folder, f"rank{report['rank']}.json"), "w") as f:
        json.dump(report, f)
    leave_together()


if __name__ == "__main__":
    main(sys.argv[1])
