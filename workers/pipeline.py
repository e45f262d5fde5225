"""One batch message, start to finish: claim → fetch_inputs → run_batch → record_results.

Every failure lands on the item it belongs to: a bad input fails only itself, an out-of-memory
batch is split in halves until what fails, fails alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import OperationalError

from jobs.lifecycle import ClaimedItem, ItemOutcome, claim_items, record_results, release_items
from jobs.states import JobKind
from model.errors import InputError
from storage import StorageError, TransientStorageError
from workers.generation import Generated, Unit, generate_units
from workers.lease import LeaseKeeper
from workers.outcomes import build_outcome, failed
from workers.resources import WorkerResources

log = logging.getLogger(__name__)

# Decoding happens in threads (Pillow and PDFium release the GIL) so the next inputs are ready
# while the model generates for the current ones.
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
    """An input ready for the model: one image, or the rendered pages of a document."""

    item: ClaimedItem
    units: tuple[Unit, ...]


Fetched = Decoded | ItemOutcome | None


def process_batch(item_ids: Sequence[str], res: WorkerResources) -> BatchReport:
    claimed = claim_items(
        res.session_factory, item_ids, worker=res.worker_name, lease_seconds=res.lease_seconds
    )
    if not claimed:
        log.info("nothing to claim (duplicate or late message) items=%d", len(item_ids))
        return BatchReport()
    lease_token = claimed[0].lease_token  # one claim, one token for the batch
    with LeaseKeeper(res.session_factory, lease_token, res.lease_seconds):
        outcomes, handed_back = run_batch(claimed, res)
        # Renewal goes on while writes are retried, so a database blip does not cost the lease.
        recorded = record_with_retry(res, outcomes, deadline=time.monotonic() + res.lease_seconds)
    released = release_items(res.session_factory, handed_back) if handed_back else 0
    failures = sum(1 for o in outcomes if o.error_code)
    report = BatchReport(len(claimed), len(outcomes) - failures, failures, released, recorded)
    log.info("batch done job=%s %s", claimed[0].job_id, report)
    return report


def run_batch(
    claimed: Sequence[ClaimedItem], res: WorkerResources
) -> tuple[list[ItemOutcome], list[ClaimedItem]]:
    """Fetches, decodes and generates; returns outcomes and the items to hand back."""
    engine = res.engine
    params = claimed[0].params  # one message holds items of one job
    extract = claimed[0].kind == JobKind.extract
    schema: Mapping[str, Any] | None = params.get("schema") if extract else None
    max_new_tokens = int(params.get("max_new_tokens") or res.max_new_tokens)
    outcomes: list[ItemOutcome] = []
    handed_back: list[ClaimedItem] = []
    pending: list[Decoded] = []

    def generate(ready: list[Decoded]) -> None:
        units = [unit for decoded in ready for unit in decoded.units]
        results = generate_units(
            engine,
            units,
            batch_size=res.batch_size,
            max_new_tokens=max_new_tokens,
            json_schema=schema,
        )
        by_item: dict[str, list[Generated]] = {decoded.item.id: [] for decoded in ready}
        for result in results:
            by_item[result.unit.item.id].append(result)
        outcomes.extend(build_outcome(d.item, by_item[d.item.id], schema) for d in ready)

    with ThreadPoolExecutor(max_workers=_FETCH_THREADS) as pool:
        futures = [pool.submit(fetch_input, item, res) for item in claimed]
        for item, future in zip(claimed, futures, strict=True):
            got = future.result()
            if isinstance(got, Decoded):
                pending.append(got)
            elif isinstance(got, ItemOutcome):
                outcomes.append(got)
            else:
                handed_back.append(item)
            if sum(len(d.units) for d in pending) >= res.batch_size:
                generate(pending)
                pending = []
        generate(pending)
    return outcomes, handed_back


def fetch_input(item: ClaimedItem, res: WorkerResources) -> Fetched:
    """Reads and decodes one input. None means: hand the item back (transient failure)."""
    try:
        data = res.blobs.read_uri(item.input_uri)
        return Decoded(item, decode_units(item, data, res))
    except TransientStorageError as exc:
        if item.attempts < res.max_attempts:
            log.warning("transient storage error, handing back item=%s: %s", item.id, exc)
            return None
        return failed(item, exc.code, str(exc))
    except StorageError as exc:
        return failed(item, exc.code, str(exc))
    except InputError as exc:
        return failed(item, exc.code, exc.message)


def decode_units(item: ClaimedItem, data: bytes, res: WorkerResources) -> tuple[Unit, ...]:
    from model.documents import is_pdf, render_pages
    from model.images import decode_image

    if item.kind == JobKind.extract and is_pdf(data):
        pages = render_pages(
            data,
            pages=str(item.params.get("pages") or "all"),
            dpi=int(item.params.get("dpi") or 144),
            max_pages=res.max_pdf_pages,
            max_pixels=res.max_image_pixels,
        )
        return tuple(Unit(item, page.number, page.image) for page in pages)
    # Engines that know their input size let big JPEGs decode at a reduced scale.
    min_side = getattr(res.engine, "input_side", None)
    image = decode_image(data, max_pixels=res.max_image_pixels, min_side=min_side)
    return (Unit(item, None, image),)


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
