"""The server's counters in the Prometheus text exposition format (version 0.0.4), written by hand: a few lines.

    maskformer_requests_total{path, code}              responses sent, by route and HTTP status
    maskformer_errors_total{path, code}                the ones with status >= 400
    maskformer_request_latency_seconds{path}           histogram of request time (receipt -> response ready)
    maskformer_batch_size                              histogram of the images run per model call
    maskformer_queue_length / _queue_capacity          requests waiting for the model / the bound (503 beyond it)
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Sequence

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    """Cumulative-bucket histogram (Prometheus `le` buckets + sum + count)."""

    def __init__(self, buckets: Sequence[float]):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # last: +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def lines(self, name: str, labels: str = "") -> list[str]:
        out, total = [], 0
        sep = "," if labels else ""
        for le, n in zip([*map(_number, self.buckets), "+Inf"], self.counts):
            total += n
            out.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {total}')
        braces = f"{{{labels}}}" if labels else ""
        return out + [f"{name}_sum{braces} {self.sum:.6f}", f"{name}_count{braces} {total}"]


class Metrics:
    """Thread-safe request counters; `render(queue_length, capacity)` gives the /metrics text."""

    def __init__(self):
        self._lock = threading.Lock()
        self.responses: Counter[tuple[str, int]] = Counter()
        self.latency: dict[str, Histogram] = {}
        self.batch_size = Histogram(BATCH_BUCKETS)

    def observe_request(self, path: str, code: int, seconds: float) -> None:
        with self._lock:
            self.responses[(path, code)] += 1
            self.latency.setdefault(path, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def observe_batch(self, size: int) -> None:
        with self._lock:
            self.batch_size.observe(size)

    def render(self, queue_length: int, capacity: int) -> str:
        with self._lock:
            lines = _family("maskformer_requests_total", "counter", "HTTP responses by route and status")
            counts = sorted(self.responses.items())
            lines += [f'maskformer_requests_total{{path="{p}",code="{c}"}} {n}' for (p, c), n in counts]
            lines += _family("maskformer_errors_total", "counter", "HTTP responses with status >= 400")
            lines += [f'maskformer_errors_total{{path="{p}",code="{c}"}} {n}' for (p, c), n in counts if c >= 400]
            lines += _family("maskformer_request_latency_seconds", "histogram", "request time, receipt to response")
            for path in sorted(self.latency):
                lines += self.latency[path].lines("maskformer_request_latency_seconds", f'path="{path}"')
            lines += _family("maskformer_batch_size", "histogram", "images per model call (micro-batches)")
            lines += self.batch_size.lines("maskformer_batch_size")
        lines += _family("maskformer_queue_length", "gauge", "requests waiting for the model")
        lines += [f"maskformer_queue_length {queue_length}"]
        lines += _family("maskformer_queue_capacity", "gauge", "queue bound; a full queue answers 503")
        lines += [f"maskformer_queue_capacity {capacity}"]
        return "\n".join(lines) + "\n"


def _family(name: str, kind: str, help_text: str) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]


def _number(x: float) -> str:
    return repr(float(x)) if not float(x).is_integer() else f"{float(x):.1f}"
