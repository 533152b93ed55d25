"""Micro-batching: requests wait in one bounded queue; one worker thread runs them in small batches.

    batcher = MicroBatcher(run_batch, max_batch=8, max_wait_s=0.005, max_queue=64)
    future = batcher.submit(job)            # QueueFull when max_queue jobs already wait (the caller answers 503)
    result = future.result()                # what run_batch set on the job's future

The worker takes the first waiting job, then keeps collecting until it holds `max_batch` jobs or `max_wait_s` has
passed since the first one, and calls `run_batch(jobs)` once; run_batch must resolve every job's future (an
exception it raises fails the jobs it left unresolved). Nothing here knows about models or HTTP.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


class QueueFull(RuntimeError):
    """The queue holds max_queue jobs already: try again later."""


@dataclass
class Job:
    """One unit of work: the payload run_batch reads, and the future it resolves."""

    payload: Any
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """A bounded queue + one worker thread calling run_batch(list[Job]) on up to max_batch jobs at a time."""

    def __init__(self, run_batch: Callable[[list[Job]], None], *, max_batch: int = 8, max_wait_s: float = 0.005,
                 max_queue: int = 64, name: str = "maskformer-batcher"):  # fmt: skip
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch ({max_batch}) and max_queue ({max_queue}) must be >= 1")
        self.run_batch = run_batch
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self._jobs: deque[Job] = deque()
        self._cond, self._closed = threading.Condition(), False
        self.busy, self.batches = False, 0  # True while run_batch runs; batches run so far
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def __len__(self) -> int:
        """Jobs waiting (not yet taken by the worker)."""
        return len(self._jobs)

    @property
    def alive(self) -> bool:
        """The worker thread is running."""
        return self._thread.is_alive()

    def submit(self, payload: Any) -> Future:
        """Queue one job; its future resolves when its batch has run. Raises QueueFull, or RuntimeError once closed."""
        job = Job(payload)
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            if len(self._jobs) >= self.max_queue:
                raise QueueFull(f"{len(self._jobs)} requests are waiting (the queue holds {self.max_queue})")
            self._jobs.append(job)
            self._cond.notify()
        return job.future

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop taking jobs, fail the waiting ones and let the worker finish its current batch."""
        with self._cond:
            self._closed = True
            left, self._jobs = list(self._jobs), deque()
            self._cond.notify_all()
        for job in left:
            job.future.set_exception(RuntimeError("the server is shutting down"))
        self._thread.join(timeout)

    def _take(self) -> list[Job]:
        """Block for the first job, then collect more until max_batch or max_wait_s after the first arrived."""
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if self._closed:
                return []
            deadline = time.perf_counter() + self.max_wait_s
            while len(self._jobs) < self.max_batch and not self._closed:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = [self._jobs.popleft() for _ in range(min(self.max_batch, len(self._jobs)))]
            self.busy = True
        # jobs whose caller went away (future cancelled) are dropped; the rest can no longer be cancelled
        return [job for job in batch if job.future.set_running_or_notify_cancel()]

    def _loop(self) -> None:
        while not self._closed:
            batch = self._take()
            try:
                if batch:
                    self.run_batch(batch)
            except Exception as e:  # the worker thread survives anything a batch raises
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(e)
            finally:
                self.busy = False
                self.batches += bool(batch)
