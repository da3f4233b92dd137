"""An offline stand-in for the Hub, for running the docs' code as written: tiny models from configs stored in a
Hugging Face cache under the Hub ids the docs name, and uploads (`push_to_hub`) written into the same cache, so
that `from_pretrained("me/...")` finds what a snippet pushed. Only the Hub's servers are faked: every snippet runs
transformers, hf-frozen and huggingface_hub's own offline cache lookup for real (`HF_HUB_OFFLINE=1`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

REVISION = "0" * 40  # the one commit every fake repo has

# The words the docs' examples use (anything else is <unk>): label words must be tokens of their own.
WORDS = """a an the and or of in on to is was it this that film movie review reviews sentiment tweet gripping
beautiful dull far too long joy from start finish mess cat sat mat all day rain paris monday summarize summary
article positive negative terrible bad great good awful superb fresh rotten classify as answer user
assistant""".split()
SPECIALS = ["<pad>", "</s>", "<unk>", "[MASK]", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|>{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)


def tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        mask_token="[MASK]",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


SENTENCE_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"


def models() -> dict:
    """Hub id -> a tiny model of the kind the docs load under that id."""
    import torch
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        BertModel,
        GPT2Config,
        GPT2LMHeadModel,
        T5Config,
        T5ForConditionalGeneration,
    )

    size = len(SPECIALS) + len(WORDS)
    torch.manual_seed(0)
    return {
        "google-t5/t5-base": T5ForConditionalGeneration(T5Config(
            vocab_size=size, d_model=32, d_ff=37, num_layers=2, num_heads=4, d_kv=8, decoder_start_token_id=0,
            pad_token_id=0, eos_token_id=1)),
        "roberta-large": BertForMaskedLM(BertConfig(vocab_size=size, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=4, intermediate_size=37, pad_token_id=0)),
        "HuggingFaceTB/SmolLM2-135M-Instruct": GPT2LMHeadModel(GPT2Config(vocab_size=size, n_embd=32, n_layer=2,
                                                                          n_head=4, pad_token_id=0, bos_token_id=1,
                                                                          eos_token_id=1)),
        SENTENCE_ENCODER: BertModel(BertConfig(vocab_size=size, hidden_size=32, num_hidden_layers=2,
                                               num_attention_heads=4, intermediate_size=37, pad_token_id=0)),
    }  # fmt: skip


def snapshot_folder(hub_cache: Path, repo_id: str) -> Path:
    """Where the Hugging Face cache keeps a repo's files (huggingface_hub's layout), its `main` ref set."""
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    folder = repo / "snapshots" / REVISION
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def populate(hub_cache: Path) -> None:
    tok = tokenizer()
    for repo_id, model in models().items():
        folder = snapshot_folder(hub_cache, repo_id)
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        if repo_id == SENTENCE_ENCODER:  # its sentence-transformers files: mean pooling, then normalisation
            modules = [{"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
                       for i, (path, kind) in enumerate([("", "Transformer"), ("1_Pooling", "Pooling"),
                                                         ("2_Normalize", "Normalize")])]  # fmt: skip
            (folder / "modules.json").write_text(json.dumps(modules))
            (folder / "1_Pooling").mkdir(exist_ok=True)
            (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))


def upload_hook() -> None:
    """Make `HfApi.create_repo` / `upload_folder` write into the offline cache (`$HF_HOME/hub`), so that a pushed
    repo loads by its id afterwards. Run in the snippets' interpreter by the `sitecustomize` that `install` writes."""
    import os
    from types import SimpleNamespace

    import huggingface_hub

    hub_cache = Path(os.environ["HF_HOME"]) / "hub"

    def create_repo(self, repo_id, *args, **kwargs):
        snapshot_folder(hub_cache, repo_id)
        return SimpleNamespace(repo_id=repo_id, url=f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *args, repo_id=None, folder_path=None, path_in_repo=None, ignore_patterns=None, **kw):
        target = snapshot_folder(hub_cache, repo_id) / (path_in_repo or "")
        ignore = shutil.ignore_patterns(*ignore_patterns) if ignore_patterns else None
        shutil.copytree(folder_path, target, dirs_exist_ok=True, ignore=ignore)
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/0", oid=REVISION,
                               done=lambda: True, is_done=lambda: True)  # fmt: skip

    huggingface_hub.HfApi.create_repo = create_repo
    huggingface_hub.HfApi.upload_folder = upload_folder


def install(root: Path) -> dict[str, str]:
    """Set up the cache and the upload hook under `root`; the environment a snippet runs in."""
    populate(root / "hf" / "hub")
    (root / "site").mkdir(exist_ok=True)
    (root / "site" / "sitecustomize.py").write_text("from tests.offline_hub import upload_hook\n\nupload_hook()\n")
    repo = Path(__file__).resolve().parent.parent
    return {"HF_HOME": str(root / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": f"{root / 'site'}:{repo}"}
