"""Backbones: the answer position, the shared prompt prefix, bad backbones and label words."""

import json

import numpy as np
import pytest
import torch

from hf_frozen import AutoFrozenModel, DecTConfig, get_frozen_model

from .. import tiny_dect
from ..tiny_dect import TEMPLATE, WORDS, ClusterAPI, backbone, sentiment, tokenizer


def test_answer_position_matches_a_full_forward():
    """The hooked head must give exactly what a plain forward gives at the answer position."""
    tok = tiny_dect.tokenizer()
    for kind in ("masked_lm", "causal_lm", "seq2seq_lm"):
        model = backbone(kind)
        dect = get_frozen_model(model, DecTConfig(template=TEMPLATE, label_words=WORDS), tokenizer=tok)
        dect.show_progress = False
        text = "the plot was superb"
        hidden, scores = dect.extract([text])
        prompt = dect.backbone.render(text, None)
        ids = torch.tensor([dect.backbone.encode(prompt)])
        with torch.no_grad():
            if kind == "seq2seq_lm":
                logits = model(input_ids=ids, decoder_input_ids=torch.tensor([dect.backbone.decoder_prefix])).logits[
                    0, -1
                ]
            elif kind == "masked_lm":
                logits = model(input_ids=ids).logits[0, ids[0].tolist().index(tok.mask_token_id)]
            else:
                logits = model(input_ids=ids).logits[0, -1]
        expected = torch.stack([logits[ids_].max() for ids_ in dect.backbone.label_ids])
        torch.testing.assert_close(scores[0], expected, msg=kind)


def test_shared_prompt_prefix_is_read_once_and_changes_nothing():
    """Causal LMs reuse the keys and values of the start all prompts share; answers equal full forwards."""
    config = DecTConfig(template="the story the film the plot : {text} . sentiment : {answer}", label_words=WORDS,
                        batch_size=4)  # fmt: skip
    dect = get_frozen_model(backbone("causal_lm"), config, tokenizer=tiny_dect.tokenizer())
    hf = dect.backbone
    assert hf.tokenizer.convert_ids_to_tokens(hf.shared_prefix) == ["[CLS]", "the", "story", "the", "film", "the"]
    inputs = [(t, None) for t in sentiment(6)["text"]] + [("", None)]
    lengths = []
    hf.model.base_model.register_forward_pre_hook(
        lambda m, a, kw: lengths.append(kw["input_ids"].shape if "input_ids" in kw else a[0].shape), with_kwargs=True
    )
    hidden, scores = hf.query(inputs[:4])
    more_hidden, more_scores = hf.query(inputs[4:])
    hf.shared_prefix = []  # the plain path: every prompt read from its first token
    plain_hidden, plain_scores = hf.query(inputs)
    assert lengths[0] == (1, 6), "the shared prefix, read once"
    full = lengths[3][1]  # the plain path pads all 7 prompts to the longest: the longest suffix is 6 shorter
    assert max(shape[1] for shape in lengths[1:3]) == full - 6, "afterwards, only the prompts' own tokens"
    np.testing.assert_allclose(np.concatenate([hidden, more_hidden]), plain_hidden, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.concatenate([scores, more_scores]), plain_scores, atol=1e-5, rtol=1e-5)


def test_bad_backbones_and_label_words_are_named():
    tok = tiny_dect.tokenizer()
    with pytest.raises(ValueError, match="Label word 'fantastic' is not in the vocabulary"):
        get_frozen_model(backbone("masked_lm"), DecTConfig(template=TEMPLATE, label_words=["bad", "fantastic"]),
                         tokenizer=tok)  # fmt: skip
    with pytest.raises(ValueError, match="start with the same token"):
        get_frozen_model(backbone("masked_lm"), DecTConfig(template=TEMPLATE, label_words=["bad|good", "good"]),
                         tokenizer=tok)  # fmt: skip
    with pytest.raises(TypeError, match="transformers model, an `Endpoint` or a callable"):
        get_frozen_model(object(), DecTConfig(template=TEMPLATE, label_words=WORDS))
    from transformers import BertConfig, BertForSequenceClassification

    with pytest.raises(ValueError, match="cannot query BertForSequenceClassification"):
        get_frozen_model(BertForSequenceClassification(BertConfig(**tiny_dect._BERT)),
                         DecTConfig(template=TEMPLATE, label_words=WORDS), tokenizer=tok)  # fmt: skip
    with pytest.raises(ValueError, match="needs its tokenizer"):
        get_frozen_model(backbone("masked_lm"), DecTConfig(template=TEMPLATE, label_words=WORDS))
    with pytest.raises(ValueError, match="backbone_name"):
        get_frozen_model(ClusterAPI(), DecTConfig(template=TEMPLATE, label_words=WORDS))


def test_api_returning_wrong_shapes_is_named():
    bad = get_frozen_model(lambda prompts, words: (np.zeros((1, 4)), None),
                           DecTConfig(template=TEMPLATE, label_words=WORDS), backbone_name="bad")  # fmt: skip
    bad.show_progress = False
    with pytest.raises(ValueError, match="hidden states of shape \\(1, 4\\), expected \\(3, d\\)"):
        bad.extract(["a", "b", "c"])


