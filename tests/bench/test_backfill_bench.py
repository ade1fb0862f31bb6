"""The backfill bench's job block runs the job in process and as the ``skewless backfill``
command in a new process, and reports every stage per event beside its targets."""

from __future__ import annotations

import pyarrow as pa

from bench.backfill import TARGETS, WRITE_VARIANTS, _variant, job, write_options
from flows.backfill_write import ROW_GROUP, parquet_options


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


def test_write_options_block_measures_every_variant_on_each_output() -> None:
    out = write_options(3_000, rounds=1)
    assert list(out) == list(WRITE_VARIANTS)
    files = {"features.parquet", "card_features_as_of_last_event.parquet",
             "merchant_features_as_of_last_event.parquet"}  # fmt: skip
    for name, per_file in out.items():
        assert set(per_file) == files, name
        for figures in per_file.values():
            assert figures["write_cpu_s"] >= 0 and figures["read_cpu_s"] >= 0
            assert figures["mb"] > 0
    # the variants change what they say: zstd over the floats shrinks the features file
    assert out["floats zstd"]["features.parquet"]["mb"] < out["job"]["features.parquet"]["mb"]


def test_a_variant_changes_only_its_kind_of_column() -> None:
    schema = pa.schema(
        [("id", pa.string()), ("t", pa.timestamp("ms", tz="UTC")), ("x", pa.float64()),
         ("n", pa.int64()), ("s", pa.binary())]
    )  # fmt: skip
    job_opts = _variant(schema, WRITE_VARIANTS["job"])
    assert job_opts["row_group_size"] == ROW_GROUP
    assert {k: v for k, v in job_opts.items() if k != "row_group_size"} == parquet_options(schema)
    zstd = _variant(schema, WRITE_VARIANTS["integers zstd"])["compression"]
    assert zstd == {"id": "snappy", "t": "zstd", "x": "none", "n": "zstd", "s": "none"}
    split = _variant(schema, WRITE_VARIANTS["floats byte_stream_split"])["column_encoding"]
    assert split == {"t": "DELTA_BINARY_PACKED", "n": "DELTA_BINARY_PACKED",
                     "x": "BYTE_STREAM_SPLIT"}  # fmt: skip
    stats = _variant(schema, WRITE_VARIANTS["strings no statistics"])["write_statistics"]
    assert stats == ["t", "n"]
