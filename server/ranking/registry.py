"""Versions of the ranking model held at once, and their hot reload from the model files.

The registry maps version -> model; one version is the default and serves every request that names
none (the experiments issue picks versions per request through `RankService.rank(..., version=...)`).
Readers take the registry's current state with one attribute read of an immutable snapshot, without a
lock: a batch resolves its model once, at its start, and keeps that object to its end however the
registry changes meanwhile, so a swap never splits a batch between two versions and never fails one.

Versions come from model files: `ranking.model_file` (its version is the default) and
`ranking.extra_model_files` (loaded beside it). `ModelReloader` polls them every
`ranking.reload_interval_s` (mtime and size, then a SHA-256 of the content, so a touched but unchanged
file reloads nothing) and on `reload()` (the admin RPC `Catalog.AdminReloadModel`). A file whose new
content does not parse, or that reuses a loaded version for other weights, is refused with an ERROR log
line naming the file and the reason; the version it held keeps serving. Each process watches the files
itself, so every worker of a group picks a change up within one interval.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from server import metrics
from server.ranking.model import DEFAULT_MODEL_FILE, RankingModel, parse_model
from server.tasks import cancel_and_wait

log = logging.getLogger(__name__)

_UNREADABLE = "unreadable"


class UnknownModelVersion(LookupError):
    def __init__(self, version: str, loaded: Sequence[str]) -> None:
        super().__init__(f"model version {version!r} is not loaded; loaded: {sorted(loaded)}")
        self.version = version


@dataclass(frozen=True, slots=True)
class _State:
    default: RankingModel
    by_version: Mapping[str, RankingModel]


class ModelRegistry:
    """Thread-safe: writers serialise on a lock and publish a new snapshot; readers never lock."""

    def __init__(self, default: RankingModel) -> None:
        self._lock = threading.Lock()
        self._state = _State(default, MappingProxyType({default.version: default}))
        _publish(self._state)

    @property
    def default(self) -> RankingModel:
        return self._state.default

    def get(self, version: str | None = None) -> RankingModel:
        """The model of `version`, or the default one for None or ""."""
        state = self._state
        if not version:
            return state.default
        model = state.by_version.get(version)
        if model is None:
            raise UnknownModelVersion(version, list(state.by_version))
        return model

    def versions(self) -> list[str]:
        return sorted(self._state.by_version)

    def replace(self, old: str | None, new: RankingModel, *, make_default: bool) -> None:
        """Loads `new` in place of version `old` (None: beside the others); the default moves to `new`
        when `make_default` or when `old` was the default. ValueError when `new` reuses a loaded version
        for other weights: answers, and the edge tier's cache keys, must tell the two apart."""
        with self._lock:
            state = self._state
            held = state.by_version.get(new.version)
            if held is not None and held != new:
                raise ValueError(
                    f"version {new.version!r} is already loaded with other weights: give the new model a "
                    "new version"
                )
            by_version = dict(state.by_version)
            if old is not None and old != new.version:
                by_version.pop(old, None)
            by_version[new.version] = new
            default = new if make_default or state.default.version == old else state.default
            self._swap(_State(default, MappingProxyType(by_version)))

    def set_default(self, version: str) -> RankingModel:
        with self._lock:
            state = self._state
            model = state.by_version.get(version)
            if model is None:
                raise UnknownModelVersion(version, list(state.by_version))
            self._swap(_State(model, state.by_version))
            return model

    def _swap(self, state: _State) -> None:
        previous = self._state
        self._state = state  # one reference store: atomic for every reader
        _publish(state)
        if previous.default is not state.default:
            log.info(
                "model %s now serves by default (was %s)", state.default.version, previous.default.version
            )


def _publish(state: _State) -> None:
    # Several registries live in one process only in tests; the last one published wins.
    metrics.MODEL_LOADED.clear()
    for version in state.by_version:
        metrics.MODEL_LOADED.labels(version, "default" if version == state.default.version else "loaded").set(
            1
        )


@dataclass
class _Watched:
    path: Path
    is_default: bool
    version: str | None = None  # the version this file's content loaded, None before the first load
    stamp: tuple[int, int] | None = None  # (mtime_ns, size) at the last look
    digest: str | None = None  # SHA-256 of the content last looked at (loaded or refused)


