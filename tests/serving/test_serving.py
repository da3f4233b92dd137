"""A real Ray Serve application on the loopback interface, with tiny models: what a client of the OpenAI-compatible
API sees. Outputs equal `MultiEncoderModel`'s and `DecTModel`'s in process; concurrent requests of different tasks
share model passes; bad requests get 4xx; a task changed on disk is refused; a replica killed under load loses no
request of a client that retries."""

from __future__ import annotations

import collections
import concurrent.futures
import json
import shutil
import time

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from hf_frozen import AutoFrozenModel, FrozenDecoderConfig, MultiEncoderModel, get_frozen_model

from .. import tiny_dect
from ..tiny_models import save_tiny_t5_with_tokenizer

ray = pytest.importorskip("ray")
requests = pytest.importorskip("requests")
from ray import serve  # noqa: E402

from hf_frozen.serving import APP_NAME, ApiLimits, ReplicaOptions, build_app, run_server, task_catalog  # noqa: E402

PORT = 8431
URL = f"http://127.0.0.1:{PORT}/v1"
PROMPTS = {"summarize": ["w5 w6 w7 w8", "w9 w10"], "translate": ["w11 w12 w13", "w40"], "qa": ["w20 w21 w22 w23 w24"]}
LIMITS = ApiLimits(max_request_bytes=4096, max_prompts=8, max_tokens=32, max_num_beams=4)


def perturbed(model: MultiEncoderModel, seed: int) -> MultiEncoderModel:
    """Task encoders with weights of their own, as after training."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for task in model.task_configs:
            for tensor in model._task_tensors(task).values():
                tensor.add_(torch.randn_like(tensor) * 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A tiny T5 base with its tokenizer; a set of two LoRA tasks; a full-encoder task; a spare full-encoder task (to
    be changed on disk); two DecT heads on a tiny GPT-2 saved with its tokenizer, one of them reading a tiny BERT's
    features too (`feature_model=`, loaded by the server from its recorded folder)."""
    root = tmp_path_factory.mktemp("serving")
    save_tiny_t5_with_tokenizer(root / "base")
    lora = FrozenDecoderConfig(encoder_training="lora", lora_r=4)
    base = lambda: AutoModelForSeq2SeqLM.from_pretrained(root / "base")  # noqa: E731
    perturbed(MultiEncoderModel.for_training(base(), ["summarize", "translate"], lora), 0).save_pretrained(
        root / "set"
    )
    full = perturbed(MultiEncoderModel.for_training(base(), ["qa", "spare"], FrozenDecoderConfig()), 1)
    full.save_pretrained(root / "full")
    tiny_dect.backbone("causal_lm").save_pretrained(root / "lm")
    tiny_dect.tokenizer().save_pretrained(root / "lm")
    dect = tiny_dect.make("causal_lm", head="prototype")
    dect.config.backbone_name_or_path = str(root / "lm")
    dect.fit(tiny_dect.sentiment(16)).save_pretrained(root / "sentiment")
    tiny_dect.backbone("encoder", seed=1).save_pretrained(root / "encoder")
    tiny_dect.tokenizer().save_pretrained(root / "encoder")
    two = get_frozen_model(AutoModelForCausalLM.from_pretrained(root / "lm"), dect.config,
                           tokenizer=AutoTokenizer.from_pretrained(root / "lm"),
                           feature_model=AutoModel.from_pretrained(root / "encoder"),
                           feature_tokenizer=AutoTokenizer.from_pretrained(root / "encoder"))  # fmt: skip
    two.show_progress = False
    two.fit(tiny_dect.sentiment(16, seed=1)).save_pretrained(root / "two_model")
    return root


@pytest.fixture(scope="module")
def server(artifacts):
    """One app for the module: two tasks at most per replica (so that every test also runs evictions and reads
    back), batches that wait up to half a second to fill."""
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    catalog = task_catalog({"qa": str(artifacts / "full" / "qa"), "spare": str(artifacts / "full" / "spare"),
                            "sentiment": str(artifacts / "sentiment"), "two_model": str(artifacts / "two_model")},
                           sets=[str(artifacts / "set")])  # fmt: skip
    replicas = ReplicaOptions(max_tasks_per_replica=2, max_batch_size=8, batch_wait_timeout_s=0.5, num_cpus=1)
    run_server(build_app(catalog, str(artifacts / "base"), replicas=replicas, limits=LIMITS), port=PORT, block=False)
    yield serve.get_deployment_handle("generation", APP_NAME)
    serve.shutdown()
    ray.shutdown()


