"""Each hole the threat model closes (docs/security.md), shown once by hand; tests/test_untrusted_artifacts.py fuzzes
them. Loading reads inside the folder only, writes nothing outside it, contacts no URL named in it, sends no key."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from hf_frozen import (
    ArtifactError,
    AutoFrozenModel,
    DecTConfig,
    FrozenDecoderConfig,
    MultiEncoderModel,
    get_frozen_model,
)
from hf_frozen.config import CONFIG_NAME, RECORD_NAME, WEIGHTS_NAME
from hf_frozen.dect.cache import QueryCache
from hf_frozen.utils.io import JOURNAL_NAME

from . import tiny_dect
from .tiny_models import tiny_model


@pytest.fixture
def recording_server():
    """A loopback HTTP server that answers 200 to everything and records each request's path and headers."""
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            seen.append((self.path, dict(self.headers)))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"data": []}')

        do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    server.shutdown()


def saved_head(folder):
    dect = tiny_dect.make("callable")
    dect.fit(tiny_dect.sentiment(8))
    dect.save_pretrained(folder)
    return dect


def edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_an_endpoint_head_never_contacts_its_recorded_url(tmp_path, recording_server, monkeypatch):
    url, seen = recording_server
    saved_head(tmp_path / "head")
    monkeypatch.setenv("SOME_SECRET", "sk-must-never-leave")
    edit_json(tmp_path / "head" / RECORD_NAME, backbone_kind="endpoint",
              endpoint={"base_url": url, "model": "m", "api_key_env": "SOME_SECRET"})  # fmt: skip
    with pytest.raises(ValueError, match=r"never contacts a URL named in an artifact: pass the endpoint yourself"):
        AutoFrozenModel.from_pretrained(tmp_path / "head")
    assert seen == [], "loading sent requests to the URL the artifact names"


def test_a_journal_cannot_move_files_in_or_out(tmp_path):
    model = get_frozen_model(tiny_model("t5"), FrozenDecoderConfig())
    model.save_pretrained(tmp_path / "artifact")
    victim = tmp_path / "victim.txt"
    victim.write_text("outside")
    saved = {p.name: p.read_bytes() for p in (tmp_path / "artifact").iterdir()}
    for journal in ({"../../moved.txt": ".hf_frozen.x.1.abc.tmp"}, {CONFIG_NAME: str(victim)},
                    {CONFIG_NAME: "../victim.txt"}, ["not", "an", "object"]):  # fmt: skip
        (tmp_path / "artifact" / JOURNAL_NAME).write_text(json.dumps(journal))
        with pytest.raises(ArtifactError, match=f"{JOURNAL_NAME} is not a journal that hf-frozen writes"):
            AutoFrozenModel.from_pretrained(tmp_path / "artifact", base_model=tiny_model("t5"))
        assert victim.read_text() == "outside"
        (tmp_path / "artifact" / JOURNAL_NAME).unlink()
        assert {p.name: p.read_bytes() for p in (tmp_path / "artifact").iterdir()} == saved, "nothing was moved"
    # A temporary file of ours' shape that is a link to a file outside is not moved in either.
    link = tmp_path / "artifact" / f".hf_frozen.{CONFIG_NAME}.1.abc.tmp"
    os.symlink(victim, link)
    (tmp_path / "artifact" / JOURNAL_NAME).write_text(json.dumps({CONFIG_NAME: link.name}))
    with pytest.raises(ArtifactError, match="is not a regular file"):
        AutoFrozenModel.from_pretrained(tmp_path / "artifact", base_model=tiny_model("t5"))
    assert victim.read_text() == "outside" and (tmp_path / "artifact" / CONFIG_NAME).read_bytes() == saved[CONFIG_NAME]


