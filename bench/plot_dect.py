"""Draw DecT's accuracy against shots per class, beside the linear probe and the prompt alone, from the bench's own
results (`bench/results/dect.json`, written by `bench/bench_dect.py`): one panel per backbone and dataset.

    python bench/plot_dect.py                      # -> docs/img/dect_accuracy_vs_shots.png
    python bench/plot_dect.py --results other.json --output figure.png
"""

from __future__ import annotations

import argparse
import json
import math
import os

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shot_counts(run: dict) -> list[int]:
    return sorted(int(key.removesuffix("_shots")) for key in run if key.endswith("_shots"))


def plot(results: dict, output: str) -> None:
    runs = results["runs"]
    if not runs:
        raise ValueError("The results hold no runs: run bench/bench_dect.py first.")
    columns = min(2, len(runs))
    rows = math.ceil(len(runs) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.6 * rows), squeeze=False)
    for ax, (name, run) in zip(axes.flat, runs.items(), strict=False):
        shots = shot_counts(run)
        for method, label, style in (("dect", "DecT", "o-"), ("probe", "linear probe", "s--")):
            means = [100 * run[f"{s}_shots"][method]["mean"] for s in shots]
            stds = [100 * run[f"{s}_shots"][method]["std"] for s in shots]
            ax.errorbar(shots, means, yerr=stds, fmt=style, capsize=3, label=label)
        zero_shot = run.get("zero_shot")
        if zero_shot:  # the prompt alone needs no shots: a level line
            ax.axhline(100 * zero_shot["calibrated"], color="gray", linestyle=":", label="prompt (calibrated)")
            ax.axhline(100 * zero_shot["uncalibrated"], color="silver", linestyle="-.", label="prompt (uncalibrated)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots, [str(s) for s in shots])
        ax.set_title(f"{name} ({run['test_examples']} test examples)", fontsize=10)
        ax.set_xlabel("shots per class")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(runs) :]:
        ax.set_visible(False)
    figure.suptitle(f"DecT vs a linear probe on the same cache (mean ± std over {results['args']['seeds']} seeds)")
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    figure.savefig(output, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=os.path.join(ROOT, "bench", "results", "dect.json"))
    parser.add_argument("--output", default=os.path.join(ROOT, "docs", "img", "dect_accuracy_vs_shots.png"))
    args = parser.parse_args()
    with open(args.results) as f:
        plot(json.load(f), args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