def in_process(artifacts, task_prompts, num_beams, max_tokens=5):
    """What `MultiEncoderModel` generates in this process for [(task, prompt), ...], decoded."""
    model = MultiEncoderModel.from_pretrained(str(artifacts / "base"), str(artifacts / "set"))
    model.add_task("qa", str(artifacts / "full" / "qa"))
    tokenizer = AutoTokenizer.from_pretrained(artifacts / "base")
    inputs = tokenizer([p for _, p in task_prompts], return_tensors="pt", padding=True)
    output = model.generate(**inputs, tasks=[t for t, _ in task_prompts], max_new_tokens=max_tokens,
                            num_beams=num_beams, do_sample=False)  # fmt: skip
    return tokenizer.batch_decode(output, skip_special_tokens=True)


def complete(task, prompt, **fields):
    return requests.post(f"{URL}/completions", json={"model": task, "prompt": prompt, **fields}, timeout=120)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_outputs_over_http_equal_in_process_generation(server, artifacts, num_beams):
    pairs = [(task, p) for task, prompts in PROMPTS.items() for p in prompts]
    expected = in_process(artifacts, pairs, num_beams)
    got = []
    for task, prompts in PROMPTS.items():
        answer = complete(task, prompts, max_tokens=5, num_beams=num_beams)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["object"] == "text_completion" and body["model"] == task
        assert [c["index"] for c in body["choices"]] == list(range(len(prompts)))
        got += [c["text"] for c in body["choices"]]
    assert got == expected
    assert any(expected)  # the tiny models do generate words


def test_an_openai_client_works_unchanged(server, artifacts):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=URL, api_key="unused", max_retries=0)
    assert {m.id for m in client.models.list()} == {"summarize", "translate", "qa", "spare", "sentiment", "two_model"}
    answer = client.completions.create(model="translate", prompt=PROMPTS["translate"], max_tokens=5,
                                       extra_body={"num_beams": 3})  # fmt: skip
    expected = in_process(artifacts, [("translate", p) for p in PROMPTS["translate"]], num_beams=3)
    assert [c.text for c in answer.choices] == expected
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens > 0
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="nope", prompt="w5", max_tokens=2)


def test_concurrent_requests_of_different_tasks_share_model_passes(server, artifacts):
    burst = [(task, p) for task in ("summarize", "translate") for p in PROMPTS[task]] * 2  # 8 = max_batch_size
    for task in ("summarize", "translate"):  # both resident before the burst: no load delays any of it
        assert complete(task, "w5", max_tokens=3).status_code == 200
    before = server.stats.remote().result()
    with concurrent.futures.ThreadPoolExecutor(len(burst)) as pool:
        answers = list(pool.map(lambda pair: complete(pair[0], pair[1], max_tokens=5), burst))
    after = server.stats.remote().result()
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert [a.json()["choices"][0]["text"] for a in answers] == in_process(artifacts, burst, num_beams=1)
    assert after["requests"] - before["requests"] == len(burst)
    passes = after["passes"] - before["passes"]
    new_passes = after["recent_passes"][-passes:]
    assert passes < len(burst), new_passes  # requests were answered together
    assert any(len(tasks) == 2 for tasks, _ in new_passes), new_passes  # ... in passes that mix both tasks


def test_evicted_tasks_are_read_back_and_still_answer_the_same(server, artifacts):
    before = server.stats.remote().result()["task_loads"]
    for task in ["qa", "summarize", "translate", "qa", "summarize"]:  # two per replica: each request evicts one
        answer = complete(task, PROMPTS[task][0], max_tokens=5)
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["text"] == in_process(artifacts, [(task, PROMPTS[task][0])], 1)[0]
    stats = server.stats.remote().result()
    assert stats["task_loads"] - before >= 3 and len(stats["held"]) <= 2


def test_the_model_list_and_an_unknown_task(server):
    listed = requests.get(f"{URL}/models", timeout=30).json()
    assert listed["object"] == "list"
    kinds = {m["id"]: m["task"] for m in listed["data"]}
    assert kinds == {"summarize": "generation", "translate": "generation", "qa": "generation",
                     "spare": "generation", "sentiment": "classification", "two_model": "classification"}  # fmt: skip
    answer = complete("sumarize", "w5")
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert error["tasks"] == sorted(kinds) and "summarize" in error["message"]


