"""Loads artifact folders that may be damaged or crafted, in a process of its own with every socket refused.

Run by tests/test_untrusted_artifacts.py: it reads one JSON request per line on stdin and answers one JSON line on
stdout, so that one Python start serves many loads.

    {"make": KIND, "folder": F}   save a pristine artifact of KIND into F; answers its tensors' fingerprint
    {"load": KIND, "folder": F}   load F as KIND; answers {"outcome": "loaded", "fingerprint": ...} or
                                  {"outcome": "error", "type": ..., "message": ..., "is_value_error": ...}

Every answer carries `sockets`: the socket operations attempted so far (each one refused), which must stay 0.
KINDS: `frozen_decoder` (full encoder), `lora` (encoder LoRA), `multi_encoder` (a full artifact added as a task),
`task_set` (a multi-encoder set of two tasks), `dect` (a head on a tiny masked LM) and `dect_unaided` (the same
head loaded with no backbone given: loading then uses what the artifact records, a callable's name, an endpoint's
URL or a backbone's id).
"""

from __future__ import annotations

import copy
import json
import os
import socket
import sys
import traceback

SOCKET_ATTEMPTS = []


def _refuse(name):
    def refused(*args, **kwargs):
        SOCKET_ATTEMPTS.append(name)
        raise OSError(f"socket guard: {name} refused")

    return refused


# Installed before anything else is imported: no library can open a connection or resolve a name unseen.
for _name in ("connect", "connect_ex", "sendto", "bind"):
    setattr(socket.socket, _name, _refuse(f"socket.{_name}"))
socket.getaddrinfo = _refuse("getaddrinfo")
socket.create_connection = _refuse("create_connection")
os.environ["HF_HUB_OFFLINE"] = "1"

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from hf_frozen import AutoFrozenModel, FrozenDecoderConfig, MultiEncoderModel, get_frozen_model  # noqa: E402
from hf_frozen.utils.fingerprint import fingerprint_tensors  # noqa: E402
from tests import tiny_dect  # noqa: E402
from tests.tiny_models import tiny_model  # noqa: E402

BASE = tiny_model("t5")
DECT_BACKBONE = tiny_dect.backbone("masked_lm")
TOKENIZER = tiny_dect.tokenizer()
CONFIGS = {"frozen_decoder": FrozenDecoderConfig(), "lora": FrozenDecoderConfig(encoder_training="lora", lora_r=4),
           "multi_encoder": FrozenDecoderConfig()}  # fmt: skip


def fingerprint(model, kind: str) -> str:
    if kind.startswith("dect"):
        tensors = {f"head.{k}": v for k, v in model.head.state_dict().items()}
        if model.calibration is not None:
            tensors["calibration"] = model.calibration
    elif kind == "multi_encoder":
        tensors = model._task_tensors("task")
    elif kind == "task_set":
        tensors = {f"{task}.{k}": v for task in model.task_configs for k, v in model._task_tensors(task).items()}
    else:
        tensors = model.encoder_state_dict()
    return fingerprint_tensors({k: v.detach().float() for k, v in tensors.items()})


def make(kind: str, folder: str):
    if kind.startswith("dect"):
        dect = tiny_dect.make("masked_lm")
        dect.fit(tiny_dect.sentiment(8))
        dect.save_pretrained(folder)
        return fingerprint(dect, kind)
    if kind == "task_set":
        model = MultiEncoderModel.for_training(copy.deepcopy(BASE), ["a", "b"])
        with torch.no_grad():
            torch.manual_seed(2)
            for task in model.task_configs:
                for tensor in model._task_tensors(task).values():
                    tensor.add_(torch.randn_like(tensor) * 0.1)
        model.save_pretrained(folder)
        return fingerprint(model, kind)
    model = get_frozen_model(copy.deepcopy(BASE), CONFIGS[kind])
    with torch.no_grad():
        torch.manual_seed(1)
        for tensor in model.encoder_state_dict().values():
            tensor.add_(torch.randn_like(tensor) * 0.1)
    model.save_pretrained(folder)
    return fingerprint(model, "frozen_decoder")


def load(kind: str, folder: str):
    if kind == "dect":
        return AutoFrozenModel.from_pretrained(folder, base_model=DECT_BACKBONE, tokenizer=TOKENIZER)
    if kind == "dect_unaided":
        return AutoFrozenModel.from_pretrained(folder)
    if kind == "multi_encoder":
        return MultiEncoderModel.from_pretrained(copy.deepcopy(BASE), {"task": folder})
    if kind == "task_set":
        return MultiEncoderModel.from_pretrained(copy.deepcopy(BASE), folder)
    return AutoFrozenModel.from_pretrained(folder, base_model=copy.deepcopy(BASE))


def answer(request: dict) -> dict:
    if "make" in request:
        return {"fingerprint": make(request["make"], request["folder"])}
    kind = request["load"]
    try:
        model = load(kind, request["folder"])
    except Exception as err:  # noqa: BLE001 - every failure is reported, its kind judged by the test
        return {"outcome": "error", "type": type(err).__name__, "message": str(err),
                "is_value_error": isinstance(err, (ValueError, FileNotFoundError)),
                "traceback": traceback.format_exc()[-2000:]}  # fmt: skip
    return {"outcome": "loaded", "fingerprint": fingerprint(model, kind)}


def main() -> None:
    torch.set_num_threads(1)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        reply = answer(json.loads(line))
        reply["sockets"] = len(SOCKET_ATTEMPTS)
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
