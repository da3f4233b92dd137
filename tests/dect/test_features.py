"""Features from a second model: a sentence encoder (or an embeddings API, or a function) gives the head's features,
the prompted LM its label-word scores; both are cached apart, recorded, and reloaded with the head."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from hf_frozen import AutoFrozenModel, DecTConfig, Endpoint, get_frozen_model
from hf_frozen.dect.cache import CachedQueries
from hf_frozen.dect.features import pool, sentence_transformers_pooling

from ..tiny_dect import TEMPLATE, WORDS, ClusterAPI, backbone, sentiment, tokenizer
from .test_http_client import ScriptedServer, ok, working_routes

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sentence_encoder_folder(folder, mode="pooling_mode_cls_token", normalize=True, seed=1):
    """A tiny BERT saved as a sentence-transformers folder (modules.json, 1_Pooling/config.json)."""
    backbone("encoder", seed=seed).save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling"}]  # fmt: skip
    if normalize:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    flags = {f"pooling_mode_{m}": False for m in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")}
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, **flags, mode: True})
    )
    return folder


def two_model_dect(tmp_path, **overrides):
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    lm_folder, encoder_folder = tmp_path / "lm", tmp_path / "encoder"
    if not lm_folder.exists():
        backbone("causal_lm").save_pretrained(lm_folder)
        tokenizer().save_pretrained(lm_folder)
        sentence_encoder_folder(encoder_folder)
    config = DecTConfig(template=TEMPLATE, label_words=WORDS, labels=["neg", "pos"], batch_size=4, **overrides)
    dect = get_frozen_model(AutoModelForCausalLM.from_pretrained(lm_folder), config,
                            tokenizer=AutoTokenizer.from_pretrained(lm_folder),
                            feature_model=AutoModel.from_pretrained(encoder_folder),
                            feature_tokenizer=AutoTokenizer.from_pretrained(encoder_folder))  # fmt: skip
    dect.show_progress = False
    return dect, lm_folder, encoder_folder


def test_the_lm_scores_and_the_sentence_encoder_gives_the_features(tmp_path):
    from transformers import AutoModel

    dect, lm_folder, encoder_folder = two_model_dect(tmp_path, query_cache_dir=str(tmp_path / "cache"))
    train, test = sentiment(16), sentiment(12, seed=3)
    dect.fit(train)
    assert dect.num_queries == 16 + 1 and dect.feature_queries.num_queries == 16 + 1, "each model once per example"
    # The features are the LM's state at the answer position, next to the encoder's CLS vector of the text alone
    # (not the prompt), normalised as the folder says; each scaled to unit length.
    encoder, tok = AutoModel.from_pretrained(encoder_folder).eval(), tokenizer()
    with torch.no_grad():
        states = encoder(**tok(train["text"][:3], return_tensors="pt", padding=True)).last_hidden_state
    expected = torch.nn.functional.normalize(states[:, 0], dim=-1)
    lm_states = CachedQueries.extract(dect, train["text"][:3])[0]
    assert not torch.allclose(lm_states.norm(dim=1), torch.ones(3)), "the LM's states are not unit length as such"
    expected = torch.cat([torch.nn.functional.normalize(lm_states, dim=-1), expected], dim=1)
    torch.testing.assert_close(dect.features(train)[0][:3], expected, atol=1e-5, rtol=1e-5)
    assert dect.record.hidden_size == 32 + 32 and dect.record.feature_model["hidden_size"] == 32
    assert dect.config.combine_features is True and dect.record.feature_model["pooling"] == "cls"
    assert dect.record.feature_model["normalize"] is True and dect.config.feature_model_name_or_path == str(
        encoder_folder
    )
    scores = dect.extract(test["text"])[1]
    assert scores.shape == (12, 2), "the LM still gives the prompt's scores"
    # Two caches in one folder, never mixed: the scorer's and the feature model's entries, each once per example.
    entries = [f for shard in (tmp_path / "cache").iterdir() for f in shard.iterdir()]
    assert len(entries) == 2 * (16 + 1) + 12 + 12

    # Saved and reloaded in a fresh process from the recorded models alone: the same predictions.
    dect.save_pretrained(tmp_path / "head")
    script = (
        "import json, sys; from hf_frozen import AutoFrozenModel; "
        f"m = AutoFrozenModel.from_pretrained({str(tmp_path / 'head')!r}); "
        f"print(json.dumps(m.predict({list(test['text'])!r})))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == dect.predict(test)


def test_the_feature_model_alone_when_combining_is_off(tmp_path):
    dect, _, _ = two_model_dect(tmp_path, combine_features=False)
    train = sentiment(16)
    dect.fit(train)
    torch.testing.assert_close(dect.features(train)[0], dect.feature_queries.extract(train["text"])[0])
    assert dect.record.hidden_size == 32
    dect.save_pretrained(tmp_path / "head")
    reloaded = AutoFrozenModel.from_pretrained(tmp_path / "head")
    assert reloaded.config.combine_features is False and reloaded.predict(train) == dect.predict(train)


def test_a_head_refuses_another_feature_model(tmp_path):
    from transformers import AutoModel

    dect, _, _ = two_model_dect(tmp_path)
    dect.fit(sentiment(16))
    dect.save_pretrained(tmp_path / "head")
    other = sentence_encoder_folder(tmp_path / "other", seed=7)
    with pytest.raises(ValueError, match="fitted on features of another model"):
        AutoFrozenModel.from_pretrained(tmp_path / "head", feature_model=AutoModel.from_pretrained(other),
                                        feature_tokenizer=tokenizer())  # fmt: skip
    with pytest.raises(ValueError, match="fitted without a feature model"):
        plain = get_frozen_model(ClusterAPI(), DecTConfig(template=TEMPLATE, label_words=WORDS), backbone_name="c")
        plain.show_progress = False
        plain.fit(sentiment(8))
        plain.save_pretrained(tmp_path / "plain")
        AutoFrozenModel.from_pretrained(tmp_path / "plain", base_model=ClusterAPI(), feature_model=lambda t: t,
                                        feature_name="f")  # fmt: skip


def test_pooling_modes_and_a_declared_mode_hf_frozen_lacks(tmp_path):
    states = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(states, mask, "mean").tolist() == [[2.0, 3.0]]
    assert pool(states, mask, "cls").tolist() == [[1.0, 2.0]]
    assert pool(states, mask, "max").tolist() == [[3.0, 4.0]]
    assert pool(states, mask, "last").tolist() == [[3.0, 4.0]]
    assert sentence_transformers_pooling(sentence_encoder_folder(tmp_path / "m", "pooling_mode_mean_tokens",
                                                                 normalize=False)) == ("mean", False)  # fmt: skip
    folder = sentence_encoder_folder(tmp_path / "sqrt", "pooling_mode_mean_sqrt_len_tokens")
    with pytest.raises(ValueError, match=r"1_Pooling/config.json declares the pooling mode\(s\) \['mean_sqrt_len"):
        sentence_transformers_pooling(folder)
    from transformers import AutoModel

    with pytest.raises(ValueError, match="feature_pooling="):
        get_frozen_model(ClusterAPI(), DecTConfig(template=TEMPLATE, label_words=WORDS), backbone_name="c",
                         feature_model=AutoModel.from_pretrained(folder), feature_tokenizer=tokenizer())  # fmt: skip
    # Chosen explicitly, the folder's declaration is not read.
    dect = get_frozen_model(ClusterAPI(), DecTConfig(template=TEMPLATE, label_words=WORDS, feature_pooling="max"),
                            backbone_name="c", feature_model=AutoModel.from_pretrained(folder),
                            feature_tokenizer=tokenizer())  # fmt: skip
    assert dect.feature_queries.backbone.source.pooling == "max"
    with pytest.raises(ValueError, match="`feature_pooling` must be"):
        DecTConfig(label_words=WORDS, feature_pooling="weighted")


def test_bad_feature_models_are_named():
    config = DecTConfig(template=TEMPLATE, label_words=WORDS)
    with pytest.raises(ValueError, match="no `feature_tokenizer` was given"):
        get_frozen_model(ClusterAPI(), config, backbone_name="c", feature_model=backbone("encoder"))
    with pytest.raises(ValueError, match="`feature_name=`"):
        get_frozen_model(ClusterAPI(), config, backbone_name="c", feature_model=lambda texts: np.ones((len(texts), 4)))
    with pytest.raises(TypeError, match="`feature_model` must be"):
        get_frozen_model(ClusterAPI(), config, backbone_name="c", feature_model=42)

    sizes = iter([4, 5])
    growing = get_frozen_model(ClusterAPI(), config, backbone_name="c", feature_name="grows-v1",
                               feature_model=lambda texts: np.ones((len(texts), next(sizes))))  # fmt: skip
    growing.show_progress = False
    growing.extract(["a film"])
    with pytest.raises(ValueError, match="returned vectors of size 5 after ones of size 4"):
        growing.extract(["another film"])


def test_a_scorer_without_features_beside_a_feature_function():
    """An API with log-probabilities and no embeddings (its callable returns None for the hidden states) is valid
    beside a feature model; the head learns from the features."""

    class ScoresOnly:
        def __call__(self, prompts, label_words):
            return None, np.zeros((len(prompts), len(label_words)))  # a prompt that knows nothing

    encoder = ClusterAPI(dim=8)
    config = DecTConfig(template=TEMPLATE, label_words=WORDS)
    dect = get_frozen_model(ScoresOnly(), config, backbone_name="scores", feature_name="cluster-v1",
                            feature_model=lambda texts: encoder(texts, WORDS)[0])  # fmt: skip
    dect.show_progress = False
    dect.fit(sentiment(32))
    assert dect.record.hidden_size == 8 and dect.record.feature_model["kind"] == "callable"
    assert dect.evaluate(sentiment(60, seed=2))["accuracy"] > 0.9


def embeddings_server() -> ScriptedServer:
    """An embeddings API serving "emb": 3-dimensional vectors, the first telling the sentiment."""

    def embed(body):
        text = body["input"][0]
        vector = [float("good" in text or "great" in text), 1.0, float(len(text) % 3)]
        return 200, {}, json.dumps({"data": [{"embedding": vector}]}).encode()

    return ScriptedServer({"/v1/models": ok({"data": [{"id": "emb"}]}), "/v1/embeddings": embed})


def test_an_endpoint_scorer_adds_its_own_states_when_asked():
    """`combine_features=True` beside an `Endpoint` scorer: its embeddings route gives the answer-position states,
    which the head reads next to the feature API's vectors."""
    scorer, embedder = ScriptedServer(working_routes()), embeddings_server()
    config = DecTConfig(template="Review: {text} Sentiment:{answer}", label_words=["bad", "good"],
                        combine_features=True)  # fmt: skip
    dect = get_frozen_model(Endpoint(scorer.url, "m", concurrency=1), config,
                            feature_model=Endpoint(embedder.url, "emb", concurrency=1))  # fmt: skip
    dect.show_progress = False
    dect.fit(sentiment(16))
    assert "/v1/embeddings" in scorer.requests and dect.record.feature_model["hidden_size"] == 3
    assert dect.record.hidden_size == dect.backbone.hidden_size + 3