@pytest.mark.parametrize(
    "body, status, named",
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (json.dumps({"prompt": "w5"}).encode(), 400, "`model`"),
        (json.dumps({"model": "qa"}).encode(), 400, "`prompt`"),
        (json.dumps({"model": "qa", "prompt": []}).encode(), 400, "`prompt`"),
        (json.dumps({"model": "qa", "prompt": [5]}).encode(), 400, "`prompt`"),
        (json.dumps({"model": "qa", "prompt": "w5", "max_tokens": 0}).encode(), 400, "`max_tokens`"),
        (json.dumps({"model": "qa", "prompt": "w5", "max_tokens": 10**9}).encode(), 400, "`max_tokens`"),
        (json.dumps({"model": "qa", "prompt": "w5", "num_beams": "3"}).encode(), 400, "`num_beams`"),
        (json.dumps({"model": "qa", "prompt": "w5", "stream": True}).encode(), 400, "`stream`"),
        (json.dumps({"model": "qa", "prompt": "w5", "temperature": 0.7}).encode(), 400, "`temperature`"),
        (json.dumps({"model": "qa", "prompt": "w5", "frobnicate": 1}).encode(), 400, "frobnicate"),
        (json.dumps({"model": "sentiment", "prompt": "w5"}).encode(), 400, "/v1/classifications"),
        (json.dumps({"model": "qa", "prompt": ["w5"] * 9}).encode(), 413, "at most 8"),
        (json.dumps({"model": "qa", "prompt": "w5 " * 2000}).encode(), 413, "4096 bytes"),
    ],
)
def test_bad_and_oversized_requests_get_4xx_naming_the_problem(server, body, status, named):
    answer = requests.post(f"{URL}/completions", data=body, headers={"Content-Type": "application/json"}, timeout=60)
    assert answer.status_code == status, answer.text
    assert named in answer.json()["error"]["message"]


def test_an_oversized_body_without_a_declared_length_is_refused(server):
    chunks = (b'{"model": "qa", "prompt": "' + b"w5 " * 500 for _ in range(4))  # streamed: no Content-Length
    answer = requests.post(f"{URL}/completions", data=chunks, timeout=60)
    assert answer.status_code == 413, answer.text


def test_a_task_folder_changed_on_disk_after_the_start_is_refused(server, artifacts, tmp_path):
    spare = artifacts / "full" / "spare"
    shutil.copytree(spare, tmp_path / "kept")
    other = perturbed(MultiEncoderModel.for_training(AutoModelForSeq2SeqLM.from_pretrained(artifacts / "base"),
                                                     ["spare"], FrozenDecoderConfig()), 7)  # fmt: skip
    other.save_pretrained(tmp_path / "other")
    try:
        shutil.rmtree(spare)
        shutil.copytree(tmp_path / "other" / "spare", spare)  # a whole, valid artifact: only its weights differ
        answer = complete("spare", "w5")
        assert answer.status_code == 500
        assert answer.json()["error"]["code"] == "task_refused"
        assert "changed after the server started" in answer.json()["error"]["message"]
        assert complete("qa", "w5").status_code == 200  # the other tasks are served as before
    finally:
        shutil.rmtree(spare)
        shutil.copytree(tmp_path / "kept", spare)
    assert complete("spare", "w5").status_code == 200  # the folder as it was at the start: served again


@pytest.mark.parametrize("task", ["sentiment", "two_model"])
def test_dect_heads_answer_on_the_classification_route(server, artifacts, task):
    texts = list(tiny_dect.sentiment(6, seed=3)["text"])
    head = AutoFrozenModel.from_pretrained(str(artifacts / task))
    assert (head.feature_queries is not None) == (task == "two_model")
    answer = requests.post(f"{URL}/classifications", json={"model": task, "input": texts}, timeout=120)
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert [d["label"] for d in data] == head.predict(texts)
    probabilities = head.decision_scores(texts).float().softmax(-1)
    served = torch.tensor([[d["scores"][label] for label in ("neg", "pos")] for d in data])
    torch.testing.assert_close(served, probabilities, atol=1e-5, rtol=0)
    for d in data:
        assert set(d["scores"]) == {"neg", "pos"} and abs(sum(d["scores"].values()) - 1) < 1e-5
        assert d["label"] == max(d["scores"], key=d["scores"].get)
    wrong = requests.post(f"{URL}/classifications", json={"model": "qa", "input": "w5"}, timeout=60)
    assert wrong.status_code == 400 and "/v1/completions" in wrong.json()["error"]["message"]


