"""Row-sharded kernels over 4 host devices (in a subprocess) equal the one-device kernel."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _models import MODELS, inputs

import ntk
from ntk.scale.sharding import make_mesh, sharded_kernel

TESTS = Path(__file__).parent

# The child computes on 4 forced host devices and saves its results; the parent (one device)
# compares them with its own ntk.kernel.
_CHILD = """
import json, sys
sys.path[:0] = [{tests!r}, {helpers!r}]
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
from _models import MODELS, inputs
from ntk.scale.sharding import sharded_kernel
from ntk.scale.stream import stream_kernel
assert len(jax.devices()) == 4, jax.devices()
out, info = {{}}, {{"devices": len(jax.devices())}}
for model in ("mlp", "cnn"):
    apply_fn, params, shape = MODELS[model]()
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
    x2 = inputs(shape, 6, 1).astype(jnp.float64)
    for n in (11, 12):
        x1 = inputs(shape, n, 0).astype(jnp.float64)
        for kind in ("entk", "pntk"):
            for tag, b in (("sym", None), ("x2", x2)):
                k = sharded_kernel(apply_fn, params, x1, b, kind=kind)
                name = f"{{model}}_{{n}}_{{kind}}_{{tag}}"
                out[name] = np.asarray(k)
                info[name] = {{"spec": list(k.sharding.spec),
                               "shards": len(k.sharding.device_set)}}
    path = stream_kernel(apply_fn, params, inputs(shape, 11, 0).astype(jnp.float64),
                         out_dir={work!r} + "/" + model, kind="entk", block_size=4,
                         progress=False, devices=jax.devices())
    out[f"{{model}}_stream"] = np.load(path)
np.savez({npz!r}, **out)
print(json.dumps(info))
"""


@pytest.mark.slow
def test_sharded_over_4_host_devices_equals_one_device(tmp_path):
    npz = tmp_path / "out.npz"
    script = tmp_path / "child.py"
    script.write_text(
        textwrap.dedent(
            _CHILD.format(
                tests=str(TESTS), helpers=str(TESTS.parent), npz=str(npz), work=str(tmp_path)
            )
        )
    )
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["devices"] == 4
    got = np.load(npz)
    for model in ("mlp", "cnn"):
        apply_fn, params, shape = MODELS[model]()
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
        x2 = inputs(shape, 6, 1).astype(jnp.float64)
        for n in (11, 12):
            x1 = inputs(shape, n, 0).astype(jnp.float64)
            for kind in ("entk", "pntk"):
                for tag, b in (("sym", None), ("x2", x2)):
                    name = f"{model}_{n}_{kind}_{tag}"
                    want = np.asarray(ntk.kernel(apply_fn, params, x1, b, kind=kind))
                    np.testing.assert_allclose(got[name], want, rtol=1e-12, atol=1e-13)
                    if n == 12:  # divisible: the result stays sharded by rows on 4 devices
                        assert info[name] == {"spec": ["rows"], "shards": 4}
                    if tag == "sym":
                        axes = (1, 0, 3, 2) if kind == "entk" else (1, 0)
                        np.testing.assert_array_equal(got[name], np.transpose(got[name], axes))
        want = np.asarray(ntk.entk(apply_fn, params, inputs(shape, 11, 0).astype(jnp.float64)))
        np.testing.assert_allclose(got[f"{model}_stream"], want, rtol=1e-12, atol=1e-13)


def test_one_device_in_process():
    apply_fn, params, shape = MODELS["resblock"]()
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
    x = inputs(shape, 7, 0).astype(jnp.float64)
    got = sharded_kernel(apply_fn, params, x, kind="diagonal")
    want = ntk.kernel(apply_fn, params, x, kind="diagonal")
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12, atol=1e-13)


def test_bad_devices():
    with pytest.raises(ValueError, match="empty device list"):
        make_mesh([])
    d = jax.devices()[0]
    with pytest.raises(ValueError, match="duplicates"):
        make_mesh([d, d])
