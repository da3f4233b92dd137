"""`hf-frozen dect ...`: fit a DecT head on local files or a `datasets` dataset (`hf_frozen/cli.py` dispatches).

    hf-frozen dect --model_name_or_path roberta-large --train_file train.csv --test_file test.csv \
        --template "{text} It was {answer}." --label_words "terrible|bad" "great|good" --output_dir out/dect

With `--endpoint URL`, the backbone is the model `--model_name_or_path` served at an OpenAI-compatible URL
(vLLM, llama.cpp's server, a hosted API); the API key is read from `--api_key_env` (default `OPENAI_API_KEY`).
With `--feature_model_name_or_path` (a sentence encoder, say), the head reads that model's pooled embedding of the
text, and the backbone gives only the prompt's label-word scores; `--feature_endpoint URL` serves it over an API.

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
    feature_endpoint: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Base URL of an OpenAI-compatible embeddings API serving the feature model named by "
                  "--feature_model_name_or_path (e.g. a hosted embedding model beside a hosted LLM)."},
    )  # fmt: skip

    def base_model(self):
        """The backbone: an `Endpoint` for `--endpoint`, else (model, tokenizer) loaded from the Hub or a folder."""
        if self.endpoint is None:
            from .backbones import load_backbone

            path = self.model_name_or_path
            if _looks_local(path) and not os.path.exists(os.path.expanduser(path)):
                raise UsageError(f"--model_name_or_path {path}: no such file or folder.")
            try:
                return load_backbone(os.path.expanduser(path), self.backbone)
            except OSError as err:  # transformers' own message, e.g. a Hub id that cannot be reached offline
                raise UsageError(
                    f"--model_name_or_path {path}: cannot load it ({str(err).splitlines()[0]}). Give a model folder, "
                    "a GGUF file, or a Hub id reachable from here."
                ) from err
        from .backbones import Endpoint

        if self.backbone != "auto":
            raise ValueError(f"`--backbone {self.backbone}` loads a local model; with `--endpoint` leave it unset.")
        endpoint = Endpoint(self.endpoint, self.model_name_or_path, self.api_key_env, self.label_scores,
                            self.top_logprobs, self.concurrency, self.timeout, self.max_retries)  # fmt: skip
        return endpoint, None

    def feature_model(self, config: DecTConfig):
        """(feature model, its tokenizer) from `--feature_model_name_or_path` (served at `--feature_endpoint` when
        given), or (None, None) when the backbone's own hidden states are the features."""
        name = config.feature_model_name_or_path
        if self.feature_endpoint is not None:
            from .backbones import Endpoint

            if not name:
                raise UsageError("--feature_endpoint needs --feature_model_name_or_path: the served model's name.")
            return Endpoint(self.feature_endpoint, name, self.api_key_env, concurrency=self.concurrency,
                            timeout=self.timeout, max_retries=self.max_retries), None  # fmt: skip
        if not name:
            return None, None
        from .backbones import load_backbone

        if _looks_local(name) and not os.path.exists(os.path.expanduser(name)):
            raise UsageError(f"--feature_model_name_or_path {name}: no such file or folder.")
        try:
            return load_backbone(os.path.expanduser(name), "encoder")
        except OSError as err:
            raise UsageError(
                f"--feature_model_name_or_path {name}: cannot load it ({str(err).splitlines()[0]}). Give a model "
                "folder (a sentence-transformers folder works) or a Hub id reachable from here."
            ) from err


def _looks_local(path: str) -> bool:
    return os.path.isabs(path) or path.startswith(("./", "../", "~")) or path.endswith(".gguf")


class UsageError(ValueError):
    """A mistake in the command line or the data it names: printed as one line, exit status 2."""


def _load_splits(run: DecTRunArguments, config: DecTConfig):
    """(train, test or None) as `datasets.Dataset`s, every file checked (it exists, parses, has the columns and
    rows) before any model is loaded or queried."""
    from datasets import Dataset, load_dataset, load_from_disk

    if run.dataset_name:
        data = load_from_disk(run.dataset_name) if os.path.isdir(run.dataset_name) else load_dataset(run.dataset_name)
        for split in (run.train_split, run.test_split):
            if split == run.train_split and split not in data:
                raise UsageError(f"--dataset_name {run.dataset_name} has no split {split!r} (it has {list(data)}): "
                                 "set --train_split.")  # fmt: skip
        return data[run.train_split], data[run.test_split] if run.test_split in data else None
    if not run.train_file:
        raise UsageError("no training data: give --train_file (and optionally --test_file) or --dataset_name.")
    train = Dataset.from_pandas(_read_table(run.train_file, "--train_file", config), preserve_index=False)
    if not run.test_file:
        return train, None
    return train, Dataset.from_pandas(_read_table(run.test_file, "--test_file", config), preserve_index=False)


