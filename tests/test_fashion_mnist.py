"""Fashion-MNIST: the idx reader, the Debian package's files, subsets and splits, the error contract
(one line, exit 2, nothing written), the models sized for it, population support, a CLI run.

The real-package tests need ``apt-get install dataset-fashion-mnist``; without it they fail (never skip)."""
from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hpo_bench import data as data_module
from hpo_bench.cli import main
from hpo_bench.config import DataConfig, TrainConfig
from hpo_bench.data import (
    DATASETS,
    DEFAULT_DATA_ROOT,
    FASHION_MNIST_FILES,
    FASHION_MNIST_ROOT,
    load_data,
    read_idx,
)
from hpo_bench.execute import run_trial
from hpo_bench.models import create_model, list_models, model_doc
from hpo_bench.population import can_train_together, train_population
from hpo_bench.trial import Trial

DEBIAN = Path(FASHION_MNIST_ROOT)
INSTALL = "apt-get install dataset-fashion-mnist"


def write_idx(path: Path, array: np.ndarray) -> Path:
    """``array`` (uint8) as an idx file; gzipped when the name ends in .gz."""
    array = np.asarray(array, dtype=np.uint8)
    raw = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def write_folder(root: Path, n_train: int = 120, n_test: int = 30, size: int = 28, gz: bool = True) -> dict:
    """A Fashion-MNIST-format folder of random images; returns the arrays written."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {"x": rng.integers(0, 256, (n_train, size, size)), "y": np.arange(n_train) % 10,
              "x_test": rng.integers(0, 256, (n_test, size, size)), "y_test": np.arange(n_test) % 10}
    for key, name in FASHION_MNIST_FILES.items():
        write_idx(root / (f"{name}.gz" if gz else name), arrays[key])
    return arrays


def require_package() -> None:
    missing = [n for n in FASHION_MNIST_FILES.values() if not (DEBIAN / f"{n}.gz").is_file()]
    if missing:
        pytest.fail(f"Fashion-MNIST is not installed ({DEBIAN}/{missing[0]}.gz missing): run `{INSTALL}`")


# ----------------------------------------------------------------------------- the idx reader
@pytest.mark.parametrize("suffix", [".gz", ""])
def test_read_idx_reads_gzipped_and_plain_files(tmp_path, suffix):
    images = np.arange(3 * 4 * 5).reshape(3, 4, 5).astype(np.uint8)
    got = read_idx(write_idx(tmp_path / f"images{suffix}", images))
    assert got.dtype == np.uint8 and got.shape == (3, 4, 5) and np.array_equal(got, images)
    labels = read_idx(write_idx(tmp_path / f"labels{suffix}", np.array([7, 0, 9])))
    assert labels.shape == (3,) and labels.tolist() == [7, 0, 9]


def _damaged(tmp_path: Path, kind: str) -> Path:
    good = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (2, 4, 4)) + bytes(32)
    path = tmp_path / ("f.gz" if kind.startswith("gz") else "f")
    body = {"short-data": good[:-5], "extra-data": good + b"\0", "bad-magic": b"\1\2" + good[2:], "empty": b"",
            "bad-dtype": good[:2] + b"\x77" + good[3:], "short-header": good[:9], "gz-truncated": gzip.compress(good)[:-12],
            "gz-garbage": b"\x1f\x8b\x08 this is not a gzip stream", "gz-plain-inside": good}[kind]
    path.write_bytes(body)
    return path


@pytest.mark.parametrize("kind", ["short-data", "extra-data", "bad-magic", "empty", "bad-dtype", "short-header",
                                  "gz-truncated", "gz-garbage", "gz-plain-inside"])
def test_a_corrupt_or_truncated_idx_file_is_one_line_naming_it(tmp_path, kind):
    path = _damaged(tmp_path, kind)
    with pytest.raises(ValueError) as err:
        read_idx(path)
    message = str(err.value)
    assert message.startswith("data.data_root: the idx file ") and repr(str(path)) in message and "\n" not in message


# ----------------------------------------------------------------------------- loading
def test_dataset_is_a_choice_of_the_spec_and_of_the_loader():
    choices = next(f for f in dataclasses.fields(DataConfig) if f.name == "dataset").metadata["choices"]
    assert "fashion-mnist" in choices and set(choices) == set(DATASETS)
    assert DataConfig().data_root == DEFAULT_DATA_ROOT  # the default that means: the Debian folder


@pytest.mark.parametrize("gz", [True, False])
def test_a_data_root_folder_is_read_subset_split_and_noised(tmp_path, gz):
    arrays = write_folder(tmp_path, gz=gz)
    cfg = DataConfig(dataset="fashion-mnist", data_root=str(tmp_path), num_samples=100, val_fraction=0.2,
                     label_noise=0.5, noise_seed=3)
    b = load_data(cfg)
    assert len(b.train_y) == 80 and len(b.val_y) == 20 and len(b.test_y) == 30  # the test set is never cut
    assert b.train_x.dtype == torch.uint8 and b.train_x.shape[1:] == (1, 28, 28) and b.input_shape == (1, 28, 28)
    assert b.num_classes == 10 and torch.equal(b.test_x[:, 0], torch.from_numpy(arrays["x_test"].astype(np.uint8)))
    assert (b.train_y != b.clean_train_y).float().mean() > 0.3 and torch.equal(b.val_y, b.val_y % 10)
    # the subset: 100 of the 120 training images, each with its own label, drawn with data_seed
    pool = {bytes(img): int(lab) for img, lab in zip(arrays["x"].astype(np.uint8), arrays["y"])}
    seen = [bytes(img.numpy()) for img in torch.cat([b.train_x, b.val_x])[:, 0]]
    assert len(set(seen)) == 100 and all(s in pool for s in seen)
    assert [pool[s] for s in seen] == torch.cat([b.clean_train_y, b.val_y]).tolist()
    again = load_data(cfg)
    assert torch.equal(again.train_x, b.train_x) and torch.equal(again.train_y, b.train_y)
    other = load_data(dataclasses.replace(cfg, data_seed=7))
    assert not torch.equal(torch.cat([other.train_x, other.val_x]), torch.cat([b.train_x, b.val_x]))
    everything = load_data(dataclasses.replace(cfg, num_samples=120, val_fraction=0.0, label_noise=0.0))
    assert torch.equal(everything.train_x[:, 0], torch.from_numpy(arrays["x"].astype(np.uint8)))  # all, in file order


def test_normalize_and_augment(tmp_path):
    write_folder(tmp_path)
    b = load_data(DataConfig(dataset="fashion-mnist", data_root=str(tmp_path), num_samples=100))
    x = b.normalize(b.train_x)
    assert x.dtype == torch.float32 and x.shape == b.train_x.shape
    assert torch.allclose(x, (b.train_x.float() / 255 - 0.2860) / 0.3530)
    aug = b.augment(b.train_x, torch.Generator().manual_seed(0))
    assert aug.shape == b.train_x.shape and aug.dtype == torch.uint8 and not torch.equal(aug, b.train_x)
    assert torch.equal(aug, b.augment(b.train_x, torch.Generator().manual_seed(0)))
    padded = torch.nn.functional.pad(b.train_x[:4], (2, 2, 2, 2))  # a 2-px shifted window, maybe mirrored
    for i in range(4):
        windows = [padded[i, :, oy:oy + 28, ox:ox + 28] for oy in range(5) for ox in range(5)]
        assert any(torch.equal(aug[i], w) or torch.equal(aug[i], w.flip(-1)) for w in windows)
    assert load_data(DataConfig(dataset="fashion-mnist", data_root=str(tmp_path), num_samples=100,
                                augment=False)).augment is None


def test_more_samples_than_training_images_names_num_samples(tmp_path):
    write_folder(tmp_path)
    with pytest.raises(ValueError, match=r"^data\.num_samples: 121 exceeds the 120 Fashion-MNIST training images"):
        load_data(DataConfig(dataset="fashion-mnist", data_root=str(tmp_path), num_samples=121))


@pytest.mark.parametrize("damage", ["missing", "images-are-labels", "label-out-of-range", "count-mismatch",
                                    "test-size-differs"])
def test_a_bad_folder_is_one_line_naming_data_root(tmp_path, damage):
    write_folder(tmp_path)
    name = FASHION_MNIST_FILES
    if damage == "missing":
        (tmp_path / f"{name['y_test']}.gz").unlink()
    elif damage == "images-are-labels":
        write_idx(tmp_path / f"{name['x']}.gz", np.zeros(120))
    elif damage == "label-out-of-range":
        write_idx(tmp_path / f"{name['y']}.gz", np.full(120, 10))
    elif damage == "count-mismatch":
        write_idx(tmp_path / f"{name['y_test']}.gz", np.zeros(29))
    else:
        write_idx(tmp_path / f"{name['x_test']}.gz", np.zeros((30, 27, 28)))
    with pytest.raises(ValueError) as err:
        load_data(DataConfig(dataset="fashion-mnist", data_root=str(tmp_path), num_samples=100))
    message = str(err.value)
    assert message.startswith("data.data_root: ") and "\n" not in message and str(tmp_path) in message
    if damage == "missing":
        assert INSTALL in message and name["y_test"] in message


def test_the_default_root_is_the_debian_folder_and_its_absence_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "FASHION_MNIST_ROOT", str(tmp_path / "not-installed"))
    with pytest.raises(ValueError) as err:
        load_data(DataConfig(dataset="fashion-mnist"))
    message = str(err.value)
    assert message.startswith("data.data_root: Fashion-MNIST not found: ") and INSTALL in message
    assert str(tmp_path / "not-installed") in message and "\n" not in message
    write_folder(tmp_path / "not-installed", n_train=150)
    assert len(load_data(DataConfig(dataset="fashion-mnist", num_samples=150, val_fraction=0.0)).train_y) == 150


# ----------------------------------------------------------------------------- the Debian package
def test_the_installed_package_loads_whole():
    require_package()
    b = load_data(DataConfig(dataset="fashion-mnist", num_samples=60000))  # data_root left at its default
    assert len(b.train_y) + len(b.val_y) == 60000 and len(b.val_y) == 6000 and len(b.test_y) == 10000
    assert b.train_x.shape[1:] == (1, 28, 28) and b.input_shape == (1, 28, 28) and b.num_classes == 10
    assert torch.bincount(b.test_y).tolist() == [1000] * 10
    assert torch.bincount(torch.cat([b.clean_train_y, b.val_y])).tolist() == [6000] * 10
    x = b.normalize(torch.cat([b.train_x, b.val_x]))  # the stated statistics are those of the training images
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1.0) < 1e-3
    cut = load_data(DataConfig(dataset="fashion-mnist", num_samples=5000))
    assert len(cut.train_y) + len(cut.val_y) == 5000 and len(cut.test_y) == 10000


# ----------------------------------------------------------------------------- the command line
SPEC = """
name = "fm"
seeds = [0]
report = false
[data]
dataset = "fashion-mnist"
num_samples = @N@
@DATA@
[model]
name = "@MODEL@"
[train]
epochs = 1
batch_size = 25
eval_batch_size = 2000
[[methods]]
label = "ERM"
strategy = "erm"
[[methods]]
label = "SAM"
strategy = "sam"
rho = 0.05
"""


def run_cli(tmp_path, capsys, model="fmnist_cnn", data="", samples=200):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.replace("@MODEL@", model).replace("@DATA@", data).replace("@N@", str(samples)))
    out = tmp_path / "out"
    capsys.readouterr()
    code = main(["run", str(spec), "--out", str(out), "--no-progress", "--jobs", "1"])
    return code, capsys.readouterr(), out


@pytest.mark.parametrize("case", ["no-folder", "empty-folder", "corrupt-file", "too-many-samples",
                                  "mnist1d_cnn-does-not-fit", "mnist1d_cnn_bn-does-not-fit"])
def test_bad_data_or_model_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, case):
    root = tmp_path / "fm"
    model, samples = "fmnist_cnn", 200
    if case != "no-folder":
        write_folder(root, n_train=300) if case != "empty-folder" else root.mkdir()
    if case == "corrupt-file":
        path = root / f"{FASHION_MNIST_FILES['x']}.gz"
        path.write_bytes(path.read_bytes()[:-100])
    if case == "too-many-samples":
        samples = 400
    if case.endswith("does-not-fit"):
        model = case.split("-")[0]
    before = sorted(tmp_path.rglob("*"))
    code, captured, out = run_cli(tmp_path, capsys, model, f'data_root = "{root}"', samples)
    after = sorted(p for p in tmp_path.rglob("*") if p.name != "spec.toml")
    lines = captured.err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("hpo-bench: error: "), captured.err
    expect = {"no-folder": f"data.data_root: Fashion-MNIST not found: {str(root)!r}",
              "empty-folder": INSTALL, "corrupt-file": f"the idx file {str(root / FASHION_MNIST_FILES['x']) + '.gz'!r}",
              "too-many-samples": "data.num_samples: 400 exceeds the 300"}.get(case, f"model.name: {model!r} does not fit")
    assert expect in lines[0], lines[0]
    assert not out.exists() and after == before  # nothing written, no folder created


def test_cli_run_on_the_installed_package(tmp_path, capsys):
    require_package()
    code, captured, out = run_cli(tmp_path, capsys, samples=500)
    assert code == 0, captured.err
    (run_dir,) = [d for d in out.iterdir() if d.is_dir()]
    runs = pd.read_parquet(run_dir / "runs.parquet")
    assert sorted(runs["method"]) == ["ERM", "SAM"] and (runs["status"] == "ok").all()
    assert set(runs["dataset"]) == {"fashion-mnist"} and set(runs["model"]) == {"fmnist_cnn"}
    assert runs["test_acc"].between(0.0, 1.0).all() and runs["last_train_loss"].notna().all()
    assert dict(zip(runs["strategy"], runs["grad_evals"])) == {"erm": 18, "sam": 36}


# ----------------------------------------------------------------------------- models
@pytest.mark.parametrize("name", ["fmnist_cnn", "fmnist_resnet"])
def test_models_forward_shapes_and_quote_a_measured_reference(name):
    assert name in list_models()
    model = create_model(name, 10, (1, 28, 28))
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert create_model(name, 7, (3, 32, 32))(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(RuntimeError):  # a non-image input fails in the forward pass, where preflight catches it
        create_model(name, 10, (40,))(torch.randn(2, 40))
    assert "% test acc" in model_doc(name) and "5 epochs" in model_doc(name)


def test_fmnist_resnet_is_a_narrow_resnet8():
    model = create_model("fmnist_resnet", 10, (1, 28, 28))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 7 and [c.out_channels for c in convs] == [16, 16, 16, 32, 32, 64, 64]  # + the linear head: 8
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) > 0


def _trials(root: Path, model: str) -> list[Trial]:
    data = dataclasses.asdict(DataConfig(dataset="fashion-mnist", data_root=str(root), num_samples=100))
    train = dataclasses.asdict(TrainConfig(epochs=1, batch_size=25, eval_batch_size=100, device="cpu", dtype="float64"))
    return [Trial("SAM", "sam", {}, rho, seed, data, {"name": model}, train) for rho, seed in ((0.05, 0), (0.2, 1))]


def test_population_trains_the_cnn_as_its_separate_runs_and_refuses_the_bn_resnet(tmp_path):
    write_folder(tmp_path)
    assert not can_train_together(_trials(tmp_path, "fmnist_resnet"))  # BatchNorm2d: run one by one
    trials = _trials(tmp_path, "fmnist_cnn")
    assert can_train_together(trials)
    for trial, (row, _) in zip(trials, train_population(trials)):
        alone, _ = run_trial(trial)
        assert row["grad_evals"] == alone["grad_evals"] == 8
        assert abs(row["last_train_loss"] - alone["last_train_loss"]) <= 1e-10
        assert row["test_acc"] == alone["test_acc"]
