"""`hf-frozen serve` as a newcomer runs it: `--help`, one-line errors for bad options, and a real server started
from the command line, answering over HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("ray")
requests = pytest.importorskip("requests")

from hf_frozen import FrozenDecoderConfig, MultiEncoderModel  # noqa: E402

from ..tiny_models import save_tiny_t5_with_tokenizer, tiny_model  # noqa: E402

PORT = 8432


def hf_frozen(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "hf_frozen.cli", *args], capture_output=True, text=True, timeout=300,
                          **kwargs)  # fmt: skip


def test_help_lists_the_options_by_group():
    done = hf_frozen("serve", "--help")
    assert done.returncode == 0
    for text in ("--task NAME=FOLDER_OR_REPO", "--set", "--base_model_name_or_path", "--address", "--num_replicas",
                 "--max_tasks_per_replica", "--max_batch_size", "Ray:", "HTTP:", "Tasks:"):  # fmt: skip
        assert text in done.stdout, text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "summarize"], "--task must be NAME=FOLDER_OR_REPO"),
        (["--task", "a=/no/such/folder"], "/no/such/folder"),
        (["--task", "a=x", "--task", "a=y"], "given twice"),
        ([], "No task to serve"),
        (["--tsk", "a=b"], "unrecognized arguments: --tsk"),
        (["--port", "eighty"], "--port: invalid int value"),
    ],
)
def test_mistakes_are_one_line_and_exit_2(args, message, tmp_path):
    done = hf_frozen("serve", *args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_folder_that_is_no_task_is_named(tmp_path):
    tiny_model("t5").save_pretrained(tmp_path / "plain")
    done = hf_frozen("serve", "--task", f"a={tmp_path / 'plain'}")
    assert done.returncode == 2 and "plain" in done.stderr and "not an hf-frozen artifact" in done.stderr


def test_the_command_serves_over_http(tmp_path):
    save_tiny_t5_with_tokenizer(tmp_path / "base")
    model = MultiEncoderModel.for_training(tiny_model("t5"), ["summarize"], FrozenDecoderConfig())
    model.save_pretrained(tmp_path / "set")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "hf_frozen.cli", "serve", "--base_model_name_or_path", str(tmp_path / "base"),
         "--task", f"alone={tmp_path / 'set' / 'summarize'}", "--port", str(PORT), "--num_cpus_per_replica", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        deadline, listed = time.monotonic() + 240, None
        while time.monotonic() < deadline and server.poll() is None:
            try:  # Ray's proxy may accept connections before the app answers: refused or slow both mean "not yet"
                listed = requests.get(f"http://127.0.0.1:{PORT}/v1/models", timeout=10)
                if listed.status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        assert server.poll() is None, server.stdout.read()[-3000:]
        assert listed is not None and listed.status_code == 200, "the server did not answer within 240 s"
        assert [m["id"] for m in listed.json()["data"]] == ["alone"]
        answer = requests.post(f"http://127.0.0.1:{PORT}/v1/completions",
                               json={"model": "alone", "prompt": "w5 w6", "max_tokens": 3}, timeout=120)  # fmt: skip
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["finish_reason"] in ("stop", "length")
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)  # the server and the Ray processes it started
            server.wait()