def test_backbone_kind_is_read_from_the_config_even_without_architectures(tmp_path):
    """A converted checkpoint (the demo's SmolLM2 folder is one) may have no `architectures`: its model type
    decides, instead of falling back on a plain encoder."""
    from transformers import BertConfig, GPT2Config, LlamaConfig, T5Config

    from hf_frozen.dect.backbones import kind_from_config, load_backbone

    assert kind_from_config(GPT2Config()) == "causal_lm"
    assert kind_from_config(LlamaConfig()) == "causal_lm"
    assert kind_from_config(BertConfig()) == "masked_lm"
    assert kind_from_config(BertConfig(architectures=["BertModel"])) == "encoder"
    assert kind_from_config(BertConfig(architectures=["BertForMaskedLM"])) == "masked_lm"
    assert kind_from_config(T5Config()) == "seq2seq_lm"

    backbone("causal_lm").save_pretrained(tmp_path)
    tiny_dect.tokenizer().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["architectures"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    model, tokenizer = load_backbone(str(tmp_path))
    assert type(model).__name__ == "GPT2LMHeadModel" and tokenizer is not None
    with pytest.raises(ValueError, match="Backbone kind must be one of"):
        load_backbone(str(tmp_path), kind="decoder")


def test_a_template_that_cuts_the_text_away_is_refused():
    """Causal LMs and APIs read the answer after a prompt cut at {answer}: {answer} first would drop every text."""
    backwards = DecTConfig(template="{answer} is the sentiment of : {text}", label_words=WORDS)
    with pytest.raises(ValueError, match="puts \\{answer\\} before the text"):
        get_frozen_model(backbone("causal_lm"), backwards, tokenizer=tiny_dect.tokenizer())
    with pytest.raises(ValueError, match="puts \\{answer\\} before the text"):
        get_frozen_model(ClusterAPI(), backwards, backbone_name="api")
    get_frozen_model(backbone("masked_lm"), backwards, tokenizer=tiny_dect.tokenizer())  # a mask can be anywhere
    get_frozen_model(ClusterAPI(), backwards, backbone_name="api", answer_placeholder="<mask>")


def test_a_text_longer_than_the_model_positions_is_cut_not_crashing():
    dect = get_frozen_model(backbone("causal_lm"), DecTConfig(template=TEMPLATE, label_words=WORDS),
                            tokenizer=tiny_dect.tokenizer())  # fmt: skip  # 64 positions, max_length 512
    dect.show_progress = False
    hidden, scores = dect.extract(["the film was great " * 60])
    assert hidden.shape == (1, 32) and torch.isfinite(scores).all()


def test_non_finite_answers_are_refused_and_never_cached(tmp_path):
    def broken_api(prompts, label_words):
        hidden = np.ones((len(prompts), 4))
        hidden[0, 2] = np.nan
        return hidden, np.zeros((len(prompts), 2))

    config = DecTConfig(template=TEMPLATE, label_words=WORDS, query_cache_dir=str(tmp_path))
    dect = get_frozen_model(broken_api, config, backbone_name="broken")
    dect.show_progress = False
    with pytest.raises(ValueError, match="NaN or infinite"):
        dect.extract(["a", "b"])
    assert not list(tmp_path.rglob("*.safetensors")), "nothing was cached"


def test_a_checkpoint_loaded_as_the_wrong_kind_is_refused(tmp_path):
    """A plain encoder's weights loaded as a masked LM leave its LM head random: refused, not queried."""
    from hf_frozen.dect.backbones import load_backbone

    backbone("encoder").save_pretrained(tmp_path)
    tiny_dect.tokenizer().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="newly initialised"):
        load_backbone(str(tmp_path), kind="masked_lm")
    model, _ = load_backbone(str(tmp_path))
    assert type(model).__name__ == "BertModel"


def test_the_shared_prefix_path_uses_no_deprecated_argument():
    """transformers renamed `past_key_values` to `cache` in forward: the prefix reuse passes the current name."""
    import warnings

    config = DecTConfig(template="the story the film : {text} . sentiment : {answer}", label_words=WORDS)
    dect = get_frozen_model(backbone("causal_lm"), config, tokenizer=tiny_dect.tokenizer())
    assert dect.backbone.shared_prefix, "the path under test reuses a prefix"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dect.backbone.query([("the film was great", None), ("bad", None)])
    assert not [w for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))], caught


@pytest.mark.parametrize("kind", ["masked_lm", "causal_lm", "seq2seq_lm", "encoder"])
def test_a_tokenizer_used_before_is_the_same_backbone(kind, tmp_path):
    """Another call's truncation and padding stay set on a fast tokenizer's backend: they change no answer, so they
    change neither the cache key nor what a saved head records (a plain encoder used to differ: nothing resets the
    state before its fingerprint is taken)."""
    config = DecTConfig(template=TEMPLATE, label_words=WORDS, hidden_pooling="mean" if kind == "encoder" else "answer")
    model = backbone(kind)
    fresh = get_frozen_model(model, config, tokenizer=tokenizer())
    used_tokenizer = tokenizer()
    used_tokenizer(["a film"], truncation=True, max_length=7, padding="max_length")  # another task used it
    used = get_frozen_model(model, config, tokenizer=used_tokenizer)
    assert used.backbone.settings_fingerprint == fresh.backbone.settings_fingerprint
    fresh.show_progress = False
    fresh.fit(sentiment(8)).save_pretrained(tmp_path / "head")
    used_tokenizer(["a film"], truncation=True, max_length=7, padding="max_length")
    reloaded = AutoFrozenModel.from_pretrained(tmp_path / "head", base_model=model, tokenizer=used_tokenizer)
    assert reloaded.predict(sentiment(4, seed=2)) == fresh.predict(sentiment(4, seed=2))
