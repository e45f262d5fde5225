"""``locate``'s grounding templates: how each checkpoint family asks for a box and writes one.
Apart from ``jobs.kinds.locate`` so that ``--template``'s help (``jobs.kinds.commands``) names
them without importing the kind's parameters (pydantic)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Template:
    """How a checkpoint family was taught to ground an expression: the instruction (``{}``
    stands for the expression) and the decimals of each coordinate in its answers."""

    prompt: str
    decimals: int

    def ask(self, expression: str) -> str:
        expression = expression.strip()
        # The training lines end the expression with a full stop; one given already is kept.
        if expression[-1:] not in (".", "?", "!"):
            expression += "."
        return self.prompt.format(expression)

    @property
    def pattern(self) -> str:
        """The answer, as a regular expression: four numbers in [0, 1] with exactly
        ``decimals`` decimals, as ``[x1, y1, x2, y2]``."""
        number = rf"(?:0\.[0-9]{{{self.decimals}}}|1\.{'0' * self.decimals})"
        return rf"\[{number}, {number}, {number}, {number}\]"

    @property
    def max_chars(self) -> int:
        return len("[, , , ]") + 4 * (2 + self.decimals)


# LLaVA-1.5's instruction-tuning mix (llava_v1_5_mix665k: RefCOCO, RefCOCO+, RefCOCOg and Visual
# Genome regions) asks "Please provide the bounding box coordinate of the region this sentence
# describes: …" and answers "[0.61, 0.36, 0.92, 0.83]"; LLaVA-NeXT (1.6) was tuned on the same
# lines. docs/kinds/locate.md#templates has the sources.
TEMPLATES: dict[str, Template] = {
    "llava": Template(
        "Please provide the bounding box coordinate of the region this sentence describes: {}",
        decimals=2,
    ),
}
DEFAULT_TEMPLATE = "llava"
