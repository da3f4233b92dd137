"""Prompt templates with `{text}`, `{text_pair}` and `{answer}` slots."""

from __future__ import annotations

import string


class PromptTemplate:
    """Renders a template; with no answer token the prompt stops at the answer slot (causal LMs, APIs).

    Example:
        ```python
        PromptTemplate("{text} It was {answer}.").render("Great film!", None, "<mask>")  # 'Great film! It was <mask>.'
        PromptTemplate("{text} It was {answer}.").render("Great film!", None, None)  # 'Great film! It was'
        ```
    """

    def __init__(self, template: str) -> None:
        self.template = template
        self.parts = list(string.Formatter().parse(template))

    def answer_comes_last(self) -> bool:
        """Whether `{answer}` follows `{text}` (and `{text_pair}`): needed wherever the prompt is cut at the slot."""
        slots = [field for _, field, _, _ in self.parts if field is not None]
        return slots.index("answer") > max(i for i, field in enumerate(slots) if field in ("text", "text_pair"))

    def render(self, text: str, text_pair: str | None, answer: str | None) -> str:
        values = {"text": text, "text_pair": text_pair or ""}
        out = []
        for literal, field, spec, _conversion in self.parts:
            out.append(literal)
            if field is None:
                continue
            if field == "answer":
                if answer is None:
                    return "".join(out).rstrip()
                out.append(answer)
            else:
                out.append(format(values[field], spec or ""))
        return "".join(out)
