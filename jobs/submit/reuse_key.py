"""An item's reuse key: a hash of everything that decides its result apart from the model.

Computed at submit for every item, whether or not its job asked for reuse, so any finished job
can be the source of a later one (``jobs.lifecycle.reuse``). Two items with the same key, run by
the same model at the same revision and quantisation, get the same result: greedy decoding,
or sampling with a seed, gives the same text for the same request alone or in any batch
(``model.engine.Sampling``). What the key holds, canonically encoded (sorted JSON):

- the kind, and the job's parameters except those that only say how the job runs
  (``HOW_NOT_WHAT``): prompt, questions and conversation, schema, instructions, pages and dpi,
  the resolved token budget and whether the system chose it;
- the item's effective prompt and its own request (an OpenAI line's messages, sampling, stop,
  ``max_tokens``), without the URIs of its other images, whose bytes stand for them;
- the SHA-256 of every input's bytes, in order.

No key (NULL): an input read in place (``s3://``, a URL), whose bytes are not known at submit;
sampling without a seed, where every run is a new draw that a copy would pass off as one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from jobs.submit.sources import INPUT_ERROR, MORE_IMAGES, NO_INPUT

# Job parameters that change how a job runs, not what any item's result is.
HOW_NOT_WHAT = frozenset({"batch_size", "fingerprint", "reuse"})

# Changing what the key covers changes every key: old items then simply never match.
_VERSION = 1


def job_basis(kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The part of every item's key its job gives: computed once per job."""
    return {
        "v": _VERSION,
        "kind": kind,
        "params": {k: v for k, v in params.items() if k not in HOW_NOT_WHAT},
    }


def reuse_key(
    basis: Mapping[str, Any],
    *,
    prompt: str | None,
    request: Mapping[str, Any] | None,
    input_uri: str,
    input_sha256: str | None,
    other_sha256s: Sequence[str | None] = (),
) -> str | None:
    """The item's key (64 hex digits), or None when its result cannot be reused."""
    if input_uri != NO_INPUT and input_sha256 is None:
        return None
    if any(sha is None for sha in other_sha256s):
        return None
    own = {k: v for k, v in (request or {}).items() if k not in (MORE_IMAGES, INPUT_ERROR)}
    if draws_anew(own.get("sampling")):
        return None
    payload = {
        **basis,
        "prompt": prompt,
        "request": own,
        "inputs": [input_sha256, *other_sha256s],
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def draws_anew(sampling: Any) -> bool:
    """Whether a request's sampling (``openai_reader.sampling_fields``' fields) draws without a
    seed: then no two runs need agree, and no result stands for another."""
    if not isinstance(sampling, Mapping):
        return False
    return sampling.get("temperature", 0) > 0 and sampling.get("seed") is None
