"""skewless features: the single source of truth for every feature.

The definition types live in :mod:`features.schema` (events), :mod:`features.definitions`
(entities, windows, aggregations, the feature set) and :mod:`features.request`; a user's
definitions module is loaded by :mod:`features.loader` (default: the reference fraud set,
:mod:`features.reference`) and compiled once by :mod:`features.plan`. Entity layouts are
:mod:`features.layout` (run by the native core, :mod:`features.native`); the vectorized
backfill is :mod:`features.backfill`; the Python reference engine the tests hold the native
core to is :mod:`features.reference_engine`.
"""

#: bumped whenever the state layout or the finalize math changes; part of the fingerprint
ENGINE_VERSION = 2
