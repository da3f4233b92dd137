#!/usr/bin/env python
"""Fine-tune only the encoder of a seq2seq model on local json/csv files; the decoder stays bit-identical.

Modelled on transformers' `examples/pytorch/summarization/run_summarization.py`. Every option is a dataclass
field parsed by `HfArgumentParser` (also from one `.json` file): model and data arguments, hf-frozen's
`FrozenDecoderConfig`, and `Seq2SeqTrainingArguments`.

Example (train the encoder of t5-small, beam search with 3 beams as in the paper):

    python examples/run_frozen_decoder.py \
        --model_name_or_path google-t5/t5-small --source_prefix "summarize: " \
        --train_file train.json --validation_file valid.json --text_column text --summary_column summary \
        --encoder_training full --output_dir out/t5-frozen --num_train_epochs 3 \
        --per_device_train_batch_size 8 --learning_rate 3e-4 --predict_with_generate

The output folder then holds the encoder-only artifact (`hf_frozen_config.json`, `hf_frozen_record.json`,
`adapter_model.safetensors`), the tokenizer, `eval_results.json` (ROUGE through `rouge-score`, exact match) and,
with `--do_predict --test_file ...`, `generated_predictions.txt`. As in transformers' examples, a run into an
output folder that holds checkpoints resumes from the last one (another `--output_dir` starts over), and
`--push_to_hub` pushes the artifact and tokenizer. It runs unchanged under `torchrun` or `deepspeed`.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

import datasets
import numpy as np
import torch
import transformers
from datasets import load_dataset
from rouge_score import rouge_scorer
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    HfArgumentParser,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from hf_frozen import FrozenDecoderCallback, FrozenDecoderConfig, get_frozen_model

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "Hub id or local path of the encoder-decoder base model."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, if not the model's own."})


@dataclass
class DataTrainingArguments:
    train_file: str | None = field(default=None, metadata={"help": "Training data, a .json/.jsonl or .csv file."})
    validation_file: str | None = field(default=None, metadata={"help": "Evaluation data (.json/.jsonl/.csv)."})
    test_file: str | None = field(default=None, metadata={"help": "Prediction data (.json/.jsonl/.csv)."})
    text_column: str = field(default="text", metadata={"help": "Column holding the source text."})
    summary_column: str = field(default="summary", metadata={"help": "Column holding the target text."})
    source_prefix: str = field(default="", metadata={"help": "Text put before every source, e.g. 'summarize: '."})
    max_source_length: int = field(default=512, metadata={"help": "Source tokens kept (longer is truncated)."})
    max_target_length: int = field(default=128, metadata={"help": "Target tokens kept, and generated at most."})
    num_beams: int = field(default=3, metadata={"help": "Beams for generation at evaluation (the paper used 3)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set (debugging)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the evaluation set."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Truncate the prediction set."})


def load_files(data_args: DataTrainingArguments):
    named = (("train", data_args.train_file), ("validation", data_args.validation_file), ("test", data_args.test_file))
    files = {split: path for split, path in named if path}
    if not files:
        raise ValueError("Give `--train_file`, `--validation_file` and/or `--test_file` (.json, .jsonl or .csv).")
    extensions = {os.path.splitext(path)[1].lstrip(".") for path in files.values()}
    if len(extensions) != 1 or not extensions <= {"json", "jsonl", "csv"}:
        raise ValueError(f"Data files must all be .json/.jsonl or all .csv, got {sorted(files.values())}.")
    extension = extensions.pop()
    return load_dataset("csv" if extension == "csv" else "json", data_files=files)


def main() -> None:
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, FrozenDecoderConfig, Seq2SeqTrainingArguments))
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        model_args, data_args, frozen_config, training_args = parser.parse_json_file(os.path.abspath(sys.argv[1]))
    else:
        model_args, data_args, frozen_config, training_args = parser.parse_args_into_dataclasses()

    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])  # fmt: skip
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)  # hf-frozen logs through transformers' logging too
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()

    last_checkpoint = None
    if os.path.isdir(training_args.output_dir) and training_args.do_train:
        last_checkpoint = get_last_checkpoint(training_args.output_dir)
        if last_checkpoint is not None and training_args.resume_from_checkpoint is None:
            logger.info(f"Checkpoint detected, resuming training at {last_checkpoint}. To start over, use another "
                        "`--output_dir`.")  # fmt: skip
    set_seed(training_args.seed)

    raw = load_files(data_args)
    for split in raw.values():
        for column in (data_args.text_column, data_args.summary_column):
            if column not in split.column_names:
                raise ValueError(f"Column {column!r} not in the data; columns are {split.column_names}.")

    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path)
    model = get_frozen_model(AutoModelForSeq2SeqLM.from_pretrained(model_args.model_name_or_path), frozen_config)
    if training_args.should_log:
        model.print_trainable_parameters()

    def preprocess(batch):
        sources = [data_args.source_prefix + text for text in batch[data_args.text_column]]
        features = tokenizer(sources, max_length=data_args.max_source_length, truncation=True)
        targets = tokenizer(text_target=batch[data_args.summary_column], max_length=data_args.max_target_length,
                            truncation=True)  # fmt: skip
        features["labels"] = targets["input_ids"]
        return features

    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples,
              "test": data_args.max_predict_samples}  # fmt: skip
    tokenized = {}
    with training_args.main_process_first(desc="dataset map pre-processing"):
        for name, split in raw.items():
            if limits[name] is not None:
                split = split.select(range(min(limits[name], len(split))))
            tokenized[name] = split.map(preprocess, batched=True, remove_columns=split.column_names)

    rouge = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])

    def decode(ids: np.ndarray) -> list[str]:
        ids = np.where(ids != -100, ids, tokenizer.pad_token_id)  # -100: padding added when gathering
        return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def metrics_for(rows: int):
        """ROUGE and exact match over the first `rows` gathered predictions. Under `torchrun` on CPU
        (transformers 5.24, accelerate 1.15) the gathered arrays were seen to keep the padded rows of the last
        batch, which repeat earlier rows; rows come back in dataset order, so the dataset's rows come first."""

        def compute_metrics(eval_preds) -> dict[str, float]:
            predictions = decode(eval_preds.predictions[:rows])
            references = decode(eval_preds.label_ids[:rows])
            pairs = list(zip(predictions, references, strict=True))
            scores = [rouge.score(ref, pred) for pred, ref in pairs]
            metrics = {key: 100 * float(np.mean([s[key].fmeasure for s in scores]))
                       for key in ("rouge1", "rouge2", "rougeL")}  # fmt: skip
            metrics["exact_match"] = 100 * float(np.mean([pred == ref for pred, ref in pairs]))
            return metrics

        return compute_metrics if training_args.predict_with_generate else None

    training_args.generation_max_length = training_args.generation_max_length or data_args.max_target_length
    training_args.generation_num_beams = training_args.generation_num_beams or data_args.num_beams
    trainer = Seq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized.get("train"),
        eval_dataset=tokenized.get("validation"),
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        callbacks=[FrozenDecoderCallback()],
    )

    if training_args.do_train:
        if "train" not in tokenized:
            raise ValueError("`--do_train` needs `--train_file`.")
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint or last_checkpoint)
        trainer.save_model()  # the encoder-only artifact and the tokenizer (gathered under ZeRO-3)
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()

    if training_args.do_eval:
        if "validation" not in tokenized:
            raise ValueError("`--do_eval` needs `--validation_file`.")
        trainer.compute_metrics = metrics_for(len(tokenized["validation"]))
        metrics = trainer.evaluate(metric_key_prefix="eval")
        metrics["eval_num_beams"] = training_args.generation_num_beams
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)

    if training_args.do_predict:
        if "test" not in tokenized:
            raise ValueError("`--do_predict` needs `--test_file`.")
        trainer.compute_metrics = metrics_for(len(tokenized["test"]))
        output = trainer.predict(tokenized["test"], metric_key_prefix="predict")
        trainer.log_metrics("predict", output.metrics)
        trainer.save_metrics("predict", output.metrics)
        if trainer.is_world_process_zero() and training_args.predict_with_generate:
            with open(os.path.join(training_args.output_dir, "generated_predictions.txt"), "w") as f:
                f.write("\n".join(decode(output.predictions[: len(tokenized["test"])])) + "\n")

    if training_args.push_to_hub:
        trainer.push_to_hub(finetuned_from=model_args.model_name_or_path, tasks="summarization")

    # Under torchrun, leave together and close the process group: a process that exits with it still open can
    # be aborted by its communication threads during interpreter teardown (seen once on CPU with gloo).
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
