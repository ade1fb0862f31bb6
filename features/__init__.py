"""skewless features: the single source of truth for every feature.

The reference fraud feature set lives in :mod:`features.reference`; the engine that
streaming and serving share lives in :mod:`features.engine`; the vectorized backfill in
:mod:`features.backfill`.
"""

#: bumped whenever the state layout or the finalize math changes; part of the fingerprint
ENGINE_VERSION = 2
