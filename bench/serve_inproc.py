"""In-process serving figures: the prediction log's cost and the predictor choice.

Both are measured inside one process, without gRPC, so that the figure is the thing
itself and not the transport around it; each is beside its baseline from the same run,
measured in alternating rounds so that a change in the machine's load hits both alike.

* ``ScoreBatch`` (``batch_size`` events per call, the scorer's column path) with the
  Parquet prediction log on (its writer thread running, flushing every ``flush_rows``
  rows) against the same scorer with the log off. The states come from a dict (the
  online store's read is not what is measured here; the gRPC bench has Redis).
* The predictors for one row and for ``batch_size`` rows: the native tree predictor
  (serving's, :mod:`flows.trees`), ONNX Runtime (bound buffers for one row), XGBoost
  ``inplace_predict`` and, when ``tl2cgen`` is importable, a compiled tree model (its
  build time reported apart: it is never on the request path). Each with its CPU time
  per row and whether its bits equal XGBoost's.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np


class _DictStore:
    """States held in a dict: the scorer's store protocol, reads only."""

    def __init__(self, states: dict[tuple[str, int], bytes]) -> None:
        self.states = states

    def read_states(
        self, keys: Sequence[tuple[str, int]], bootstrap: bool = False
    ) -> list[bytes | None]:
        return [self.states.get(k) for k in keys]

    def write(self, entity: str, rows: Sequence[Any]) -> None:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:
        pass


def _per_call_ms(fn: Callable[[], Any], calls: int, budget_s: float) -> list[float]:
    times: list[float] = []
    end = time.perf_counter() + budget_s
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() > end:
            break
    return times


def _summary(times: list[float], rows: int) -> dict[str, float]:
    a = np.asarray(times)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 4),
        "mean_ms": round(float(a.mean()), 4),
        "per_row_us": round(float(np.percentile(a, 50)) * 1e3 / rows, 3),
        "calls": len(times),
    }


