"""One process of a 2-process frozen-decoder Trainer run, started by `torchrun`, `deepspeed` or `accelerate launch`.

Written like a user's training script (transformers' `run_summarization.py`): the arguments are parsed first,
so that under ZeRO-3 `from_pretrained` already loads the model partitioned, then the model is wrapped and
trained. Each process writes `rank<N>.json` with what the tests check.
"""

import json
import os
import shutil
import sys
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import transformers
import transformers.trainer
from transformers import AutoModelForSeq2SeqLM, HfArgumentParser, Seq2SeqTrainer, Seq2SeqTrainingArguments

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hf_frozen.frozen_decoder.artifact as artifact_files_module  # noqa: E402
from hf_frozen import FrozenDecoderCallback, FrozenDecoderConfig, get_frozen_model  # noqa: E402
from hf_frozen.frozen_decoder.callback import optimized_tensors  # noqa: E402
from hf_frozen.utils.fingerprint import fingerprint_tensors  # noqa: E402
from hf_frozen.utils.zero3 import full_copies, full_numel  # noqa: E402
from tests.tiny_models import copy_task_dataset  # noqa: E402
from tests.worker_exit import leave_together  # noqa: E402

PROMPT = [[5, 17, 42, 8, 23, 61, 9, 30]]


@dataclass
class WorkerArguments:
    base: str
    report_dir: str
    decoder_dtype: str | None = None
    fake_hub: str | None = None  # with --push_to_hub: the Hub's servers, as a folder the pushes are copied into


class FolderHub:
    """`hf_api()` as the Trainer calls it, storing each push in a folder (the Hub's servers cannot be reached)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def create_repo(self, repo_id, **kwargs):
        os.makedirs(os.path.join(self.root, repo_id), exist_ok=True)
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, repo_id, folder_path, path_in_repo=None, ignore_patterns=(), **kwargs):
        target = os.path.join(self.root, repo_id, path_in_repo or "")
        shutil.copytree(folder_path, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*ignore_patterns or ()))
        return SimpleNamespace(commit_url="", done=lambda: True, is_done=lambda: True)


def use_deepspeed_on_cpu() -> None:
    """Give DeepSpeed a gloo process group when there is no GPU.

    With `--deepspeed`, transformers' `TrainingArguments` sets up accelerate's state without a backend, which on a
    machine without GPUs yields a world of one process per rank. Setting the state up first, and telling the
    arguments to reuse it (`use_configured_state`), fixes that. On GPU machines none of this is needed.
    """
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState(backend="gloo")
    del os.environ["ACCELERATE_USE_DEEPSPEED"]


def inner_optimizer_state_numel(optimizer) -> int:
    """Elements of Adam's first moment held by this process (DeepSpeed: for its flat partition)."""
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return sum(state["exp_avg"].numel() for state in optimizer.state.values() if "exp_avg" in state)


def count_artifact_writes() -> list[str]:
    """Record every encoder-artifact file this process writes (the real write still happens)."""
    written: list[str] = []
    save = artifact_files_module.write_files_together

    def counting_save(folder, writers):
        written.append(os.path.join(folder, sorted(writers)[0]))
        return save(folder, writers)

    artifact_files_module.write_files_together = counting_save
    return written


def main() -> None:
    # The test counts the callback's start-of-training line: hf-frozen logs through transformers' logging.
    transformers.logging.set_verbosity_info()
    argv = sys.argv[1:]
    deepspeed_on_cpu = any(a.startswith("--deepspeed") for a in argv) and not torch.cuda.is_available()
    if deepspeed_on_cpu:
        use_deepspeed_on_cpu()
    parser = HfArgumentParser((WorkerArguments, Seq2SeqTrainingArguments))
    worker_args, training_args = parser.parse_args_into_dataclasses(argv)
    if worker_args.fake_hub:
        transformers.trainer.hf_api = lambda *a, **k: FolderHub(worker_args.fake_hub)
    if training_args.world_size != int(os.environ["WORLD_SIZE"]):
        raise RuntimeError(f"{training_args.world_size} processes seen of {os.environ['WORLD_SIZE']} (see above)")

    artifact_writes = count_artifact_writes()
    model = get_frozen_model(
        AutoModelForSeq2SeqLM.from_pretrained(worker_args.base),
        FrozenDecoderConfig(decoder_dtype=worker_args.decoder_dtype),
    )
    decoder_before = full_copies(model.decoder_tensors())
    encoder_before = fingerprint_tensors(model.encoder_state_dict())
    trainer = Seq2SeqTrainer(
        model=model, args=training_args, train_dataset=copy_task_dataset(), callbacks=[FrozenDecoderCallback()]
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(os.path.join(training_args.output_dir, "final"))  # every process calls it, as users do

    decoder_after = full_copies(model.decoder_tensors())
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    with torch.no_grad():  # every process generates (under ZeRO-3 they gather weights for each other)
        generated = model.generate(input_ids=torch.tensor(PROMPT), max_new_tokens=8, do_sample=False, num_beams=1)
    report = {
        "rank": training_args.process_index,
        "world_size": training_args.world_size,
        "global_step": trainer.state.global_step,
        "wrapper": type(trainer.model_wrapped).__name__,
        "partitioned": any(hasattr(p, "ds_id") for p in model.parameters()),
        "decoder_identical": decoder_before.keys() == decoder_after.keys()
        and all(torch.equal(decoder_before[k], t) for k, t in decoder_after.items()),
        "encoder_before": encoder_before,
        "decoder_dtypes": sorted({str(t.dtype) for t in decoder_after.values() if t.is_floating_point()}),
        "trainable_dtypes": sorted({str(p.dtype) for p in trainable}),
        "encoder_after": fingerprint_tensors(model.encoder_state_dict()),
        "optimized_tensors": sorted(id(p) for p in optimized_tensors(trainer.optimizer)),
        "trainable_tensors": sorted(id(p) for p in trainable),
        "trainable_numel": sum(full_numel(p) for p in trainable),
        "optimizer_state_numel": inner_optimizer_state_numel(trainer.optimizer),
        "generated": generated.tolist(),
        "artifact_writes": [os.path.basename(os.path.dirname(path)) for path in artifact_writes],
    }
    with open(os.path.join(worker_args.report_dir, f"rank{report['rank']}.json"), "w") as f:
        json.dump(report, f)
    leave_together()


if __name__ == "__main__":
    main()
