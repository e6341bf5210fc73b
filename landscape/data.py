"""Built-in data sets, batching and content fingerprints of data.

Everything is deterministic given ``seed`` and uses local generators (``torch.Generator``,
``numpy.random.default_rng``), never the global random state. The digits set is scikit-learn's shipped copy of
the UCI optical digits test set (1797 images of 8x8 pixels), so no download is needed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from landscape._checks import check_counts

__all__ = [
    "batches",
    "data_fingerprint",
    "digits",
    "gaussian_mixture",
    "load_tokens",
    "synthetic_images",
    "synthetic_regression",
    "token_batches",
]

_SPLITS = ("train", "test", "all")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(int(seed))


def digits(
    *,
    split: str = "train",
    test_fraction: float = 0.2,
    normalize: bool = True,
    flatten: bool = True,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """The 8x8 handwritten digits of scikit-learn (``sklearn.datasets.load_digits``), split in train and test.

    Pixels are scaled from ``0..16`` to ``[0, 1]``; with ``normalize`` they are then standardised,
    ``x -> (x - mean) / std``, with the scalar mean and standard deviation of the *training* split (a scalar
    keeps the always-blank border pixels finite and suits convolutions as well as MLPs).

    Parameters
    ----------
    split:
        ``"train"``, ``"test"`` or ``"all"`` (every sample, in the original order).
    test_fraction:
        Fraction of samples in the test split, in ``(0, 1)``.
    normalize:
        Standardise with the training statistics.
    flatten:
        Images as 64-vectors ``(N, 64)``; ``False`` gives ``(N, 1, 8, 8)``.
    dtype:
        Floating dtype of the images.
    seed:
        Seed of the random train/test permutation.

    Returns
    -------
    (X, y):
        Images and ``int64`` labels in ``0..9``.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(
            "landscape.data.digits() needs scikit-learn for its shipped digits data: pip install scikit-learn"
        ) from err

    bunch = load_digits()
    images = np.asarray(bunch.data, dtype=np.float64) / 16.0
    labels = np.asarray(bunch.target, dtype=np.int64)
    n = len(labels)
    n_test = min(max(int(round(test_fraction * n)), 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    test_idx, train_idx = perm[:n_test], perm[n_test:]

    if normalize:
        train = images[train_idx]
        images = (images - train.mean()) / train.std()
    idx = {"train": train_idx, "test": test_idx, "all": np.arange(n)}[split]
    X = torch.as_tensor(images[idx]).to(dtype)
    y = torch.as_tensor(labels[idx])
    if not flatten:
        X = X.reshape(-1, 1, 8, 8)
    return X, y


def _balanced_labels(n: int, num_classes: int, g: torch.Generator) -> Tensor:
    """``n`` shuffled ``int64`` labels, ``n // num_classes`` of each class and one more of the first ``n % num_classes``
    (the permutation drawn from ``g``)."""
    y = torch.arange(n) % num_classes
    return y[torch.randperm(n, generator=g)]


def gaussian_mixture(
    n: int = 1024,
    dim: int = 32,
    num_classes: int = 4,
    *,
    separation: float = 3.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Classification data from a mixture of isotropic Gaussians, one per class.

    Class means are ``separation * u_c`` for random unit vectors ``u_c``; samples are ``x = mu_y + N(0, I)``.
    Classes are balanced (``n // num_classes`` each, the remainder going to the first classes) and shuffled.

    Returns
    -------
    (X, y):
        ``(n, dim)`` inputs and ``int64`` labels in ``0..num_classes-1``.
    """
    check_counts(n=n, dim=dim, num_classes=num_classes)
    g = _generator(seed)
    means = torch.randn(num_classes, dim, generator=g, dtype=torch.float64)
    means = separation * means / means.norm(dim=1, keepdim=True)
    y = _balanced_labels(n, num_classes, g)
    X = means[y] + torch.randn(n, dim, generator=g, dtype=torch.float64)
    return X.to(dtype), y


def synthetic_images(
    n: int = 512,
    channels: int = 3,
    size: int = 32,
    num_classes: int = 10,
    seed: int = 0,
    *,
    noise: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Learnable image classification data: a smooth random template per class plus pixel noise.

    Templates are white noise blurred by a 5x5 box filter (spatially smooth, so convolutions pick them up) and
    scaled to unit pixel variance; an image is ``template[y] + noise * N(0, I)``.

    Returns
    -------
    (X, y):
        ``(n, channels, size, size)`` images and balanced, shuffled ``int64`` labels.
    """
    check_counts(n=n, channels=channels, size=size, num_classes=num_classes)
    g = _generator(seed)
    raw = torch.randn(num_classes, channels, size, size, generator=g)
    templates = torch.nn.functional.avg_pool2d(raw, 5, stride=1, padding=2, count_include_pad=False)
    templates = templates / templates.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    y = _balanced_labels(n, num_classes, g)
    X = templates[y] + noise * torch.randn(n, channels, size, size, generator=g)
    return X.to(dtype), y


def synthetic_regression(
    n: int = 256,
    dim: int = 16,
    seed: int = 0,
    *,
    noise: float = 0.1,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Linear regression data ``y = X w + noise * eps`` with ``X, eps ~ N(0, I)`` and ``w ~ N(0, I / dim)``.

    Returns
    -------
    (X, y):
        ``(n, dim)`` inputs and ``(n, 1)`` targets (the shape of a ``Linear(dim, 1)`` output, so ``MSELoss``
        does not broadcast).
    """
    check_counts(n=n, dim=dim)
    g = _generator(seed)
    w = torch.randn(dim, 1, generator=g, dtype=torch.float64) / dim**0.5
    X = torch.randn(n, dim, generator=g, dtype=torch.float64)
    y = X @ w + noise * torch.randn(n, 1, generator=g, dtype=torch.float64)
    return X.to(dtype), y.to(dtype)


def batches(X: Tensor, y: Tensor, batch_size: int) -> list[tuple[Tensor, Tensor]]:
    """Split ``(X, y)`` into consecutive batches of ``batch_size`` samples; the last batch may be shorter.

    The batches are views of ``X`` and ``y`` (no copy), in order.
    """
    check_counts(batch_size=batch_size)
    if len(X) != len(y):
        raise ValueError(f"X and y hold different numbers of samples: {len(X)} and {len(y)}")
    return [(X[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(X), batch_size)]


def _is_pair(data: object) -> bool:
    return isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data)


def _hash_item(h: hashlib._Hash, item: object) -> None:
    if isinstance(item, Tensor):
        t = item.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(item, (tuple, list)):
        h.update(f"L{len(item)}(".encode())
        for sub in item:
            _hash_item(h, sub)
        h.update(b")")
    elif isinstance(item, Mapping):
        h.update(f"D{len(item)}(".encode())
        for key in sorted(item, key=repr):
            h.update(repr(key).encode())
            _hash_item(h, item[key])
        h.update(b")")
    elif item is None or isinstance(item, (bool, int, float, str)):
        h.update(f"S{type(item).__name__}:{item!r}".encode())
    else:
        raise TypeError(f"cannot fingerprint batch element of type {type(item).__name__}: use tensors")


def data_fingerprint(data: tuple[Tensor, Tensor] | Iterable[object]) -> str:
    """A content hash of a data set: sha256 over the bytes, shapes and dtypes of all tensors and the batching.

    Two data sets get the same fingerprint exactly when they hold the same values in the same batches:
    changing a single element, a dtype, the order of samples or a batch boundary changes it. A pair of tensors
    ``(X, y)`` counts as one batch, so ``data_fingerprint((X, y)) == data_fingerprint([(X, y)])``.

    Parameters
    ----------
    data:
        ``(X, y)`` tensors, or a re-iterable of batches (tuples/lists/dicts of tensors, e.g. a non-shuffling
        ``DataLoader``). A shuffling loader gives a different fingerprint every pass.

    Returns
    -------
    str
        64 hexadecimal digits.
    """
    items = [data] if _is_pair(data) else data
    if isinstance(items, (Tensor, str, bytes)) or not isinstance(items, Iterable):
        raise TypeError(f"data must be a pair of tensors (X, y) or an iterable of batches, got {type(data).__name__}")
    return fingerprint_of_batches([batch_digest(batch) for batch in items])


def batch_digest(batch: object) -> bytes:
    """sha256 of one batch's tensors (bytes, shapes, dtypes) and structure."""
    h = hashlib.sha256()
    _hash_item(h, batch)
    return h.digest()


def fingerprint_of_batches(digests: Sequence[bytes]) -> str:
    """The data fingerprint of batches from their :func:`batch_digest` values, in order.

    Data-parallel ranks hash their own batches; the digests gathered in rank order give the fingerprint of one
    process holding all the batches in that order.
    """
    h = hashlib.sha256(b"landscape.data_fingerprint/v2")
    for i, digest in enumerate(digests):
        h.update(f"B{i}".encode())
        h.update(digest)
    h.update(f"N{len(digests)}".encode())
    return h.hexdigest()


def load_tokens(path: str | os.PathLike[str]) -> Tensor:
    """Token ids of shape ``(N, T)`` from a ``.pt`` (a tensor, loaded with ``weights_only=True``) or ``.npy`` file.

    Raises
    ------
    ValueError
        The file does not hold one integer array of two dimensions, with a message naming what it holds and what
        to save instead.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"token file {str(path)!r} does not exist")
    if path.suffix == ".npy":
        try:
            ids = torch.from_numpy(np.load(path, allow_pickle=False))
        except ValueError as err:
            raise ValueError(f"{path}: not a plain numpy array file ({err}); save it with np.save(path, ids)") from err
    elif path.suffix == ".pt":
        ids = torch.load(path, map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"{path}: token files are .pt (a tensor) or .npy, of integer ids with shape (N, T)")
    if not isinstance(ids, Tensor):
        raise ValueError(f"{path} holds a {type(ids).__name__}, not a tensor: save torch.save(ids) with ids (N, T)")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(
            f"{path} holds {str(ids.dtype).replace('torch.', '')} values; token ids must be integers "
            "(save ids.long(), or np.int64)"
        )
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] < 2:
        raise ValueError(
            f"{path} holds an array of shape {tuple(ids.shape)}; token ids must have shape (N, T) with N >= 1 "
            "sequences of T >= 2 tokens (reshape a 1-D stream with ids[: N * T].reshape(N, T))"
        )
    if int(ids.min()) < 0:
        raise ValueError(f"{path} holds negative token ids (min {int(ids.min())}); ids index the vocabulary")
    return ids.long()


def token_batches(ids: Tensor, batch_size: int) -> list[dict[str, Tensor]]:
    """``{"input_ids": ...}`` batches of ``batch_size`` sequences (the last may be shorter), views of ``ids``."""
    check_counts(batch_size=batch_size)
    return [{"input_ids": ids[i : i + batch_size]} for i in range(0, len(ids), batch_size)]
