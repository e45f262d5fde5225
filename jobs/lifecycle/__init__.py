"""Item and job transitions: the one module that changes ``items.status`` and ``jobs.status``.

Every transition is one conditional UPDATE that states what it expects (the state it saw, the
lease token where there is one, the job's state), so a transition that lost a race changes
nothing; none is a read followed by an unconditional write. The same statements run on
PostgreSQL and SQLite (where one writer at a time makes each UPDATE atomic).

| transition | items                                  | guard                                    |
|------------|----------------------------------------|------------------------------------------|
| submit     | - -> queued, dispatched_at set; or     | the insert's transaction (inputs stored  |
|            | failed (its input refused on its own)  | before it opens); publish after          |
| chunk      | - -> queued (a big job's next rows)    | job open and leased; renews/clears lease |
| submit beat| submit lease extended                  | job open and still leased                |
| abandon    | job -> cancelling; queued -> cancelled | job open, submit lease run out           |
| claim      | queued -> running, token, attempts+1   | job open, in window, not_before due; a   |
|            | (named items, or the next job's next   | doorbell picks by priority, then turn    |
|            | batch for a doorbell)                  |                                          |
| heartbeat  | lease extended                         | token = mine, running                    |
| record     | running -> succeeded / failed          | token = mine; a bad row fails only itself |
| reuse      | running -> succeeded, an earlier result | token = mine; same key, model, revision;  |
|            | copied, reused_from set (jobs.lifecycle| source not a copy, its job not deleting  |
|            | .reuse)                                |                                          |
| hand back  | running -> queued (cancelled: closing) | token = mine; backoff, attempt refunded  |
| stop       | running -> queued (cancelled: closing) | worker = mine (interrupted run), no wait |
| expire     | running -> queued / failed / cancelled | running and lease_expires_at < now       |
| cancel     | job -> cancelling; queued -> cancelled | job queued/in_progress                   |
| retry      | failed/expired -> queued; new window   | job not closing, such an item exists     |
| window     | queued -> expired (batch_expired)      | job open, expires_at passed              |
| priority   | jobs.priority set                      | job unfinished                           |
| finalise   | job -> completed / failed / cancelled  | job unfinished and fully written (or     |
|            | / expired                              |                                          |
|            |                                        | cancelling), no queued/running item      |
| delete     | job -> deleting; then its items and    | job ended (completed, failed, cancelled, |
|            | pages a batch per transaction, then    | expired); retention: retained_until      |
|            | its row (jobs.lifecycle.deletion)      | passed                                   |

Invariants kept here (docs/design.md#I3 and so on):
- I3: a claim moves only queued items of an open job, under the message's lease token (a
  retry of the claim uses it again and finds what the earlier try holds);
- I4: results are written only under the writer's own token (fenced);
- I5: every item ends in exactly one terminal state with at most one result; an item returned
  from a closing job ends ``cancelled``, so a cancelled job always finalises;
- I6: a row that cannot be stored fails only its own item;
- I8: every change of ``items.status`` and ``jobs.status`` is made here, as above;
- I9: a job ends only when all its rows are written and none is queued or running.

Finalisation never counts a job: it is an index probe (``NOT EXISTS`` queued/running) in its own
short transaction; on PostgreSQL the job row is locked first and checked by a later statement, so
the check sees a retry or cancel that held the lock.
"""

from jobs.lifecycle.claims import (
    claim_items,
    claim_next,
    hand_back_claims,
    lost_a_worker,
    release_items,
    renew_lease,
)
from jobs.lifecycle.common import (
    CLOSING_JOB_STATES,
    OPEN_JOB_STATES,
    UNFINISHED_JOB_STATES,
    ClaimedItem,
    is_postgres,
)
from jobs.lifecycle.deletion import (
    Step,
    delete_step,
    jobs_being_deleted,
    mark_deleting,
    mark_retained,
)
from jobs.lifecycle.expiry import (
    check_priority,
    expire_windows,
    set_priority,
)
from jobs.lifecycle.finalise import count_items, finalise_jobs, jobs_ready_to_finalise
from jobs.lifecycle.records import record_results
from jobs.lifecycle.repairs import (
    Expired,
    ToPublish,
    cancel_stranded,
    expire_leases,
    models_with_open_jobs,
    models_with_work,
    stamp_rung,
    started_since,
    take_for_publishing,
    undo_dispatch,
)
from jobs.lifecycle.requests import RETRYABLE_ITEM_STATES, cancel_job, requeue_failed
from jobs.lifecycle.submitting import (
    abandon_submissions,
    continue_submission,
    renew_submission,
)
from jobs.limits import MAX_PRIORITY, MIN_PRIORITY
from jobs.outcome import ItemOutcome

__all__ = [
    "CLOSING_JOB_STATES",
    "MAX_PRIORITY",
    "MIN_PRIORITY",
    "OPEN_JOB_STATES",
    "RETRYABLE_ITEM_STATES",
    "UNFINISHED_JOB_STATES",
    "ClaimedItem",
    "Expired",
    "ItemOutcome",
    "Step",
    "ToPublish",
    "abandon_submissions",
    "cancel_job",
    "cancel_stranded",
    "check_priority",
    "claim_items",
    "claim_next",
    "continue_submission",
    "count_items",
    "delete_step",
    "expire_leases",
    "expire_windows",
    "finalise_jobs",
    "hand_back_claims",
    "is_postgres",
    "jobs_being_deleted",
    "jobs_ready_to_finalise",
    "lost_a_worker",
    "mark_deleting",
    "mark_retained",
    "models_with_open_jobs",
    "models_with_work",
    "record_results",
    "release_items",
    "renew_lease",
    "renew_submission",
    "requeue_failed",
    "set_priority",
    "stamp_rung",
    "started_since",
    "take_for_publishing",
    "undo_dispatch",
]
