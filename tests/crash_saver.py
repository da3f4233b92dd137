"""Kill a process at random points while it saves a frozen-decoder artifact, again and again; report what is on
disk after each kill. Run by tests/test_crash_consistency.py as a script: it forks one saving child per kill, so
that each kill costs a save, not a Python start.

    python tests/crash_saver.py FOLDER KILLS SEED
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
torch.set_num_threads(1)  # no thread pool before fork: a forked child must not wait on threads it lacks

from transformers import T5Config, T5ForConditionalGeneration  # noqa: E402

from hf_frozen import FrozenDecoderConfig, get_frozen_model  # noqa: E402
from hf_frozen.frozen_decoder.artifact import load_encoder_artifact  # noqa: E402
from hf_frozen.utils.io import JOURNAL_NAME  # noqa: E402


def two_models():
    """Two task encoders on one decoder, about 19 MB of encoder weights each, so that a save takes a while."""
    config = T5Config(vocab_size=512, d_model=256, d_ff=1024, num_layers=6, num_heads=4, d_kv=64,
                      decoder_start_token_id=0)  # fmt: skip
    models = []
    for seed in (0, 1):
        torch.manual_seed(0)
        base = T5ForConditionalGeneration(config)
        # Configs that differ too (lora_r is unused in full training), so that a mix of files would show.
        model = get_frozen_model(base, FrozenDecoderConfig(lora_r=8 + seed))
        with torch.no_grad():
            torch.manual_seed(seed + 1)
            for tensor in model.encoder_state_dict().values():
                tensor.normal_()
        models.append(model)
    return models


def main() -> None:
    folder, kills, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    models = two_models()
    expected = [{k: v.detach().clone() for k, v in m.encoder_state_dict().items()} for m in models]
    start = time.perf_counter()
    models[0].save_pretrained(folder)
    save_seconds = time.perf_counter() - start
    report = {"save_seconds": save_seconds, "outcomes": {"old_or_new": 0}, "journal_found": 0, "tmp_found": 0}
    for _ in range(kills):
        pid = os.fork()
        if pid == 0:  # the child saves the two artifacts in turn until it is killed
            i = 0
            while True:
                models[i % 2].save_pretrained(folder)
                i += 1
        time.sleep(rng.uniform(0, 2.5 * save_seconds))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        names = os.listdir(folder)
        report["journal_found"] += JOURNAL_NAME in names
        report["tmp_found"] += any(n.endswith(".tmp") for n in names)
        try:
            config, _, tensors = load_encoder_artifact(folder)  # finishes a committed save, verifies the checksum
            outcome = "mixed"
            for i, weights in enumerate(expected):
                same = weights.keys() == tensors.keys() and all(torch.equal(weights[k], tensors[k]) for k in weights)
                if same and config.lora_r == 8 + i:
                    outcome = "old_or_new"
        except Exception as err:  # noqa: BLE001 - any refusal to load is a failure to report
            outcome = f"does not load: {type(err).__name__}: {err}"
        report["outcomes"][outcome] = report["outcomes"].get(outcome, 0) + 1
        report.setdefault("left_behind", [])
        report["left_behind"] += [n for n in os.listdir(folder) if n.endswith(".tmp") or n == JOURNAL_NAME]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
