"""Prometheus metrics of one runtime, correct across gunicorn's worker processes.

:class:`Metrics` holds the kernel's metrics and those plugins add
(:meth:`Metrics.counter`, :meth:`Metrics.histogram`, :meth:`Metrics.scrape_gauge`),
and renders them in the Prometheus text format for ``GET /metrics``
(:mod:`kernel.http.app`, served only to ``[metrics] allow``).

Across processes it uses ``prometheus-client``'s multiprocess mode: when
``PROMETHEUS_MULTIPROC_DIR`` is set (gunicorn's master sets it, see
:func:`prepare_multiprocess_dir`, before any worker starts), every process
writes its values to memory-mapped files there, and a scrape, answered by any
worker, adds up the files of every worker, past ones included: a counter
survives the restart of the worker that counted. Without it (one process: a
test, a command) values live in the runtime's own registry.

With ``[metrics] allow`` empty nobody may read them, so nothing is counted:
every method is then a no-op.

On a signed call's path: one counter increment and one histogram observation
(label children are looked up once and kept).

A value that cannot be recorded (in multiprocess mode, a metrics file that
cannot grow: a full disk, a file-size limit) is lost, never the answer: the
call is answered as if metrics were off for it, and ``bastion.metrics`` says
so, at warning level the first time in a process and at debug after that.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from kernel.core.config import Config
from kernel.core.instruments import NO_SERIES, NoSeries

log = logging.getLogger("bastion.metrics")

_lost = 0  # values this process could not record


def _not_recorded(error: OSError) -> None:
    """A value that could not be recorded: say so (a warning once per process), and go on."""
    global _lost
    _lost += 1
    level = logging.WARNING if _lost == 1 else logging.DEBUG
    log.log(level, "a metric value could not be recorded (%s: %s); the answer goes on without it%s",
            type(error).__name__, error, "" if _lost > 1 else " (later ones are logged at debug)")

#: The variable prometheus-client reads, before its first metric is made, to work across processes.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Set by :func:`prepare_multiprocess_dir` to the folder it made (or emptied), so that a reload keeps it.
OWNED_ENV = "BASTION_METRICS_DIR"

#: Upper bounds of the call-duration histogram, in seconds.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: The content type of the text format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Series:
    """A metric with fixed label names, and the children of the label values it has met."""

    __slots__ = ("_metric", "_children")

    def __init__(self, metric: Any):
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def _child(self, labels: tuple[str, ...]) -> Any:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._metric.labels(*labels) if labels else self._metric
        return child


class Counter(_Series):
    """A counter with fixed label names: ``inc(*label_values, amount=1)``."""

    __slots__ = ()

    def inc(self, *labels: str, amount: float = 1) -> None:
        """Add ``amount`` to the series of these label values."""
        try:
            self._child(labels).inc(amount)
        except OSError as error:  # a metrics file that cannot grow
            _not_recorded(error)


class Histogram(_Series):
    """A histogram with fixed label names: ``observe(value, *label_values)``."""

    __slots__ = ()

    def observe(self, value: float, *labels: str) -> None:
        """Count one observation of ``value`` in the series of these label values."""
        try:
            self._child(labels).observe(value)
        except OSError as error:  # a metrics file that cannot grow
            _not_recorded(error)




class Metrics:
    """The metrics of one runtime: the kernel's, and those plugins register (names start with ``bastion_``).

    ``enabled`` is false when ``[metrics] allow`` is empty: then nothing is counted and :meth:`render` is
    never called.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.multiprocess = _multiprocess()
        self._scrape_gauges: list[tuple[str, str, Callable[[], float | None]]] = []
        self._registry = None
        if enabled:
            from prometheus_client import CollectorRegistry

            self._registry = CollectorRegistry(auto_describe=False)
        #: ``bastion_calls_total{service,status}``: every answered request.
        self.calls = self.counter("bastion_calls_total", "Requests answered, by service (or route) and HTTP status.",
                                  ("service", "status"))
        #: ``bastion_call_duration_seconds{service}``: the time the application took to answer.
        self.duration = self.histogram("bastion_call_duration_seconds",
                                       "Seconds the application took to answer a request, by service (or route).",
                                       ("service",), DURATION_BUCKETS)
        #: ``bastion_security_events_total{event}``: every line of ``bastion.security``.
        self.security_events = self.counter("bastion_security_events_total", "Security events, by event.", ("event",))
        #: ``bastion_storage_errors_total{backend}``: storage backends that could not serve.
        self.storage_errors = self.counter("bastion_storage_errors_total",
                                           "Storage operations that failed because the backend could not serve, "
                                           "by backend.", ("backend",))

    @classmethod
    def from_config(cls, config: Config) -> Metrics:
        """Metrics enabled when ``[metrics] allow`` names someone who may read them."""
        return cls(enabled=bool(config.metrics.allow))

    # -- what plugins add ---------------------------------------------------

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter | NoSeries:
        """Register a counter (``name`` ends in ``_total``) and return it: ``counter.inc("label value", ...)``."""
        if not self.enabled:
            return NO_SERIES
        from prometheus_client import Counter as PromCounter

        return Counter(PromCounter(_without_total(name), documentation, list(labels), registry=self._registry))

    def histogram(self, name: str, documentation: str, labels: Sequence[str] = (),
                  buckets: Iterable[float] = DURATION_BUCKETS) -> Histogram | NoSeries:
        """Register a histogram and return it: ``histogram.observe(seconds, "label value", ...)``."""
        if not self.enabled:
            return NO_SERIES
        from prometheus_client import Histogram as PromHistogram

        return Histogram(PromHistogram(name, documentation, list(labels), registry=self._registry,
                                       buckets=tuple(buckets)))

    def scrape_gauge(self, name: str, documentation: str, read: Callable[[], float | None]) -> None:
        """A gauge computed by the worker answering a scrape: ``read()`` returns its value, or None to leave it out.

        For what one process can read for all of them (a count in the storage); it must be cheap, since it
        runs at every scrape. An exception leaves the gauge out of that scrape (logged at debug).
        """
        if self.enabled:
            self._scrape_gauges.append((name, documentation, read))

    # -- what the kernel counts ---------------------------------------------

    def call(self, service: str, status: int, seconds: float) -> None:
        """Count an answered request and its duration."""
        self.calls.inc(service, str(status))
        self.duration.observe(seconds, service)

    def storage_error(self, backend: str) -> None:
        """Count a storage operation the backend could not serve."""
        self.storage_errors.inc(backend or "unknown")

    # -- the scrape -----------------------------------------------------------

    def render(self) -> bytes:
        """Every metric in the Prometheus text format: all workers' in multiprocess mode, this process's otherwise."""
        from prometheus_client import CollectorRegistry, generate_latest

        if self.multiprocess:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_WorkerFiles(os.environ[MULTIPROC_ENV]))
        else:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_Own(self._registry))
        if self._scrape_gauges:
            registry.register(_ScrapeGauges(self._scrape_gauges))
        return generate_latest(registry)


