"""Data sets as device tensors: MNIST-1D (generated offline), CIFAR-10/100 (torchvision), Fashion-MNIST (idx files).

* MNIST-1D: ``mnist1d.data.make_dataset`` (never ``get_dataset``, which downloads), cached as
  ``{data_root}/mnist1d_n{num_samples}_s{data_seed}.npz`` after the first generation.
* CIFAR: ``torchvision.datasets.CIFAR10/100(root, train, download=data.download)``; images kept
  as uint8 (N, 3, 32, 32); :meth:`DataBundle.normalize` converts a batch to normalized float, and
  the training augmentation (4-px zero-padded random crop + horizontal flip) runs on whole
  batches on the tensors' device, with random numbers from a CPU generator (same on CPU and GPU).
* Fashion-MNIST: the four idx files (``train-images-idx3-ubyte`` ... ``t10k-labels-idx1-ubyte``, each
  gzipped or plain) from ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``)
  when ``data_root`` is left at its default, else from ``data_root``; read by :func:`read_idx`, never
  downloaded. ``num_samples`` training images (a subset drawn with ``data_seed``; all 60 000 when
  num_samples = 60000) before the validation split; the test set is all 10 000 test images. Kept as
  uint8 (N, 1, 28, 28), normalized by the 60 000 training images' mean and std of x/255, and
  augmented like CIFAR but with 2-px padding (:data:`FASHION_MNIST_PAD`) when ``augment`` is on.
* A validation split is carved from the training set (``val_fraction``, its own ``split_seed``);
  the test set is untouched. Symmetric label noise touches training labels only.
"""
from __future__ import annotations

import functools
import gzip
import math
import pickle
import zipfile
import zlib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from hpo_bench.store import atomic_path

DATASETS = ("cifar10", "cifar100", "fashion-mnist", "mnist1d")
CIFAR_STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
               "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}
IMAGE_STATS = {**CIFAR_STATS, "fashion-mnist": ((0.2860,), (0.3530,))}  # Fashion-MNIST: x/255 over its 60 000 training images
DEFAULT_DATA_ROOT = ".cache/data"  # DataConfig.data_root's default
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"  # Debian: apt-get install dataset-fashion-mnist
# The clothes fill the 28x28 frame: CIFAR's 4-px shifts cut them (ERM, fmnist_cnn, seed 0, 9000 images, 5 epochs:
# 80.3% test accuracy with 4 px, 85.9% with 2 px, 88.1% without augmentation)
FASHION_MNIST_PAD = 2
FASHION_MNIST_FILES = {"x": "train-images-idx3-ubyte", "y": "train-labels-idx1-ubyte",
                       "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}


@dataclass
class DataBundle:
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    clean_train_y: torch.Tensor
    num_classes: int
    input_shape: tuple
    augment: Callable | None = None
    mean: torch.Tensor | None = None  # per-channel normalization for uint8 images (CIFAR, Fashion-MNIST)
    std: torch.Tensor | None = None

    def to(self, device) -> "DataBundle":
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **moved)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images → normalized float32; float inputs (MNIST-1D) pass through."""
        if self.mean is None:
            return x
        return (x.float().div_(255.0) - self.mean) / self.std


def split_train_val(n: int, val_fraction: float, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint (train_idx, val_idx) covering range(n); val has round(n·val_fraction) items."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    n_val = int(round(n * val_fraction))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def apply_label_noise(y: torch.Tensor, rate: float, num_classes: int, seed: int) -> torch.Tensor:
    """Symmetric noise: each label, with probability ``rate``, is replaced by one drawn uniformly
    from the OTHER classes (so a flipped label always differs from the original)."""
    if rate <= 0:
        return y.clone()
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(len(y), generator=g) < rate
    offset = torch.randint(1, num_classes, (len(y),), generator=g)
    return torch.where(flip, (y + offset) % num_classes, y)


def to_device_async(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``; to CUDA through pinned memory, so the copy does not wait for
    the GPU to drain (a pageable copy would stall the host once per call)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def random_crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Batch augmentation: zero-pad by ``pad``, random crop back to H×W, random horizontal flip.

    The random offsets and flips come from the CPU generator ``gen`` (the same stream on every
    device) and reach the GPU without a host sync."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy = to_device_async(torch.randint(0, 2 * pad + 1, (n,), generator=gen), x.device)
    ox = to_device_async(torch.randint(0, 2 * pad + 1, (n,), generator=gen), x.device)
    flip = to_device_async(torch.rand(n, generator=gen) < 0.5, x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device)[None, :])  # (n, h)
    cols = torch.arange(w, device=x.device)[None, :]
    cols = torch.where(flip[:, None], (w - 1 - cols), cols) + ox[:, None]  # (n, w)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------- sources
MNIST1D_KEYS = ("x", "y", "x_test", "y_test")


def _read_mnist1d_cache(path: Path) -> dict:
    """The arrays of an MNIST-1D cache file; anything else there is a ValueError naming ``data.data_root``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in MNIST1D_KEYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        reason = str(err).splitlines()[0][:80] if str(err) else type(err).__name__
        raise ValueError(f"data.data_root: the MNIST-1D cache {str(path)!r} is unreadable or corrupt ({reason}); "
                         "allowed: a valid cache file, or none (delete it: it is generated again)") from None
    x, y, xt, yt = (arrays[k] for k in MNIST1D_KEYS)
    if not (x.ndim == xt.ndim == 2 and y.ndim == yt.ndim == 1 and len(x) == len(y) > 0 and len(xt) == len(yt) > 0
            and x.shape[1] == xt.shape[1] and x.dtype.kind == xt.dtype.kind == "f" and y.dtype.kind in "iu"
            and yt.dtype.kind in "iu" and min(y.min(), yt.min()) >= 0):
        raise ValueError(f"data.data_root: the MNIST-1D cache {str(path)!r} does not hold MNIST-1D arrays; "
                         "allowed: a valid cache file, or none (delete it: it is generated again)")
    return arrays


