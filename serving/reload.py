"""Model hot reload: follow a registry alias, swap atomically, refuse what cannot be served.

The registry moves an alias with ``os.replace`` (see :mod:`flows.registry`), so the alias
file is either the old or the new version name, never half of one. A background thread
polls the file (mtime + content, every ``interval_s``); on a change it loads the version
*off the request path*, checks it (sha256 of artifacts, definitions fingerprint, feature
names) and only then installs it with one attribute assignment. Requests in flight finish
on the model they started with; no request fails because of a reload.

A version that is refused (corrupt, or trained on other feature definitions) is logged
once, counted, and the model being served stays. The watcher tries again only when the
alias moves again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flows.registry import RegistryError, resolve
from serving.scorer import Model

log = logging.getLogger("skewless.serving.reload")

Loader = Callable[[Path, str], Model]


def _default_loader(version_dir: Path, fingerprint: str) -> Model:
    from serving.model import load_model

    return load_model(version_dir, fingerprint)


class ModelWatcher:
    """Keeps ``install`` fed with the model ``alias`` points at.

    ``on_outcome(outcome, version)`` is called with ``"loaded"``, ``"refused"`` or
    ``"missing"`` (for metrics); ``last_error`` holds the latest refusal reason.
    """

    def __init__(
        self,
        registry: Path,
        alias: str,
        fingerprint: str,
        install: Callable[[Model], None],
        *,
        interval_s: float = 1.0,
        loader: Loader = _default_loader,
        on_outcome: Callable[[str, str], Any] | None = None,
    ) -> None:
        self.registry, self.alias, self.fingerprint = Path(registry), alias, fingerprint
        self.install, self.loader, self.interval_s = install, loader, interval_s
        self.on_outcome = on_outcome
        self.version: str | None = None
        self.last_error: str | None = None
        self._seen: tuple[Any, ...] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def alias_path(self) -> Path:
        return self.registry / "aliases" / self.alias

    def _signature(self) -> tuple[Any, ...]:
        try:
            st = self.alias_path.stat()
            return (st.st_mtime_ns, st.st_size, self.alias_path.read_text().strip())
        except FileNotFoundError:
            return ("missing",)

    def poll_once(self) -> bool:
        """Load and install the aliased version if the alias changed; True if a new model
        is now served. Never raises for a bad version: it is refused and logged."""
        sig = self._signature()
        if sig == self._seen:
            return False
        self._seen = sig
        try:
            version_dir = resolve(self.registry, self.alias)
        except RegistryError as exc:
            return self._refuse("missing", self.alias, exc)
        if version_dir.name == self.version:
            return False
        try:
            model = self.loader(version_dir, self.fingerprint)
            self.install(model)
        except (RegistryError, OSError, ValueError) as exc:
            return self._refuse("refused", version_dir.name, exc)
        previous, self.version, self.last_error = self.version, model.version, None
        log.info(
            "model %s (alias %r) is now served%s",
            model.version,
            self.alias,
            f", replacing {previous}" if previous else "",
        )
        if self.on_outcome is not None:
            self.on_outcome("loaded", model.version)
        return True

    def _refuse(self, outcome: str, version: str, exc: Exception) -> bool:
        self.last_error = str(exc)
        keeping = f"; keeping {self.version}" if self.version else "; no model is served yet"
        log.error("model %s refused: %s%s", version, exc, keeping)
        if self.on_outcome is not None:
            self.on_outcome(outcome, version)
        return False

    def start(self) -> ModelWatcher:
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll_once()
            except Exception:  # a watcher that dies silently would freeze the model
                log.exception("model watcher: poll failed; retrying")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
