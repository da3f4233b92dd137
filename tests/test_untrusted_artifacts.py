"""Artifacts written by a stranger: fuzzed, corrupted and crafted folders are loaded in a subprocess whose sockets
are all refused (tests/artifact_loader.py). Loading either returns the saved model or raises a `ValueError` (or
`FileNotFoundError`) that names the folder; no file outside the folder changes; no socket is ever opened.

The default run tries 300 folders; `pytest -m slow` tries 3,000 more.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_frozen.config import CONFIG_NAME, RECORD_NAME, WEIGHTS_NAME
from hf_frozen.utils.io import JOURNAL_NAME

LOADER = Path(__file__).resolve().parent / "artifact_loader.py"
KINDS = ("frozen_decoder", "lora", "multi_encoder", "task_set", "dect", "dect_unaided")
FILES = (CONFIG_NAME, RECORD_NAME, WEIGHTS_NAME)


class Loader:
    """The loader subprocess: one JSON request per line, one JSON answer per line."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, str(LOADER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, cwd=LOADER.parent.parent)  # fmt: skip
        assert json.loads(self.process.stdout.readline()) == {"ready": True}

    def ask(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, f"the loader process died (exit code {self.process.poll()}) on {request}"
        return json.loads(line)


@pytest.fixture(scope="module")
def loader():
    process = Loader()
    yield process
    process.process.stdin.close()
    process.process.wait(timeout=60)


@pytest.fixture(scope="module")
def pristine(loader, tmp_path_factory):
    """A saved artifact of each kind, and the fingerprint of its tensors."""
    root = tmp_path_factory.mktemp("pristine")
    found = {}
    for kind in KINDS:
        found[kind] = (root / kind, loader.ask(make=kind, folder=str(root / kind))["fingerprint"])
    return found


# -- what a stranger may put in a folder ----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
crafted_targets = st.sampled_from(["a/.hf_frozen.{file}.1.abc.tmp", "a/../../outside/victim.txt",
                                   "../outside/victim.txt", "{outside}/victim.txt", "../../etc", "", ".", "..",
                                   ".hf_frozen.{name}.1.abc.tmp", ".hf_frozen.{name}.999999.x_y.tmp", "a/b",
                                   "{outside}/secret.safetensors", ".hf_frozen.{name}.1.link.tmp"])  # fmt: skip
plain_names = st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1,
                      max_size=40).filter(lambda n: n not in (".", ".."))  # fmt: skip

mutations = st.one_of(
    st.tuples(st.just("json"), st.sampled_from([CONFIG_NAME, RECORD_NAME, JOURNAL_NAME]), json_values),
    st.tuples(st.just("field"), st.sampled_from([CONFIG_NAME, RECORD_NAME]), st.text(max_size=30) | st.sampled_from(
        ["adapter_type", "hf_frozen_version", "lora_r", "label_words", "projection_dim", "weights_sha256",
         "hidden_size", "backbone_kind", "zero_shot_weight", "head_type", "decoder_fingerprint", "encoder_training",
         "decoder_dtype", "base_model_name_or_path", "labels", "template", "endpoint", "backbone_name_or_path",
         "feature_model", "feature_model_name_or_path", "feature_pooling", "combine_features"]),
        json_values | st.sampled_from(["/etc", "..", "../outside", "gpt2", "org/model", "https://127.0.0.1:9/m"])),
    st.tuples(st.just("bytes"), st.sampled_from(FILES), st.sampled_from(["truncate", "flip", "append"]),
              st.floats(0, 1)),
    st.tuples(st.just("header"), json_values, st.integers(0, 2**64 - 1) | st.none()),
    st.tuples(st.just("journal"), st.dictionaries(st.sampled_from(FILES) | plain_names | st.sampled_from(
        [f"a/{WEIGHTS_NAME}", f"b/{CONFIG_NAME}", "a/../x", "../a/x", "a/b/c"]), crafted_targets, min_size=1,
        max_size=3)),
    st.tuples(st.just("link"), st.sampled_from(FILES), st.sampled_from(["victim.txt", "secret.safetensors", "copy"])),
    st.tuples(st.just("extra"), plain_names, st.binary(max_size=64)),
    st.tuples(st.just("delete"), st.sampled_from(FILES)),
    st.tuples(st.just("endpoint"), st.sampled_from(["OPENAI_API_KEY", "HOME", "SECRET_TOKEN"])),
    st.tuples(st.just("features"), st.sampled_from(["transformers", "endpoint", "callable", "other"]) | json_values,
              st.sampled_from(["/etc", "..", "../outside", "gpt2", "org/model", "https://127.0.0.1:9/m"])
              | json_values,
              st.sampled_from(["mean", "cls", "max", "last", "auto"]) | json_values, st.booleans() | st.none()),
)  # fmt: skip


