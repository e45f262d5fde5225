"""One batch message, start to finish: claim → fetch_inputs → run_batch → record_results.

Every failure lands on the item it belongs to: a bad input fails only itself, an out-of-memory
batch is split in halves until what fails, fails alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import OperationalError

from jobs.errors import ItemErrorCode
from jobs.lifecycle import ClaimedItem, ItemOutcome, claim_items, record_results, release_items
from model.engine import Engine, GenerationRequest
from model.errors import DeviceOutOfMemoryError, InputError
from model.images import decode_image
from storage import StorageError, TransientStorageError
from workers.resources import WorkerResources

log = logging.getLogger(__name__)

# Decoding happens in threads (Pillow releases the GIL) so the next inputs are ready while the
# model generates for the current ones.
_FETCH_THREADS = 8


@dataclass(frozen=True)
class BatchReport:
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    released: int = 0
    recorded: int = 0


@dataclass(frozen=True)
class Decoded:
    item: ClaimedItem
    image: Any  # PIL.Image.Image


def process_batch(item_ids: Sequence[str], res: WorkerResources) -> BatchReport:
    claimed = claim_items(
        res.session_factory, item_ids, worker=res.worker_name, lease_seconds=res.lease_seconds
    )
    if not claimed:
        log.info("nothing to claim (duplicate or late message) items=%d", len(item_ids))
        return BatchReport()
    deadline = time.monotonic() + res.lease_seconds
    engine = res.engine
    outcomes: list[ItemOutcome] = []
    handed_back: list[ClaimedItem] = []
    with ThreadPoolExecutor(max_workers=_FETCH_THREADS) as pool:
        futures = [pool.submit(fetch_input, item, res) for item in claimed]
        for chunk in _chunks(list(zip(claimed, futures, strict=True)), res.batch_size):
            ready: list[Decoded] = []
            for item, future in chunk:
                got = future.result()
                if isinstance(got, Decoded):
                    ready.append(got)
                elif isinstance(got, ItemOutcome):
                    outcomes.append(got)
                else:
                    handed_back.append(item)
            outcomes.extend(run_batch(engine, ready, default_max_new_tokens=res.max_new_tokens))
    recorded = record_with_retry(res, outcomes, deadline=deadline)
    released = release_items(res.session_factory, handed_back) if handed_back else 0
    failed = sum(1 for o in outcomes if o.error_code)
    report = BatchReport(len(claimed), len(outcomes) - failed, failed, released, recorded)
    log.info("batch done job=%s %s", claimed[0].job_id, report)
    return report


def fetch_input(item: ClaimedItem, res: WorkerResources) -> Decoded | ItemOutcome | None:
    """Reads and decodes one input. None means: hand the item back (transient failure)."""
    try:
        data = res.blobs.read_uri(item.input_uri)
        return Decoded(item, decode_image(data, max_pixels=res.max_image_pixels))
    except TransientStorageError as exc:
        if item.attempts < res.max_attempts:
            log.warning("transient storage error, handing back item=%s: %s", item.id, exc)
            return None
        return _failed(item, exc.code, str(exc))
    except StorageError as exc:
        return _failed(item, exc.code, str(exc))
    except InputError as exc:
        return _failed(item, exc.code, exc.message)


def run_batch(
    engine: Engine, ready: Sequence[Decoded], *, default_max_new_tokens: int
) -> list[ItemOutcome]:
    if not ready:
        return []
    max_new_tokens = int(ready[0].item.params.get("max_new_tokens") or default_max_new_tokens)
    requests = [GenerationRequest(image=d.image, prompt=d.item.prompt) for d in ready]
    try:
        results = engine.generate(requests, max_new_tokens=max_new_tokens)
    except DeviceOutOfMemoryError as exc:
        return _split_and_retry(
            engine, ready, default_max_new_tokens, exc, ItemErrorCode.out_of_memory
        )
    except InputError as exc:
        if len(ready) == 1:
            return [_failed(ready[0].item, exc.code, exc.message)]
        return _split_and_retry(engine, ready, default_max_new_tokens, exc, exc.code)
    except Exception as exc:
        log.exception("generation failed for a batch of %d; isolating", len(ready))
        return _split_and_retry(
            engine, ready, default_max_new_tokens, exc, ItemErrorCode.internal_error
        )
    return [
        ItemOutcome(
            item_id=d.item.id,
            lease_token=d.item.lease_token,
            text=result.text,
            tokens_out=result.tokens_out,
        )
        for d, result in zip(ready, results, strict=True)
    ]


def _split_and_retry(
    engine: Engine, ready: Sequence[Decoded], default_max: int, exc: Exception, code: str
) -> list[ItemOutcome]:
    if len(ready) == 1:
        message = (
            "The model ran out of device memory on this item alone."
            if code == ItemErrorCode.out_of_memory
            else f"Generation failed: {type(exc).__name__}: {exc}"
        )
        return [_failed(ready[0].item, code, message)]
    middle = len(ready) // 2
    log.warning("%s on a batch of %d; retrying halves", type(exc).__name__, len(ready))
    return run_batch(engine, ready[:middle], default_max_new_tokens=default_max) + run_batch(
        engine, ready[middle:], default_max_new_tokens=default_max
    )


def record_with_retry(
    res: WorkerResources, outcomes: Sequence[ItemOutcome], *, deadline: float
) -> int:
    """Records under the lease, retrying while the database is unreachable.

    Past the lease deadline another worker may own the items; the sweeper re-queues them.
    """
    delay = 0.5
    while True:
        try:
            return record_results(res.session_factory, outcomes)
        except OperationalError as exc:
            if time.monotonic() + delay > deadline:
                log.error("database unreachable until lease end; results dropped: %s", exc)
                return 0
            log.warning("database unreachable, retrying in %.1fs: %s", delay, exc.orig)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


def _failed(item: ClaimedItem, code: str, message: str) -> ItemOutcome:
    log.info("item failed item=%s job=%s code=%s", item.id, item.job_id, code)
    return ItemOutcome(item.id, item.lease_token, error_code=code, error_message=message)


def _chunks(
    pairs: list[tuple[ClaimedItem, Future[Decoded | ItemOutcome | None]]], size: int
) -> Iterator[list[tuple[ClaimedItem, Future[Decoded | ItemOutcome | None]]]]:
    for start in range(0, len(pairs), size):
        yield pairs[start : start + size]
