"""Streamed kernels: equal to the in-memory kernel, resumable after SIGKILL, refuse mismatches."""

import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _models import MODELS, inputs

import ntk
from ntk.scale.blocks import block_grid
from ntk.scale.stream import PROGRESS_FILE, PROGRESS_LOG, npy_layout, read_progress, stream_kernel

TESTS = Path(__file__).parent


@functools.cache
def case():
    apply_fn, params, shape = MODELS["mlp"]()
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
    x1 = inputs(shape, 11, 0).astype(jnp.float64)
    x2 = inputs(shape, 7, 1).astype(jnp.float64)
    return apply_fn, params, x1, x2


@pytest.mark.parametrize("kind", ["pntk", "entk", "diagonal"])
@pytest.mark.parametrize("with_x2", [False, True])
@pytest.mark.parametrize("block_size", [3, 4, 16])
def test_stream_equals_kernel(tmp_path, kind, with_x2, block_size):
    apply_fn, params, x1, x2 = case()
    x2 = x2 if with_x2 else None
    path = stream_kernel(
        apply_fn,
        params,
        x1,
        x2,
        out_dir=tmp_path,
        kind=kind,
        block_size=block_size,
        progress=False,
    )
    got = np.load(path, mmap_mode="r")
    want = np.asarray(ntk.kernel(apply_fn, params, x1, x2, kind=kind))
    assert got.shape == want.shape and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    if x2 is None:  # every off-diagonal block was written with its own transpose: exact
        axes = (1, 0, 3, 2) if got.ndim == 4 else (1, 0, *range(2, got.ndim))
        np.testing.assert_array_equal(got, np.transpose(got, axes))
    progress = json.loads((tmp_path / PROGRESS_FILE).read_text())
    assert progress["complete"]
    assert len(progress["done"]) == len(
        block_grid(11, 7 if with_x2 else 11, block_size, x2 is None)
    )


def test_npy_layout_matches_numpy(tmp_path):
    apply_fn, params, x1, _ = case()
    path = stream_kernel(apply_fn, params, x1, out_dir=tmp_path, block_size=5, progress=False)
    shape, dtype, offset = npy_layout(path)
    mm = np.load(path, mmap_mode="r")
    assert (shape, dtype, offset) == (mm.shape, mm.dtype, mm.offset)
    assert os.path.getsize(path) == offset + mm.nbytes


def test_rerun_of_complete_stream_computes_nothing(tmp_path):
    apply_fn, params, x1, _ = case()
    stream_kernel(apply_fn, params, x1, out_dir=tmp_path, block_size=4, progress=False)
    seen = []
    stream_kernel(
        apply_fn,
        params,
        x1,
        out_dir=tmp_path,
        block_size=4,
        progress=False,
        on_block=lambda i, j: seen.append((i, j)),
    )
    assert seen == []


_CHILD = """
import sys, time
sys.path[:0] = [{tests!r}, {helpers!r}]
import jax, jax.numpy as jnp
jax.config.update("jax_enable_x64", True)
from _models import MODELS, inputs
from ntk.scale.stream import stream_kernel
apply_fn, params, shape = MODELS["mlp"]()
params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
x1 = inputs(shape, 11, 0).astype(jnp.float64)
stream_kernel(apply_fn, params, x1, out_dir={out!r}, kind="entk", block_size=2,
              progress=False, on_block=lambda i, j: time.sleep(0.4))
"""


