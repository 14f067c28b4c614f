"""What the runtime counts with: the interface of the operations layer's metrics, and a registry that counts nothing.

The core does not know Prometheus: a :class:`kernel.Runtime` is given its metrics by whoever builds it (the server's
``kernel.wsgi``, the ``bastion`` command, ``kernel.testing.open_app``: :class:`kernel.ops.metrics.Metrics`), and
counts nothing without them (:class:`NoMetrics`), which is what a plugin's own tests usually want.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol


class CounterSeries(Protocol):
    """A counter with its labels' values given at each sample."""

    def inc(self, *labels: str, amount: float = 1) -> None:
        """Add ``amount`` to the series of these label values."""


class HistogramSeries(Protocol):
    """A histogram with its labels' values given at each sample."""

    def observe(self, value: float, *labels: str) -> None:
        """Count one observation in the series of these label values."""


class MetricsRegistry(Protocol):
    """The runtime's metrics (``runtime.metrics``): the kernel's own, and those plugins register."""

    enabled: bool

    @property
    def security_events(self) -> CounterSeries:
        """``bastion_security_events_total{event}``: every line of ``bastion.security``."""

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> CounterSeries:
        """Register a counter (``name`` ends in ``_total``) and return it."""

    def histogram(self, name: str, documentation: str, labels: Sequence[str] = (),
                  buckets: Iterable[float] = ...) -> HistogramSeries:
        """Register a histogram and return it."""

    def scrape_gauge(self, name: str, documentation: str, read: Callable[[], float | None]) -> None:
        """A gauge read when the metrics are scraped."""

    def call(self, service: str, status: int, seconds: float) -> None:
        """Count an answered request and its duration."""

    def storage_error(self, backend: str) -> None:
        """Count a storage operation the backend could not serve."""

    def render(self) -> bytes:
        """Every metric in the Prometheus text format."""


class NoSeries:
    """A series that counts nothing: what a registry that counts nothing (or is switched off) hands out."""

    __slots__ = ()

    def inc(self, *labels: str, amount: float = 1) -> None:
        pass

    def observe(self, value: float, *labels: str) -> None:
        pass


#: The one series that counts nothing.
NO_SERIES = NoSeries()


class NoMetrics:
    """A :class:`MetricsRegistry` that counts nothing and renders nothing."""

    enabled = False
    security_events: CounterSeries = NO_SERIES

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> CounterSeries:
        return NO_SERIES

    def histogram(self, name: str, documentation: str, labels: Sequence[str] = (),
                  buckets: Iterable[float] = ()) -> HistogramSeries:
        return NO_SERIES

    def scrape_gauge(self, name: str, documentation: str, read: Callable[[], float | None]) -> None:
        pass

    def call(self, service: str, status: int, seconds: float) -> None:
        pass

    def storage_error(self, backend: str) -> None:
        pass

    def render(self) -> bytes:
        return b""
