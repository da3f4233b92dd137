"""`transformers` pipelines over hf-frozen models: DecT as text-classification, the frozen decoder (one encoder
or many) as text2text-generation / summarization, built by the stock factory and by `hf_frozen.pipeline`."""

import pytest
import torch
import transformers
from transformers import AutoModelForSeq2SeqLM

from hf_frozen import FrozenDecoderConfig, MultiEncoderModel, get_frozen_model
from hf_frozen.pipelines import DecTClassificationPipeline, FrozenDecoderGenerationPipeline, pipeline

from . import tiny_dect
from .tiny_models import tiny_model, tiny_tokenizer
from .trainer_utils import make_trainer

TEXTS = ["w5 w6 w7 w8", "w20 w21 w22", "w30 w31 w32 w33 w34 w35"]
GENERATE = dict(max_new_tokens=5, min_new_tokens=5, num_beams=1, do_sample=False)


@pytest.fixture(scope="module")
def dect():
    model = tiny_dect.make("masked_lm")
    model.fit(tiny_dect.sentiment(24, seed=1))
    return model


def test_dect_as_text_classification_through_the_stock_factory(dect):
    pipe = transformers.pipeline("text-classification", model=dect, pipeline_class=DecTClassificationPipeline)
    texts = tiny_dect.sentiment(6, seed=5)["text"]
    probabilities = dect.decision_scores(texts).softmax(-1)

    # One text: a list holding its best label (transformers' shape), whose score is DecT's probability.
    best = pipe(texts[0])
    assert len(best) == 1 and best[0]["label"] == dect.predict(texts[0])[0]
    assert best[0]["score"] == pytest.approx(probabilities[0].max().item(), abs=1e-6)
    # A list: one best label per text, the labels `predict` gives.
    assert [r["label"] for r in pipe(texts)] == dect.predict(texts)
    # top_k=None: every label per text, best first, probabilities summing to one.
    ranked = pipe(texts[1], top_k=None)
    assert [r["label"] for r in ranked] == [dect.config.labels[i] for i in probabilities[1].argsort(descending=True)]
    assert sum(r["score"] for r in ranked) == pytest.approx(1.0)
    raw = pipe(texts[1], top_k=1, function_to_apply="none")
    assert raw[0]["score"] == pytest.approx(dect.decision_scores([texts[1]]).max().item(), abs=1e-5)


def test_dect_pipeline_queries_each_text_once(dect):
    pipe = pipeline("text-classification", model=dect)
    texts = tiny_dect.sentiment(10, seed=9)["text"]
    before = dect.num_queries
    pipe(texts)
    pipe(texts)
    assert dect.num_queries - before == len(set(texts))


def test_dect_pipeline_refuses_an_unfitted_model_and_bad_inputs(dect):
    with pytest.raises(ValueError, match="not fitted"):
        DecTClassificationPipeline(model=tiny_dect.make("masked_lm"))
    with pytest.raises(ValueError, match="text_pair"):
        pipeline("text-classification", model=dect)([42])
    with pytest.raises(ValueError, match="text-classification"):
        pipeline("summarization", model=dect)


