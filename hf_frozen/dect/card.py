"""The model card (README.md) that `push_to_hub` uploads with a DecT head."""

from __future__ import annotations

from ..utils.hub import build_model_card
from .config import DecTConfig
from .heads import Head
from .record import DecTRecord


def model_card(c: DecTConfig, r: DecTRecord, head: Head, repo_id: str | None = None) -> str:
    """The README.md that `push_to_hub` uploads with a DecT head (through `huggingface_hub.ModelCard`)."""
    classes = ", ".join(f"{name} = {'|'.join(words)}" for name, words in zip(c.labels, c.label_words, strict=True))
    if r.feature_model:
        features = f"the pooled embedding of the text by the feature model `{c.feature_model_name_or_path}`"
        if c.combine_features:
            features += " next to the backbone's hidden state (each scaled to unit length)"
    else:
        features = "the backbone's hidden state"
    body = f"""
# DecT head

A [Decoder Tuning](https://arxiv.org/abs/2212.08408) head for the frozen backbone
`{c.backbone_name_or_path}` ({r.backbone_kind}): {head.describe(c)}, over {features}, combined with the
prompt's label-word scores.

- Template: `{c.template}`
- Classes and label words: {classes}
- Zero-shot weight in use: `{r.zero_shot_weight}` (calibrated: `{r.calibrate}`)
- Head: `{r.head_type}`, training steps: `{r.steps}`

## Usage

```python
from hf_frozen import AutoFrozenModel

dect = AutoFrozenModel.from_pretrained("{repo_id or "<this repo id>"}")
dect.predict(["some text"])
```
"""
    return build_model_card(c.backbone_name_or_path, ["dect"], "text-classification", body)
