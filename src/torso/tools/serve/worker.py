"""`ModelWorker`: every model call of the server on one thread, requests waiting together
answered as one batch.

The event loop only decodes, queues and awaits; a model call (seconds on a CPU for a big
batch) never blocks it, so `/health` and the bad requests are answered while the model works.
Jobs that arrive while the model is busy wait in a queue; when the model is free it takes the
oldest job and those after it that ask for the same thing (heatmaps or not), up to
`max_batch` images, and runs them as one batch: on a CPU a batch of 8 costs far less than 8
calls of one. The queue holds at most `max_waiting` jobs; beyond that `submit` refuses
(`WorkerBusy`), so a flood of requests gets a quick "busy" instead of an ever longer wait.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from torso.errors import TorsoError

log = logging.getLogger("torso.serve")

#: What a worker runs: `(images, explain) -> one result per sample`.
Answer = Callable[[list[torch.Tensor], bool], list[Any]]


class WorkerBusy(TorsoError):
    """The queue of waiting requests is full."""


@dataclass
class Job:
    """One request's images (`images_per_sample` per sample) and the future of its results."""

    images: list[torch.Tensor]
    explain: bool
    samples: int
    future: Future = field(default_factory=Future)


class ModelWorker:
    """One thread that runs `answer(images, explain)` for the queued jobs, in batches.

    Args:
        answer: the model call: a list of images (whole samples) and whether heatmaps are
            wanted → one result per sample, in order.
        images_per_sample: images one sample takes (2 for a pair model).
        max_batch: the most images run together (a single larger job runs alone).
        max_waiting: the most jobs waiting; `submit` raises `WorkerBusy` beyond it.
    """

    def __init__(
        self,
        answer: Answer,
        *,
        images_per_sample: int = 1,
        max_batch: int = 32,
        max_waiting: int = 64,
    ) -> None:
        self.answer = answer
        self.images_per_sample = images_per_sample
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self._waiting: deque[Job] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self.batches_run = 0
        self._thread = threading.Thread(target=self._loop, name="torso-serve-model", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        """Jobs in the queue, not yet started."""
        return len(self._waiting)

    def submit(self, images: Sequence[torch.Tensor], explain: bool = False) -> Future:
        """Queue `images` (whole samples); the future gives one result per sample, or raises
        what the model call raised. `WorkerBusy` when the queue is full."""
        images = list(images)
        job = Job(images, explain, len(images) // self.images_per_sample)
        with self._ready:
            if self._closed:
                raise WorkerBusy("the server is shutting down")
            if len(self._waiting) >= self.max_waiting:
                raise WorkerBusy(
                    f"the server is busy ({len(self._waiting)} requests waiting): try again"
                )
            self._waiting.append(job)
            self._ready.notify()
        return job.future

    def close(self, timeout: float = 30.0) -> None:
        """Finish the jobs already queued, then stop the thread."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join(timeout)

    # -- the thread ------------------------------------------------------------------------
    def _take(self) -> list[Job] | None:
        """The next batch of jobs (the oldest and those after it that fit), or None to stop."""
        with self._ready:
            while not self._waiting and not self._closed:
                self._ready.wait()
            if not self._waiting:
                return None
            jobs = [self._waiting.popleft()]
            count = len(jobs[0].images)
            while self._waiting:
                following = self._waiting[0]
                if following.explain != jobs[0].explain:
                    break
                if count + len(following.images) > self.max_batch:
                    break
                jobs.append(self._waiting.popleft())
                count += len(following.images)
            return jobs

    def _loop(self) -> None:
        while (jobs := self._take()) is not None:
            jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            if jobs:
                self._run(jobs)

    def _run(self, jobs: list[Job]) -> None:
        images = [image for job in jobs for image in job.images]
        try:
            results = self.answer(images, jobs[0].explain)
        except TorsoError as error:
            if len(jobs) == 1:
                jobs[0].future.set_exception(error)
                return
            # One request's images may be the cause: answer each on its own.
            for job in jobs:
                self._run_alone(job)
            return
        except Exception as error:  # a bug: that request fails (500), the server carries on
            log.exception("the model call failed")
            for job in jobs:
                job.future.set_exception(error)
            return
        self.batches_run += 1
        start = 0
        for job in jobs:
            job.future.set_result(results[start : start + job.samples])
            start += job.samples

    def _run_alone(self, job: Job) -> None:
        try:
            job.future.set_result(self.answer(job.images, job.explain))
        except TorsoError as error:
            job.future.set_exception(error)
        except Exception as error:  # a bug: that request fails (500), the server carries on
            log.exception("the model call failed")
            job.future.set_exception(error)