def _setup(workdir: Path, events: int, rounds: int, max_depth: int, seed: int) -> Any:
    from features.native import NativeLayout
    from features.plan import compile_plan
    from features.reference import REFERENCE, Event
    from flows.registry import resolve
    from flows.simulate import SimulationConfig, simulate
    from serving.model import load_model
    from serving.testing import fold_states, publish_synthetic_model

    sim = SimulationConfig(
        events=events, cards=max(events // 20, 10), merchants=max(events // 200, 5), days=7.0,
        seed=seed,
    )  # fmt: skip
    table = simulate(sim)
    names = ("transaction_id", "card_id", "merchant_id", "amount", "currency", "country", "mcc")
    cols = [table.column(n).to_pylist() for n in names]
    ts = table.column("event_time").cast("int64").to_pylist()
    evs = [Event(*row) for row in zip(*cols, ts, strict=True)]
    plan = compile_plan(REFERENCE)
    states: dict[tuple[str, int], bytes] = {}
    for entity, by_id in fold_states(evs, REFERENCE).items():
        core = NativeLayout(plan.entity(entity).layout).core
        states |= {(entity, i): core.row(s)[1] for i, s in by_id.items() if s.max_seen is not None}
    version = publish_synthetic_model(
        workdir / "registry", rounds=rounds, max_depth=max_depth, seed=seed, fs=REFERENCE
    )
    model = load_model(resolve(workdir / "registry", version), REFERENCE.fingerprint())
    return REFERENCE, evs, states, model


def predlog_figures(
    fs: Any, evs: list[Any], states: Any, model: Any, workdir: Path, *, batch_size: int,
    calls: int, rounds: int, seconds: float, flush_rows: int,
) -> dict[str, Any]:  # fmt: skip
    """``score_batch`` ms per call and events/s, prediction log on vs off."""
    from serving.predlog import ParquetPredictionLog
    from serving.scorer import Scorer

    end = max(e.event_time for e in evs) + 60_000
    rng = np.random.default_rng(1)
    picks = rng.integers(0, len(evs), size=batch_size * calls)
    queries = [evs[j]._replace(transaction_id=f"b{i}", event_time=end + i)
               for i, j in enumerate(picks)]  # fmt: skip
    batches = [queries[i * batch_size : (i + 1) * batch_size] for i in range(calls)]
    scorer = Scorer(fs, _DictStore(states))
    scorer.install(model)
    log = ParquetPredictionLog(workdir / "predictions", scorer.plan, flush_rows=flush_rows)
    log.start()
    times: dict[str, list[float]] = {"log_off": [], "log_on": []}
    drain_ms = 0.0
    try:
        for _ in range(rounds):
            for mode in ("log_off", "log_on"):
                scorer.sink = log if mode == "log_on" else None
                it = iter(batches)

                def call(it: Any = it) -> Any:
                    return scorer.score_batch(next(it))

                times[mode] += _per_call_ms(call, calls, seconds / (2 * rounds))
                if mode == "log_on":  # what the writer has not written yet is part of the cost
                    t0 = time.perf_counter()
                    log.flush()
                    drain_ms += (time.perf_counter() - t0) * 1e3
    finally:
        scorer.sink = None
        log.close()
    out: dict[str, Any] = {}
    for mode, t in times.items():
        s = _summary(t, batch_size)
        s["events_per_s"] = round(batch_size * 1e3 / s["mean_ms"])
        out[mode] = s
    # sustained: the log-on rounds' calls plus writing what they left queued
    on = times["log_on"]
    out["log_on"]["sustained_events_per_s"] = round(
        batch_size * len(on) * 1e3 / (sum(on) + drain_ms)
    )
    out["ratio_on_vs_off"] = round(
        out["log_on"]["sustained_events_per_s"] / out["log_off"]["events_per_s"], 3
    )
    out["rows_logged"] = log.rows_written
    # back-pressure: calls that waited for the writer (their wait is in log_on's time)
    out["blocked_calls"] = getattr(log, "blocked_calls", None)  # None: no bound (before #14)
    out["blocked_s"] = round(getattr(log, "blocked_s", 0.0), 3)
    out["setup"] = {"batch_size": batch_size, "flush_rows": flush_rows, "store": "dict"}
    return out


def _predictors(model: Any, workdir: Path) -> dict[str, tuple[Callable[[np.ndarray], Any], float]]:
    """name -> (predict(X float64 (n, F)), build seconds)."""

    from flows.artifacts import onnx_probability
    from flows.trees import native_probability, native_trees
    from serving.model import load_model

    onnx = load_model(model.path, model.fingerprint, predictor="onnx")
    trees, why = native_trees(model.booster, model.n_features)
    if trees is None:
        raise ValueError(f"the native predictor refused the bench model: {why}")
    out: dict[str, tuple[Callable[[np.ndarray], Any], float]] = {
        "native": (partial(native_probability, trees), 0.0),
        "onnx": (lambda X: onnx_probability(onnx.session, X), 0.0),
        "onnx_bound_1row": (onnx.predict, 0.0),
        "xgboost_inplace": (model.booster.inplace_predict, 0.0),
    }
    try:
        import tl2cgen
        import treelite
    except ImportError:
        return out
    t0 = time.perf_counter()
    tl = treelite.frontend.from_xgboost(model.booster)
    lib = workdir / "tl2cgen" / "model.so"
    lib.parent.mkdir(parents=True, exist_ok=True)
    tl2cgen.export_lib(tl, toolchain="gcc", libpath=str(lib), params={"parallel_comp": 1},
                       nthread=1)  # fmt: skip
    predictor = tl2cgen.Predictor(str(lib), nthread=1)
    build = time.perf_counter() - t0

    def compiled(X: np.ndarray) -> Any:
        return predictor.predict(tl2cgen.DMatrix(X, dtype="float64")).reshape(-1)

    out["tl2cgen"] = (compiled, build)
    return out


def predictor_figures(
    model: Any, X: np.ndarray, workdir: Path, *, batch_size: int, calls: int, seconds: float,
    rounds: int = 3,
) -> dict[str, Any]:  # fmt: skip
    """Per predictor: ms for 1 row and for ``batch_size`` rows (alternating rounds), the
    max difference from XGBoost's own answer and whether it equals serving's answer."""
    from serving.model import PREDICTOR

    preds = _predictors(model, workdir)
    ref32 = np.asarray(model.booster.inplace_predict(X), dtype=np.float32)
    ref = ref32.astype(np.float64)
    serving = np.asarray(model.predict(X), dtype=np.float64)
    one, many = X[:1], X[:batch_size]
    times: dict[str, dict[str, list[float]]] = {n: {"1": [], "n": []} for n in preds}
    cpu = {n: {"1": 0.0, "n": 0.0} for n in preds}
    budget = seconds / (2 * rounds * len(preds))
    for _ in range(rounds):
        for name, (fn, _) in preds.items():
            for key, rows, n_calls in (("1", one, calls * 10), ("n", many, calls)):
                c0 = time.thread_time()
                times[name][key] += _per_call_ms(partial(fn, rows), n_calls, budget)
                cpu[name][key] += time.thread_time() - c0
    out: dict[str, Any] = {}
    for name, (fn, build) in preds.items():
        p = np.asarray(fn(X), dtype=np.float64).reshape(-1)
        bits = p.astype(np.float32).view(np.uint32)
        out[name] = {
            "max_abs_diff_vs_xgboost": float(np.max(np.abs(p - ref))),
            "rows_bit_equal_to_xgboost": int(np.sum(bits == ref32.view(np.uint32))),
            "rows": len(X),
            "equal_to_serving": bool(np.array_equal(p, serving)),
            "build_s": round(build, 2),
            "one_row": _summary(times[name]["1"], 1),
            f"rows_{batch_size}": _summary(times[name]["n"], batch_size),
            # thread CPU per row over all timed calls (what the 2 cores pay)
            "one_row_cpu_us": round(cpu[name]["1"] * 1e6 / max(1, len(times[name]["1"])), 3),
            f"rows_{batch_size}_cpu_us_per_row": round(
                cpu[name]["n"] * 1e6 / max(1, len(times[name]["n"]) * len(many)), 3
            ),
        }
    out["serving_predictor"] = getattr(model, "predictor", PREDICTOR)
    return out


def run(
    *, events: int = 40_000, batch_size: int = 500, calls: int = 200, rounds: int = 3,
    seconds: float = 20.0, flush_rows: int = 10_000, model_rounds: int = 300,
    max_depth: int = 6, seed: int = 7, workdir: Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Both figure sets; JSON-able."""
    from serving.testing import synthetic_training_data

    with tempfile.TemporaryDirectory(prefix="skewless-inproc-") as tmp:
        work = Path(workdir or tmp)
        fs, evs, states, model = _setup(work, events, model_rounds, max_depth, seed)
        X, _ = synthetic_training_data(model.feature_names, rows=max(batch_size, 2_000), seed=3)
        return {
            "score_batch_log": predlog_figures(
                fs, evs, states, model, work, batch_size=batch_size, calls=calls,
                rounds=rounds, seconds=seconds, flush_rows=flush_rows,
            ),
            "predictors": predictor_figures(
                model, X, work, batch_size=batch_size, calls=calls, seconds=seconds
            ),
        }  # fmt: skip


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=1))
