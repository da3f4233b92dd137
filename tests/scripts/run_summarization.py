"""A stock `run_summarization.py`, shaped like transformers' example, plus the four lines that add the frozen
decoder (marked `# hf-frozen`). The tests drive it as users do: from the command line or one JSON file."""

import logging
import os
import sys
from dataclasses import dataclass, field

import datasets
import transformers
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

from hf_frozen import FrozenDecoderCallback, FrozenDecoderConfig, get_frozen_model  # hf-frozen

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "Path to pretrained model or model identifier."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to store downloaded models."})
    model_revision: str = field(default="main", metadata={"help": "The model version to use."})


@dataclass
class DataTrainingArguments:
    train_file: str | None = field(default=None, metadata={"help": "A jsonlines training file."})
    validation_file: str | None = field(default=None, metadata={"help": "A jsonlines validation file."})
    text_column: str = field(default="text", metadata={"help": "The column with the full texts."})
    summary_column: str = field(default="summary", metadata={"help": "The column with the summaries."})
    max_source_length: int = field(default=32, metadata={"help": "Maximum input length after tokenization."})
    max_target_length: int = field(default=16, metadata={"help": "Maximum target length after tokenization."})


def main():
    parser = HfArgumentParser(
        (ModelArguments, DataTrainingArguments, Seq2SeqTrainingArguments, FrozenDecoderConfig)  # hf-frozen
    )
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        model_args, data_args, training_args, frozen_config = parser.parse_json_file(os.path.abspath(sys.argv[1]))
    else:
        model_args, data_args, training_args, frozen_config = parser.parse_args_into_dataclasses()

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()

    last_checkpoint = None
    if os.path.isdir(training_args.output_dir) and training_args.do_train:
        last_checkpoint = get_last_checkpoint(training_args.output_dir)
        if last_checkpoint is not None and training_args.resume_from_checkpoint is None:
            logger.info(f"Checkpoint detected, resuming training at {last_checkpoint}.")

    set_seed(training_args.seed)
    data_files = {"train": data_args.train_file, "validation": data_args.validation_file}
    raw_datasets = datasets.load_dataset("json", data_files={k: v for k, v in data_files.items() if v})

    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, cache_dir=model_args.cache_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(
        model_args.model_name_or_path, cache_dir=model_args.cache_dir, revision=model_args.model_revision
    )
    model = get_frozen_model(model, frozen_config)  # hf-frozen

    def preprocess_function(examples):
        model_inputs = tokenizer(
            examples[data_args.text_column], max_length=data_args.max_source_length, truncation=True
        )
        labels = tokenizer(
            text_target=examples[data_args.summary_column], max_length=data_args.max_target_length, truncation=True
        )
        model_inputs["labels"] = labels["input_ids"]
        return model_inputs

    with training_args.main_process_first(desc="dataset map pre-processing"):
        tokenized = raw_datasets.map(
            preprocess_function, batched=True, remove_columns=raw_datasets["train"].column_names
        )

    trainer = Seq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"] if training_args.do_train else None,
        eval_dataset=tokenized["validation"] if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        callbacks=[FrozenDecoderCallback()],  # hf-frozen
    )

    if training_args.do_train:
        checkpoint = training_args.resume_from_checkpoint or last_checkpoint
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model()  # Saves the tokenizer too for easy upload
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()

    if training_args.do_eval:
        metrics = trainer.evaluate(metric_key_prefix="eval")
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)

    if training_args.push_to_hub:
        trainer.push_to_hub(finetuned_from=model_args.model_name_or_path, tasks="summarization")


if __name__ == "__main__":
    main()
