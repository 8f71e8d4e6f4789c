"""What each process runs in tests/test_distributed_detect.py, started by torchrun (2 CPU
processes), and what the single process runs to compare:

    python -m torch.distributed.run --nproc-per-node 2 ... tests/distributed_detect_worker.py \\
        DATA RUN RESULTS

Measures the detector saved in RUN (`measured_detector`) on DATA's validation set, each
process its own share (`torso.distributed.shard_samplers`), in batches of one image (a
detector's loss is normalised over its batch, so only batches of the same images give the same
loss), and writes this process's metrics and `get_preds` (activations and targets, gathered
from both processes) to RESULTS/detect-<rank>.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from torso import distributed
from torso.data import load_data
from torso.tasks import get_task
from torso.train.learner import Learner

SEED = 3


def measured_detector(data: str, run: str, **samplers) -> tuple[dict, dict]:
    """`(learner.validate(), learner.get_preds())` of the detector saved in `run` on the
    validation set of `data` (30 %, seeded), at the run's size, one image a batch."""
    from torso.checkpoint import load_model

    model, config = load_model(Path(run))
    dls = load_data(
        data,
        task="detect",
        size=config.size[0],
        batch_size=1,
        num_workers=0,
        seed=SEED,
        valid_pct=0.3,
        augment=False,
        **samplers,
    )
    task = get_task("detect", **config.task_options)
    # one memory layout in both launches (a CPU Learner measures which is faster when alone)
    learner = Learner(model, dls.train, dls.valid, task=task, config=config, channels_last=False)
    return learner.validate(), learner.get_preds()


def as_json(predictions: dict) -> dict:
    """`get_preds`' activations and per-image targets as plain lists."""
    return {
        "activations": predictions["activations"].tolist(),
        "targets": [
            {"boxes": t["boxes"].tolist(), "labels": t["labels"].tolist()}
            for t in predictions["targets"]
        ],
    }


def main() -> None:
    data, run, results = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    torch.set_num_threads(1)
    distributed.setup("cpu")
    with distributed.failure_guard():
        metrics, predictions = measured_detector(data, run, **distributed.shard_samplers(SEED))
    results.mkdir(parents=True, exist_ok=True)
    found = {"metrics": metrics, **as_json(predictions)}
    (results / f"detect-{distributed.rank()}.json").write_text(json.dumps(found))


if __name__ == "__main__":
    main()
