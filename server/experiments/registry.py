"""The experiments a process serves now: the config's definitions plus a watched file, reloaded in place.

`current()` is what the request path calls: one attribute read, and every `reload_interval_s` a stat of
the file (no thread, no task: the frontend and the edge alike pick a change up on their next request
after the interval). A changed file is parsed and checked in full before anything changes; one that does
not load is refused with one ERROR line and the experiments before it keep serving, so a typo cannot end
every experiment at once. Killing an experiment is `enabled: false` in the file.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from server import metrics
from server.config import Config, ConfigError, ExperimentConfig, build_section, load_list_file
from server.experiments.assignment import Assigner
from server.experiments.definitions import Experiment, parse
from server.files import Stamp, stamp

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class ExperimentRegistry:
    def __init__(
        self,
        config: Config,
        loaded_models: Callable[[], Sequence[str]] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        """`loaded_models`: the model versions a variant may name (None where no models are loaded, as
        on the edge: the frontends check them). A bad definition at start is a ConfigError."""
        self._config = config
        self._loaded_models = loaded_models
        self._clock = clock
        self._path = config.experiments.file
        self._interval_s = config.experiments.reload_interval_s
        self._stamp: Stamp | None = None
        self._checked = clock()
        self._assigner = self._load()
        _publish(self._assigner.experiments)

    @property
    def enabled(self) -> bool:
        """Whether any experiment is defined (answers then need assigning and logging)."""
        return bool(self.current().experiments)

    def current(self) -> Assigner:
        if self._path is not None and self._interval_s > 0:
            now = self._clock()
            if now - self._checked >= self._interval_s:
                self._checked = now
                self._maybe_reload()
        return self._assigner

    def reload(self) -> Assigner:
        """Loads the file now (ConfigError, and nothing changed, when it does not load)."""
        self._assigner = self._load()
        _publish(self._assigner.experiments)
        return self._assigner

    def _maybe_reload(self) -> None:
        assert self._path is not None
        new_stamp = stamp(self._path)
        if new_stamp == self._stamp:
            return
        try:
            self.reload()
        except ConfigError as exc:
            self._stamp = new_stamp  # refused once, not at every check
            metrics.EXPERIMENT_RELOADS.labels("refused").inc()
            log.error("experiments file %s refused, the experiments before it go on: %s", self._path, exc)
            return
        metrics.EXPERIMENT_RELOADS.labels("loaded").inc()
        log.info(
            "experiments reloaded from %s: %s",
            self._path, ", ".join(_describe(e) for e in self._assigner.experiments) or "none",
        )  # fmt: skip

    def _load(self) -> Assigner:
        configs = list(self._config.experiments.definitions)
        if self._path is not None:
            self._stamp = stamp(self._path)
            configs += load_file(self._path)
        models = None if self._loaded_models is None else self._loaded_models()
        experiments = parse(configs, self._config, models, "experiments")
        return Assigner(experiments)


def load_file(path: str) -> list[ExperimentConfig]:
    where = f"experiments.file ({path})"
    raw = load_list_file(path, where, "experiments, as under experiments.definitions")
    loaded: list[ExperimentConfig] = build_section(list[ExperimentConfig], raw, where)
    return loaded


def _describe(e: Experiment) -> str:
    state = f"traffic {e.traffic:g}" if e.enabled else "killed"
    return f"{e.name} ({state}; {', '.join(v.name for v in e.variants)})"


def _publish(experiments: Sequence[Experiment]) -> None:
    metrics.EXPERIMENT_SHARE.clear()
    for e in experiments:
        for v in e.variants:
            metrics.EXPERIMENT_SHARE.labels(e.name, v.name).set(e.traffic * v.share if e.enabled else 0.0)
