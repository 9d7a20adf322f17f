"""Datasets for proxy training, held in memory as one uint8 tensor each.

``load_dataset`` returns train / validation / test splits as ``TensorData``: images of shape
N x C x H x W (uint8) and int64 labels. The validation split is carved from the training set
(seeded, disjoint); a search scores on it. The test split only reports a final model.

* ``cifar100`` -- torchvision's CIFAR-100 from ``data_dir`` (a folder holding
  ``cifar-100-python``), downloaded there when the network allows.
* ``digits`` -- scikit-learn's 1,797 real 8x8 handwritten digits (shipped inside
  scikit-learn), upsampled to a small RGB square: the offline real dataset.
* ``synthetic`` -- generated images whose labels are learnable (class templates + noise).
* ``folder`` -- any torchvision ``ImageFolder`` tree (``data_dir``), resized to ``image_size``.

Test splits: cifar100 its test set; digits and synthetic a seeded held-out 20%; folder another
ImageFolder tree (``test_dir``, same classes) or, without one, a seeded ``test_fraction`` (default
0.1) carved off before the validation split. Test, validation and training images are disjoint.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nexsearch.errors import UserError
from nexsearch.objectives.settings import DATASETS, DataSpec

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"


@dataclass
class TensorData:
    images: torch.Tensor  # N x C x H x W, uint8
    labels: torch.Tensor  # N, int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> "TensorData":
        return TensorData(self.images.to(device), self.labels.to(device))


@dataclass
class Splits:
    name: str
    train: TensorData
    val: TensorData
    test: TensorData | None
    num_classes: int
    mean: tuple[float, ...]  # per-channel, on the 0-1 scale, from the training split
    std: tuple[float, ...]

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[-1])

    def to(self, device: torch.device | str, test: bool = False) -> "Splits":
        """Training and validation splits on ``device``; the test split too only with ``test=True``
        (final evaluations: a search never reads it, so its workers leave it on the CPU)."""
        moved_test = self.test.to(device) if test and self.test is not None else self.test
        return Splits(self.name, self.train.to(device), self.val.to(device), moved_test, self.num_classes,
                      self.mean, self.std)


def _split(data: TensorData, fraction: float, seed: int) -> tuple[TensorData, TensorData]:
    """Seeded random split into (rest, held-out): disjoint, covering every sample once."""
    if not 0.0 < fraction < 1.0:
        raise UserError(f"validation fraction must be between 0 and 1 (exclusive), got {fraction}")
    n = len(data)
    n_held = max(1, int(round(n * fraction)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held, rest = perm[:n_held], perm[n_held:]
    return TensorData(data.images[rest], data.labels[rest]), TensorData(data.images[held], data.labels[held])


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out.round().clamp(0, 255).to(torch.uint8)


def _stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.float().div_(255)
    return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())


def _finish(name: str, train: TensorData, test: TensorData | None, num_classes: int, val_fraction: float, seed: int,
            train_subset: int | None = None) -> Splits:
    train, val = _split(train, val_fraction, seed)
    if train_subset is not None:  # the split leaves the training part in random order: a prefix is a random subset
        if train_subset < 1:
            raise UserError(f"train_subset must be a positive number of images, got {train_subset}")
        train = TensorData(train.images[:train_subset], train.labels[:train_subset])
    mean, std = _stats(train.images)
    return Splits(name, train, val, test, num_classes, mean, std)


# What the CIFAR-100 python files hold: dicts of str, bytes, ints, lists and numpy arrays. A pickle may name any
# function to call while it loads; these are the only ones admitted (numpy's array reconstruction, and the
# bytes helper of protocol-2 pickles): a crafted file cannot run code, it is refused with one line.
_PICKLE_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                   ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    if encoding.lower().replace("-", "") != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it calls {module}.{name}")
        if name == "_reconstruct":
            return np.ndarray((0,)).__reduce__()[0]  # numpy's own, wherever this numpy version keeps it
        return {"ndarray": np.ndarray, "dtype": np.dtype, "encode": _latin1_bytes}[name]


def read_data_pickle(path: Path) -> dict:
    """A pickle of plain data (numbers, strings, lists, dicts, numpy arrays) and nothing else; ``UserError`` for
    one that calls anything more, or is no such pickle."""
    try:
        with open(path, "rb") as fh:
            data = _DataUnpickler(fh, encoding="latin1").load()
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror or exc})") from None
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, ...: a crafted or damaged file
        raise UserError(f"{path} is refused: not a plain-data CIFAR pickle ({type(exc).__name__}: {exc}); "
                        f"replace it with the official file ({CIFAR100_URL})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a CIFAR-100 file (a {type(data).__name__}, not a dict)")
    return data


def _cifar_part(path: Path) -> TensorData:
    entry = read_data_pickle(path)
    data, labels = entry.get("data"), entry.get("fine_labels")
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072
            and isinstance(labels, list) and len(labels) == data.shape[0]
            and all(isinstance(v, int) and 0 <= v < 100 for v in labels)):
        raise UserError(f"{path} is not a CIFAR-100 file: it needs 'data' (N x 3072 uint8) and 'fine_labels' "
                        "(N class numbers 0..99)")
    images = torch.from_numpy(np.ascontiguousarray(data.reshape(-1, 3, 32, 32)))
    return TensorData(images, torch.as_tensor(labels, dtype=torch.int64))


def _cifar100(data_dir: Path, download: bool) -> tuple[TensorData, TensorData]:
    folder = data_dir / "cifar-100-python"
    if not folder.is_dir():
        if not download:
            raise UserError(
                f"CIFAR-100 not found: {folder} does not exist. Download {CIFAR100_URL}, extract it into "
                f"{data_dir}, or allow downloading (--download)"
            )
        from torchvision.datasets import CIFAR100
        from torchvision.datasets.utils import download_and_extract_archive

        try:  # the archive is checked against torchvision's md5 before it is extracted
            download_and_extract_archive(CIFAR100_URL, str(data_dir), filename=CIFAR100.filename,
                                         md5=CIFAR100.tgz_md5)
        except Exception as exc:  # no network, a proxy, a full disk: say what to do instead
            raise UserError(
                f"CIFAR-100 could not be downloaded into {data_dir} ({type(exc).__name__}: {exc}). "
                f"Fetch {CIFAR100_URL} by hand and extract it there"
            ) from None
    for name in ("train", "test", "meta"):
        if not (folder / name).is_file():
            raise UserError(f"{folder} is not a readable CIFAR-100 folder: {name} is missing")
    read_data_pickle(folder / "meta")  # class names only; read (and refused if crafted) like the rest
    return _cifar_part(folder / "train"), _cifar_part(folder / "test")


def _digits(image_size: int, seed: int) -> tuple[TensorData, TensorData]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = torch.from_numpy(digits.images).float().mul_(255.0 / 16.0).round().to(torch.uint8)  # N x 8 x 8, 0..16
    images = _resize(gray[:, None], image_size).expand(-1, 3, -1, -1).contiguous()
    data = TensorData(images, torch.from_numpy(digits.target).long())
    return _split(data, 0.2, seed + 1)  # digits ships no test split: hold out 20% for it


def synthetic_data(n: int = 2048, num_classes: int = 10, image_size: int = 32, seed: int = 0) -> TensorData:
    """Images whose class is learnable: a smooth per-class template, shifted, with pixel noise."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(num_classes, 3, 4, 4, generator=g)
    templates = F.interpolate(low, size=(image_size, image_size), mode="bilinear", align_corners=False)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    shifts = torch.randint(-2, 3, (n, 2), generator=g)
    imgs = templates[labels]
    imgs = torch.stack([torch.roll(im, (int(dy), int(dx)), dims=(1, 2)) for im, (dy, dx) in zip(imgs, shifts)])
    imgs = imgs * 0.7 + 0.3 * torch.rand(imgs.shape, generator=g)
    return TensorData(imgs.mul(255).round().clamp(0, 255).to(torch.uint8), labels)