@pytest.fixture(scope="module")
def frozen(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    tiny_model("t5").save_pretrained(root / "base")
    tiny_tokenizer().save_pretrained(root / "base")
    model = get_frozen_model(AutoModelForSeq2SeqLM.from_pretrained(root / "base"), FrozenDecoderConfig())
    make_trainer(model, str(root / "run"), max_steps=3, learning_rate=3e-2).train()
    model.save_pretrained(root / "artifact")
    return root, model.eval()


def expected_generations(model, texts, **tasks):
    tokenizer = tiny_tokenizer()
    out = []
    for text in texts:
        batch = tokenizer(text, return_tensors="pt")
        out.append(tokenizer.decode(model.generate(**batch, **tasks, **GENERATE)[0], skip_special_tokens=True))
    return out


@pytest.mark.parametrize("task, key", [("summarization", "summary_text"), ("text2text-generation", "generated_text")])
def test_frozen_decoder_pipeline_generates_what_the_model_generates(frozen, task, key):
    root, model = frozen
    expected = expected_generations(model, TEXTS)
    pipe = pipeline(task, model=model, tokenizer=tiny_tokenizer())
    assert pipe(TEXTS[0], **GENERATE) == [{key: expected[0]}]
    assert pipe(TEXTS, **GENERATE) == [{key: text} for text in expected]
    # Batched: padding must not change any row.
    assert pipe(TEXTS, batch_size=3, **GENERATE) == [{key: text} for text in expected]
    # From the artifact folder alone: the model is loaded with AutoFrozenModel, the tokenizer found with its base.
    assert pipeline(task, model=str(root / "artifact"))(TEXTS, **GENERATE) == [{key: text} for text in expected]


def test_frozen_decoder_pipeline_returns_every_sequence(frozen):
    _, model = frozen
    pipe = pipeline("summarization", model=model, tokenizer=tiny_tokenizer())
    out = pipe(TEXTS[:2], num_beams=3, num_return_sequences=2, max_new_tokens=4)
    assert [len(r) for r in out] == [2, 2] and all("summary_text" in seq for r in out for seq in r)


def test_multi_encoder_pipeline_takes_a_task(frozen):
    root, _ = frozen
    multi = MultiEncoderModel.from_pretrained(root / "base")
    multi.add_task("copy", root / "artifact")
    torch.manual_seed(0)
    pipe = FrozenDecoderGenerationPipeline(model=multi, tokenizer=tiny_tokenizer(), task="summarization")
    expected = expected_generations(multi, TEXTS, tasks=["copy"])
    assert pipe(TEXTS, task="copy", **GENERATE) == [{"summary_text": text} for text in expected]
    built_for_task = pipeline("summarization", model=multi, tokenizer=tiny_tokenizer(), task_name="copy")
    assert built_for_task(TEXTS, **GENERATE) == [{"summary_text": text} for text in expected]
    with pytest.raises(ValueError, match="task='name'"):
        pipe(TEXTS[0])
    with pytest.raises(ValueError, match="nope"):
        pipe(TEXTS[0], task="nope")


def test_pipeline_refuses_other_models():
    with pytest.raises(TypeError, match="transformers.pipeline"):
        pipeline("summarization", model=tiny_model("t5"))


@pytest.mark.parametrize("batch_size", [2, 4])
def test_dect_pipeline_batches(dect, batch_size):
    """transformers' batching pads token ids with a tokenizer the DecT pipeline does not hold: it failed with
    "Pipeline without tokenizer ... cannot do batching". Batched answers equal unbatched ones."""
    pipe = pipeline("text-classification", model=dect)
    texts = tiny_dect.sentiment(7, seed=11)["text"]
    unbatched = pipe(texts, top_k=None)
    batched = pipe(texts, top_k=None, batch_size=batch_size)
    assert [[r["label"] for r in rows] for rows in batched] == [[r["label"] for r in rows] for rows in unbatched]
    for rows_b, rows_u in zip(batched, unbatched, strict=True):
        assert [r["score"] for r in rows_b] == pytest.approx([r["score"] for r in rows_u], abs=1e-6)


def test_pipeline_dispatches_through_the_registry():
    """A model class registered by a plugin runs the pipeline tasks it declares, without pipelines.py naming it."""
    import dataclasses

    import hf_frozen.registry as registry
    from hf_frozen import DecTConfig, DecTModel, get_frozen_model, register_adapter

    @dataclasses.dataclass
    class SentimentConfig(DecTConfig):
        ADAPTER_TYPE = "test_sentiment_only"

    class SentimentModel(DecTModel):
        PIPELINE_TASKS = ("sentiment-analysis",)

    register_adapter(SentimentConfig, SentimentModel)
    try:
        config = SentimentConfig(template=tiny_dect.TEMPLATE, label_words=tiny_dect.WORDS, labels=["neg", "pos"])
        model = get_frozen_model(tiny_dect.ClusterAPI(), config, backbone_name="cluster-api-v1")
        assert type(model) is SentimentModel
        model.show_progress = False
        model.fit(tiny_dect.sentiment(16))
        texts = tiny_dect.sentiment(4, seed=2)["text"]
        assert [r["label"] for r in pipeline("sentiment-analysis", model=model)(texts)] == model.predict(texts)
        with pytest.raises(ValueError, match=r"runs the pipeline tasks \['sentiment-analysis'\], not 'text-class"):
            pipeline("text-classification", model=model)
    finally:
        registry._ADAPTERS.pop("test_sentiment_only")
