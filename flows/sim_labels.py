"""Labels for simulated (or any labelled historical) events, with realistic delays.

Fraud is learned from chargebacks: the cardholder disputes days to weeks later
(log-normal, median 10 days, 1 to 90 days), and some fraud is never reported. A few
chargebacks are reversed later (the merchant wins the dispute: a second, later label
``false`` for the same id, so the latest label wins). A small share of legit events is
confirmed within hours (a customer answering a fraud alert). Every other event gets no
label: once the label horizon has passed, that means legit.

Drawn from a generator seeded by ``(seed, 1)``, so the events of the same seed are
untouched and the same events and seed give the same labels.

>>> from features.reference import REFERENCE
>>> from flows.simulate import SimulationConfig, simulate
>>> ev = simulate(SimulationConfig(events=5_000, cards=200, merchants=40, days=5.0))
>>> lab = simulate_labels(ev, REFERENCE, seed=7)
>>> lab.column_names
['transaction_id', 'label', 'label_time']
>>> int(pc.sum(lab.column("label")).as_py()) <= int(pc.sum(ev.column("is_fraud")).as_py())
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.definitions import FeatureSet
from features.schema import FieldType
from flows.labels import LABEL, LABEL_TIME, label_schema

_MS_PER_DAY = 86_400_000
_MS_PER_HOUR = 3_600_000
_MS = pa.timestamp("ms", tz="UTC")


@dataclass(frozen=True)
class LabelDelays:
    """How labels arrive (the defaults are a card issuer's chargeback flow)."""

    median_days: float = 10.0
    sigma: float = 0.6
    min_days: float = 1.0
    max_days: float = 90.0
    never_share: float = 0.08  # fraud that is never reported
    reversal_share: float = 0.03  # chargebacks later reversed (label false)
    confirmed_legit_share: float = 0.02  # legit events confirmed within hours

    def __post_init__(self) -> None:
        for name in ("never_share", "reversal_share", "confirmed_legit_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.min_days <= self.median_days <= self.max_days:
            raise ValueError("min_days <= median_days <= max_days: must hold, all > 0")


def simulate_labels(
    events: pa.Table, fs: FeatureSet, seed: int, delays: LabelDelays = LabelDelays()
) -> pa.Table:
    """The label events of ``events`` (which carry ``fs.label``), ordered by label_time."""
    schema = label_schema(fs)
    ident = schema.event_id
    if fs.label not in events.column_names:
        raise ValueError(f"events: no {fs.label!r} column to derive labels from")
    rng = np.random.default_rng([seed, 1])
    y = pc.fill_null(pc.cast(events.column(fs.label), pa.int64()), 0).to_numpy(zero_copy_only=False)
    positive = np.asarray(y) != 0
    t = pc.cast(pc.cast(events.column(fs.schema.event_time), _MS), pa.int64()).to_numpy()
    n = events.num_rows
    u = rng.random((4, n))
    days = np.exp(np.log(delays.median_days) + delays.sigma * rng.standard_normal(n))
    days = np.clip(days, delays.min_days, delays.max_days)
    charge = positive & (u[0] >= delays.never_share)
    reversed_ = charge & (u[1] < delays.reversal_share)
    confirm = ~positive & (u[2] < delays.confirmed_legit_share)
    charge_ms = t + (days * _MS_PER_DAY).astype(np.int64)
    reversal_ms = charge_ms + ((5 + 15 * u[3]) * _MS_PER_DAY).astype(np.int64)
    confirm_ms = t + ((1 + 47 * u[3]) * _MS_PER_HOUR).astype(np.int64)
    rows = np.concatenate([np.flatnonzero(m) for m in (charge, reversed_, confirm)])
    when = np.concatenate([charge_ms[charge], reversal_ms[reversed_], confirm_ms[confirm]])
    value = np.concatenate(
        [np.ones(int(charge.sum()), bool), np.zeros(int(reversed_.sum() + confirm.sum()), bool)]
    )
    order = np.lexsort((rows, when))
    kind = pa.bool_() if schema.field(LABEL).type is FieldType.BOOL else pa.int64()
    labels = pa.array(value[order]).cast(kind)
    return pa.table(
        {
            ident: events.column(ident).take(pa.array(rows[order])),
            LABEL: labels,
            LABEL_TIME: pa.array(when[order], pa.int64()).cast(_MS),
        }
    )
