"""Every Python block of README.md and docs/*.md runs as written, page by page, top to bottom in one namespace (as a
reader runs them), in a fresh process with no network: the Hub ids they name are tiny models in an offline cache,
and their pushes land there too (tests/offline_hub.py). A block that needs a model served over an OpenAI-compatible
API is marked `<!-- endpoint: ... -->` right above it: `make test-endpoint` runs its page whole, with llama.cpp's
server serving SmolLM2 at the address the block names."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from . import offline_hub

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- endpoint: (?P<endpoint>[^>]+?) -->\n)?```python\n(?P<code>.*?)```", re.S)


def blocks(page: str) -> list[tuple[str, str | None]]:
    """(code, why it needs a served model, or None) of each Python block of a page, in order."""
    text = (ROOT / page).read_text()
    return [(m["code"], m["endpoint"]) for m in BLOCK.finditer(text)]


def run_page(page: str, env: dict, cwd, with_endpoint: bool) -> None:
    script = [f"print('--- block {i} of {page}', flush=True)\n{code}"
              for i, (code, endpoint) in enumerate(blocks(page)) if endpoint is None or with_endpoint]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", "\n".join(script)], cwd=cwd, capture_output=True, text=True,
                          env={**_base_env(), **env}, timeout=900, check=False)  # fmt: skip
    ran = [line for line in done.stdout.splitlines() if line.startswith("--- block")]
    assert done.returncode == 0, f"{page}, after {ran[-1:]}:\n{done.stderr[-4000:]}"


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    root = tmp_path_factory.mktemp("offline-hub")
    return offline_hub.install(root)


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)])
def test_the_code_of_a_page_runs_as_written(page, offline, tmp_path):
    run_page(page, offline, tmp_path, with_endpoint=False)


@pytest.mark.endpoint
@pytest.mark.parametrize("page", [p for p in PAGES if any(endpoint for _, endpoint in blocks(p))])
def test_a_page_with_an_endpoint_block_runs_whole_against_a_real_server(page, offline, tmp_path):
    from .dect.llama_server import API_KEY, LlamaServer

    server = LlamaServer(port=8000).start()  # the address the docs name
    try:
        run_page(page, {**offline, "OPENAI_API_KEY": API_KEY}, tmp_path, with_endpoint=True)
    finally:
        server.kill()


def test_the_pages_blocks_are_found():
    assert sum(1 for page in PAGES for _ in blocks(page)) >= 12
    assert sum(1 for page in PAGES for _, endpoint in blocks(page) if endpoint) == 1


def _base_env() -> dict[str, str]:
    import os

    keep = ("PATH", "HOME", "LANG", "TMPDIR", "OMP_NUM_THREADS", "TORCH_EXTENSIONS_DIR")
    return {k: v for k, v in os.environ.items() if k in keep} | {"TOKENIZERS_PARALLELISM": "false"}