def _read_table(path: str, flag: str, config: DecTConfig):
    """A .csv, .json or .jsonl file as a DataFrame with the configured columns and at least one row."""
    import pandas as pd

    if not os.path.isfile(path):
        raise UsageError(f"{flag} {path}: no such file.")
    extension = os.path.splitext(path)[1].lstrip(".").lower()
    if extension not in ("csv", "json", "jsonl"):
        raise UsageError(f"{flag} {path}: the file must be .csv, .json or .jsonl.")
    text_columns = [c for c in (config.text_column, config.text_pair_column) if c]
    try:
        if extension == "csv":  # texts stay texts ("123", an empty cell), labels are parsed as pandas reads them
            frame = pd.read_csv(path, dtype=dict.fromkeys(text_columns, str), keep_default_na=False)
        else:
            frame = pd.read_json(path, lines=extension == "jsonl", dtype=dict.fromkeys(text_columns, str))
    except pd.errors.EmptyDataError:
        raise UsageError(f"{flag} {path}: the file is empty; it needs a header row and one example per row.") from None
    except (ValueError, pd.errors.ParserError) as err:
        raise UsageError(f"{flag} {path}: not readable as {extension.upper()} ({str(err).splitlines()[0]}).") from None
    missing = [c for c in (*text_columns, config.label_column) if c not in frame.columns]
    if missing:
        flags = {config.text_column: "--text_column", config.label_column: "--label_column"}
        raise UsageError(
            f"{flag} {path}: no column {missing[0]!r} (its columns: {list(map(str, frame.columns))}); name the right "
            f"one with {flags.get(missing[0], '--text_pair_column')}."
        )
    if frame.empty:
        raise UsageError(f"{flag} {path}: the file has a header but no examples.")
    return frame


def _check_labels(train, test, run: DecTRunArguments, config: DecTConfig) -> None:
    """Before any query: the training labels name classes of `--labels`, and the test labels are ones the
    training data has (else the whole fit would run before the test set is refused)."""
    from .data import label_indices

    train_labels = list(train[config.label_column])
    try:
        label_indices(train_labels, config.labels)
    except ValueError:
        unknown = sorted(
            {str(v) for v in train_labels} - set(config.labels) - set(map(str, range(len(config.labels))))
        )
        raise UsageError(
            f"the training labels {unknown[:10]} are not class names of --labels {config.labels}: give --labels with "
            "the names the data uses, one per --label_words entry, in the same order (or use class indices 0.."
            f"{len(config.labels) - 1})."
        ) from None
    if test is not None:
        unseen = sorted({str(v) for v in test[config.label_column]} - {str(v) for v in train_labels})
        if unseen:
            where = f"--test_file {run.test_file}" if run.test_file else f"split {run.test_split!r}"
            raise UsageError(
                f"{where}: labels {unseen[:10]} never occur in the training data; DecT cannot learn them."
            )


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
    for action in parser._actions:  # `--help` states no default for an option that must be given
        if action.required:
            action.default = argparse.SUPPRESS
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

    train, test = _load_splits(run, config)
    _check_labels(train, test, run, config)
    if run.shots is not None:
        train = few_shot(train, config.label_column, run.shots, config.head_seed)
    feature_model, feature_tokenizer = run.feature_model(config)
    backbone, tokenizer = run.base_model()
    config.backbone_name_or_path = run.model_name_or_path
    dect = DecTModel.from_base_model(backbone, config, tokenizer=tokenizer, feature_model=feature_model,
                                     feature_tokenizer=feature_tokenizer)  # fmt: skip
    dect.fit(train)
    metrics: dict = {"train_examples": len(train), "fit_seconds": dect.fit_seconds, "choice": dect.cv_choice,
                     "head": dect.record.head_type, "zero_shot_weight": dect.record.zero_shot_weight,
                     "calibrated": dect.record.calibrate, "steps": dect.record.steps}  # fmt: skip
    if test is not None:
        metrics["test"] = {"dect": dect.evaluate(test)}
        if dect.record.backbone_kind != "encoder":
            metrics["test"]["zero_shot"] = dect.evaluate(test, scoring="zero_shot")
    metrics["backbone_queries"] = dect.num_queries
    if dect.feature_queries is not None:
        metrics["feature_queries"] = dect.feature_queries.num_queries
    if run.endpoint:  # what the API was sent, retries included
        metrics["endpoint_requests"] = dect.backbone.client.requests
        metrics["endpoint_retries"] = dect.backbone.client.retries
    dect.save_pretrained(run.output_dir)
    with open(os.path.join(run.output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print(json.dumps(metrics, indent=2))
    return metrics