@dataclass(frozen=True, slots=True)
class FileOutcome:
    path: str
    outcome: str  # "loaded", "unchanged" or "refused"
    version: str  # the version this file serves now ("" when it has never loaded)
    error: str = ""


@dataclass(frozen=True, slots=True)
class ReloadReport:
    default_version: str
    versions: list[str]
    files: list[FileOutcome]


@dataclass
class ModelReloader:
    """Keeps `registry` in step with the model files (see the module doc)."""

    registry: ModelRegistry
    model_file: str | None
    extra_files: Sequence[str] = ()
    interval_s: float = 5.0
    _files: list[_Watched] = field(init=False)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _task: asyncio.Task[None] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        default = Path(self.model_file) if self.model_file else DEFAULT_MODEL_FILE
        self._files = [_Watched(default, True, self.registry.default.version)]
        self._files += [_Watched(Path(p), False) for p in self.extra_files]
        # The files as the server started with them: later polls reload only what changed after.
        self.reload()

    def reload(self, force: bool = False) -> list[FileOutcome]:
        """Looks at every file now and loads what changed (blocking file I/O: call it off the event
        loop). `force` reads each file even when its mtime and size are unchanged."""
        with self._lock:
            return [self._look(w, force) for w in self._files]

    def _look(self, w: _Watched, force: bool) -> FileOutcome:
        try:
            st = w.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == w.stamp and not force:
                return FileOutcome(str(w.path), "unchanged", w.version or "")
            content = w.path.read_bytes()
        except OSError as exc:
            first = w.digest != _UNREADABLE  # logged once while it stays unreadable, not at every poll
            w.digest, w.stamp = _UNREADABLE, None
            return self._refuse(w, f"cannot read it ({exc.strerror or exc})", first)
        w.stamp = stamp
        digest = hashlib.sha256(content).hexdigest()
        if digest == w.digest:
            return FileOutcome(str(w.path), "unchanged", w.version or "")
        w.digest = digest  # a refused content is logged once, not at every poll
        try:
            model = parse_model(content, w.path)
            if w.version is not None and self.registry.get(w.version) == model:
                return FileOutcome(str(w.path), "unchanged", w.version)  # an edit of comments only
            # The version this file held goes, unless another file holds it too.
            shared = any(o is not w and o.version == w.version for o in self._files)
            self.registry.replace(None if shared else w.version, model, make_default=w.is_default)
        except (ValueError, LookupError) as exc:
            return self._refuse(w, str(exc), True)
        if w.version != model.version:
            log.info("model file %s: loaded version %s (was %s)", w.path, model.version, w.version)
        w.version = model.version
        metrics.MODEL_RELOADS.labels("loaded").inc()
        return FileOutcome(str(w.path), "loaded", model.version)

    def _refuse(self, w: _Watched, reason: str, report: bool) -> FileOutcome:
        if report:
            log.error(
                "model file %s refused: %s; version %s of this file keeps serving (default: %s)",
                w.path, reason, w.version or "none", self.registry.default.version,
            )  # fmt: skip
            metrics.MODEL_RELOADS.labels("refused").inc()
        return FileOutcome(str(w.path), "refused", w.version or "", reason)

    def reload_now(self, default_version: str = "") -> ReloadReport:
        """The admin call: every file read now (even if its mtime and size did not change), then
        `default_version`, if given, made the default (UnknownModelVersion if it is not loaded)."""
        files = self.reload(force=True)
        if default_version:
            self.registry.set_default(default_version)
        return ReloadReport(self.registry.default.version, self.registry.versions(), files)

    # --- the watch --------------------------------------------------------------------------------
    def start(self) -> None:
        """Polls the files every interval_s from this event loop (0: never)."""
        if self.interval_s > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="model-reload")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await asyncio.to_thread(self.reload)
            except Exception:
                log.exception("model reload check failed; trying again in %.1fs", self.interval_s)

    async def close(self) -> None:
        await cancel_and_wait([self._task])
        self._task = None
