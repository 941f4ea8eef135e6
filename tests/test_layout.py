"""The library stands alone: ``import ntk`` needs none of the study's dependencies, and the
library never imports the study package."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY_ONLY = (
    "flax",
    "optax",
    "orbax",
    "hydra",
    "omegaconf",
    "wandb",
    "tensorflow_datasets",
    "sklearn",
    "mnist1d",
    "matplotlib",
    "yaml",
    "equinox",
    "ntk_repro",
)

_BLOCKED = f"""
import sys
BLOCKED = {STUDY_ONLY!r}

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked for this test: {{name}}")
        return None

sys.meta_path.insert(0, Block())
import jax, jax.numpy as jnp
jax.config.update("jax_enable_x64", True)
import ntk
f = lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"]
p = {{"w1": jnp.ones((3, 4)) / 2, "w2": jnp.ones((4, 2))}}
x = jnp.linspace(0.0, 1.0, 15).reshape(5, 3)
e, k = ntk.entk(f, p, x), ntk.pntk(f, p, x)
assert e.shape == (5, 5, 2, 2) and k.shape == (5, 5)
assert abs(float(k[0, 1]) - float(e[0, 1].sum()) / 2) < 1e-12
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not loaded, loaded
print("ok")
"""


def test_library_imports_without_study_dependencies():
    out = subprocess.run(
        [sys.executable, "-c", _BLOCKED], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_library_source_never_imports_the_study():
    offenders = []
    for path in sorted((ROOT / "ntk").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.relative_to(ROOT)}: {n}" for n in names if n.startswith("ntk_repro")
            ]
    assert not offenders, offenders