def test_a_file_linked_outside_the_folder_is_refused(tmp_path):
    model = get_frozen_model(tiny_model("t5"), FrozenDecoderConfig())
    model.save_pretrained(tmp_path / "artifact")
    (tmp_path / "artifact" / WEIGHTS_NAME).rename(tmp_path / "elsewhere.safetensors")
    os.symlink(tmp_path / "elsewhere.safetensors", tmp_path / "artifact" / WEIGHTS_NAME)
    with pytest.raises(ArtifactError, match="outside the artifact folder"):
        AutoFrozenModel.from_pretrained(tmp_path / "artifact", base_model=tiny_model("t5"))


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_weights_and_cache_entries_follow_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        get_frozen_model(tiny_model("t5"), FrozenDecoderConfig()).save_pretrained(tmp_path / "artifact")
        saved_head(tmp_path / "head")
        QueryCache(tmp_path / "cache").put("ab" * 32, np.ones(4, dtype=np.float32), None)
    finally:
        os.umask(previous)
    files = [*(tmp_path / "artifact").iterdir(), *(tmp_path / "head").iterdir(), *(tmp_path / "cache").rglob("*.*")]
    assert len(files) >= 7
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == mode, path


def test_temporary_files_of_killed_writers_are_removed_by_the_next_load(tmp_path):
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)  # fmt: skip
    get_frozen_model(tiny_model("t5"), FrozenDecoderConfig()).save_pretrained(tmp_path / "artifact")
    cache = QueryCache(tmp_path / "cache")
    cache.put("cd" * 32, np.ones(4, dtype=np.float32), None)
    artifact, shard = tmp_path / "artifact", tmp_path / "cache" / "cd"
    left = [artifact / ".tmpAb12Cd", artifact / f".hf_frozen.{WEIGHTS_NAME}.{dead}.x.tmp", shard / ".tmpZz99Yy",
            shard / f".hf_frozen.e.{dead}.y.tmp"]  # fmt: skip
    for path in left:
        path.write_bytes(b"left by a killed writer")
    AutoFrozenModel.from_pretrained(tmp_path / "artifact", base_model=tiny_model("t5"))
    QueryCache(tmp_path / "cache")
    assert [path for path in left if path.exists()] == []


def test_damaged_records_and_versions_name_the_file(tmp_path):
    saved_head(tmp_path / "head")
    record = tmp_path / "head" / RECORD_NAME
    original = record.read_text()
    for changes, message in [({"hf_frozen_version": "not-a-version"}, "`hf_frozen_version` must be a version"),
                             ({"hidden_size": "32"}, "`hidden_size` must be a JSON int or null"),
                             ({"hidden_size": 10**9}, "`hidden_size` must be from 1 to 65536"),
                             ({"weights_sha256": None}, "no `weights_sha256`")]:  # fmt: skip
        record.write_text(original)
        edit_json(record, **changes)
        with pytest.raises(ArtifactError, match=message) as raised:
            AutoFrozenModel.from_pretrained(tmp_path / "head", base_model=tiny_dect.ClusterAPI())
        assert str(record) in str(raised.value)
    record.write_text(original)
    edit_json(tmp_path / "head" / CONFIG_NAME, hf_frozen_version="1.x")
    with pytest.raises(ArtifactError, match=f"{CONFIG_NAME} is damaged: `hf_frozen_version`"):
        AutoFrozenModel.from_pretrained(tmp_path / "head", base_model=tiny_dect.ClusterAPI())


def test_head_shapes_that_do_not_fit_the_config_are_refused_before_anything_is_built(tmp_path):
    saved_head(tmp_path / "head")
    edit_json(tmp_path / "head" / CONFIG_NAME, projection_dim=10**7)  # would be 10^7 x 16 floats if built
    with pytest.raises(ArtifactError, match="do not fit its hf_frozen_config.json and hf_frozen_record.json"):
        AutoFrozenModel.from_pretrained(tmp_path / "head", base_model=tiny_dect.ClusterAPI())


