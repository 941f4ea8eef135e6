"""Chunked kernel store: equal to the in-memory kernel, bit-identical across workers, resumable
after a worker is SIGKILLed mid-block, atomic chunks under concurrent writers, lazy reads."""

import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _models import MODELS, inputs

import ntk
from ntk.scale.blocks import block_grid
from ntk.scale.store_read import DONE_DIR, done_blocks, missing_blocks, open_kernel
from ntk.scale.store_write import create_store, store_kernel

TESTS = Path(__file__).parent


def _problem(n1=11, n2=None):
    """The tiny float64 MLP and inputs (module level: picklable for submitit workers)."""
    apply_fn, params, shape = MODELS["mlp"]()
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
    x1 = inputs(shape, n1, 0).astype(jnp.float64)
    x2 = None if n2 is None else inputs(shape, n2, 1).astype(jnp.float64)
    return apply_fn, params, x1, x2


@functools.cache
def case():
    apply_fn, params, x1, _ = _problem()
    _, _, _, x2 = _problem(11, 7)
    return apply_fn, params, x1, x2


@pytest.mark.parametrize("kind", ["pntk", "entk", "diagonal"])
@pytest.mark.parametrize("with_x2", [False, True])
@pytest.mark.parametrize("block_size", [3, 16])
def test_store_equals_kernel(tmp_path, kind, with_x2, block_size):
    apply_fn, params, x1, x2 = case()
    x2 = x2 if with_x2 else None
    path = store_kernel(
        apply_fn, params, x1, x2, path=tmp_path, kind=kind, block_size=block_size, progress=False
    )
    k = open_kernel(path)
    got = np.asarray(k)
    want = np.asarray(ntk.kernel(apply_fn, params, x1, x2, kind=kind))
    assert k.shape == want.shape and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    if x2 is None:  # each off-diagonal block was stored with its own transpose: exact
        axes = (1, 0, 3, 2) if got.ndim == 4 else (1, 0, *range(2, got.ndim))
        np.testing.assert_array_equal(got, np.transpose(got, axes))
    grid = block_grid(11, 7 if with_x2 else 11, block_size, x2 is None)
    assert done_blocks(path) == set(grid) and missing_blocks(path) == []
    # one zarr chunk per block (both triangles for a symmetric kernel)
    chunks = [p for p in os.listdir(path / "kernel.zarr") if not p.startswith(".")]
    n_b = (-(-11 // min(block_size, 11)), -(-(7 if with_x2 else 11) // min(block_size, 11)))
    assert len(chunks) == n_b[0] * n_b[1]


def test_workers_are_bit_identical_to_one_process(tmp_path):
    apply_fn, params, x1, _ = _problem(23)
    one = store_kernel(
        apply_fn, params, x1, path=tmp_path / "one", kind="entk", block_size=4, progress=False
    )
    seen = {}
    for w in (2, 0, 1):  # any order, any interleaving
        store_kernel(
            apply_fn, params, x1, path=tmp_path / "three", kind="entk", block_size=4,
            worker=w, n_workers=3, progress=False,
            callback=lambda e, i, j, w=w: seen.setdefault(w, []).append((e, i, j)),
        )  # fmt: skip
    grid = block_grid(23, 23, 4, True)
    for w, events in seen.items():
        mine = [b for k, b in enumerate(grid) if k % 3 == w]
        assert [(i, j) for e, i, j in events if e == "done"] == mine
        assert [e for e, _, _ in events] == ["start", "done"] * len(mine)
    a = np.asarray(open_kernel(one))
    b = np.asarray(open_kernel(tmp_path / "three"))
    assert a.tobytes() == b.tobytes()
    # the same computation as the single-file stream: same blocks, same bits
    s = ntk.stream_kernel(
        apply_fn, params, x1, out_dir=tmp_path / "npy", kind="entk", block_size=4, progress=False
    )
    assert np.load(s).tobytes() == a.tobytes()


def test_resume_recomputes_only_missing_blocks(tmp_path):
    apply_fn, params, x1, _ = case()
    store_kernel(apply_fn, params, x1, path=tmp_path, block_size=4, progress=False)
    want = np.asarray(open_kernel(tmp_path))
    os.remove(tmp_path / DONE_DIR / "0.2")  # as if its writer died before recording it
    with pytest.raises(ValueError, match="incomplete: 1 of 6 blocks missing"):
        open_kernel(tmp_path)
    assert open_kernel(tmp_path, allow_incomplete=True).shape == (11, 11)
    seen = []
    store_kernel(
        apply_fn, params, x1, path=tmp_path, block_size=4, progress=False,
        callback=lambda e, i, j: seen.append((e, i, j)),
    )  # fmt: skip
    assert seen == [("start", 0, 2), ("done", 0, 2)]
    assert np.asarray(open_kernel(tmp_path)).tobytes() == want.tobytes()


def test_mismatched_resume_is_refused(tmp_path):
    apply_fn, params, x1, x2 = case()
    store_kernel(apply_fn, params, x1, path=tmp_path, block_size=4, progress=False)
    other = jax.tree_util.tree_map(lambda a: a * 1.01, params)
    with pytest.raises(ValueError, match=r"Differing keys: \['params_sha256'\]"):
        store_kernel(apply_fn, other, x1, path=tmp_path, block_size=4, progress=False)
    with pytest.raises(ValueError, match=r"Differing keys: \['block_size', 'chunks'\]"):
        store_kernel(apply_fn, params, x1, path=tmp_path, block_size=5, progress=False)
    with pytest.raises(ValueError, match="kind"):
        create_store(apply_fn, params, x1, path=tmp_path, kind="entk", block_size=4)
    with pytest.raises(ValueError, match="x2_sha256"):
        store_kernel(apply_fn, params, x1, x2, path=tmp_path, block_size=4, progress=False)


def test_bad_inputs(tmp_path):
    apply_fn, params, x1, _ = case()
    for kwargs, err, match in [
        (dict(block_size=0), ValueError, "block_size"),
        (dict(block_size=2.5), TypeError, "block_size"),
        (dict(kind="nope"), ValueError, "kind"),
        (dict(worker=3, n_workers=3), ValueError, "worker"),
        (dict(n_workers=0), ValueError, "n_workers"),
        (dict(worker=1.0, n_workers=2), TypeError, "worker"),
        (dict(path=None), TypeError, "path"),
    ]:
        with pytest.raises(err, match=match):
            store_kernel(apply_fn, params, x1, **{"path": tmp_path / "k", **kwargs})
    stray = tmp_path / "stray"
    (stray / "kernel.zarr").mkdir(parents=True)
    with pytest.raises(ValueError, match="no meta.json"):
        store_kernel(apply_fn, params, x1, path=stray, progress=False)
    with pytest.raises(FileNotFoundError, match="not a kernel store"):
        open_kernel(tmp_path / "nothing")


def test_lazy_indexing(tmp_path):
    apply_fn, params, x1, x2 = case()
    path = store_kernel(
        apply_fn, params, x1, x2, path=tmp_path, kind="entk", block_size=3, progress=False
    )
    k = open_kernel(path)
    full = np.asarray(k)
    assert repr(k).startswith("StoredKernel(") and len(k) == 11 and k.nbytes == full.nbytes
    rows, cols = np.array([0, 4, -1]), np.array([6, 1])
    for idx in [
        (slice(2, 9), slice(None, None, 2)),
        (-1,),
        (slice(-4, None), 5, 0),
        (Ellipsis, 1),
        (rows,),
        (slice(100, 200),),
    ]:
        np.testing.assert_array_equal(k[idx], full[idx])
    np.testing.assert_array_equal(k.oindex[rows, cols], full[rows][:, cols])
    np.testing.assert_array_equal(k.rows(3, 5), full[3:5])
    np.testing.assert_array_equal(k.block(3, 2), full[9:12, 6:9])
    with pytest.raises(IndexError, match="out of bounds"):
        k[11]
    with pytest.raises(IndexError, match="block"):
        k.block(4, 0)
    out = k.to_npy(tmp_path / "k.npy", progress=False)
    assert np.load(out, mmap_mode="r").tobytes() == full.tobytes()
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.parametrize("kind", ["pntk", "entk"])
def test_matvec_eigenvalues_and_regression(tmp_path, kind):
    apply_fn, params, x1, x2 = case()
    k = open_kernel(store_kernel(apply_fn, params, x1, path=tmp_path / "k", kind=kind,
                                 block_size=4, progress=False))  # fmt: skip
    kst = open_kernel(store_kernel(apply_fn, params, x2, x1, path=tmp_path / "ks", kind=kind,
                                   block_size=4, progress=False))  # fmt: skip
    full, full_st = np.asarray(k), np.asarray(kst)
    o = 3
    mat = ntk.as_matrix(full) if kind == "entk" else full
    rng = np.random.default_rng(0)
    v = rng.standard_normal((11, o) if kind == "entk" else (11, 2))
    want = (mat @ v.reshape(-1)).reshape(11, o) if kind == "entk" else mat @ v
    np.testing.assert_allclose(k.matvec(v), want, rtol=1e-12, atol=1e-12)
    d = k.diagonal()
    np.testing.assert_array_equal(d, np.einsum("nn...->n...", full))

    eig = ntk.implicit.extreme_eigenvalues(k, k=2, tol=1e-12)
    ev = np.linalg.eigvalsh(mat)
    np.testing.assert_allclose(eig["largest"], ev[::-1][:2], rtol=1e-9)
    np.testing.assert_allclose(eig["smallest"], ev[:2], rtol=1e-6, atol=1e-9 * ev[-1])

    y = rng.standard_normal((11, o))
    direct = ntk.kernel_regression(full, full_st, y, ridge=1e-3)
    for test_k in (kst, full_st):
        cg = ntk.kernel_regression(k, test_k, y, ridge=1e-3, tol=1e-12)
        np.testing.assert_allclose(cg, direct, rtol=1e-8, atol=1e-8 * np.abs(direct).max())
    f0, f0s = rng.standard_normal((11, o)), rng.standard_normal((7, o))
    np.testing.assert_allclose(
        ntk.linearized_prediction(k, kst, y, f0, f0s, ridge=1e-3),
        ntk.linearized_prediction(full, full_st, y, f0, f0s, ridge=1e-3),
        rtol=1e-6,
        atol=1e-6,
    )
    k_xx = open_kernel(store_kernel(apply_fn, params, x1, x1, path=tmp_path / "xx", kind=kind,
                                    block_size=4, progress=False))  # fmt: skip
    with pytest.raises(ValueError, match="x2=None"):
        ntk.kernel_regression(k_xx, kst, y)
    with pytest.raises(TypeError, match="k_test_train"):
        ntk.kernel_regression(full, kst, y)
    with pytest.raises(ValueError, match="k_test_train"):
        ntk.kernel_regression(k, full_st[:, :5], y)
    with pytest.raises(TypeError, match="params, x"):
        ntk.implicit.extreme_eigenvalues(k, params)


# --- many processes ------------------------------------------------------------------------


class _DieOnce:
    """Worker callback: the worker owning ``victim``'s blocks, at the start of its second
    block, says where it is (``marker``: pid and block) and sleeps, to be SIGKILLed mid-block
    by the test. Its replacement finds the marker and does not wait."""

    def __init__(self, marker: str, victim: int, grid: list, n_workers: int):
        self.marker, self.victim, self.started = marker, victim, 0
        self.owner = {b: k % n_workers for k, b in enumerate(grid)}

    def __call__(self, event, i, j):
        if event != "start" or self.owner[(i, j)] != self.victim:
            return
        self.started += 1
        if self.started == 2 and not os.path.exists(self.marker):
            with open(self.marker + ".tmp", "w") as f:
                json.dump({"pid": os.getpid(), "block": [i, j]}, f)
            os.replace(self.marker + ".tmp", self.marker)
            time.sleep(60)


@pytest.mark.slow
def test_three_workers_one_killed_mid_block(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    from ntk.scale.workers import distribute_kernel

    monkeypatch.setenv(
        "PYTHONPATH",
        os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")]),
    )
    problem = functools.partial(_problem, 17)
    marker = str(tmp_path / "victim.json")
    killed = {}

    def killer():
        deadline = time.monotonic() + 120
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        if os.path.exists(marker):
            rec = json.loads(Path(marker).read_text())
            os.kill(rec["pid"], signal.SIGKILL)
            killed.update(rec)

    submitted = []
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    path = distribute_kernel(
        problem,
        path=tmp_path / "store",
        n_workers=3,
        kind="entk",
        block_size=3,
        poll_s=0.2,
        progress=False,
        callback=_DieOnce(marker, 1, block_grid(17, 17, 3, True), 3),
        executor=submitit.LocalExecutor(folder=tmp_path / "jobs"),
        on_submit=lambda w, job: submitted.append(w),
    )
    thread.join(timeout=5)
    assert killed, "the victim never reached its second block"
    assert sorted(submitted) == [0, 1, 1, 2]  # one replacement, for the killed worker only
    # the block the victim held was redone by its replacement (another process)
    i, j = killed["block"]
    rec = json.loads((path / DONE_DIR / f"{i}.{j}").read_text())
    assert rec["worker"] == 1 and rec["pid"] != killed["pid"]

    apply_fn, params, x1, _ = problem()
    ref = store_kernel(
        apply_fn, params, x1, path=tmp_path / "ref", kind="entk", block_size=3, progress=False
    )
    got = np.asarray(open_kernel(path))
    assert got.tobytes() == np.asarray(open_kernel(ref)).tobytes()
    np.testing.assert_allclose(
        got, np.asarray(ntk.entk(apply_fn, params, x1)), rtol=1e-10, atol=1e-12
    )


_WRITER = """
import sys, numpy as np
from pathlib import Path
from ntk.scale.store_write import _open_array
meta = {{"shape": [512, 512], "chunks": [512, 512], "dtype": "<f8"}}
arr = _open_array(Path({path!r}), meta, create=True)
value = float(sys.argv[1])
print("ready", flush=True)
for k in range(10_000):
    arr[...].write(np.full((512, 512), value + (k % 2) * 10)).result()
"""


@pytest.mark.slow
def test_concurrent_writers_never_tear_a_chunk(tmp_path):
    """Two processes rewrite the same 2 MB chunk as fast as they can while it is read; one is
    SIGKILLed mid-stream. Every read, and the final state, is one whole write."""
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(_WRITER.format(path=str(tmp_path))))
    procs = [
        subprocess.Popen([sys.executable, str(script), str(v)], stdout=subprocess.PIPE)
        for v in (1.0, 2.0)
    ]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == b"ready"
        from ntk.scale.store_read import _open_array

        meta = {"shape": [512, 512], "chunks": [512, 512], "dtype": "<f8"}
        arr = _open_array(tmp_path, meta, create=False)
        seen = set()
        t_end = time.monotonic() + 3
        while time.monotonic() < t_end:
            a = np.asarray(arr.read().result())
            assert np.all(a == a.flat[0]), "a torn chunk was read"
            seen.add(float(a.flat[0]))
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(timeout=30)
        a = np.asarray(arr.read().result())
        assert np.all(a == a.flat[0])
        assert len(seen - {0.0}) >= 2, seen  # both writers' chunks were seen
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)


def test_format_ids_are_stable():
    """Stores and streamed files written by earlier versions stay readable: the format ids
    are data, not module paths (a module move once rewrote them)."""
    from ntk.scale import store_read, stream

    assert store_read.FORMAT == "ntk.store/1" and stream.FORMAT == "ntk.stream/1"
