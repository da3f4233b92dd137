"""The `hf-frozen` command. `hf-frozen dect ...` fits a DecT head on local files or a `datasets` dataset.

    hf-frozen dect --model_name_or_path roberta-large --train_file train.csv --test_file test.csv \
        --template "{text} It was {answer}." --label_words "terrible|bad" "great|good" --output_dir out/dect

With `--endpoint URL`, the backbone is the model `--model_name_or_path` served at an OpenAI-compatible URL
(vLLM, llama.cpp's server, a hosted API); the API key is read from `--api_key_env` (default `OPENAI_API_KEY`).

Every `DecTConfig` field is an option too (`hf-frozen dect --help`); options can also come from one `.json`
file (`hf-frozen dect args.json`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import sys
from typing import Literal

from transformers import HfArgumentParser

from .._version import __version__
from .config import DecTConfig


@dataclasses.dataclass
class DecTRunArguments:
    _argument_group_name = "Run (data, backbone, output)"

    model_name_or_path: str = dataclasses.field(
        metadata={"help": "Hub id or local path of the frozen backbone; with --endpoint, the served model's name."}
    )
    output_dir: str = dataclasses.field(metadata={"help": "Where the head, its config and metrics.json go."})
    backbone: Literal["auto", "masked_lm", "causal_lm", "seq2seq_lm", "encoder"] = dataclasses.field(
        default="auto",
        metadata={"help": "How to load the backbone; 'auto' reads its config (architectures, else model type)."},
    )
    train_file: str | None = dataclasses.field(default=None, metadata={"help": "Training data (.csv/.json/.jsonl)."})
    test_file: str | None = dataclasses.field(default=None, metadata={"help": "Test data (.csv/.json/.jsonl)."})
    dataset_name: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "A `datasets` dataset instead of files: a Hub name, or a folder saved with `save_to_disk`."
        },  # fmt: skip
    )
    train_split: str = dataclasses.field(default="train", metadata={"help": "Split of `dataset_name` to fit on."})
    test_split: str = dataclasses.field(default="test", metadata={"help": "Split of `dataset_name` to test on."})
    shots: int | None = dataclasses.field(
        default=None, metadata={"help": "Fit on this many examples per class, drawn by --head_seed; unset: all."}
    )
    endpoint: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Base URL of an OpenAI-compatible API serving the backbone, e.g. http://127.0.0.1:8000/v1."},
    )
    api_key_env: str = dataclasses.field(
        default="OPENAI_API_KEY", metadata={"help": "With --endpoint: the environment variable holding the API key."}
    )
    label_scores: Literal["constrained", "floor"] = dataclasses.field(
        default="constrained",
        metadata={"help": "With --endpoint: a class whose label tokens miss the top-k is asked again with a logit "
                  "bias (constrained, exact) or given the smallest returned log-probability (floor)."},
    )  # fmt: skip
    top_logprobs: int = dataclasses.field(default=20, metadata={"help": "With --endpoint: top log-probs per query."})
    concurrency: int = dataclasses.field(default=4, metadata={"help": "With --endpoint: requests in flight at once."})
    timeout: float = dataclasses.field(default=60.0, metadata={"help": "With --endpoint: seconds per request."})
    max_retries: int = dataclasses.field(
        default=5, metadata={"help": "With --endpoint: retries after a timeout, lost connection, 429 or 5xx."}
    )

    def base_model(self):
        """The backbone: an `Endpoint` for `--endpoint`, else (model, tokenizer) loaded from the Hub or a folder."""
        if self.endpoint is None:
            from .backbones import load_backbone

            return load_backbone(self.model_name_or_path, self.backbone)
        from .backbones import Endpoint

        if self.backbone != "auto":
            raise ValueError(f"`--backbone {self.backbone}` loads a local model; with `--endpoint` leave it unset.")
        endpoint = Endpoint(self.endpoint, self.model_name_or_path, self.api_key_env, self.label_scores,
                            self.top_logprobs, self.concurrency, self.timeout, self.max_retries)  # fmt: skip
        return endpoint, None


def _load_splits(run: DecTRunArguments):
    from datasets import load_dataset, load_from_disk

    if run.dataset_name:
        data = load_from_disk(run.dataset_name) if os.path.isdir(run.dataset_name) else load_dataset(run.dataset_name)
        return data[run.train_split], data[run.test_split] if run.test_split in data else None
    if not run.train_file:
        raise ValueError("Give `--train_file` (and optionally `--test_file`) or `--dataset_name`.")
    files = {"train": run.train_file, **({"test": run.test_file} if run.test_file else {})}
    extension = os.path.splitext(run.train_file)[1].lstrip(".")
    if extension not in ("csv", "json", "jsonl"):
        raise ValueError(f"`--train_file` must be .csv, .json or .jsonl, got {run.train_file!r}.")
    data = load_dataset("csv" if extension == "csv" else "json", data_files=files)
    return data["train"], data.get("test")


def check_option_names(parser: HfArgumentParser, given: list[str], where: str = "option") -> None:
    """Refuse an option (or a JSON key) no dataclass of `parser` has, first: `HfArgumentParser` builds the configs
    before it looks at what is left, so a typo would otherwise be reported as the field it misspells being unset."""
    known = {s.lstrip("-") for action in parser._actions for s in action.option_strings}
    unknown = [name for name in given if name not in known]
    if unknown:
        guess = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f" Did you mean `--{guess[0]}`?" if guess else " `hf-frozen dect --help` lists the options."
        name = f"--{unknown[0]}" if where == "option" else unknown[0]
        print(f"hf-frozen dect: error: unknown {where} `{name}`.{hint}", file=sys.stderr)
        raise SystemExit(2)  # argparse's exit status for a usage error


def dect_main(argv: list[str]) -> dict:
    parser = HfArgumentParser((DecTRunArguments, DecTConfig), prog="hf-frozen dect")
    if len(argv) == 1 and argv[0].endswith(".json"):
        with open(argv[0], encoding="utf-8") as f:
            check_option_names(parser, list(json.load(f)), where="key in the JSON file")
        run, config = parser.parse_json_file(os.path.abspath(argv[0]))
    else:
        check_option_names(parser, [a[2:].split("=")[0] for a in argv if a.startswith("--") and a != "--"])
        run, config = parser.parse_args_into_dataclasses(argv)
    # Imported after parsing: `--help` and argument errors answer without loading torch.
    from .data import few_shot
    from .model import DecTModel

    train, test = _load_splits(run)
    if run.shots is not None:
        train = few_shot(train, config.label_column, run.shots, config.head_seed)
    backbone, tokenizer = run.base_model()
    config.backbone_name_or_path = run.model_name_or_path
    dect = DecTModel.from_base_model(backbone, config, tokenizer=tokenizer)
    dect.fit(train)
    metrics: dict = {"train_examples": len(train), "fit_seconds": dect.fit_seconds, "choice": dect.cv_choice,
                     "head": dect.record.head_type, "zero_shot_weight": dect.record.zero_shot_weight,
                     "calibrated": dect.record.calibrate, "steps": dect.record.steps}  # fmt: skip
    if test is not None:
        metrics["test"] = {"dect": dect.evaluate(test)}
        if dect.record.backbone_kind != "encoder":
            metrics["test"]["zero_shot"] = dect.evaluate(test, scoring="zero_shot")
    metrics["backbone_queries"] = dect.num_queries
    if run.endpoint:  # what the API was sent, retries included
        metrics["endpoint_requests"] = dect.backbone.client.requests
        metrics["endpoint_retries"] = dect.backbone.client.retries
    dect.save_pretrained(run.output_dir)
    with open(os.path.join(run.output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print(json.dumps(metrics, indent=2))
    return metrics


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="hf-frozen", description="Frozen-decoder and DecT adapters.")
    parser.add_argument("--version", action="version", version=f"hf-frozen {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("dect", help="fit and evaluate a DecT head; `hf-frozen dect --help` lists options",
                        add_help=False)  # fmt: skip
    args, rest = parser.parse_known_args(argv)
    if args.command == "dect":
        dect_main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