class _Own:
    """The runtime's own registry, as one collector of a scrape's registry."""

    def __init__(self, registry):
        self.registry = registry

    def collect(self):
        yield from self.registry.collect()


class _WorkerFiles:
    """Every worker's values, from the files in the shared folder, as prometheus-client adds them up.

    A file a worker could not finish making (a full disk: it stays empty, and
    its values were lost, see :func:`_not_recorded`) is left out of the scrape
    with a warning, rather than failing the whole scrape; the worker makes it
    again at its next value once it can.
    """

    def __init__(self, folder: str):
        self.folder = folder

    def collect(self):
        from prometheus_client.mmap_dict import MmapedDict
        from prometheus_client.multiprocess import MultiProcessCollector

        readable = []
        for path in glob.glob(os.path.join(self.folder, "*.db")):
            try:
                MmapedDict.read_all_values_from_file(path)
            except FileNotFoundError:  # a live gauge's file, removed since the glob
                continue
            except (OSError, ValueError, struct.error) as error:
                log.warning("metrics file %s left out of this scrape: it cannot be read (%s: %s)",
                            os.path.basename(path), type(error).__name__, error)
                continue
            readable.append(path)
        return MultiProcessCollector.merge(readable, accumulate=True)


class _ScrapeGauges:
    """The gauges plugins compute when a scrape arrives."""

    def __init__(self, gauges):
        self.gauges = list(gauges)

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        for name, documentation, read in self.gauges:
            try:
                value = read()
            except Exception as exc:  # a storage that cannot count now: the gauge is left out of this scrape
                log.debug("gauge %s left out: %s: %s", name, type(exc).__name__, exc)
                continue
            if value is not None:
                yield GaugeMetricFamily(name, documentation, value=float(value))


def _multiprocess() -> bool:
    """Whether prometheus-client keeps values in the shared folder: what it chose when it was first imported."""
    if not os.environ.get(MULTIPROC_ENV):
        return False
    from prometheus_client import values

    return bool(getattr(values.ValueClass, "_multiprocess", False))


def _without_total(name: str) -> str:
    # prometheus-client adds the _total suffix of a counter itself
    return name[: -len("_total")] if name.endswith("_total") else name


def prepare_multiprocess_dir() -> str:
    """Make the folder gunicorn's workers share their metrics in, and say so in the environment; return it.

    Called by gunicorn's master (``kernel.server.gunicorn_conf``) before any worker
    starts. ``$PROMETHEUS_MULTIPROC_DIR``, when the operator set it, is used
    and emptied of an earlier run's files; otherwise a new temporary folder is
    made (and removed at exit by :func:`remove_multiprocess_dir`). A reload of
    the configuration keeps the folder and what it counted; a master started
    by a process that had one of its own (a test, a command) makes its own.
    """
    pid, made, folder = _owned()
    given = os.environ.get(MULTIPROC_ENV)
    if pid == os.getpid() and given == folder and os.path.isdir(folder):
        return folder  # this master's, on a reload: what it counted stays
    if given and not (pid is not None and given == folder):  # the operator's (not another master's, inherited)
        os.makedirs(given, exist_ok=True)
        for path in glob.glob(os.path.join(given, "*.db")):
            os.unlink(path)
        os.environ[OWNED_ENV] = f"{os.getpid()}::{given}"
        return given
    folder = tempfile.mkdtemp(prefix="bastion-metrics-")
    os.environ[MULTIPROC_ENV] = folder
    os.environ[OWNED_ENV] = f"{os.getpid()}:tmp:{folder}"
    return folder


def _owned() -> tuple[int | None, bool, str]:
    """``(pid of the master that prepared the folder, whether it made it, the folder)`` from the environment."""
    pid, made, folder = (os.environ.get(OWNED_ENV, "").split(":", 2) + ["", ""])[:3]
    return (int(pid) if pid.isdigit() else None), made == "tmp", folder


def remove_multiprocess_dir() -> None:
    """Remove the folder :func:`prepare_multiprocess_dir` made (never one the operator named)."""
    pid, made, folder = _owned()
    if made and pid == os.getpid():
        shutil.rmtree(folder, ignore_errors=True)


__all__ = ["Metrics", "Counter", "Histogram", "prepare_multiprocess_dir", "remove_multiprocess_dir", "CONTENT_TYPE"]