def mutate(folder: Path, outside: Path, mutation: tuple) -> None:
    kind, *args = mutation
    if kind == "json":
        name, value = args
        _replace(folder / name, json.dumps(value).encode())
    elif kind == "field":
        name, key, value = args
        data = _json_object(folder / name)
        data[key] = value
        _replace(folder / name, json.dumps(data).encode())
    elif kind == "bytes":
        name, how, where = args
        data = (folder / name).read_bytes() if (folder / name).is_file() else b""
        at = int(where * len(data))
        if how == "truncate":
            data = data[:at]
        elif how == "flip" and data:
            at = min(at, len(data) - 1)
            data = data[:at] + bytes([data[at] ^ 0x55]) + data[at + 1 :]
        else:
            data += b"\x00garbage" * (1 + at % 7)
        _replace(folder / name, data)
    elif kind == "header":
        header, length = args
        body = json.dumps(header).encode()
        data = (folder / WEIGHTS_NAME).read_bytes() if (folder / WEIGHTS_NAME).is_file() else b""
        _replace(folder / WEIGHTS_NAME, struct.pack("<Q", len(body) if length is None else length) + body + data[8:])
    elif kind == "journal":
        (entries,) = args
        journal = {}
        for name, target in entries.items():
            target = target.format(outside=outside, name=name, file=name.rpartition("/")[2])
            if target.endswith(".link.tmp") and "/" not in target:  # a link of ours' shape, pointing outside
                _remove(folder / target)
                os.symlink(outside / "victim.txt", folder / target)
            elif target.rpartition("/")[2].startswith(".hf_frozen.") and (folder / target).parent.is_dir():
                if ".." not in target:  # staged inside the folder or a task folder of a set
                    (folder / target).write_bytes(b"staged")
            journal[name] = target
        _replace(folder / JOURNAL_NAME, json.dumps(journal).encode())
    elif kind == "link":
        name, target = args
        source = outside / (f"copy-{name}" if target == "copy" else target)
        _remove(folder / name)
        os.symlink(source, folder / name)
    elif kind == "extra":
        name, data = args
        path = folder / name
        if not path.is_symlink() and not path.exists():
            path.write_bytes(data)
    elif kind == "delete":
        _remove(folder / args[0])
    elif kind == "endpoint":  # a head that claims an API behind a loopback port, with a key in any variable
        data = _json_object(folder / RECORD_NAME)
        data.update(backbone_kind="endpoint", endpoint={"base_url": "http://127.0.0.1:9/v1", "model": "m",
                                                         "api_key_env": args[0]})  # fmt: skip
        _replace(folder / RECORD_NAME, json.dumps(data).encode())
    elif kind == "features":  # a head that claims a second model (of any kind, named anywhere)
        feature_kind, name, pooling, combine = args
        record = _json_object(folder / RECORD_NAME)
        record["feature_model"] = {"kind": feature_kind, "name_or_path": name, "pooling": pooling, "hidden_size": 4,
                                   "fingerprint": "0" * 64, "settings_fingerprint": ""}  # fmt: skip
        _replace(folder / RECORD_NAME, json.dumps(record).encode())
        config = _json_object(folder / CONFIG_NAME)
        config.update(feature_model_name_or_path=name, feature_pooling=pooling, combine_features=combine)
        _replace(folder / CONFIG_NAME, json.dumps(config).encode())


