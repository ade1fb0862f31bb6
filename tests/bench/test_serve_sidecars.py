"""The sidecar bench runs its four configurations end to end (its numbers belong to the
bench run; here only that every path really ran: shadow scored, gauges filled)."""

from __future__ import annotations

from bench import serve_sidecars


def test_sidecar_bench_runs_every_path() -> None:
    out = serve_sidecars.run(rounds=1, calls=50, cards=50, gauge_interval_s=0.05)
    assert set(out["score_p50_ms"]) == {"off", "gauges", "shadow", "both"}
    assert out["shadow"] == {"scored": 100, "errors": 0, "skipped": 0}
    assert out["gauge_window_rows"] == 100  # the gauges' and the both rounds' calls
