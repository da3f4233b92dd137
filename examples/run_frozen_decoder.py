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

The output folder then holds the encoder-only artifact (`hf_frozen_config.json`,
`hf_frozen_model.safetensors`), the tokenizer, `eval_results.json` and `generated_predictions.txt`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from datasets import load_dataset
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    HfArgumentParser,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    set_seed,
)

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
    text_column: str = field(default="text", metadata={"help": "Column holding the source text."})
    summary_column: str = field(default="summary", metadata={"help": "Column holding the target text."})
    source_prefix: str = field(default="", metadata={"help": "Text put before every source, e.g. 'summarize: '."})
    max_source_length: int = field(default=512, metadata={"help": "Source tokens kept (longer is truncated)."})
    max_target_length: int = field(default=128, metadata={"help": "Target tokens kept, and generated at most."})
    num_beams: int = field(default=3, metadata={"help": "Beams for generation at evaluation (the paper used 3)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set (debugging)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the evaluation set."})


def load_files(data_args: DataTrainingArguments):
    files = {k: v for k, v in (("train", data_args.train_file), ("validation", data_args.validation_file)) if v}
    if not files:
        raise ValueError("Give `--train_file` and/or `--validation_file` (.json, .jsonl or .csv).")
    extensions = {os.path.splitext(path)[1].lstrip(".") for path in files.values()}
    if len(extensions) != 1 or not extensions <= {"json", "jsonl", "csv"}:
        raise ValueError(f"Data files must all be .json/.jsonl or all .csv, got {sorted(files.values())}.")
    extension = extensions.pop()
    return load_dataset("csv" if extension == "csv" else "json", data_files=files)


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style bag-of-tokens F1: an offline metric (evaluate.load('rouge') needs the Hub)."""
    pred, ref = prediction.split(), reference.split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or not common:
        return float(pred == ref)
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def main() -> None:
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, FrozenDecoderConfig, Seq2SeqTrainingArguments))
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        model_args, data_args, frozen_config, training_args = parser.parse_json_file(os.path.abspath(sys.argv[1]))
    else:
        model_args, data_args, frozen_config, training_args = parser.parse_args_into_dataclasses()
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    set_seed(training_args.seed)

    raw = load_files(data_args)
    for split in raw.values():
        for column in (data_args.text_column, data_args.summary_column):
            if column not in split.column_names:
                raise ValueError(f"Column {column!r} not in the data; columns are {split.column_names}.")

    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path)
    model = get_frozen_model(AutoModelForSeq2SeqLM.from_pretrained(model_args.model_name_or_path), frozen_config)
    model.print_trainable_parameters()

    def preprocess(batch):
        sources = [data_args.source_prefix + text for text in batch[data_args.text_column]]
        features = tokenizer(sources, max_length=data_args.max_source_length, truncation=True)
        targets = tokenizer(text_target=batch[data_args.summary_column], max_length=data_args.max_target_length,
                            truncation=True)  # fmt: skip
        features["labels"] = targets["input_ids"]
        return features

    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples}
    tokenized = {}
    for name, split in raw.items():
        if limits[name] is not None:
            split = split.select(range(min(limits[name], len(split))))
        tokenized[name] = split.map(preprocess, batched=True, remove_columns=split.column_names)

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

    if training_args.do_train and "train" in tokenized:
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        # The encoder-only artifact. Every process calls this: under ZeRO-3 the weights are gathered from all.
        model.save_pretrained(training_args.output_dir, is_main_process=trainer.is_world_process_zero())
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(training_args.output_dir)

    if training_args.do_eval and "validation" in tokenized:
        output = trainer.predict(tokenized["validation"], metric_key_prefix="eval")
        predictions = np.where(output.predictions < 0, tokenizer.pad_token_id, output.predictions)
        texts = [t.strip() for t in tokenizer.batch_decode(predictions, skip_special_tokens=True)]
        references = raw["validation"][data_args.summary_column][: len(texts)]
        metrics = dict(output.metrics)
        metrics["eval_num_beams"] = training_args.generation_num_beams
        metrics["eval_exact_match"] = float(np.mean([p == r.strip() for p, r in zip(texts, references, strict=True)]))
        metrics["eval_token_f1"] = float(np.mean([token_f1(p, r) for p, r in zip(texts, references, strict=True)]))
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        if trainer.is_world_process_zero():
            with open(os.path.join(training_args.output_dir, "generated_predictions.txt"), "w") as f:
                f.write("\n".join(texts) + "\n")
            logger.info("eval metrics: %s", json.dumps(metrics))


if __name__ == "__main__":
    main()