@pytest.mark.slow
def test_resume_after_sigkill(tmp_path):
    out = tmp_path / "k"
    script = tmp_path / "child.py"
    script.write_text(
        textwrap.dedent(_CHILD.format(tests=str(TESTS), helpers=str(TESTS.parent), out=str(out)))
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while not read_progress(out):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "child recorded no block in 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    done = read_progress(out)
    grid = block_grid(11, 11, 2, True)
    assert 1 <= len(done) < len(grid)
    assert not (out / PROGRESS_FILE).exists()  # the summary is written only when complete

    apply_fn, params, x1, _ = case()
    computed = []
    path = stream_kernel(
        apply_fn,
        params,
        x1,
        out_dir=out,
        kind="entk",
        block_size=2,
        progress=False,
        on_block=lambda i, j: computed.append((i, j)),
    )
    assert not done & set(computed)  # the completed blocks were skipped
    assert done | set(computed) == set(grid)
    assert read_progress(out) == set(grid)
    assert json.loads((out / PROGRESS_FILE).read_text())["complete"]
    want = np.asarray(ntk.entk(apply_fn, params, x1))
    np.testing.assert_allclose(np.load(path, mmap_mode="r"), want, rtol=1e-10, atol=1e-12)


def test_mismatched_resume_is_refused(tmp_path):
    apply_fn, params, x1, x2 = case()
    stream_kernel(apply_fn, params, x1, out_dir=tmp_path, block_size=4, progress=False)
    other = jax.tree_util.tree_map(lambda a: a * 1.01, params)
    with pytest.raises(ValueError, match=r"Differing keys: \['params_sha256'\]"):
        stream_kernel(apply_fn, other, x1, out_dir=tmp_path, block_size=4, progress=False)
    with pytest.raises(ValueError, match=r"Differing keys: \['block_size'\]"):
        stream_kernel(apply_fn, params, x1, out_dir=tmp_path, block_size=5, progress=False)
    with pytest.raises(ValueError, match="kind"):
        stream_kernel(
            apply_fn, params, x1, out_dir=tmp_path, kind="entk", block_size=4, progress=False
        )
    with pytest.raises(ValueError, match="x2_sha256"):
        stream_kernel(apply_fn, params, x1, x2, out_dir=tmp_path, block_size=4, progress=False)


def test_bad_inputs(tmp_path):
    apply_fn, params, x1, _ = case()
    with pytest.raises(ValueError, match="block_size"):
        stream_kernel(apply_fn, params, x1, out_dir=tmp_path, block_size=0, progress=False)
    with pytest.raises(TypeError, match="block_size"):
        stream_kernel(apply_fn, params, x1, out_dir=tmp_path, block_size=2.5, progress=False)
    with pytest.raises(ValueError, match="kind"):
        stream_kernel(apply_fn, params, x1, out_dir=tmp_path, kind="nope", progress=False)
    stray = tmp_path / "stray"
    stray.mkdir()
    np.save(stray / "kernel.npy", np.zeros(3))
    with pytest.raises(ValueError, match="no meta.json"):
        stream_kernel(apply_fn, params, x1, out_dir=stray, progress=False)
    np.testing.assert_array_equal(np.load(stray / "kernel.npy"), np.zeros(3))  # untouched


def test_concurrent_use_is_refused(tmp_path):
    import fcntl

    apply_fn, params, x1, _ = case()
    with open(tmp_path / ".lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        with pytest.raises(RuntimeError, match="in use"):
            stream_kernel(apply_fn, params, x1, out_dir=tmp_path, progress=False)


def test_kind_options_are_recorded(tmp_path):
    apply_fn, params, x1, _ = case()
    key = jax.random.key(3)
    path = stream_kernel(
        apply_fn,
        params,
        x1,
        out_dir=tmp_path,
        kind="random_projection",
        block_size=4,
        progress=False,
        key=key,
        n_projections=2,
    )
    want = ntk.kernel(apply_fn, params, x1, kind="random_projection", key=key, n_projections=2)
    np.testing.assert_allclose(np.load(path), np.asarray(want), rtol=1e-10, atol=1e-12)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["kind_options"]["n_projections"] == 2
    assert set(meta["kind_options"]["key"]) == {"sha256"}
    with pytest.raises(ValueError, match=r"Differing keys: \['kind_options'\]"):
        stream_kernel(
            apply_fn,
            params,
            x1,
            out_dir=tmp_path,
            kind="random_projection",
            block_size=4,
            progress=False,
            key=jax.random.key(4),
            n_projections=2,
        )


def test_progress_is_appended_not_rewritten(tmp_path):
    """Recording a block appends one line: the cost per block does not grow with the grid."""
    apply_fn, params, x1, _ = case()
    sizes = []
    stream_kernel(
        apply_fn,
        params,
        x1,
        out_dir=tmp_path,
        block_size=2,
        progress=False,
        on_block=lambda i, j: sizes.append((tmp_path / PROGRESS_LOG).stat().st_size),
    )
    grid = block_grid(11, 11, 2, True)
    lines = (tmp_path / PROGRESS_LOG).read_text().splitlines()
    assert lines == [f"{i} {j}" for i, j in grid]
    assert sizes == list(np.cumsum([len(line) + 1 for line in lines]))
    # a torn last line (a writer killed mid-append) is ignored; the block is redone
    with open(tmp_path / PROGRESS_LOG, "a") as f:
        f.write("9 9")
    assert read_progress(tmp_path) == set(grid)
