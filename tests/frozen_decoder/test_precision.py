"""A frozen decoder held in bf16/fp16 (`decoder_dtype`) while the encoder trains in fp32: the dtype boundary."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

from hf_frozen import AutoFrozenModel, FrozenDecoderConfig, MultiEncoderModel, get_frozen_model
from hf_frozen.frozen_decoder.deepspeed_config import check_deepspeed_config

from ..tiny_models import FAMILIES, copy_task_dataset, tiny_model
from ..trainer_utils import make_trainer
from .helpers import INPUTS, assert_decoder_identical, generations, snapshot

BF16 = FrozenDecoderConfig(decoder_dtype="bfloat16")


def floating_dtypes(tensors) -> set[torch.dtype]:
    return {t.dtype for t in tensors if t.is_floating_point()}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_trainer_steps_keep_the_low_precision_decoder_bit_identical(family, mode, tmp_path):
    config = FrozenDecoderConfig(encoder_training=mode, lora_r=4, decoder_dtype="bfloat16")
    model = get_frozen_model(tiny_model(family), config)
    assert floating_dtypes(model.decoder_tensors().values()) == {torch.bfloat16}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and floating_dtypes(trainable) == {torch.float32}, "the encoder keeps fp32 weights"
    decoder_before, encoder_before = snapshot(model.decoder_tensors()), snapshot(model.encoder_state_dict())
    trainer = make_trainer(model, str(tmp_path / "run"), max_steps=3, learning_rate=3e-2)
    trainer.train()

    assert_decoder_identical(model, decoder_before)
    model.verify_frozen()
    assert any(not torch.equal(encoder_before[k], t) for k, t in model.encoder_state_dict().items())
    # The optimizer holds fp32 state for the encoder's weights alone.
    states = [s for s in trainer.optimizer.state.values() if "exp_avg" in s]
    assert len(states) == len(trainable) and floating_dtypes(s["exp_avg"] for s in states) == {torch.float32}
    out = model(**{k: torch.tensor(v[:2]) for k, v in copy_task_dataset()[:2].items()})
    assert out.logits.dtype == torch.float32, "the loss is computed on fp32 logits"


def test_gradients_cross_the_boundary_in_each_sides_dtype():
    model = get_frozen_model(tiny_model("t5"), BF16).train()
    seen = {}
    model.get_base_model().get_decoder().register_forward_pre_hook(
        lambda m, a, kw: seen.update(decoder_input=kw["encoder_hidden_states"].dtype), with_kwargs=True
    )
    model.get_base_model().get_encoder().register_forward_hook(
        lambda m, a, out: seen.update(encoder_output=out.last_hidden_state.dtype)
    )
    model(input_ids=INPUTS, labels=INPUTS[:, :4].contiguous()).loss.backward()
    assert seen == {"encoder_output": torch.float32, "decoder_input": torch.bfloat16}
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.decoder_tensors().values() if isinstance(p, torch.nn.Parameter))


def test_loss_stays_close_to_the_fp32_frozen_decoder():
    ids, labels = INPUTS, INPUTS.flip(1)
    fp32 = get_frozen_model(tiny_model("t5"), FrozenDecoderConfig())(input_ids=ids, labels=labels).loss
    bf16 = get_frozen_model(tiny_model("t5"), BF16)(input_ids=ids, labels=labels).loss
    assert abs(bf16.item() - fp32.item()) / fp32.item() < 0.01


GENERATE = """
import json, sys, torch
from transformers import AutoModelForSeq2SeqLM
from hf_frozen import AutoFrozenModel
base = AutoModelForSeq2SeqLM.from_pretrained(sys.argv[2], dtype=getattr(torch, sys.argv[3]))
model = AutoFrozenModel.from_pretrained(sys.argv[1], base_model=base)
ids = torch.tensor(json.loads(sys.argv[4]))
out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, min_new_tokens=6,
                     num_beams=3, do_sample=False)
