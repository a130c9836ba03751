"""Data: splits, label noise, MNIST-1D generation + cache, CIFAR from a tiny CIFAR-format folder."""
from __future__ import annotations

import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hpo_bench.config import DataConfig
from hpo_bench.data import apply_label_noise, load_data, random_crop_flip, split_train_val


def test_split_is_disjoint_covering_and_deterministic():
    tr, va = split_train_val(1000, 0.1, split_seed=3)
    assert len(va) == 100 and len(tr) == 900
    assert set(tr.tolist()).isdisjoint(va.tolist())
    assert sorted(tr.tolist() + va.tolist()) == list(range(1000))
    tr2, va2 = split_train_val(1000, 0.1, split_seed=3)
    assert torch.equal(va, va2) and torch.equal(tr, tr2)
    assert not torch.equal(va, split_train_val(1000, 0.1, split_seed=4)[1])
    assert len(split_train_val(50, 0.0, 0)[1]) == 0


def test_label_noise_rate_and_convention():
    y = torch.randint(0, 10, (10000,), generator=torch.Generator().manual_seed(0))
    noisy = apply_label_noise(y, 0.4, 10, seed=1)
    changed = (noisy != y).float().mean().item()
    assert abs(changed - 0.4) < 0.02  # a flipped label always differs from the original
    assert torch.equal(noisy, apply_label_noise(y, 0.4, 10, seed=1))
    assert not torch.equal(noisy, apply_label_noise(y, 0.4, 10, seed=2))
    assert torch.equal(apply_label_noise(y, 0.0, 10, seed=1), y)
    assert noisy.min() >= 0 and noisy.max() < 10


def test_mnist1d_generated_offline_cached_and_split(tmp_path, monkeypatch):
    cfg = DataConfig(data_root=str(tmp_path), num_samples=500, label_noise=0.5, noise_seed=1)
    b = load_data(cfg)
    cache = list(tmp_path.glob("mnist1d_n500_s42.npz"))
    assert len(cache) == 1
    assert b.input_shape == (40,) and b.num_classes == 10
    assert len(b.train_y) + len(b.val_y) == 400 and len(b.test_y) == 100
    assert b.train_x.dtype == torch.float32 and b.train_y.dtype == torch.int64
    assert (b.train_y != b.clean_train_y).float().mean() > 0.3  # noise on train only
    import mnist1d.data

    monkeypatch.setattr(mnist1d.data, "make_dataset", lambda *a, **k: (_ for _ in ()).throw(AssertionError("regenerated")))
    again = load_data(cfg)  # served from the cache
    assert torch.equal(again.train_x, b.train_x) and torch.equal(again.val_y, b.val_y)


def _write_cifar(root, n_per_batch=4, hundred=False):
    rng = np.random.default_rng(0)

    def batch(n, key):
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), key: rng.integers(0, 100 if hundred else 10, n).tolist()}

    if hundred:
        d = root / "cifar-100-python"
        d.mkdir(parents=True)
        for name, n in (("train", 10), ("test", 6)):
            (d / name).write_bytes(pickle.dumps(batch(n, "fine_labels")))
        (d / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))
    else:
        d = root / "cifar-10-batches-py"
        d.mkdir(parents=True)
        for i in range(1, 6):
            (d / f"data_batch_{i}").write_bytes(pickle.dumps(batch(n_per_batch, "labels")))
        (d / "test_batch").write_bytes(pickle.dumps(batch(n_per_batch, "labels")))
        (d / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_from_tiny_folder(tmp_path, dataset):
    _write_cifar(tmp_path, hundred=dataset == "cifar100")
    cfg = DataConfig(dataset=dataset, data_root=str(tmp_path), verify_md5=False, val_fraction=0.25)
    b = load_data(cfg)
    n_train = 20 if dataset == "cifar10" else 10
    assert len(b.train_y) + len(b.val_y) == n_train
    assert b.train_x.dtype == torch.uint8 and b.train_x.shape[1:] == (3, 32, 32)
    assert b.num_classes == (10 if dataset == "cifar10" else 100)
    x = b.normalize(b.train_x)
    assert x.dtype == torch.float32 and x.shape == b.train_x.shape and abs(float(x.mean())) < 1.0
    aug = b.augment(b.train_x, torch.Generator().manual_seed(0))
    assert aug.shape == b.train_x.shape and aug.dtype == torch.uint8
    assert torch.equal(aug, b.augment(b.train_x, torch.Generator().manual_seed(0)))
    assert not torch.equal(aug, b.train_x)
    # with MD5 verification on, the tiny folder is rejected with a one-line field error
    with pytest.raises(ValueError, match=r"^data\.data_root"):
        load_data(DataConfig(dataset=dataset, data_root=str(tmp_path), verify_md5=True))


def test_cifar_missing_root_errors(tmp_path):
    with pytest.raises(ValueError, match=r"^data\.data_root"):
        load_data(DataConfig(dataset="cifar10", data_root=str(tmp_path / "none")))


def test_random_crop_flip_is_a_shifted_possibly_mirrored_window():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.int64).view(2, 3, 8, 8).to(torch.uint8)
    out = random_crop_flip(x, torch.Generator().manual_seed(5), pad=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):  # each output equals some window of the padded input, maybe flipped
        hits = [(oy, ox, f) for oy in range(5) for ox in range(5) for f in (False, True)
                if torch.equal(out[i], (padded[i, :, oy:oy + 8, ox:ox + 8].flip(-1) if f else padded[i, :, oy:oy + 8, ox:ox + 8]))]
        assert hits


def test_unknown_dataset_error():
    with pytest.raises(ValueError, match=r"^data\.dataset"):
        load_data(SimpleNamespace(dataset="imagenet"))