def test_a_replica_killed_under_load_loses_no_request_of_a_client_that_retries(server, artifacts):
    """Two replicas, four clients, 40 requests; one replica is killed once some have been answered. Each first
    answer is 200 or a 5xx with an error object; a client that sends a 5xx request again gets every answer, equal
    to in-process generation."""
    catalog = task_catalog(sets=[str(artifacts / "set")])
    replicas = ReplicaOptions(num_replicas=2, max_batch_size=4, batch_wait_timeout_s=0.05, num_cpus=1)
    run_server(build_app(catalog, str(artifacts / "base"), replicas=replicas, limits=LIMITS), port=PORT,
               block=False, name="killable", route_prefix="/killable")  # fmt: skip
    url = f"http://127.0.0.1:{PORT}/killable/v1/completions"
    distinct = [(task, p) for task in ("summarize", "translate") for p in PROMPTS[task]]
    expected = dict(zip(distinct, in_process(artifacts, distinct, num_beams=1), strict=True))

    def send(pair):
        """(first status, first error code, final answer), retrying a 5xx up to 30 times."""
        first = None
        for _ in range(30):
            answer = requests.post(url, json={"model": pair[0], "prompt": pair[1], "max_tokens": 5}, timeout=120)
            if first is None:
                first = (answer.status_code, answer.json().get("error", {}).get("code"))
            if answer.status_code < 500:
                return first, answer.status_code, answer.json()["choices"][0]["text"]
            time.sleep(0.5)
        return first, answer.status_code, None

    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(send, pair) for pair in distinct * 10]
            deadline = time.monotonic() + 120
            while sum(f.done() for f in futures) < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                     if "killable#generation" in a["name"]]  # fmt: skip
            assert len(names) == 2, names
            victim = ray.get_actor(names[0], namespace="serve")
            ray.kill(victim, no_restart=True)
            results = [f.result() for f in futures]
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(victim.__ray_ready__.remote(), timeout=60)
        print("first answers:", sorted(collections.Counter(first for first, _, _ in results).items()))
        for (status, code), _, _ in results:
            assert status == 200 or (status >= 500 and code in ("replica_unavailable", "server_error")), (status, code)
        assert [(final, text) for _, final, text in results] == [(200, expected[pair]) for pair in distinct * 10]
    finally:
        serve.delete("killable")


@pytest.mark.parametrize(
    "make, named",
    [
        (lambda: ReplicaOptions(num_replicas=0), "num_replicas"),
        (lambda: ReplicaOptions(max_tasks_per_replica=True), "max_tasks_per_replica"),
        (lambda: ReplicaOptions(num_cpus=float("nan")), "num_cpus"),
        (lambda: ReplicaOptions(batch_wait_timeout_s=-1), "batch_wait_timeout_s"),
        (lambda: ApiLimits(max_prompts=0), "max_prompts"),
        (lambda: ApiLimits(max_request_bytes=1.5), "max_request_bytes"),
    ],
)
def test_bad_server_settings_are_refused_naming_the_field(make, named):
    with pytest.raises(ValueError, match=f"`{named}` must be"):
        make()


def test_a_head_whose_features_only_its_caller_can_pass_is_refused_at_the_start(tmp_path):
    """A head fitted with a callable (or an embeddings API) as its feature model loads only with it passed again,
    which a server cannot do: the catalog says so before anything is served."""
    dect = tiny_dect.make("causal_lm")
    lengths = lambda texts: [[len(t), 1.0] for t in texts]  # noqa: E731
    features = get_frozen_model(tiny_dect.backbone("causal_lm"), dect.config, tokenizer=tiny_dect.tokenizer(),
                                feature_model=lengths, feature_name="lengths")  # fmt: skip
    features.show_progress = False
    features.fit(tiny_dect.sentiment(8)).save_pretrained(tmp_path / "head")
    with pytest.raises(ValueError, match="reads its features from a Python callable .*'lengths'.* a server cannot"):
        task_catalog({"lengths": str(tmp_path / "head")})
