#!/usr/bin/env python
"""Train a DecT head on a frozen backbone inside a stock `Trainer`: one backbone query per example, then seconds.

Modelled on transformers' `examples/pytorch/text-classification/run_classification.py`. Every option is a
dataclass field parsed by `HfArgumentParser` (also from one `.json` file): model and data arguments, hf-frozen's
`DecTConfig` and `TrainingArguments`.

Example (16 shots per class of a sentiment set, a causal LM as the frozen backbone):

    python examples/run_dect.py \
        --model_name_or_path HuggingFaceTB/SmolLM2-135M-Instruct --train_file train.csv \
        --validation_file valid.csv --test_file test.csv --shots 16 \
        --template "Review: {text} Sentiment: {answer}" --label_words "negative|bad" "positive|good" \
        --labels negative positive --do_train --do_eval --do_predict --output_dir out/dect \
        --learning_rate 0.01 --max_steps 100 --per_device_train_batch_size 32 --lr_scheduler_type constant

The output folder then holds the DecT artifact (`hf_frozen_config.json`, `hf_frozen_record.json`,
`adapter_model.safetensors`: what `AutoFrozenModel.from_pretrained` loads), `eval_results.json` (accuracy and
macro-F1 through scikit-learn, for the head and for the calibrated prompt alone) and, with `--do_predict`,
`predict_results.txt`. A run into an output folder that holds checkpoints resumes from the last one;
`--do_eval` without `--do_train` evaluates the head saved in `--output_dir`; `--push_to_hub` pushes the head.
`--head` (default `auto`) is chosen at train begin as `fit` chooses it: the prototype decoder is trained by the
Trainer's steps, the linear head is solved there once (the steps then leave it as it is); `--head prototype` keeps
the paper's head. `--feature_model_name_or_path` reads the head's features from a second model (a sentence
encoder, say).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Literal

import datasets
import numpy as np
import torch
import transformers
from datasets import load_dataset, load_from_disk
from sklearn.metrics import accuracy_score, f1_score
from transformers import HfArgumentParser, Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from hf_frozen import AutoFrozenModel, DecTCallback, DecTCollator, DecTConfig, get_frozen_model
from hf_frozen.dect.backbones import load_backbone
from hf_frozen.dect.data import few_shot

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "Hub id or local path of the frozen backbone."})
    backbone: Literal["auto", "masked_lm", "causal_lm", "seq2seq_lm", "encoder"] = field(
        default="auto", metadata={"help": "How to load the backbone; 'auto' reads its config."}
    )


@dataclass
class DataTrainingArguments:
    dataset_name: str | None = field(
        default=None, metadata={"help": "A `datasets` dataset: a Hub name, or a folder saved with `save_to_disk`."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration."})
    train_file: str | None = field(default=None, metadata={"help": "Training data, a .csv or .json/.jsonl file."})
    validation_file: str | None = field(default=None, metadata={"help": "Evaluation data (.csv/.json/.jsonl)."})
    test_file: str | None = field(default=None, metadata={"help": "Prediction data (.csv/.json/.jsonl)."})
    shots: int | None = field(
        default=None, metadata={"help": "Train on this many examples per class, drawn by --head_seed."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the evaluation set."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Truncate the prediction set."})


def load_raw(data_args: DataTrainingArguments) -> datasets.DatasetDict:
    if data_args.dataset_name:
        if os.path.isdir(data_args.dataset_name):
            return load_from_disk(data_args.dataset_name)
        return load_dataset(data_args.dataset_name, data_args.dataset_config_name)
    named = (("train", data_args.train_file), ("validation", data_args.validation_file), ("test", data_args.test_file))
    files = {split: path for split, path in named if path}
    if not files:
        raise ValueError("Give `--dataset_name`, or `--train_file`, `--validation_file` and/or `--test_file`.")
    extensions = {os.path.splitext(path)[1].lstrip(".") for path in files.values()}
    if len(extensions) != 1 or not extensions <= {"json", "jsonl", "csv"}:
        raise ValueError(f"Data files must all be .json/.jsonl or all .csv, got {sorted(files.values())}.")
    return load_dataset("csv" if extensions.pop() == "csv" else "json", data_files=files)


def main() -> None:
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, DecTConfig, TrainingArguments))
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        model_args, data_args, dect_config, training_args = parser.parse_json_file(os.path.abspath(sys.argv[1]))
    else:
        model_args, data_args, dect_config, training_args = parser.parse_args_into_dataclasses()
    training_args.remove_unused_columns = False  # the collator reads the raw text columns

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

    raw = load_raw(data_args)
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples,
              "test": data_args.max_predict_samples}  # fmt: skip
    splits = {}
    for name in limits:
        if name in raw:
            split = raw[name]
            if name == "train" and data_args.shots is not None:
                split = few_shot(split, dect_config.label_column, data_args.shots, dect_config.head_seed)
            if limits[name] is not None:
                split = split.select(range(min(limits[name], len(split))))
            splits[name] = split

    backbone, tokenizer = load_backbone(model_args.model_name_or_path, model_args.backbone)
    dect_config.backbone_name_or_path = model_args.model_name_or_path
    if training_args.do_train:
        features = {}
        if dect_config.feature_model_name_or_path:
            feature_model, feature_tokenizer = load_backbone(dect_config.feature_model_name_or_path, "encoder")
            features = dict(feature_model=feature_model, feature_tokenizer=feature_tokenizer)
        dect = get_frozen_model(backbone, dect_config, tokenizer=tokenizer, **features)
        head = dect.new_head()
    else:  # evaluate or predict with the head trained before, saved in --output_dir
        dect = AutoFrozenModel.from_pretrained(training_args.output_dir, base_model=backbone, tokenizer=tokenizer)
        head = dect.head

    def metrics_for(rows: int):
        """Accuracy and macro-F1 of the first `rows` gathered predictions: as in run_frozen_decoder.py, the
        dataset's rows come first in what a multi-process evaluation gathers."""

        def compute_metrics(eval_pred) -> dict[str, float]:
            predicted = np.argmax(eval_pred.predictions[:rows], axis=-1)
            labels = eval_pred.label_ids[:rows]
            return {"accuracy": float(accuracy_score(labels, predicted)),
                    "macro_f1": float(f1_score(labels, predicted, average="macro"))}  # fmt: skip

        return compute_metrics

    trainer = Trainer(
        model=head,
        args=training_args,
        train_dataset=splits.get("train"),
        eval_dataset=splits.get("validation"),
        data_collator=DecTCollator(dect),
        callbacks=[DecTCallback(dect)],
    )

    if training_args.do_train:
        if "train" not in splits:
            raise ValueError("`--do_train` needs `--train_file` or a dataset with a 'train' split.")
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint or last_checkpoint)
        trainer.save_model()  # the DecT artifact (head, calibration, record, config) is written beside it
        result.metrics["backbone_queries"] = dect.num_queries
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()

    if training_args.do_eval:
        if "validation" not in splits:
            raise ValueError("`--do_eval` needs `--validation_file` or a dataset with a 'validation' split.")
        trainer.compute_metrics = metrics_for(len(splits["validation"]))
        metrics = trainer.evaluate(metric_key_prefix="eval")
        if dect.record.backbone_kind != "encoder":  # the prompt alone, for comparison (cached: no new queries)
            prompt = dect.evaluate(splits["validation"], scoring="zero_shot")
            metrics["eval_prompt_accuracy"], metrics["eval_prompt_macro_f1"] = prompt["accuracy"], prompt["macro_f1"]
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)

    if training_args.do_predict:
        if "test" not in splits:
            raise ValueError("`--do_predict` needs `--test_file` or a dataset with a 'test' split.")
        test = splits["test"]
        has_labels = dect_config.label_column in test.column_names
        trainer.compute_metrics = metrics_for(len(test)) if has_labels else None
        output = trainer.predict(test, metric_key_prefix="predict")
        trainer.log_metrics("predict", output.metrics)
        trainer.save_metrics("predict", output.metrics)
        if trainer.is_world_process_zero():
            predicted = np.argmax(output.predictions[: len(test)], axis=-1)
            with open(os.path.join(training_args.output_dir, "predict_results.txt"), "w") as f:
                f.write("index\tprediction\n")
                f.writelines(f"{i}\t{dect.config.labels[p]}\n" for i, p in enumerate(predicted))

    if training_args.push_to_hub:
        trainer.push_to_hub(finetuned_from=model_args.model_name_or_path, tasks="text-classification")

    if torch.distributed.is_initialized():  # leave together (see run_frozen_decoder.py)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
