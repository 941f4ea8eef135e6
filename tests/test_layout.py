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


PACKAGES = ("ntk", "ntk_repro", "benchmarks")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def _imports() -> dict[str, list[tuple[str, list[str]]]]:
    """``{module: [(imported module, [names])]}`` for every module of the three packages."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            found = []
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found += [(a.name, []) for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.append((node.module, [a.name for a in node.names]))
            out[_module_name(path)] = found
    return out


def _package(module: str) -> str:
    """The package a module belongs to (its folder), e.g. ``ntk.scale`` for
    ``ntk.scale.store_read``; a folder's ``__init__`` belongs to the folder."""
    is_pkg = (ROOT / module.replace(".", "/") / "__init__.py").exists()
    return module if is_pkg else module.rpartition(".")[0]


def test_no_module_imports_another_packages_private_names():
    mods = _imports()
    offenders = []
    for mod, found in mods.items():
        for target, names in found:
            if target.split(".")[0] not in PACKAGES:
                continue
            privates = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if target.rpartition(".")[2].startswith("_") and target in mods:
                privates.append(target)  # a private module
            if privates and _package(target) != _package(mod):
                offenders.append(f"{mod} <- {target}: {privates}")
    assert not offenders, offenders


def test_no_import_cycle_between_packages_and_benchmarks_outside_the_study():
    """Imports at module level run one way: benchmarks -> study -> library (folders as
    nodes; a cycle between two folders of one package fails too)."""
    mods = _imports()
    edges: dict[str, set[str]] = {}
    for mod, found in mods.items():
        for target, _ in found:
            if (
                target.split(".")[0] in PACKAGES
                and target in mods
                or _package(target) in {_package(m) for m in mods}
            ):
                a, b = _package(mod), _package(target)
                if a != b and not a.startswith(b + ".") and not b.startswith(a + "."):
                    edges.setdefault(a, set()).add(b)
    assert not any(
        b.startswith("benchmarks") for a in edges for b in edges[a] if a.startswith("ntk")
    )

    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in edges.get(node, ()):
                if nxt == start:
                    return path + [nxt]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    cycles = [c for c in (cycle_from(n) for n in edges) if c]
    assert not cycles, cycles
    assert not list((ROOT / "ntk_repro").glob("bench*.py"))  # the benchmarks live outside
    assert (ROOT / "conf" / "train.yaml").exists() and not (ROOT / "ntk_repro" / "conf").exists()


def test_no_import_cycle_between_modules():
    """Module-level and function-local imports alike (``from pkg import submodule`` is an
    edge to the submodule, not to the package's ``__init__``)."""
    mods = _imports()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for mod, found in mods.items():
        for target, names in found:
            subs = [n for n in names if f"{target}.{n}" in mods]
            edges[mod].update(f"{target}.{n}" for n in subs)
            if target in mods and target != mod and (not names or len(subs) < len(names)):
                edges[mod].add(target)
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return None
        for nxt in sorted(edges[node]):
            found = visit(nxt, path + [node])
            if found:
                return found
        done.add(node)
        return None

    cycles = [c for c in (visit(m, []) for m in sorted(mods)) if c]
    assert not cycles, cycles[0]
