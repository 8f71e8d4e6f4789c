"""Loaders: batch contracts per task, seeded splits and batches, resume, cache equivalence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from data_builders import make_class_folders, make_segmentation, noise_image, write_csv
from PIL import Image
from torch.utils.data import DistributedSampler

from torso.data import cache as cache_module
from torso.data import load_data, load_images, show_batch
from torso.errors import TorsoError


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    return make_class_folders(tmp_path_factory.mktemp("cls"), {"ant": 8, "bee": 8, "cow": 8})


def _batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(images.clone(), targets.clone()) for images, targets in loader]


def _same(first, second) -> bool:
    if len(first) != len(second):
        return False
    pairs = zip(first, second, strict=True)
    return all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in pairs)


def test_classify_batches_follow_the_contract(folders):
    dls = load_data(folders, size=24, batch_size=4, num_workers=0)
    assert dls.task == "classify" and dls.classes == ["ant", "bee", "cow"]
    assert dls.num_outputs == 3 and dls.size == 24 and dls.in_channels == 3
    assert len(dls.train_items) == 19 and len(dls.valid_items) == 5
    images, targets = next(iter(dls.train))
    assert images.shape == (4, 3, 24, 24) and images.dtype == torch.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert targets.dtype == torch.int64 and targets.shape == (4,)
    assert len(dls.train) == 4  # 19 // 4, the last partial batch dropped
    assert sum(len(t) for _, t in dls.valid) == 5  # validation keeps every image


def test_same_seed_same_split_and_batches_other_seed_others(folders):
    def run(seed):
        dls = load_data(folders, size=16, batch_size=4, num_workers=0, seed=seed)
        return dls.valid_items, _batches(dls.train)

    split_a, batches_a = run(0)
    split_b, batches_b = run(0)
    split_c, batches_c = run(1)
    assert split_a == split_b and _same(batches_a, batches_b)
    assert split_a != split_c and not _same(batches_a, batches_c)


def test_epochs_differ_and_set_epoch_replays_one(folders):
    dls = load_data(folders, size=16, batch_size=4, num_workers=0)
    epoch0, epoch1 = _batches(dls.train), _batches(dls.train)
    assert not _same(epoch0, epoch1)
    dls.set_epoch(1)
    assert _same(_batches(dls.train), epoch1)
    assert dls.train.epoch == 1


_FRESH_PROCESS = """
import sys, torch
from torso.data import load_data
dls = load_data(sys.argv[1], size=16, batch_size=4, num_workers=2, seed=0)
dls.set_epoch(3)
torch.save([(x, y) for x, y in dls.train], sys.argv[2])
"""


def test_resumed_epoch_in_a_fresh_process_with_workers_matches(folders, tmp_path):
    dls = load_data(folders, size=16, batch_size=4, num_workers=0, seed=0)
    for _ in range(3):
        _batches(dls.train)
    epoch3 = _batches(dls.train)
    assert dls.train.epoch == 3
    out = tmp_path / "batches.pt"
    subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, str(folders), str(out)], check=True, timeout=120
    )
    assert _same(torch.load(out), epoch3)


def test_cache_gives_the_same_tensors_as_decoding(folders):
    kwargs = {"size": 20, "batch_size": 4, "seed": 0}
    cached = load_data(folders, cache=True, num_workers=2, **kwargs)
    plain = load_data(folders, cache=False, num_workers=0, **kwargs)
    assert cached.cache_bytes > 0 and plain.cache_bytes == 0
    first_valid = _batches(cached.valid)  # fills the validation cache
    assert cached.caches[1].filled == len(cached.valid_items)  # filled by the worker processes
    assert _same(_batches(cached.valid), first_valid)
    assert _same(first_valid, _batches(plain.valid))
    _batches(cached.train)
    assert cached.caches[0].filled == 16  # 4 batches of 4: the odd 3 of 19 wait for later epochs
    plain.set_epoch(1)
    assert _same(_batches(cached.train), _batches(plain.train))


def test_cache_in_a_memory_mapped_file_when_memory_is_short(folders, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "available_memory", lambda: 0)
    dls = load_data(folders, size=16, batch_size=4, num_workers=2, cache_dir=tmp_path)
    files = list(tmp_path.glob("torso-presize-*.u8"))
    assert len(files) == 2 and all(c.location != "memory" for c in dls.caches)
    assert "MiB in" in dls.describe()
    _batches(dls.train)
    assert dls.caches[0].filled == 16
    reference = load_data(folders, size=16, batch_size=4, num_workers=0, cache=False)
    assert _same(_batches(dls.valid), _batches(reference.valid))


def test_load_images_is_the_validation_preprocessing(folders):
    dls = load_data(folders, size=20, batch_size=64, num_workers=0, resize="pad")
    images, _ = next(iter(dls.valid))
    assert torch.equal(load_images(dls.valid_items, 20, resize="pad"), images)
    with pytest.raises(TorsoError, match="missing.png"):
        load_images([folders / "missing.png"], 20)


def test_multilabel_and_regression_from_csv(tmp_path):
    for i in range(6):
        noise_image(i).save(tmp_path / f"{i}.png")
    write_csv(
        tmp_path / "labels.csv",
        [["file", "tags", "is_valid"]]
        + [
            [f"{i}.png", ["sky", "sky sea", "", "sea tree", "tree", "sky"][i], i >= 4]
            for i in range(6)
        ],
    )
    dls = load_data(tmp_path, task="multilabel", size=16, batch_size=2, num_workers=0)
    assert dls.classes == ["sea", "sky", "tree"] and dls.num_outputs == 3
    assert [p.name for p in dls.valid_items] == ["4.png", "5.png"]
    _, targets = next(iter(dls.valid))
    assert targets.dtype == torch.float32 and targets.tolist() == [[0, 0, 1], [0, 1, 0]]
    write_csv(
        tmp_path / "ages.csv",
        [["file", "age", "weight"]] + [[f"{i}.png", i * 10, 1.5 * i] for i in range(6)],
    )
    dls = load_data(
        tmp_path,
        task="regress",
        csv="ages.csv",
        size=16,
        batch_size=2,
        num_workers=0,
        valid_pct=0.5,
        augment=False,
    )
    assert dls.target_names == ["age", "weight"] and dls.num_outputs == 2 and dls.classes is None
    _, targets = next(iter(dls.valid))
    assert targets.shape == (2, 2) and targets.dtype == torch.float32
    expected = [[int(p.stem) * 10, int(p.stem) * 1.5] for p in dls.valid_items[:2]]
    assert targets.tolist() == expected
    assert Image.open(show_batch(dls, tmp_path / "regress.png", split="valid")).size[0] > 100


def test_segmentation_batches(tmp_path):
    root = make_segmentation(tmp_path / "seg", count=6, size=(160, 128), codes=3)
    dls = load_data(root, task="segment", size=32, batch_size=2, num_workers=0, valid_pct=0.34)
    assert dls.classes == ["background", "box", "corner"] and dls.num_outputs == 3
    images, masks = next(iter(dls.train))
    assert images.shape == (2, 3, 32, 32) and masks.shape == (2, 32, 32)
    assert masks.dtype == torch.int64 and set(masks.unique().tolist()) <= {0, 1, 2, 255}
    images, masks = next(iter(dls.valid))
    assert set(masks.unique().tolist()) == {0, 1, 2}  # no void pixels without augmentation
    box = masks == 1
    assert images[:, 0][box].mean() > 0.8 and images[:, 0][~box].mean() < 0.3
    png = show_batch(dls, tmp_path / "masks.png")
    assert Image.open(png).size[0] > 100


def test_siamese_pairs_are_balanced_and_labelled(folders, tmp_path):
    dls = load_data(folders, task="siamese", size=16, batch_size=4, num_workers=0)
    assert dls.num_outputs == 2 and dls.classes == ["different", "same"]
    (first, second), targets = next(iter(dls.train))
    assert first.shape == second.shape == (4, 3, 16, 16) and targets.dtype == torch.int64
    pairs = dls.train.dataset
    labels = pairs.labels
    for epoch in (0, 1):
        same = 0
        for index in range(len(pairs)):
            other, target = pairs.partner(index, epoch)
            assert target == int(labels[index] == labels[other]) and other != index
            same += target
        assert abs(same - len(pairs) / 2) <= 1
    assert [pairs.partner(i, 0) for i in range(5)] == [pairs.partner(i, 0) for i in range(5)]
    show_batch(dls, tmp_path / "pairs.png", max_items=4)


def test_a_distributed_sampler_shards_the_training_set(folders):
    shards = []
    for rank in (0, 1):
        dls = load_data(
            folders,
            size=16,
            batch_size=2,
            num_workers=0,
            train_sampler=lambda dataset, rank=rank: DistributedSampler(
                dataset, num_replicas=2, rank=rank, shuffle=True, seed=0, drop_last=True
            ),
        )
        first = list(iter(dls.train.sampler))
        dls.set_epoch(1)
        next(iter(dls.train))
        shards.append((first, list(iter(dls.train.sampler))))
    (rank0_e0, rank0_e1), (rank1_e0, rank1_e1) = shards
    assert not set(rank0_e0) & set(rank1_e0)
    assert len(set(rank0_e0) | set(rank1_e0)) == 18  # 19 items, one dropped to even the shards
    assert rank0_e0 != rank0_e1  # set_epoch reached the sampler


def test_bad_arguments_name_the_argument(folders):
    for kwargs, word in [
        ({"size": 0}, "size"),
        ({"resize": "stretch"}, "resize"),
        ({"in_channels": 2}, "in_channels"),
        ({"task": "keypoints"}, "task"),
        ({"valid_pct": 1.0}, "valid_pct"),
    ]:
        with pytest.raises(TorsoError, match=word):
            load_data(folders, num_workers=0, **kwargs)
    with pytest.raises(TorsoError, match="not found"):
        load_data(folders / "nowhere")


def test_no_workers_by_default_when_the_cache_holds_the_final_images(folders, monkeypatch):
    from torso.data import loaders

    monkeypatch.setattr(loaders, "default_workers", lambda: 2)
    final = load_data(folders, size=24, batch_size=4, augment=False)
    assert final.train.num_workers == 0 and final.valid.num_workers == 0
    augmented = load_data(folders, size=24, batch_size=4)
    assert augmented.train.num_workers == 2  # the augmentation runs in the workers
    uncached = load_data(folders, size=24, batch_size=4, augment=False, cache=False)
    assert uncached.train.num_workers == 2  # every epoch decodes the files
    asked = load_data(folders, size=24, batch_size=4, augment=False, num_workers=1)
    assert asked.train.num_workers == 1
    # Without workers the batches are the ones workers would give.
    assert _same(_batches(final.train), _batches(asked.train))