def _mnist1d_arrays(cfg) -> dict:
    root = Path(cfg.data_root)
    path = root / f"mnist1d_n{cfg.num_samples}_s{cfg.data_seed}.npz"
    if root.exists() and not root.is_dir():
        raise ValueError(f"data.data_root: {cfg.data_root!r} is not a directory; allowed: a directory for the "
                         "MNIST-1D cache (created if missing)")
    if path.exists() or path.is_symlink():
        return _read_mnist1d_cache(path)
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = cfg.num_samples, cfg.data_seed
    d = make_dataset(args)
    arrays = {"x": d["x"].astype(np.float32), "y": d["y"].astype(np.int64),
              "x_test": d["x_test"].astype(np.float32), "y_test": d["y_test"].astype(np.int64)}
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    except OSError as err:  # WriteError included: the cache is written before any run
        raise ValueError(f"data.data_root: cannot write the MNIST-1D cache under {cfg.data_root!r} "
                         f"({err.strerror or type(err).__name__}); allowed: a writable directory") from None
    return arrays


def _cifar_arrays(cfg) -> dict:
    import torchvision

    base = torchvision.datasets.CIFAR10 if cfg.dataset == "cifar10" else torchvision.datasets.CIFAR100
    label = "CIFAR-10" if cfg.dataset == "cifar10" else "CIFAR-100"

    class Source(base):
        def _check_integrity(self):  # presence-only check when verify_md5 is off (tiny test folders)
            if cfg.verify_md5:
                return super()._check_integrity()
            folder = Path(self.root) / self.base_folder
            return all((folder / name).exists() for name, _ in self.train_list + self.test_list + [(self.meta["filename"], 0)])

        def _load_meta(self):
            if cfg.verify_md5:
                return super()._load_meta()
            with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as fh:
                self.classes = pickle.load(fh, encoding="latin1")[self.meta["key"]]

    try:
        train, test = Source(cfg.data_root, train=True, download=cfg.download), Source(cfg.data_root, train=False, download=False)
    except OSError as err:  # a failed download (offline: URLError) or an unreadable folder
        reason = str(getattr(err, "reason", "") or err.strerror or type(err).__name__)[:80]
        raise ValueError(f"data.data_root: {label} could not be read or downloaded into {cfg.data_root!r} ({reason}); "
                         "allowed: a folder holding the extracted python batches, or data.download = true "
                         "on a machine with network access") from None
    except (RuntimeError, EOFError, KeyError, IndexError, ValueError, pickle.UnpicklingError):
        raise ValueError(f"data.data_root: {label} not found (or corrupted) under {cfg.data_root!r}; allowed: a folder "
                         f"holding the extracted python batches, or data.download = true") from None
    to_t = lambda a: np.ascontiguousarray(a.transpose(0, 3, 1, 2))
    return {"x": to_t(train.data), "y": np.asarray(train.targets, dtype=np.int64),
            "x_test": to_t(test.data), "y_test": np.asarray(test.targets, dtype=np.int64)}


IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """The array of one idx file (LeCun's MNIST format; gzipped if its name ends in ``.gz``).

    Header: two zero bytes, a dtype code, the number of dimensions d, then d big-endian uint32
    sizes; the data follow, exactly prod(sizes) items. Anything else (a truncated or corrupt file)
    is a one-line ValueError naming the file and ``data.data_root``."""
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError; EOFError: gzip stream cut short
        reason = (getattr(err, "strerror", None) or str(err) or type(err).__name__).splitlines()[0][:80]
        raise ValueError(f"data.data_root: the idx file {str(path)!r} cannot be read ({reason}); allowed: an intact "
                         "idx file (reinstall it: apt-get install --reinstall dataset-fashion-mnist)") from None
    ndim = raw[3] if len(raw) >= 4 else 0
    dtype = IDX_DTYPES.get(raw[2]) if len(raw) >= 4 and raw[:2] == b"\0\0" else None
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)) if len(raw) >= header else None
    size = math.prod(shape) * np.dtype(dtype).itemsize if dtype is not None and shape else -1
    if ndim == 0 or shape is None or dtype is None or len(raw) - header != size:
        what = ("no idx header" if dtype is None or ndim == 0 or shape is None
                else f"{len(raw) - header} data bytes for shape {shape}, expected {size}")
        raise ValueError(f"data.data_root: the idx file {str(path)!r} is truncated or corrupt ({what}); allowed: an "
                         "intact idx file (reinstall it: apt-get install --reinstall dataset-fashion-mnist)")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _fashion_mnist_arrays(cfg) -> dict:
    """The four Fashion-MNIST arrays from the Debian folder (default ``data_root``) or ``data_root``;
    the training images cut to a ``num_samples`` subset drawn with ``data_seed``."""
    root = Path(FASHION_MNIST_ROOT if cfg.data_root == DEFAULT_DATA_ROOT else cfg.data_root)
    paths = {}
    for key, name in FASHION_MNIST_FILES.items():
        found = [root / f"{name}.gz", root / name]
        paths[key] = next((p for p in found if p.is_file()), None)
        if paths[key] is None:
            where = (f"{FASHION_MNIST_ROOT!r} (data.data_root left at its default)" if cfg.data_root == DEFAULT_DATA_ROOT
                     else repr(cfg.data_root))
            raise ValueError(f"data.data_root: Fashion-MNIST not found: {where} has no {name}.gz (or {name}); allowed: "
                             "install it (apt-get install dataset-fashion-mnist) and leave data.data_root unset, "
                             "or a data.data_root folder holding its four idx files")
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for xk, yk in (("x", "y"), ("x_test", "y_test")):
        x, y = arrays[xk], arrays[yk]
        if x.ndim != 3 or x.dtype != np.uint8 or x.shape[1:] != arrays["x"].shape[1:]:
            raise ValueError(f"data.data_root: {str(paths[xk])!r} does not hold uint8 images like the training images "
                             f"(shape {x.shape}); allowed: the Fashion-MNIST idx files")
        if y.ndim != 1 or y.dtype != np.uint8 or len(y) != len(x) or len(y) == 0 or y.max() >= 10:
            raise ValueError(f"data.data_root: {str(paths[yk])!r} does not hold one label in 0..9 per image of "
                             f"{str(paths[xk])!r}; allowed: the Fashion-MNIST idx files")
    n = len(arrays["y"])
    if cfg.num_samples > n:
        raise ValueError(f"data.num_samples: {cfg.num_samples} exceeds the {n} Fashion-MNIST training images; "
                         f"allowed: at most {n}")
    keep = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.data_seed))[:cfg.num_samples].sort().values.numpy()
    return {"x": arrays["x"][keep][:, None], "y": arrays["y"][keep].astype(np.int64),
            "x_test": arrays["x_test"][:, None].copy(), "y_test": arrays["y_test"].astype(np.int64)}


def load_data(cfg) -> DataBundle:
    """Build the bundle for ``cfg`` (a DataConfig) on CPU; callers move it with ``.to(device)``."""
    if cfg.dataset not in DATASETS:
        raise ValueError(f"data.dataset: unknown dataset {cfg.dataset!r}; allowed: {', '.join(DATASETS)}")
    source = {"mnist1d": _mnist1d_arrays, "fashion-mnist": _fashion_mnist_arrays}.get(cfg.dataset, _cifar_arrays)
    arrays = source(cfg)
    x, y = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"])
    num_classes = int(max(y.max(), torch.from_numpy(arrays["y_test"]).max())) + 1
    num_classes = {"cifar10": 10, "cifar100": 100, "fashion-mnist": 10}.get(cfg.dataset, max(num_classes, 10))
    tr, va = split_train_val(len(y), cfg.val_fraction, cfg.split_seed)
    clean = y[tr]
    mean = std = None
    augment = None
    if cfg.dataset != "mnist1d":
        m, s = IMAGE_STATS[cfg.dataset]
        mean, std = torch.tensor(m).view(1, -1, 1, 1), torch.tensor(s).view(1, -1, 1, 1)
        crop = functools.partial(random_crop_flip, pad=FASHION_MNIST_PAD) if cfg.dataset == "fashion-mnist" else random_crop_flip
        augment = crop if cfg.augment else None
    return DataBundle(train_x=x[tr], train_y=apply_label_noise(clean, cfg.label_noise, num_classes, cfg.noise_seed),
                      val_x=x[va], val_y=y[va], test_x=torch.from_numpy(arrays["x_test"]),
                      test_y=torch.from_numpy(arrays["y_test"]), clean_train_y=clean, num_classes=num_classes,
                      input_shape=tuple(x.shape[1:]), augment=augment, mean=mean, std=std)
