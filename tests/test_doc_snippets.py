"""Every Python block of README.md and docs/*.md runs as written, page by page, top to bottom in one namespace (as a
reader runs them), in a fresh process with no network: the Hub ids they name are tiny models in an offline cache,
and their pushes land there too (tests/offline_hub.py). A block that cannot run here says why in an HTML comment
right above it (`<!-- not run: ... -->`), and this test checks that the reason is given."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from . import offline_hub

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- not run: (?P<reason>[^>]+?) -->\n)?```python\n(?P<code>.*?)```", re.S)


def blocks(page: str) -> list[tuple[str, str | None]]:
    """(code, reason it is not run or None) of each Python block of a page, in order."""
    text = (ROOT / page).read_text()
    return [(m["code"], m["reason"]) for m in BLOCK.finditer(text)]


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    root = tmp_path_factory.mktemp("offline-hub")
    return offline_hub.install(root)


@pytest.mark.parametrize("page", [p for p in PAGES if any(reason is None for _, reason in blocks(p))])
def test_the_code_of_a_page_runs_as_written(page, offline, tmp_path):
    script = []
    for i, (code, reason) in enumerate(blocks(page)):
        if reason is None:
            script.append(f"print('--- block {i} of {page}', flush=True)\n{code}")
    done = subprocess.run([sys.executable, "-c", "\n".join(script)], cwd=tmp_path, capture_output=True, text=True,
                          env={**_base_env(), **offline}, timeout=900, check=False)  # fmt: skip
    ran = [line for line in done.stdout.splitlines() if line.startswith("--- block")]
    assert done.returncode == 0, f"{page}, after {ran[-1:]}:\n{done.stderr[-4000:]}"


def test_every_block_runs_or_says_why_not():
    skipped = [(page, reason) for page in PAGES for _, reason in blocks(page) if reason is not None]
    assert all(len(reason.split()) >= 4 for _, reason in skipped), skipped
    assert sum(1 for page in PAGES for _ in blocks(page)) >= 12, "the pages' Python blocks were found"


def _base_env() -> dict[str, str]:
    import os

    keep = ("PATH", "HOME", "LANG", "TMPDIR", "OMP_NUM_THREADS", "TORCH_EXTENSIONS_DIR")
    return {k: v for k, v in os.environ.items() if k in keep} | {"TOKENIZERS_PARALLELISM": "false"}
