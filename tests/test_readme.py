"""The README's demo block is what `make demo` prints: pasted from a real run, and still of the form the demo
prints (`SUMMARY` in examples/dect_demo.py). A change to either side that the other does not follow fails here."""

from __future__ import annotations

import ast
import re
import string
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def demo_summary_template() -> str:
    """`SUMMARY` of examples/dect_demo.py, read from its source (importing the demo would load the model)."""
    tree = ast.parse((ROOT / "examples" / "dect_demo.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SUMMARY" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("examples/dect_demo.py no longer defines SUMMARY")


def template_regex(template: str) -> re.Pattern:
    """A pattern that a text printed by `template.format(...)` matches: literal text as it is, a field as any text
    without a line break (a number, a title, a sentence)."""
    parts = []
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field is not None:
            parts.append(r"[^\n]+?")
    return re.compile("".join(parts))


def readme_demo_block() -> str:
    text = (ROOT / "README.md").read_text()
    after = text.split("`make demo` ends with", 1)[1]
    return after.split("```\n", 1)[1].split("\n```", 1)[0]


def test_the_readme_demo_block_has_the_form_the_demo_prints():
    block = readme_demo_block()
    pattern = template_regex(demo_summary_template())
    tasks = block.split("\n")
    lines_per_task = demo_summary_template().count("\n") + 1
    assert len(tasks) % lines_per_task == 0 and len(tasks) >= 2 * lines_per_task, block
    for start in range(0, len(tasks), lines_per_task):
        chunk = "\n".join(tasks[start : start + lines_per_task])
        assert pattern.fullmatch(chunk), f"README demo block differs from the demo's SUMMARY:\n{chunk}"


def test_the_template_check_can_fail():
    pattern = template_regex(demo_summary_template())
    edited = demo_summary_template().replace("points over", "points above").format(
        title="T", shots=16, test_examples=1000, calibrated=0.5, uncalibrated=0.5, minilm=0.55, dect_lm=0.58,
        dect=0.6, gain=10.0, choice="x", head_seconds=1.0, queries=3, feature_queries=3,
    )  # fmt: skip
    assert not pattern.fullmatch(edited)
