"""bench/fair_share.py's own logic, without PostgreSQL, Redis or workers: its arguments, the
figures it derives from samples and rows, its target checks, the table and the JSON it writes,
and the inputs it makes. A wrong window or check would report fair share that is not there."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
try:
    import fair_share
finally:
    sys.path.remove(str(ROOT / "bench"))


def test_arguments_default_to_the_sizes_the_benchmark_is_specified_at() -> None:
    args = fair_share.parse_args([])
    assert args.parts == ["small", "two", "claim", "held", "redis"]
    assert (args.big, args.small, args.two_items) == (3000, 8, 600)
    assert (args.claims, args.claim_jobs, args.claim_items) == (200, 100, 1_000_000)
    assert (args.held_jobs, args.held_claims) == (3000, 20)
    assert (args.redis_items, args.bell_limit, args.skip_old) == (1_000_000, 64, False)
    assert args.json is None
    args = fair_share.parse_args(["--parts", " claim,redis ", "--skip-old", "--json", "x.json"])
    assert args.parts == ["claim", "redis"] and args.skip_old and args.json == Path("x.json")


@pytest.mark.parametrize(
    "argv",
    [
        ["--parts", "claim,nope"],
        ["--parts", ","],
        ["--big", "0"],
        ["--held-jobs", "0"],
        ["--claim-jobs", "10", "--claim-items", "5"],
        ["--sample-interval", "0"],
    ],
)
def test_arguments_that_cannot_run_are_refused(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        fair_share.parse_args(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_small_job_target_is_four_times_alone_or_fifteen_seconds_more() -> None:
    assert fair_share.small_target(1.0) == 16.0  # alone + 15 s is the larger
    assert fair_share.small_target(10.0) == 40.0  # 4 x alone is the larger
    assert fair_share.small_target(5.0) == 20.0


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(200, 0, -1)]
    assert fair_share.percentile(values, 0.95) == 190.0  # not 191: 0.95 * 200 in floats
    assert fair_share.percentile(values, 0.5) == 100.0
    assert fair_share.percentile([3.0], 0.95) == 3.0


def test_rates_count_only_the_window_in_which_both_jobs_ran() -> None:
    sample = fair_share.Sample
    samples = [
        sample(0.0, (0, 0)),
        sample(1.0, (40, 0)),  # the second job not started: outside
        sample(2.0, (60, 10)),  # both running: the window starts
        sample(3.0, (80, 30)),
        sample(4.0, (100, 70)),
        sample(5.0, (100, 90)),  # one of them done: outside
    ]
    # Of 100 each, the first job is done at 4.0: the window is 2.0 to 3.0.
    result = fair_share.rates_while_both_ran(samples, (100, 100))
    assert result["window_s"] == 1.0 and result["rates"] == [20.0, 20.0]
    # Of 101 and 90, the second job is done at 5.0: the window is 2.0 to 4.0.
    result = fair_share.rates_while_both_ran(samples, (101, 90))
    assert result["window_s"] == 2.0 and result["window_from_s"] == 2.0
    assert result["rates"] == [20.0, 30.0] and result["samples_in_window"] == 3
    # One sample in which both ran is no window.
    assert fair_share.rates_while_both_ran(samples[:3], (100, 100))["rates"] is None


def test_rates_from_rows_use_the_overlap_of_the_two_jobs_finishes() -> None:
    first = [0.0, 1.0, 2.0, 3.0, 4.0]  # before the second began, and after it ended: outside
    second = [1.5, 2.5, 3.5]
    result = fair_share.rates_from_rows([first, second])
    assert result == {"window_s": 2.0, "rates": [1.0, 1.0]}  # (1.5, 3.5]: 2.0, 3.0 / 2.5, 3.5
    assert fair_share.rates_from_rows([first, []])["rates"] is None
    assert fair_share.rates_from_rows([[0.0, 1.0], [2.0, 3.0]])["rates"] is None  # no overlap


def _summary(**parts: Any) -> dict[str, Any]:
    return {
        "max_new_tokens": 8,
        "batch_size": 8,
        "conditions": {"cpus": 2, "load_before": [1.0], "load_after": [2.0]},
        "parts": parts,
        "targets": fair_share.targets(parts),
    }


SMALL = {
    "small_items": 8,
    "big_items": 3000,
    "alone_runs_s": [1.0, 1.2],
    "behind_runs_s": [3.0, 20.0],
    "alone_s": 1.1,
    "behind_s": 11.5,
    "big_done_at_first_small": 200,
    "big_done_at_last_small": 400,
    "big_still_running": True,
    "big_items_at_end": {"succeeded": 500, "cancelled": 2500},
}
TWO = {
    "sampled": {"window_s": 10.0, "rates": [40.0, 30.0]},
    "from_rows": {"window_s": 12.0, "rates": [35.0, 34.0]},
}
CLAIM = {
    "jobs": 100,
    "items": 1_000_000,
    "claims": 200,
    "median_ms": 4.0,
    "p95_ms": 9.0,
    "scoped_median_ms": 2.0,
    "scoped_p95_ms": 3.0,
    "floor_median_ms": 0.5,
    "floor_p95_ms": 0.75,
    "explained": 21,
    "in_database_median_ms": {"the pick (UPDATE jobs)": 1.25},
    "build_s": 60.0,
    "plans": [{"statement": "the pick (UPDATE jobs)", "duration_ms": 1.5, "plan": "Update on"}],
}
HELD = {
    "jobs": 3000,
    "claims": 20,
    "held_median_ms": 1.0,
    "held_p95_ms": 1.5,
    "free_median_ms": 0.9,
    "free_p95_ms": 1.25,
}
REDIS = {
    "items": 1_000_000,
    "bell_limit": 64,
    "doorbells": {"llen": 64, "memory_usage": 2048, "used_before": 1024, "used_after": 4096},
    "old": {"llen": 125_000, "memory_usage": 10_240, "used_before": 0, "used_after": 20_480},
}


def test_targets_check_each_part_that_ran() -> None:
    checks = {t["name"]: t for t in fair_share.targets({"small": SMALL, "two": TWO})}
    small = checks["small job behind a big one (s)"]
    assert small["met"] is True and small["target"] == "≤ 16.10 s"  # alone + 15
    two = checks["two big jobs: faster ÷ slower rate"]
    assert two["met"] is False and two["value"] == pytest.approx(1.333, abs=0.001)
    assert len(checks) == 2

    late = {**SMALL, "behind_s": 16.2}
    assert fair_share.targets({"small": late})[0]["met"] is False
    ended = {**SMALL, "big_still_running": False}  # the big job ended first: not a pass
    assert fair_share.targets({"small": ended})[0]["met"] is False
    [claim, redis] = fair_share.targets({"claim": CLAIM, "redis": REDIS})
    assert claim["met"] is True and claim["value"] == 4.0
    assert redis["met"] is True and redis["target"].startswith("≤ 64")
    over = {**REDIS, "doorbells": {**REDIS["doorbells"], "llen": 65}}
    assert fair_share.targets({"redis": over})[0]["met"] is False
    unknown = fair_share.targets({"two": {"sampled": {"rates": None}}})
    assert unknown[0]["met"] is None and unknown[0]["value"] is None


def test_the_table_and_json_carry_every_part(tmp_path: Path) -> None:
    summary = _summary(small=SMALL, two=TWO, claim=CLAIM, held=HELD, redis=REDIS)
    table = fair_share.render(summary)
    assert "| small: 8-image job alone, s (median; runs) | 1.10 (1.00 / 1.20) |" in table
    assert "| small: behind ÷ alone | 10.45 |" in table
    assert "| two: first ÷ second (sampled) | 1.33 |" in table
    assert "median / p95 ms (200 claims) | 4.00 / 9.00 |" in table
    assert (
        "scoped to one job (job_id=, the pick looks at one job), median / p95 ms | 2.00 / 3.00"
        in (table)
    )
    assert "same session factory, median / p95 ms | 0.50 / 0.75 |" in table
    assert (
        "| claim: the pick (UPDATE jobs), in the database (auto_explain; median of 21) | 1.250 ms |"
        in (table)
    )
    assert "urgent row held, 3,000 open jobs, median / p95 ms (20 claims) | 1.00 / 1.50 |" in table
    assert "urgent row free, 3,000 open jobs, median / p95 ms (20 claims) | 0.90 / 1.25 |" in table
    assert "LLEN / MEMORY USAGE | 64 / 2.0 KiB |" in table
    assert "named messages (the old way): LLEN / MEMORY USAGE | 125,000 / 10.0 KiB |" in table
    assert "✗ two big jobs: faster ÷ slower rate: 1.33 (target ≤ 1.25)" in table
    assert "EXPLAIN ANALYZE, the pick (UPDATE jobs):\n\nUpdate on" in table
    path = tmp_path / "out.json"
    fair_share.write_json(path, summary)
    assert json.loads(path.read_text()) == summary


def test_synthetic_ids_are_a_lazy_sequence_of_id_sized_strings() -> None:
    ids = fair_share.SyntheticIds(1_000_000)
    assert len(ids) == 1_000_000
    assert len(ids[0]) == 36 and ids[0] != ids[1] and ids[-1] == ids[999_999]
    assert ids[8:16] == [ids[i] for i in range(8, 16)]
    assert len(ids[999_995:]) == 5
    with pytest.raises(IndexError):
        ids[1_000_000]


def test_inputs_are_small_distinct_pngs(tmp_path: Path) -> None:
    folder = fair_share.make_images(tmp_path / "imgs", 3, offset=10)
    paths = sorted(folder.iterdir())
    assert [p.name for p in paths] == ["i000010.png", "i000011.png", "i000012.png"]
    assert len({p.read_bytes() for p in paths}) == 3
    with Image.open(paths[0]) as image:
        assert image.format == "PNG" and image.size == (96, 96)