def _folder(data_dir: Path, image_size: int) -> tuple[TensorData, list[str]]:
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.functional import pil_to_tensor, resize

    if not data_dir.is_dir():
        raise UserError(f"image folder {data_dir} does not exist: pass --data-dir pointing at an ImageFolder tree")
    try:
        ds = ImageFolder(str(data_dir))
    except Exception as exc:
        raise UserError(f"{data_dir} is not an ImageFolder tree (one sub-folder per class): {exc}") from None
    def read(path: str) -> torch.Tensor:
        try:
            return pil_to_tensor(resize(ds.loader(path).convert("RGB"), [image_size, image_size], antialias=True))
        except Exception as exc:  # a truncated or mislabelled file
            raise UserError(f"cannot read image {path} ({type(exc).__name__}: {exc}): remove or replace it") from None

    if len(ds.classes) < 2:
        raise UserError(f"{data_dir} has {len(ds.classes)} class folder ({', '.join(ds.classes)}): a classifier "
                        "needs at least 2 (one sub-folder per class)")
    images = torch.stack([read(path) for path, _ in ds.samples])
    return TensorData(images, torch.as_tensor(ds.targets, dtype=torch.int64)), list(ds.classes)


def load_dataset(data: DataSpec) -> Splits:
    """Load the dataset ``data`` names into memory (CPU) and split off a seeded validation set.

    ``train_subset`` keeps only that many (random) training images: a cheaper proxy.
    ``test_dir`` / ``test_fraction``: the test split of a ``folder`` dataset (see the module docstring).
    """
    name, seed, size = data.dataset, data.seed, data.image_size
    if name == "cifar100":
        train, test = _cifar100(Path(data.data_dir) if data.data_dir else Path("data"), data.download)
        if size:
            train, test = TensorData(_resize(train.images, size), train.labels), TensorData(
                _resize(test.images, size), test.labels)
        return _finish(name, train, test, 100, data.val_fraction, seed, data.train_subset)
    if name == "digits":
        train, test = _digits(size or 32, seed)
        return _finish(name, train, test, 10, data.val_fraction, seed, data.train_subset)
    if name == "synthetic":
        images = synthetic_data(data.synthetic_size + data.synthetic_size // 4, data.synthetic_classes, size or 32, seed)
        train, test = _split(images, 0.2, seed + 1)
        return _finish(name, train, test, data.synthetic_classes, data.val_fraction, seed, data.train_subset)
    if name == "folder":
        if data.data_dir is None:
            raise UserError("dataset 'folder' needs --data-dir pointing at an ImageFolder tree")
        return _folder_splits(data)
    raise UserError(f"unknown dataset '{name}': choose one of {', '.join(DATASETS)}")


def _folder_splits(data: DataSpec) -> Splits:
    images, classes = _folder(Path(data.data_dir), data.image_size or 32)
    if data.test_dir is not None:
        test, test_classes = _folder(Path(data.test_dir), data.image_size or 32)
        if test_classes != classes:
            raise UserError(f"test folder {data.test_dir} has classes {test_classes[:5]}..., the training folder "
                            f"{data.data_dir} {classes[:5]}...: both need the same class sub-folders")
        train = images
    else:
        train, test = _split(images, data.test_fraction, data.seed + 2)
    return _finish("folder", train, test, len(classes), data.val_fraction, data.seed, data.train_subset)
