"""Multi-host sharding actually run: two JAX processes on localhost (CPU collectives over
gloo), 2 CPU devices each, for ``ntk.sharded_kernel`` and for one store worker spanning all
4 devices of both processes."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import ntk
from ntk.scale.store_read import open_kernel
from ntk.scale.store_write import store_kernel

TESTS = Path(__file__).parent

_CHILD = """
import sys
sys.path[:0] = [{tests!r}, {helpers!r}]
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_enable_x64", True)
process_id = int(sys.argv[1])
jax.distributed.initialize(
    coordinator_address="127.0.0.1:{port}", num_processes=2, process_id=process_id
)
assert jax.process_count() == 2 and len(jax.devices()) == 4, jax.devices()
assert len(jax.local_devices()) == 2

import numpy as np
from jax.experimental import multihost_utils
import ntk
from test_store import _problem

out = {out!r}
apply_fn, params, x1, x2 = _problem(10, 6)
for name, b in (("sym", None), ("cross", x2)):
    k = ntk.sharded_kernel(apply_fn, params, x1, b, kind="entk")
    assert not k.is_fully_addressable or k.sharding.is_fully_replicated
    full = np.asarray(multihost_utils.process_allgather(k, tiled=True))
    if process_id == 0:
        np.save(f"{{out}}/sharded_{{name}}.npy", full)
# one worker of the store, spanning the 4 devices of both processes
ntk.store_kernel(apply_fn, params, x1, path=f"{{out}}/store", kind="entk", block_size=4,
                 devices=jax.devices(), progress=False)
print("ok", process_id, flush=True)
jax.distributed.shutdown()
"""

pytestmark = pytest.mark.slow  # spawns processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed")
    script = out / "child.py"
    script.write_text(
        textwrap.dedent(
            _CHILD.format(
                tests=str(TESTS), helpers=str(TESTS.parent), port=_free_port(), out=str(out)
            )
        )
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 240
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic())))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, (stdout, stderr)) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0 and f"ok {i}" in stdout, stderr[-3000:]
    return out


@pytest.mark.parametrize("name", ["sym", "cross"])
def test_sharded_kernel_on_two_processes(two_processes, name):
    from test_store import _problem

    apply_fn, params, x1, x2 = _problem(10, 6)
    got = np.load(two_processes / f"sharded_{name}.npy")
    want = np.asarray(ntk.entk(apply_fn, params, x1, None if name == "sym" else x2))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    if name == "sym":
        np.testing.assert_array_equal(got, got.transpose(1, 0, 3, 2))


def test_store_worker_spanning_two_processes(two_processes, tmp_path):
    from test_store import _problem

    apply_fn, params, x1, _ = _problem(10, 6)
    got = open_kernel(two_processes / "store")
    ref = store_kernel(
        apply_fn, params, x1, path=tmp_path, kind="entk", block_size=4, progress=False
    )
    # each device computed 1 row of a 4-row block (not the 4-row block of one device), so
    # equal to round-off, not bitwise; exactly symmetric all the same
    full = np.asarray(got)
    np.testing.assert_allclose(full, np.asarray(open_kernel(ref)), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(full, full.transpose(1, 0, 3, 2))
    # the blocks were gathered and written by one process (the worker's lowest)
    records = [json.loads(p.read_text()) for p in (two_processes / "store" / "done").iterdir()]
    assert len(records) == 6 and len({r["pid"] for r in records}) == 1
