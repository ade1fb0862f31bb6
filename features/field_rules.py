"""Rules of one field shared by the one-event and the whole-table validators: time
parsing (RFC 3339 or epoch ms, within bounds) and the texts that name a broken rule."""

from __future__ import annotations

from datetime import datetime

from features.schema import Field, InvalidEventError, epoch_ms


def type_name(v: object) -> str:
    return type(v).__name__


def parse_time_ms(f: Field, value: object) -> int:
    """Epoch ms (UTC) from RFC 3339 with an offset, or from epoch ms; within ``f``'s bounds."""
    name = f.name
    if isinstance(value, bool):
        raise InvalidEventError(f"{name}: must be RFC 3339 or epoch ms, got bool")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidEventError(f"{name}: {value[:40]!r} is not RFC 3339") from None
        if dt.tzinfo is None:
            raise InvalidEventError(f"{name}: RFC 3339 time needs an offset (e.g. Z or +01:00)")
        ms = epoch_ms(dt)
    else:
        raise InvalidEventError(f"{name}: must be RFC 3339 or epoch ms, got {type_name(value)}")
    if not in_bounds(f, ms):
        raise InvalidEventError(f"{name}: {ms} ms is outside {f.range_text()}")
    return ms


def in_bounds(f: Field, x: float) -> bool:
    lo, hi = f.min, f.max
    if lo is not None and (x <= lo if f.min_exclusive else x < lo):
        return False
    return not (hi is not None and (x >= hi if f.max_exclusive else x > hi))


def length_text(f: Field) -> str:
    lo, hi = f.min_length, f.max_length
    if lo is not None and hi is not None:
        return f"{lo}..{hi}"
    return f">= {lo}" if lo is not None else f"<= {hi}"


def allowed_text(f: Field) -> str:
    assert f.allowed is not None
    shown = ", ".join(str(a) for a in f.allowed[:10])
    return shown + (", ..." if len(f.allowed) > 10 else "")
