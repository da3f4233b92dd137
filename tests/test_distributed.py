"""The frozen decoder under real multi-process DDP (2 processes, gloo, launched with torchrun)."""

import json
import os
import subprocess
import sys

from hf_frozen import AutoFrozenModel
from hf_frozen.fingerprint import fingerprint_tensors

from .tiny_models import tiny_model


def test_ddp_two_processes(tmp_path):
    tiny_model("t5").save_pretrained(tmp_path / "base")
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_worker.py")
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", worker, str(tmp_path)],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for report in reports:
        assert report["world_size"] == 2 and report["wrapper"] == "DistributedDataParallel"
        assert report["decoder_identical"]
        assert report["encoder_after"] != report["encoder_before"]
        assert report["optimizer_tensors"] == report["trainable_tensors"]
    assert reports[0]["encoder_after"] == reports[1]["encoder_after"], "DDP keeps the ranks' encoders in sync"
    # The callback wrote the encoder artifact into the checkpoint once, from the main process.
    artifact = tmp_path / "run" / "checkpoint-3"
    loaded = AutoFrozenModel.from_pretrained(artifact)
    assert fingerprint_tensors(loaded.encoder_state_dict()) == reports[0]["encoder_after"]
