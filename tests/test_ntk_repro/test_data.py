"""Data: the embedded loaders, subsets, layouts, and a real tiny TFDS dataset built in tmp_path."""

import os
import random
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ntk_repro.data import LOADERS, load_dataset, reshape_for, stratified_subset


def test_digits_shapes_dtypes_and_split():
    ds = load_dataset("digits")
    assert ds.x_train.shape == (1437, 8, 8, 1) and ds.x_test.shape == (360, 8, 8, 1)
    assert ds.y_train.shape == (1437,) and ds.y_test.shape == (360,)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.num_classes == 10 and ds.sample_shape == (8, 8, 1) and ds.input_shape == (8, 8, 1)
    assert set(np.unique(ds.y_train)) == set(range(10))
    # standardised with the train statistics
    assert abs(float(ds.x_train.mean())) < 1e-5
    assert abs(float(ds.x_train.std()) - 1.0) < 1e-4
    assert abs(float(ds.x_test.mean())) > 1e-6  # test data uses train stats, not its own


def test_digits_split_is_deterministic_in_seed():
    a, b, c = (load_dataset("digits", seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_train, c.y_train)


def test_flatten_and_one_hot():
    ds = load_dataset("digits", flatten=True, one_hot=True, n_train=20, n_test=10)
    assert ds.x_train.shape == (20, 64) and ds.sample_shape == (8, 8, 1)
    assert ds.y_train.shape == (20, 10) and ds.y_train.dtype == np.float32
    np.testing.assert_array_equal(ds.y_train.sum(axis=1), np.ones(20, np.float32))


def test_class_subset_is_relabelled():
    full = load_dataset("digits")
    ds = load_dataset("digits", classes=[7, 3])
    assert ds.num_classes == 2
    assert set(np.unique(ds.y_train)) == {0, 1}
    assert len(ds.y_train) == int(np.sum(np.isin(full.y_train, [7, 3])))
    # class 7 -> 0: the relabelled set has exactly as many zeros as the original had sevens
    assert int(np.sum(ds.y_train == 0)) == int(np.sum(full.y_train == 7))


def test_subset_sizes_and_determinism():
    a = load_dataset("digits", n_train=100, n_test=30, seed=3)
    b = load_dataset("digits", n_train=100, n_test=30, seed=3)
    assert a.x_train.shape == (100, 8, 8, 1) and a.x_test.shape == (30, 8, 8, 1)
    np.testing.assert_array_equal(a.x_train, b.x_train)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_train": 0}, r"n_train: must be an int in \[1, 1437\], got 0"),
        ({"n_test": 5000}, r"n_test: must be an int in \[1, 360\], got 5000"),
        ({"classes": [3, 3]}, "classes: must be distinct"),
        ({"classes": [10]}, r"classes: must lie in \[0, 10\)"),
        ({"bogus": 1}, "dataset 'digits': unknown option"),
    ],
)
def test_bad_subsets_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_dataset("digits", **kwargs)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match=r"dataset: unknown value 'imagenet'; valid: \['cifar10'"):
        load_dataset("imagenet")


def test_mnist1d_is_local_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np_state, py_state = np.random.get_state(), random.getstate()
    ds = load_dataset("mnist1d")
    assert ds.x_train.shape == (4000, 40, 1) and ds.x_test.shape == (1000, 40, 1)
    assert ds.num_classes == 10 and ds.x_train.dtype == np.float32
    assert os.listdir(tmp_path) == []
    # mnist1d reseeds the global RNGs; the loader puts them back
    assert np.array_equal(np.random.get_state()[1], np_state[1])
    assert random.getstate() == py_state
    assert reshape_for(ds, "flat").x_train.shape == (4000, 40)


def test_synthetic_teacher_labels():
    kw = {"dim": 6, "train_size": 200, "test_size": 50, "num_classes": 3, "teacher": "linear"}
    ds = load_dataset("synthetic", **kw)
    again = load_dataset("synthetic", **kw)
    assert ds.x_train.shape == (200, 6) and ds.sample_shape == (6,) and ds.num_classes == 3
    np.testing.assert_array_equal(ds.y_train, again.y_train)
    assert set(np.unique(ds.y_train)) == {0, 1, 2}
    # a linear teacher is recovered by a least-squares fit on the train set
    x_tr = np.concatenate([ds.x_train, np.ones((200, 1), np.float32)], axis=1)
    w, *_ = np.linalg.lstsq(x_tr, np.eye(3)[ds.y_train], rcond=None)
    x_te = np.concatenate([ds.x_test, np.ones((50, 1), np.float32)], axis=1)
    assert np.mean(np.argmax(x_te @ w, axis=1) == ds.y_test) > 0.7
    with pytest.raises(ValueError, match="teacher: unknown value 'oracle'"):
        load_dataset("synthetic", teacher="oracle")


