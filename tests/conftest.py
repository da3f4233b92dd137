import os

import pytest
from transformers.utils import logging as transformers_logging

# Tests never reach the Hub; a stray download attempt fails fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# hf-frozen logs through transformers' logging tree, which does not propagate by default: let pytest's caplog see it.
transformers_logging.enable_propagation()


@pytest.fixture(autouse=True)
def restore_environment():
    """A Trainer built with a DeepSpeed config sets ACCELERATE_USE_DEEPSPEED for good: no later test, nor a launch
    it starts, may inherit it."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
