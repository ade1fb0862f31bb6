"""The backfill bench's job block runs the job in process and as the ``skewless backfill``
command in a new process, and reports every stage per event beside its targets."""

from __future__ import annotations

from bench.backfill import TARGETS, job


def test_job_block_times_each_stage_and_the_command() -> None:
    out = job(3_000, repeats=1)
    assert out["events"] == out["accepted"] == 3_000
    stages = ("read", "validate_dedup_late", "features", "end_states", "feast_tables", "write")
    assert tuple(out["stage_us_per_event"]) == stages
    for name in stages:
        assert out["stage_us_per_event"][name] == round(out["stage_seconds"][name] / 3_000 * 1e6, 3)
    assert out["target_events_per_s"] == TARGETS["job_events_per_s"] == 1_000_000
    assert out["command_target_events_per_s"] == 700_000
    # the command is the same job plus a process start
    assert out["command_seconds"] > 0 and out["command_events_per_s"] > 0
    start = out["command_seconds"] - out["total_seconds"]
    assert abs(out["process_start_seconds"] - start) <= 0.002
    # ... split into its own (cold) job, as it reports it, and its start and exit
    parts = out["command_start_exit_seconds"] + out["cold_job_seconds"]
    assert abs(out["process_start_seconds"] - parts) <= 0.003
    assert 0 < out["command_job_seconds"] < out["command_seconds"]
    assert out["command_minor_faults"] > 0 and out["minor_faults"] > 0
    assert out["command_user_seconds"] > 0