def test_an_llm_api_with_an_embeddings_api_beside_it(tmp_path):
    """Scores from one server's completion route (its embeddings route is never asked), features from another
    server's embeddings route; the saved head reloads only onto the endpoints the caller passes."""
    scorer_routes = working_routes()
    del scorer_routes["/v1/embeddings"]
    scorer, embedder = ScriptedServer(scorer_routes), embeddings_server()
    config = DecTConfig(template="Review: {text} Sentiment:{answer}", label_words=["bad", "good"])
    dect = get_frozen_model(Endpoint(scorer.url, "m", concurrency=1), config,
                            feature_model=Endpoint(embedder.url, "emb", concurrency=1))  # fmt: skip
    dect.show_progress = False
    dect.fit(sentiment(16))
    assert "/v1/embeddings" not in scorer.requests and dect.record.hidden_size == 3
    dect.save_pretrained(tmp_path / "head")
    with pytest.raises(ValueError, match="feature_endpoint=Endpoint"):
        AutoFrozenModel.from_pretrained(tmp_path / "head", endpoint=Endpoint(scorer.url, "m"))
    loaded = AutoFrozenModel.from_pretrained(tmp_path / "head", endpoint=Endpoint(scorer.url, "m"),
                                             feature_endpoint=Endpoint(embedder.url, "emb"))  # fmt: skip
    test = sentiment(8, seed=5)
    assert loaded.predict(test) == dect.predict(test)


def test_a_used_tokenizer_is_the_same_feature_model():
    """Calling a fast tokenizer with truncation changes its backend's settings: the fingerprint (and so the cache key
    and a saved head's record) must not change with it."""
    config = DecTConfig(template=TEMPLATE, label_words=WORDS)
    encoder, tok = backbone("encoder"), tokenizer()
    fresh = get_frozen_model(ClusterAPI(), config, backbone_name="c", feature_model=encoder, feature_tokenizer=tok)
    tok(["a film"], truncation=True, max_length=7, padding="max_length")  # another task used the same tokenizer
    used = get_frozen_model(ClusterAPI(), config, backbone_name="c", feature_model=encoder, feature_tokenizer=tok)
    assert used.feature_queries.backbone.settings_fingerprint == fresh.feature_queries.backbone.settings_fingerprint
