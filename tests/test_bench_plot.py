"""`bench/plot_dect.py` draws the accuracy-vs-shots figure from the bench's results file."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_result(dect, probe):
    return {f"{s}_shots": {"dect": {"mean": d, "std": 0.01}, "probe": {"mean": p, "std": 0.02}}
            for s, d, p in zip((1, 4, 16), dect, probe, strict=True)}  # fmt: skip


def test_figure_is_drawn_from_the_results_file(tmp_path):
    results = {
        "args": {"seeds": 3},
        "runs": {
            "lm/set-a": {
                "test_examples": 100,
                "zero_shot": {"calibrated": 0.7, "uncalibrated": 0.6},
                **run_result([0.72, 0.8, 0.85], [0.5, 0.7, 0.84]),
            },  # fmt: skip
            "encoder/set-b": {"test_examples": 50, **run_result([0.55, 0.6, 0.7], [0.5, 0.62, 0.7])},
            "lm/set-c": {"test_examples": 80, **run_result([0.6, 0.7, 0.8], [0.6, 0.7, 0.8])},
        },
    }
    (tmp_path / "results.json").write_text(json.dumps(results))
    output = tmp_path / "img" / "figure.png"
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "plot_dect.py"), "--results", str(tmp_path / "results.json"),
         "--output", str(output)], capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and output.stat().st_size > 10_000
