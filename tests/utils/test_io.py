"""Crash-consistent saving: a reader sees the old artifact or the new one, whole, after a crash at any point."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import hf_frozen.utils.io as io
from hf_frozen.utils.io import JOURNAL_NAME, finish_interrupted_save, write_files_together

CRASH_SAVER = Path(__file__).resolve().parent.parent / "crash_saver.py"


def writers(text: str) -> dict:
    def write(name):
        return lambda path: Path(path).write_text(f"{name}: {text}")

    return {name: write(name) for name in ("weights", "record", "config")}


def contents(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


def run_crash_saver(writer: str, folder: Path, kills: int, seed: int) -> dict:
    done = subprocess.run([sys.executable, str(CRASH_SAVER), writer, str(folder), str(kills), str(seed)],
                          capture_output=True, text=True, check=False, timeout=1200)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# 100 SIGKILLs in all, spread over the three writers.
KILLS = {"frozen_decoder": 40, "multi_encoder": 30, "dect_cache": 30}


@pytest.mark.parametrize("writer", KILLS)
def test_killed_writers_lose_nothing_and_leave_no_temporary_file(writer, tmp_path):
    """SIGKILLs at random points of a frozen-decoder save (two artifacts that differ in weights and config written
    in turn), a multi-encoder save (two tasks) and DecT cache writes: after each, what is on disk loads, checksum
    verified, and is one of the versions written, whole; no cache entry written before the kill is lost; no
    temporary file (ours, safetensors' own, or a journal) stays behind once the folder is read."""
    report = run_crash_saver(writer, tmp_path / "folder", kills=KILLS[writer], seed=0)
    assert report["outcomes"] == {"whole": KILLS[writer]}, report["outcomes"]
    assert report["left_behind"] == []
    assert report["killed_with_temporary_files"] > 0, "some kills must land inside a write to mean anything"


@pytest.mark.slow
@pytest.mark.parametrize("writer", KILLS)
def test_killed_writers_lose_nothing_and_leave_no_temporary_file_many_times(writer, tmp_path):
    report = run_crash_saver(writer, tmp_path / "folder", kills=1000, seed=1)
    assert report["outcomes"] == {"whole": 1000}, report["outcomes"]
    assert report["left_behind"] == []


def test_a_save_killed_after_its_commit_point_is_finished_by_the_next_reader(tmp_path, monkeypatch):
    write_files_together(tmp_path, writers("old"))
    real_replace = os.replace

    def die_after_the_first_rename(src, dst):  # the process dies while renaming the committed files
        real_replace(src, dst)
        if not str(dst).endswith(JOURNAL_NAME) and Path(dst).name == "weights":
            raise KeyboardInterrupt

    monkeypatch.setattr(io.os, "replace", die_after_the_first_rename)
    with pytest.raises(KeyboardInterrupt):
        write_files_together(tmp_path, writers("new"))
    monkeypatch.setattr(io.os, "replace", real_replace)
    assert (tmp_path / JOURNAL_NAME).exists(), "killed between the commit point and the end"
    finish_interrupted_save(tmp_path)
    assert contents(tmp_path) == {name: f"{name}: new" for name in ("config", "record", "weights")}


def test_a_save_that_fails_before_its_commit_point_leaves_the_old_files(tmp_path):
    write_files_together(tmp_path, writers("old"))
    failing = writers("new")

    def disk_full(path):
        Path(path).write_text("partial")
        raise OSError("No space left on device")

    failing["record"] = disk_full
    with pytest.raises(OSError, match="No space"):
        write_files_together(tmp_path, failing)
    assert contents(tmp_path) == {name: f"{name}: old" for name in ("config", "record", "weights")}


def test_temporary_files_of_dead_writers_are_removed_and_of_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    live_pid = os.getppid()  # pytest's parent process: alive for the whole test
    (tmp_path / f".hf_frozen.weights.{dead_pid}.abc.tmp").write_text("left by a killed save")
    (tmp_path / f".hf_frozen.weights.{live_pid}.def.tmp").write_text("a save in progress")
    (tmp_path / "weights").write_text("kept")
    finish_interrupted_save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".hf_frozen.weights.{live_pid}.def.tmp", "weights"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saved_files_respect_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        write_files_together(tmp_path / "together", writers("x"))
        io.atomic_write_text(tmp_path / "alone.json", "{}")
    finally:
        os.umask(previous)
    for path in [*(tmp_path / "together").iterdir(), tmp_path / "alone.json"]:
        assert stat.S_IMODE(path.stat().st_mode) == mode, path.name