def test_reshape_for_model_families():
    ds = load_dataset("digits", n_train=10, n_test=10)
    assert reshape_for(ds, "flat").x_train.shape == (10, 64)
    assert reshape_for(reshape_for(ds, "flat"), "spatial").x_train.shape == (10, 8, 8, 1)
    flat = load_dataset("synthetic", dim=5, train_size=10, test_size=5)
    with pytest.raises(ValueError, match=r"model 'cnn' needs .* dataset 'synthetic' has flat"):
        reshape_for(flat, "spatial", model="cnn")


def test_stratified_subset():
    y = load_dataset("digits").y_test
    idx = stratified_subset(y, n_per_class=4, seed=1)
    assert idx.shape == (40,)
    assert len(set(idx.tolist())) == 40
    np.testing.assert_array_equal(y[idx], np.repeat(np.arange(10), 4))
    np.testing.assert_array_equal(idx, stratified_subset(y, 4, seed=1))
    assert not np.array_equal(idx, stratified_subset(y, 4, seed=2))
    with pytest.raises(ValueError, match="n_per_class: class 0 has only"):
        stratified_subset(y, n_per_class=1000)


# --- TFDS: a real tiny dataset, prepared without TensorFlow -------------------------------


class TinyMnist(tfds.core.GeneratorBasedBuilder):
    """28x28x1 uint8 images and 10-class labels; array_record needs no TensorFlow."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(30, 0), "test": self._generate_examples(12, 1)}

    def _generate_examples(self, n, seed):
        for i, (image, label) in enumerate(zip(*_tiny_examples(n, seed), strict=True)):
            yield i, {"image": image, "label": int(label)}


def _tiny_examples(n, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
    return images, np.arange(n) % 10


@pytest.fixture(scope="module")
def tiny_tfds_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    TinyMnist(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return data_dir


def _canonical(x, y):
    """Examples as a sorted list of (label, image bytes): TFDS shuffles the record order."""
    return sorted((int(label), image.tobytes()) for image, label in zip(x, y, strict=True))


def test_tfds_tiny_dataset_loads_through_the_mnist_loader(tiny_tfds_dir):
    ds = load_dataset(
        "mnist", data_dir=tiny_tfds_dir, tfds_name="tiny_mnist", normalize=False, n_test=None
    )
    assert ds.x_train.shape == (30, 28, 28, 1) and ds.x_test.shape == (12, 28, 28, 1)
    assert ds.num_classes == 10 and ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    images, labels = _tiny_examples(30, 0)
    pixels = np.rint(ds.x_train * 255.0).astype(np.uint8)
    assert _canonical(pixels, ds.y_train) == _canonical(images, labels)
    normed = load_dataset("mnist", data_dir=tiny_tfds_dir, tfds_name="tiny_mnist", classes=[1, 2])
    assert normed.num_classes == 2 and len(normed.y_train) == 6
    assert abs(float(normed.x_train.mean())) < 1e-5


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_tfds_missing_data_dir_fails_fast_with_instructions(name, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"TFDS dataset '{name}' needs a data directory"):
        load_dataset(name)
    with pytest.raises(FileNotFoundError) as info:
        load_dataset(name, data_dir=tmp_path / "nowhere")
    message = str(info.value)
    assert f"no prepared TFDS dataset '{name}'" in message
    assert "pip install tensorflow-cpu tensorflow-datasets" in message
    assert f"tfds.data_source('{name}', data_dir='DIR', download=True)" in message
    assert "data.data_dir=DIR" in message
    assert not (tmp_path / "nowhere").exists()


def test_every_registered_dataset_has_a_config_and_unknown_names_fail():
    conf = Path(__file__).resolve().parents[2] / "conf" / "data"
    assert set(LOADERS) == {p.stem for p in conf.glob("*.yaml")}
    with pytest.raises(ValueError, match=r"dataset: unknown value 'digitz'.*'digits'"):
        load_dataset("digitz")


def test_mnist5k_is_real_mnist_split_stratified():
    ds = load_dataset("mnist5k")
    assert ds.x_train.shape == (4000, 28, 28, 1) and ds.x_test.shape == (1000, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert np.bincount(ds.y_test, minlength=10).tolist() == [100] * 10  # 500 per class, 20 %
    np.testing.assert_allclose(ds.x_train.mean(), 0.0, atol=1e-4)  # standardised
    small = load_dataset("mnist5k", image_size=16, n_train=50, n_test=20)
    assert small.x_train.shape == (50, 16, 16, 1) and small.x_test.shape == (20, 16, 16, 1)
