"""Per-request sampling and stop strings inside one batched ``generate`` call.

transformers takes one ``do_sample``, ``temperature``, ``top_p`` and random stream for a whole
batch, so a batch could mix neither greedy and sampled requests nor two temperatures, and a
sampled row's tokens would depend on which rows shared its batch (they draw from one stream, in
row order). Here the engine generates greedily and ``RowSampler`` (the last logits processor)
picks each sampled row's token itself, from that row's own distribution and its own
``torch.Generator``, then leaves it the only token allowed, which the greedy step takes. A seeded
request therefore draws the same numbers alone or in any batch. ``StopStrings`` ends each row at
its own stop strings.

Imported only by the engine (it imports torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from model.engine import Sampling

__all__ = ["RowSampler", "StopStrings"]


class RowSampler:
    """A logits processor for one ``generate`` call: row ``i`` follows ``sampling[i]``; greedy
    rows are left alone. It must come after every processor that masks tokens (the JSON
    grammar, suppressed tokens), so a row samples only among the tokens it may take."""

    def __init__(self, sampling: Sequence[Sampling]) -> None:
        self._sampling = list(sampling)
        self._generators: list[torch.Generator | None] | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.shape[0] != len(self._sampling):
            raise ValueError(
                f"this sampler is for {len(self._sampling)} rows, not {scores.shape[0]}"
            )
        if self._generators is None:  # on the logits' device, which only the first call tells
            self._generators = [_generator(s, scores.device) for s in self._sampling]
        for row, (how, generator) in enumerate(zip(self._sampling, self._generators, strict=True)):
            if generator is None:
                continue
            chosen = _draw(scores[row], how, generator)
            scores[row] = float("-inf")
            scores[row, chosen] = 0.0
        return scores


def _generator(how: Sampling, device: torch.device) -> torch.Generator | None:
    if not how.samples:
        return None
    generator = torch.Generator(device=device)
    if how.seed is None:
        generator.seed()  # a fresh random state: an unseeded request differs run to run
    else:
        generator.manual_seed(how.seed)
    return generator


def _draw(logits: torch.Tensor, how: Sampling, generator: torch.Generator) -> int:
    probs = torch.softmax(logits.float() / how.temperature, dim=-1)
    if how.top_p < 1:
        ordered, order = torch.sort(probs, descending=True)
        # Keep the most likely tokens until their mass reaches top_p (always the first one).
        before = torch.cumsum(ordered, dim=-1) - ordered
        ordered[before >= how.top_p] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, ordered)
    return int(torch.multinomial(probs, 1, generator=generator).item())


class StopStrings:
    """A stopping criterion for one ``generate`` call: row ``i`` ends once the text it
    generated (tokens after ``prompt_width``) holds one of ``stops[i]``. The engine cuts the
    text there afterwards (``model.engine.cut_at_stop``)."""

    def __init__(self, tokenizer: Any, stops: Sequence[Sequence[str]], prompt_width: int) -> None:
        self._tokenizer = tokenizer
        self._stops = [tuple(s) for s in stops]
        self._width = prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **_: Any) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for row, stops in enumerate(self._stops):
            if stops:
                generated = input_ids[row, self._width :].tolist()
                text = self._tokenizer.decode(generated, skip_special_tokens=True)
                done[row] = any(s in text for s in stops)
        return done