dtypes = sorted({str(t.dtype) for t in model.decoder_tensors().values() if t.is_floating_point()})
print(json.dumps({"generated": out.tolist(), "decoder_dtypes": dtypes}))
"""


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_artifact_loads_and_generates_on_an_fp32_and_a_bf16_base(family, tmp_path):
    tiny_model(family).save_pretrained(tmp_path / "base")
    model = get_frozen_model(AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "base"), BF16)
    make_trainer(model, str(tmp_path / "run"), max_steps=3, learning_rate=3e-2).train()
    expected = generations(model)["beam3"]
    model.save_pretrained(tmp_path / "artifact")
    assert json.loads((tmp_path / "artifact" / "hf_frozen_config.json").read_text())["decoder_dtype"] == "bfloat16"

    results = {}
    for dtype in ("float32", "bfloat16"):  # each in a fresh process
        done = subprocess.run(
            [sys.executable, "-c", GENERATE, str(tmp_path / "artifact"), str(tmp_path / "base"), dtype,
             json.dumps(INPUTS.tolist())],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        results[dtype] = json.loads(done.stdout.strip().splitlines()[-1])
        assert results[dtype]["decoder_dtypes"] == ["torch.bfloat16"]
    # On an fp32 base the decoder is cast as in training: the same model, the same beams.
    assert results["float32"]["generated"] == expected
    # On a bf16 base the decoder is the same bf16 one (its fingerprint matched); the encoder runs in bf16 there.
    assert len(results["bfloat16"]["generated"]) == len(expected)


def test_an_fp32_trained_encoder_is_refused_on_a_bf16_decoder(tmp_path):
    get_frozen_model(tiny_model("t5"), FrozenDecoderConfig()).save_pretrained(tmp_path / "fp32")
    with pytest.raises(ValueError, match="different decoder"):
        AutoFrozenModel.from_pretrained(tmp_path / "fp32", base_model=tiny_model("t5").to(torch.bfloat16))


def test_merge_and_unload_gives_a_plain_model_in_one_dtype(tmp_path):
    model = get_frozen_model(tiny_model("t5"), FrozenDecoderConfig(encoder_training="lora", decoder_dtype="bfloat16"))
    make_trainer(model, str(tmp_path / "run"), max_steps=3, learning_rate=3e-2).train()
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=INPUTS, labels=INPUTS).logits
    plain = model.merge_and_unload()
    assert floating_dtypes(plain.parameters()) == {torch.float32}
    plain.save_pretrained(tmp_path / "plain")
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "plain").eval()
    with torch.no_grad():
        logits = reloaded(input_ids=INPUTS, labels=INPUTS).logits
    # fp32 arithmetic on the bf16-rounded decoder weights: close to the bf16 computation, not bit-equal.
    torch.testing.assert_close(logits, expected, atol=0.05, rtol=0.05)


def test_decoder_dtype_is_validated():
    with pytest.raises(ValueError, match=r"`decoder_dtype` must be one of \['bfloat16', 'float16'\], got 'bf16'"):
        FrozenDecoderConfig(decoder_dtype="bf16")
    assert FrozenDecoderConfig(decoder_dtype=torch.bfloat16).decoder_dtype == "bfloat16"


def test_deepspeed_half_precision_is_accepted_only_for_a_decoder_already_in_that_dtype():
    bf16 = {"bf16": {"enabled": True}}
    check_deepspeed_config(bf16, get_frozen_model(tiny_model("t5"), BF16))  # nothing to cast: accepted
    with pytest.raises(ValueError, match=r"`bf16.enabled` is true.*decoder_dtype=\"bfloat16\""):
        check_deepspeed_config(bf16, get_frozen_model(tiny_model("t5"), FrozenDecoderConfig()))
    with pytest.raises(ValueError, match=r"`fp16.enabled` is true"):
        check_deepspeed_config({"fp16": {"enabled": True}}, get_frozen_model(tiny_model("t5"), BF16))


def test_multi_encoder_serves_bf16_decoder_tasks_and_refuses_a_mix(tmp_path):
    tiny_model("bart").save_pretrained(tmp_path / "base")
    paths = {}
    for name, config in {"full": BF16, "lora": FrozenDecoderConfig(encoder_training="lora", decoder_dtype="bfloat16"),
                         "fp32": FrozenDecoderConfig()}.items():  # fmt: skip
        model = get_frozen_model(AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "base"), config)
        make_trainer(model, str(tmp_path / "run"), max_steps=3, learning_rate=3e-2).train()
        model.save_pretrained(tmp_path / name)
        paths[name] = tmp_path / name
    bf16_tasks = {"full": paths["full"], "lora": paths["lora"]}
    server = MultiEncoderModel.from_pretrained(str(tmp_path / "base"), bf16_tasks)  # the dtype read from the tasks
    assert server.decoder_dtype == "bfloat16"
    assert floating_dtypes(server.decoder_tensors().values()) == {torch.bfloat16}
    tasks = ["full", "lora"]
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, num_beams=3, do_sample=False)
    mixed = server.generate(input_ids=INPUTS, attention_mask=torch.ones_like(INPUTS), tasks=tasks, **kwargs)
    for row, task in enumerate(tasks):
        alone = AutoFrozenModel.from_pretrained(paths[task], base_model=str(tmp_path / "base"))
        expected = alone.generate(input_ids=INPUTS[row : row + 1], **kwargs)
        assert mixed[row : row + 1].tolist() == expected.tolist(), task
    with pytest.raises(ValueError, match="different dtypes"):
        MultiEncoderModel.from_pretrained(str(tmp_path / "base"), paths)
    with pytest.raises(ValueError, match=r"Task 'fp32'.*`decoder_dtype=None`.*Serve tasks of one `decoder_dtype`"):
        server.add_task("fp32", paths["fp32"])


def test_a_decoder_already_partitioned_by_zero3_is_refused_by_name():
    model = tiny_model("t5")
    # What `zero.Init` leaves on a parameter (the real ZeRO-3 runs are in tests/test_distributed.py).
    model.get_decoder().block[0].layer[0].SelfAttention.q.weight.ds_id = 0
    with pytest.raises(ValueError, match=r"`decoder_dtype='bfloat16'` cannot cast a decoder that DeepSpeed ZeRO-3"):
        get_frozen_model(model, BF16)