def _json_object(path: Path) -> dict:
    """The JSON object in `path` as mutations so far left it, or an empty one."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()


def _replace(path: Path, data: bytes) -> None:
    _remove(path)
    path.write_bytes(data)


def snapshot(root: Path, skip: Path) -> dict[str, tuple]:
    """Every entry under `root` but `skip`: kind, link target or size and content hash."""
    found = {}
    for folder, dirs, files in os.walk(root):
        if Path(folder) == skip or skip in Path(folder).parents:
            continue
        for name in dirs + files:
            path = Path(folder) / name
            if path == skip:
                continue
            if path.is_symlink():
                found[str(path)] = ("link", os.readlink(path))
            elif path.is_file():
                found[str(path)] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                found[str(path)] = ("dir",)
    return found


def check_untrusted_load(loader, pristine, kind: str, changes: list[tuple]) -> None:
    sandbox = Path(tempfile.mkdtemp(prefix="untrusted-"))
    try:
        folder, outside = sandbox / "artifact", sandbox / "outside"
        shutil.copytree(pristine[kind][0], folder)
        outside.mkdir()
        (outside / "victim.txt").write_text("a file outside the artifact: it must never move or change")
        weights = next(pristine[kind][0].rglob(WEIGHTS_NAME))  # a set's are in its task folders
        shutil.copy(weights, outside / "secret.safetensors")
        for name in FILES:  # valid copies outside, so that a link to them would load if links were followed
            shutil.copy(next(pristine[kind][0].rglob(name)), outside / f"copy-{name}")
        for change in changes:
            mutate(folder, outside, change)
        before = snapshot(sandbox, folder)
        reply = loader.ask(load=kind, folder=str(folder))
        assert reply["sockets"] == 0, f"loading opened a socket: {changes}"
        if reply["outcome"] == "loaded":
            assert reply["fingerprint"] == pristine[kind][1], f"loaded other weights than saved: {changes}"
        else:
            assert reply["is_value_error"], f"{reply['type']}: {reply['message']}\n{reply['traceback']}\n{changes}"
            assert str(folder) in reply["message"], f"the error does not name the folder: {reply['message']}"
        assert snapshot(sandbox, folder) == before, f"loading changed files outside the folder: {changes}"
    finally:
        shutil.rmtree(sandbox, ignore_errors=True)


def fuzz(max_examples: int):
    return settings(max_examples=max_examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])  # fmt: skip


@fuzz(300)
@given(kind=st.sampled_from(KINDS), changes=st.lists(mutations, min_size=1, max_size=3))
def test_a_crafted_or_damaged_folder_loads_as_saved_or_is_refused_naming_it(loader, pristine, kind, changes):
    check_untrusted_load(loader, pristine, kind, changes)


@pytest.mark.slow
@fuzz(3000)
@given(kind=st.sampled_from(KINDS), changes=st.lists(mutations, min_size=1, max_size=4))
def test_a_crafted_or_damaged_folder_loads_as_saved_or_is_refused_naming_it_many_times(loader, pristine, kind,
                                                                                       changes):  # fmt: skip
    check_untrusted_load(loader, pristine, kind, changes)


def test_the_pristine_folders_load_as_saved(loader, pristine):
    """The baseline the fuzzing relies on: untouched artifacts load, with the saved tensors (`dect_unaided` asks for
    its backbone, which a tiny model built from a config does not record)."""
    for kind in KINDS:
        check_untrusted_load(loader, pristine, kind, [("extra", "README.md", b"# a model card")])
