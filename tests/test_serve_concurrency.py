"""`torso serve` under load: a real uvicorn server on 127.0.0.1 answers 200 mixed good and bad
requests from 8 concurrent clients, every good one right and every bad one a 4xx, and still
answers `/health`; the model's worker batches the requests that wait together."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from serve_helpers import decoded, image_bytes, running_server, saved_run

import torso
from torso.errors import TorsoError
from torso.tools.serve import ServedModel, create_app
from torso.tools.serve.worker import ModelWorker, WorkerBusy

REQUESTS = 200
CLIENTS = 8


def test_200_mixed_requests_from_8_clients_all_get_their_answer(tmp_path):
    run = saved_run(tmp_path / "run", size=32)
    images = [image_bytes(seed) for seed in range(4)]
    truth = torso.load(run).predict([decoded(data) for data in images])
    app = create_app(ServedModel(run), max_upload_mb=0.05)

    def good(index: int):
        data = images[index % len(images)]
        if index % 2:
            return {"content": data}, 200, truth[index % len(images)]
        files = [("image", ("a.png", data, "image/png")), ("image", ("b.png", data, "image/png"))]
        return {"files": files}, 200, truth[index % len(images)]

    bad = [
        ({"content": b""}, 400),
        ({"content": b"GIF89a but no more"}, 400),
        ({"content": images[0][:300]}, 400),
        ({"content": b"\0" * 60_000}, 413),
        ({"files": [("image", ("x.png", b"plain text", "text/plain"))]}, 400),
    ]

    def send(client: httpx.Client, index: int) -> str | None:
        """One request; None when its answer is right, else what was wrong."""
        if index % 3 == 2:
            arguments, status = bad[index % len(bad)]
            answer = client.post("/predict", **arguments)
            if answer.status_code != status or "error" not in answer.json():
                return f"bad request {index}: {answer.status_code} {answer.text[:200]}"
            return None
        arguments, status, record = good(index)
        answer = client.post("/predict", **arguments)
        if answer.status_code != status:
            return f"good request {index}: {answer.status_code} {answer.text[:200]}"
        predictions = answer.json()["predictions"]
        if any(item["prediction"] != record["prediction"] for item in predictions):
            return f"good request {index}: {predictions} instead of {record}"
        for item in predictions:
            if abs(item["probability"] - record["probability"]) > 1e-5:
                return f"good request {index}: probability {item} instead of {record}"
        return None

    local = threading.local()

    with running_server(app) as url:

        def worker(index: int) -> str | None:
            if not hasattr(local, "client"):
                local.client = httpx.Client(base_url=url, timeout=60)
            return send(local.client, index)

        started = time.monotonic()
        with ThreadPoolExecutor(CLIENTS) as pool:
            problems = [problem for problem in pool.map(worker, range(REQUESTS)) if problem]
        elapsed = time.monotonic() - started
        health = httpx.get(url + "/health", timeout=10)
    assert problems == []
    assert health.status_code == 200 and health.json()["waiting"] == 0
    assert elapsed < 120


def test_jobs_that_wait_together_run_as_one_batch():
    gate = threading.Event()
    calls = []

    def answer(images, explain):
        gate.wait(10)
        calls.append(len(images))
        return [int(image) for image in images]

    worker = ModelWorker(answer, max_batch=8)
    first = worker.submit([torch.tensor(0)])
    while worker.waiting:  # the first job is running (held at the gate)
        time.sleep(0.01)
    later = [worker.submit([torch.tensor(i), torch.tensor(i + 100)]) for i in range(1, 6)]
    gate.set()
    assert first.result(10) == [0]
    assert [future.result(10) for future in later] == [[i, i + 100] for i in range(1, 6)]
    # The first alone; then as many whole jobs as fit in 8 images, then the rest.
    assert calls == [1, 8, 2]
    worker.close()


def test_a_failing_batch_is_rerun_job_by_job_so_only_the_bad_one_fails():
    gate = threading.Event()

    def answer(images, explain):
        gate.wait(10)
        if any(int(image) < 0 for image in images):
            raise TorsoError("a negative image")
        return [int(image) for image in images]

    worker = ModelWorker(answer, max_batch=8)
    first = worker.submit([torch.tensor(0)])
    while worker.waiting:
        time.sleep(0.01)
    good, bad, other = (worker.submit([torch.tensor(value)]) for value in (1, -1, 2))
    gate.set()
    assert first.result(10) == [0] and good.result(10) == [1] and other.result(10) == [2]
    with pytest.raises(TorsoError, match="a negative image"):
        bad.result(10)
    worker.close()


def test_a_full_queue_is_refused_at_once():
    gate = threading.Event()
    worker = ModelWorker(lambda images, explain: gate.wait(10) and [0] * len(images), max_waiting=2)
    running = worker.submit([torch.tensor(0)])
    while worker.waiting:
        time.sleep(0.01)
    queued = [worker.submit([torch.tensor(1)]), worker.submit([torch.tensor(2)])]
    with pytest.raises(WorkerBusy, match="busy \\(2 requests waiting\\)"):
        worker.submit([torch.tensor(3)])
    gate.set()
    assert running.result(10) == [0] and [future.result(10) for future in queued] == [[0], [0]]
    worker.close()