def test_bad_inputs_are_named_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="at most 128 bytes"):
        MultiEncoderModel.for_training(tiny_model("t5"), ["short", "x" * 300])
    server = MultiEncoderModel(tiny_model("t5"))
    server.add_task("a", get_frozen_model(tiny_model("t5"), FrozenDecoderConfig()))
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    with pytest.raises(ValueError, match=r"Rows \[1\] of `attention_mask` are all zeros"):
        server.generate(input_ids=ids, attention_mask=torch.tensor([[1, 1, 1], [0, 0, 0]]), tasks=["a", "a"])
    with pytest.raises(ValueError, match="`text_column` must name a dataset column"):
        DecTConfig(label_words=["bad", "good"], text_column=None)
    with pytest.raises(ValueError, match="Class 0 of `label_words` holds 3, not a word"):
        DecTConfig(label_words=[["bad", 3], ["good"]])


@pytest.mark.parametrize("train_encoder_embeddings", [False, True])
def test_resizing_the_embeddings_after_wrapping_is_refused_at_once(train_encoder_embeddings, tmp_path):
    model = get_frozen_model(tiny_model("t5"), FrozenDecoderConfig(train_encoder_embeddings=train_encoder_embeddings))
    for resize in (model.resize_token_embeddings, model.get_base_model().resize_token_embeddings):
        with pytest.raises(ValueError, match="Resize the base model first"):
            resize(120)
    model.save_pretrained(tmp_path / "artifact")  # nothing was changed: the save goes through
    assert model.get_base_model().get_input_embeddings().weight.shape[0] == 99


def test_links_of_a_hub_cache_snapshot_are_followed_and_others_are_not(tmp_path):
    """The Hub's cache keeps a repo's files as links from `snapshots/<rev>/` into `blobs/`, in task subfolders too
    (a multi-encoder set pushed as one repo): those load; a link out of the repo does not."""
    from hf_frozen.utils.hub import check_inside

    repo = tmp_path / "models--me--set"
    (repo / "blobs").mkdir(parents=True)
    task = repo / "snapshots" / ("0" * 40) / "summarize"
    task.mkdir(parents=True)
    (repo / "blobs" / "abc").write_text("{}")
    os.symlink(repo / "blobs" / "abc", task / CONFIG_NAME)
    check_inside(str(task), str(task / CONFIG_NAME))
    check_inside(str(task.parent), str(task / CONFIG_NAME))
    (tmp_path / "elsewhere").write_text("{}")
    os.symlink(tmp_path / "elsewhere", task / RECORD_NAME)
    with pytest.raises(ArtifactError, match="outside the artifact folder"):
        check_inside(str(task), str(task / RECORD_NAME))


def test_a_cache_folder_named_in_a_saved_head_is_never_written(tmp_path):
    """`query_cache_dir` is the saver's own folder: a loaded head caches where its loader says, or in memory."""
    named = tmp_path / "named-by-the-artifact"
    dect = tiny_dect.make("causal_lm", query_cache_dir=str(named)).fit(tiny_dect.sentiment(8))
    dect.save_pretrained(tmp_path / "head")
    texts = tiny_dect.sentiment(4, seed=1)["text"]
    expected = dect.predict(texts)
    shutil.rmtree(named)
    loaded = AutoFrozenModel.from_pretrained(tmp_path / "head", base_model=tiny_dect.backbone("causal_lm"),
                                             tokenizer=tiny_dect.tokenizer())  # fmt: skip
    assert loaded.predict(texts) == expected
    assert not named.exists()
    chosen = tmp_path / "chosen"
    cached = AutoFrozenModel.from_pretrained(tmp_path / "head", base_model=tiny_dect.backbone("causal_lm"),
                                             tokenizer=tiny_dect.tokenizer(), query_cache_dir=str(chosen))  # fmt: skip
    assert cached.predict(texts) == expected
    assert any(chosen.iterdir()) and not named.exists()
