"""ntk.kernel_fn: built once, state as arguments, pytree inputs, any callable, one compile."""

import dataclasses
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _compiles import count_backend_compiles
from _models import MODELS, inputs, reference_entk

import ntk
from ntk.kernels import estimates
from ntk.kernels.implementations import jaxpr_cost

IMPLS = ["jacobian", "ntk_vp", "structured", "auto"]


class BNNet(nn.Module):
    """Dense -> BatchNorm -> tanh -> Dense: eval-mode BatchNorm reads batch_stats."""

    @nn.compact
    def __call__(self, x, train: bool):
        h = nn.Dense(16)(x)
        h = nn.BatchNorm(use_running_average=not train)(h)
        return nn.Dense(3)(jnp.tanh(h))


def _bn_checkpoints(n=5):
    net = BNNet()
    x = inputs((5,), 6, 0)
    variables = net.init(jax.random.key(0), x, train=False)
    variables = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), variables)
    out = []
    for c in range(n):
        scale = 1.0 + 0.3 * c
        params = jax.tree_util.tree_map(lambda a, s=scale: a * s, variables["params"])
        stats = jax.tree_util.tree_map(lambda a, c=c: a + 0.1 * c + 0.5, variables["batch_stats"])
        out.append((params, stats))
    return net, variables, x, out


@pytest.mark.parametrize("implementation", IMPLS)
def test_checkpoints_compile_once_and_are_exact(implementation):
    net, variables, x, checkpoints = _bn_checkpoints()
    apply_fn, _ = ntk.from_linen(net, variables, train=False)
    fn = ntk.kernel_fn(apply_fn, kind="entk", implementation=implementation)
    x2 = x[:4] + 0.5
    fn(*checkpoints[0][:1], x, x2, batch_stats=checkpoints[0][1])  # the one compile
    for params, stats in checkpoints:
        with count_backend_compiles() as n:
            got = fn(params, x, x2, batch_stats=stats)
        assert n[0] == 0, f"{n[0]} backend compiles at a new checkpoint"

        def closed(p, a, stats=stats):
            return net.apply({"params": p, "batch_stats": stats}, a, train=False)

        np.testing.assert_allclose(got, reference_entk(closed, params, x, x2), rtol=1e-9)


def test_apply_kwargs_are_not_differentiated():
    """A dynamic kwarg scales the output: the kernel moves like scale², it is not a param."""
    f = lambda p, x, scale: scale * jnp.tanh(x @ p["w"])
    p = {"w": inputs((3,), 3, 1)}
    x = inputs((3,), 5, 2)
    fn = ntk.kernel_fn(f, kind="pntk")
    k1 = fn(p, x, scale=jnp.asarray(1.0))
    with count_backend_compiles() as n:
        k3 = fn(p, x, scale=jnp.asarray(3.0))
    assert n[0] == 0
    np.testing.assert_allclose(k3, 9.0 * k1, rtol=1e-12)


def test_static_kwargs_and_unhashable_kwarg_error():
    f = lambda p, x, act="tanh": getattr(jnp, act)(x @ p["w"])
    p = {"w": inputs((2,), 3, 1)}
    x = inputs((3,), 4, 2)
    fn = ntk.kernel_fn(f)
    for act in ("tanh", "sin"):
        want = reference_entk(lambda q, a, act=act: f(q, a, act), p, x)
        np.testing.assert_allclose(fn(p, x, act=act), want, rtol=1e-10)
    with pytest.raises(TypeError, match=r"apply_kwargs: act=set is neither"):
        fn(p, x, act={"tanh"})


@dataclasses.dataclass(eq=True)
class EqModel:
    """eq=True dataclass holding an array: unhashable, as an Equinox module often is."""

    shift: jax.Array

    def __call__(self, p, x):
        return jnp.tanh(x @ p["w1"] + self.shift[None]) @ p["w2"]


def test_unhashable_callable():
    model = EqModel(jnp.linspace(-1.0, 1.0, 8))
    with pytest.raises(TypeError):
        hash(model)
    p = {"w1": inputs((8,), 5, 1) / 2, "w2": inputs((3,), 8, 2) / 3}
    x = inputs((5,), 4, 3)
    want = reference_entk(model, p, x)
    for impl in IMPLS:
        np.testing.assert_allclose(ntk.kernel_fn(model, implementation=impl)(p, x), want, rtol=1e-9)
        np.testing.assert_allclose(ntk.entk(model, p, x, implementation=impl), want, rtol=1e-9)


def _token_model():
    k = jax.random.split(jax.random.key(3), 3)
    p = {
        "emb": jax.random.normal(k[0], (11, 6)),
        "w": jax.random.normal(k[1], (6, 6)) / 3,
        "out": jax.random.normal(k[2], (6, 4)) / 3,
    }

    def f(p, batch):
        h = jnp.tanh(p["emb"][batch["tokens"]] @ p["w"])  # [N, L, 6]
        m = batch["mask"][..., None]
        return (h * m).sum(1) / m.sum(1) @ p["out"]

    def data(n, seed):
        r = np.random.default_rng(seed)
        tokens = r.integers(0, 11, (n, 7))
        mask = (np.arange(7)[None] < r.integers(2, 8, (n, 1))).astype(np.float64)
        return {"tokens": jnp.asarray(tokens), "mask": jnp.asarray(mask)}

    return f, p, data


@pytest.mark.parametrize("implementation", IMPLS)
@pytest.mark.parametrize("batch_size", [None, 2])
def test_pytree_inputs(implementation, batch_size):
    f, p, data = _token_model()
    b1, b2 = data(5, 0), data(3, 1)

    def flat(q, x):  # the same model on one float array, for the reference
        tokens, mask = x[:, :7].astype(jnp.int32), x[:, 7:]
        return f(q, {"tokens": tokens, "mask": mask})

    def cat(b):
        return jnp.concatenate([b["tokens"].astype(jnp.float64), b["mask"]], axis=1)

    fn = ntk.kernel_fn(f, implementation=implementation, batch_size=batch_size)
    np.testing.assert_allclose(fn(p, b1, b2), reference_entk(flat, p, cat(b1), cat(b2)), 1e-9)
    np.testing.assert_allclose(fn(p, b1), reference_entk(flat, p, cat(b1)), rtol=1e-9)
    pn = ntk.kernel_fn(f, kind="pntk", implementation=implementation, batch_size=batch_size)
    want = reference_entk(flat, p, cat(b1)).sum((2, 3)) / 4
    np.testing.assert_allclose(pn(p, b1), want, rtol=1e-9)


def test_pytree_input_errors():
    f, p, data = _token_model()
    b = data(4, 0)
    fn = ntk.kernel_fn(f)
    bad = {"tokens": b["tokens"], "mask": b["mask"][:3]}
    with pytest.raises(ValueError, match=r"x1: leaves must share the leading batch axis"):
        fn(p, bad)
    other = {"tokens": b["tokens"][:, :5], "mask": b["mask"][:, :5]}
    with pytest.raises(ValueError, match=r"x1 and x2: per-example shapes differ"):
        fn(p, b, other)


def test_inside_callers_jit():
    f, params, shape = MODELS["mlp"]()
    x = inputs(shape, 4, 0)
    fn = ntk.kernel_fn(f, kind="pntk")
    got = jax.jit(lambda q, a: fn(q, a))(params, x)
    np.testing.assert_allclose(got, reference_entk(f, params, x).sum((2, 3)) / 3, rtol=1e-9)
    g = jax.jit(lambda q, a: fn(q, a).sum())
    np.testing.assert_allclose(g(params, x), got.sum(), rtol=1e-12)


def test_kernel_fn_argument_errors():
    f, params, shape = MODELS["mlp"]()
    with pytest.raises(ValueError, match=r"kind: unknown value 'ntkk'"):
        ntk.kernel_fn(f, kind="ntkk")
    with pytest.raises(ValueError, match=r"implementation: unknown value"):
        ntk.kernel_fn(f, implementation="fast")
    with pytest.raises(TypeError, match=r"kind_options: \['logit'\].*kind='pntk'"):
        ntk.kernel_fn(f, kind="pntk", logit=1)
    with pytest.raises(TypeError, match=r"apply_fn: expected a callable"):
        ntk.kernel_fn("f")
    fn = ntk.kernel_fn(f)
    with pytest.raises(ValueError, match=r"params\['w1'\]: contains NaN"):
        fn({**params, "w1": params["w1"] * jnp.nan}, inputs(shape, 3, 0))


def test_equinox_adapter():
    eqx = pytest.importorskip("equinox")
    model = eqx.nn.MLP(5, 3, 8, 2, activation=jnp.tanh, key=jax.random.key(0))
    model = jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, model
    )
    apply_fn, params = ntk.from_equinox(model)
    x = inputs((5,), 4, 0)
    want = reference_entk(apply_fn, params, x)
    np.testing.assert_allclose(want[0, 0], want[0, 0].T, rtol=1e-12)
    for impl in IMPLS:
        np.testing.assert_allclose(ntk.entk(apply_fn, params, x, implementation=impl), want, 1e-9)
    # Equinox modules holding arrays are unhashable: usable directly as apply_fn too.
    direct = lambda p, a: jax.vmap(eqx.combine(p, eqx.partition(model, eqx.is_inexact_array)[1]))(a)
    np.testing.assert_allclose(ntk.entk(direct, params, x), want, rtol=1e-9)


def test_nnx_scan_with_batchnorm_and_dropout():
    from flax import nnx

    class Block(nnx.Module):
        def __init__(self, d, rngs):
            self.lin = nnx.Linear(d, d, rngs=rngs, param_dtype=jnp.float64)
            self.bn = nnx.BatchNorm(d, rngs=rngs, param_dtype=jnp.float64)
            self.drop = nnx.Dropout(0.2, rngs=rngs)

        def __call__(self, x):
            return self.drop(jnp.tanh(self.bn(self.lin(x))))

    class Stack(nnx.Module):
        def __init__(self, d, n, rngs):
            @nnx.split_rngs(splits=n)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def create(rngs):
                return Block(d, rngs)

            self.blocks = create(rngs)
            self.out = nnx.Linear(d, 3, rngs=rngs, param_dtype=jnp.float64)

        def __call__(self, x):
            @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
            def step(h, block):
                return block(h)

            return self.out(step(x, self.blocks))

    model = Stack(6, 3, nnx.Rngs(0))
    model.eval()
    apply_fn, params = ntk.from_nnx(model)
    x = inputs((6,), 4, 0)
    want = reference_entk(apply_fn, params, x)
    for impl in IMPLS:
        np.testing.assert_allclose(ntk.entk(apply_fn, params, x, implementation=impl), want, 1e-9)
    # New BatchNorm statistics as a traced argument: no recompile, and they matter.
    _, _, state = nnx.split(model, nnx.Param, ...)
    fn = ntk.kernel_fn(apply_fn)
    np.testing.assert_allclose(fn(params, x, state=state), want, rtol=1e-9)
    shifted = jax.tree_util.tree_map(
        lambda a: a + 0.5 if jnp.issubdtype(a.dtype, jnp.floating) else a, state
    )
    with count_backend_compiles() as n:
        moved = fn(params, x, state=shifted)
    assert n[0] == 0
    assert np.abs(np.asarray(moved) - want).max() > 1e-3


# --- auto's FLOP model under control flow -----------------------------------------------------


def _stack_flops(kind):
    d, depth = 16, 10
    ws = jnp.ones((depth, d, d)) / d
    w = jnp.ones((d, d)) / d
    x = jnp.ones((1, d))
    if kind == "unrolled":
        fn = lambda x: [x := jnp.tanh(x @ ws[i]) for i in range(depth)][-1]
    elif kind == "scan":
        fn = lambda x: jax.lax.scan(lambda c, wi: (jnp.tanh(c @ wi), None), x, ws)[0]
    elif kind == "fori":
        fn = lambda x: jax.lax.fori_loop(0, depth, lambda i, c: jnp.tanh(c @ w), x)
    elif kind == "cond":
        fn = lambda x: jax.lax.cond(
            x.sum() > 0, lambda c: jnp.tanh(jnp.tanh(c @ w) @ w), lambda c: c, x
        )
    else:
        fn = lambda x: jax.lax.while_loop(
            lambda c: c[1] < depth, lambda c: (jnp.tanh(c[0] @ w), c[1] + 1), (x, 0)
        )[0]
    return jaxpr_cost(jax.make_jaxpr(fn)(x).jaxpr)


def test_flop_model_control_flow():
    per_layer = 2 * 16 * 16 + 16  # one dot_general (2·MACs) and one tanh
    unrolled, exact = _stack_flops("unrolled")
    assert exact
    assert unrolled >= 10 * per_layer  # plus the slices of ws
    for kind in ("scan", "fori"):
        flops, exact = _stack_flops(kind)
        assert exact, kind
        assert 10 * per_layer <= flops <= 1.1 * unrolled, (kind, flops, unrolled)
    flops, exact = _stack_flops("cond")
    assert exact and 2 * per_layer <= flops < 3 * per_layer  # the expensive branch
    flops, exact = _stack_flops("while")
    assert not exact and per_layer <= flops < 2 * per_layer  # one trip, flagged as a bound


def test_activation_count_skips_parameter_only_values():
    """Per-example intermediates are those that depend on x: an NTK-parameterised layer's
    scaled weight c·W is computed once for the batch, and counting it per example once
    made auto's memory estimate reject structured for a wide MLP."""
    d, h = 8, 32
    w1, w2 = inputs((d, h), 1, 0)[0], inputs((h, 3), 1, 1)[0]
    params = {"w1": w1, "w2": w2}
    x = inputs((d,), 5, 2)
    plain = lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"]
    scaled = lambda p, x: jnp.tanh(x @ (p["w1"] * d**-0.5)) @ (p["w2"] * h**-0.5)
    jitted = jax.jit(scaled)  # the same through a pjit call
    models = {"plain": plain, "scaled": scaled, "jit": jitted}
    acts = {n: estimates.model_facts(f, params, x).activations for n, f in models.items()}
    assert acts["plain"] < d * h, acts
    assert acts["scaled"] == acts["jit"] == acts["plain"], acts
    # a weight-sized value that does depend on x is counted
    mixed = lambda p, x: jnp.tanh(x @ (p["w1"] * x.sum())) @ p["w2"]
    assert estimates.model_facts(mixed, params, x).activations >= acts["plain"] + d * h


def test_auto_does_not_trust_ntk_vp_on_while_loops(monkeypatch):
    from ntk.kernels.implementations import IMPLEMENTATIONS

    cheap = dataclasses.replace(IMPLEMENTATIONS["ntk_vp"], cost=lambda **_: 0.0)
    monkeypatch.setitem(IMPLEMENTATIONS, "ntk_vp", cheap)

    def f(p, x):
        h = jax.lax.while_loop(lambda c: c[1] < 3, lambda c: (jnp.tanh(c[0]), c[1] + 1), (x, 0))
        return h[0] @ p["w"]

    p = {"w": inputs((3,), 4, 0)}
    x = inputs((4,), 5, 1)
    assert estimates.choose_implementation(f, p, x, None, 3, False) != "ntk_vp"
    g = lambda p, x: jnp.tanh(x) @ p["w"]
    assert estimates.choose_implementation(g, p, x, None, 3, False) == "ntk_vp"


def test_failed_structured_analysis_warns_once(monkeypatch):
    from ntk.kernels.structured import kernel as structured

    def boom(*a, **k):
        raise RuntimeError("analysis broke")

    monkeypatch.setattr(structured, "plan_for", boom)
    f, params, shape = MODELS["mlp"]()
    f2 = lambda p, x: f(p, x)  # a callable not warned about before
    x = inputs(shape, 3, 0)
    with pytest.warns(RuntimeWarning, match=r"structured-derivatives analysis failed.*broke"):
        name = estimates.choose_implementation(f2, params, x, None, 3, False)
    assert name != "structured"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        estimates.choose_implementation(f2, params, x, None, 3, False)


def test_one_preparation_path_errors_agree():
    """kernel, kernel_fn, sharded_kernel, stream_kernel and implicit share validation."""
    import tempfile

    from test_kernel_errors import custom_vjp_model

    f, p = custom_vjp_model()
    x = jnp.ones((4, 3))
    calls = {
        "kernel": lambda: ntk.kernel(f, p, x, implementation="ntk_vp"),
        "kernel_fn": lambda: ntk.kernel_fn(f, implementation="ntk_vp")(p, x),
        "sharded": lambda: ntk.sharded_kernel(f, p, x, implementation="ntk_vp"),
        "stream": lambda: ntk.stream_kernel(
            f, p, x, out_dir=tempfile.mkdtemp(), implementation="ntk_vp", progress=False
        ),
    }
    for call in calls.values():
        with pytest.raises(TypeError, match=r"implementation='ntk_vp' needs forward-mode"):
            call()
    with pytest.raises(TypeError, match=r"forward-mode autodiff \(jax.jvp\)"):
        ntk.implicit.entk_matvec(f, p, x)
    bad = x.at[1, 2].set(jnp.nan)
    for call in (
        lambda: ntk.kernel(f, p, bad),
        lambda: ntk.kernel_fn(f)(p, bad),
        lambda: ntk.sharded_kernel(f, p, bad),
        lambda: ntk.stream_kernel(f, p, bad, out_dir=tempfile.mkdtemp(), progress=False),
        lambda: ntk.implicit.entk_matvec(f, p, bad),
    ):
        with pytest.raises(ValueError, match=r"x1: contains NaN or Inf \(shape \(4, 3\)\)"):
            call()


def test_batch_shaped_state_is_refused_not_broadcast():
    """A mask passed as apply_kwargs would be broadcast from a one-example trace."""
    f = lambda q, x, mask: (jnp.tanh(x @ q["w"]) * mask[:, None]) @ q["v"]
    p = {"w": inputs((6,), 4, 0), "v": inputs((3,), 6, 1)}
    x = inputs((4,), 5, 2)
    mask = jnp.array([1.0, 0.0, 1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match=r"apply_kwargs\['mask'\] has the batch axis \(5\)"):
        ntk.kernel_fn(f)(p, x, mask=mask)
    # the same mask as part of x is a per-example input: exact
    g = lambda q, b: f(q, b["x"], b["mask"])
    want = reference_entk(lambda q, a: f(q, a[:, :4], a[:, 4]), p, jnp.c_[x, mask])
    np.testing.assert_allclose(ntk.kernel_fn(g)(p, {"x": x, "mask": mask}), want, rtol=1e-9)


def test_array_kind_options_validate_once_and_follow_the_key(monkeypatch):
    from ntk import checks

    f, params, shape = MODELS["mlp"]()
    x = inputs(shape, 4, 0)
    calls = [0]
    real = checks.check_params
    monkeypatch.setattr(
        checks, "check_params", lambda p: (calls.__setitem__(0, calls[0] + 1), real(p))[1]
    )
    keys = [jax.random.key(i) for i in range(3)]
    got = [ntk.random_projection_ntk(f, params, x, key=k, n_projections=2) for k in keys]
    assert calls[0] == 1  # validated once for the signature
    ref = reference_entk(f, params, x)
    for k, g in zip(keys, got, strict=True):
        r = jax.random.normal(k, (2, 3), jnp.float64) / np.sqrt(3)
        want = np.einsum("ko,abop,kp->ab", r, ref, r) / 2
        np.testing.assert_allclose(g, want, rtol=1e-9)
    assert not np.allclose(got[0], got[1])


def test_linen_adapter_forwards_flags_and_rngs_per_call():
    class Drop(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            h = nn.Dropout(0.5, deterministic=not train)(nn.Dense(8)(x))
            return nn.Dense(2)(h)

    net = Drop()
    x = inputs((3,), 4, 0)
    variables = net.init(jax.random.key(0), x, train=False)
    apply_fn, params = ntk.from_linen(net, variables, train=False)
    fn = ntk.kernel_fn(apply_fn, kind="pntk")
    k_eval = fn(params, x)
    np.testing.assert_array_equal(fn(params, x, train=False), k_eval)
    # train=True with a per-call dropout key reaches module.apply
    k_a = fn(params, x, train=True, rngs={"dropout": jax.random.key(1)})
    k_b = fn(params, x, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(k_a, k_b) and not np.allclose(k_a, k_eval)


def test_numpy_bool_flags_are_static():
    f = lambda q, x, train: jnp.tanh(x @ q["w"]) * (0.5 if train else 1.0)
    p = {"w": inputs((2,), 3, 1)}
    x = inputs((3,), 4, 0)
    fn = ntk.kernel_fn(f, kind="pntk")
    np.testing.assert_allclose(fn(p, x, train=np.bool_(True)), 0.25 * fn(p, x, train=False))


def test_caches_do_not_keep_models_alive():
    """Models (and the arrays they hold) are freed once the caller drops them, even though
    ntk.kernel caches its kernel function, traces and plans per callable."""
    import gc
    import weakref

    class Holder:
        def __init__(self, i):
            self.scale = jnp.full((64, 64), 1.0 + i)

        def __call__(self, q, x):
            return jnp.tanh(x @ q["w"]) * self.scale[0, 0]

    p, x = {"w": inputs((3,), 4, 0)}, inputs((4,), 5, 1)
    refs = []
    for i, impl in enumerate(IMPLS):
        model = Holder(i)
        refs.append(weakref.ref(model))
        ntk.kernel_fn(model, implementation=impl)(p, x)
        ntk.entk(model, p, x, implementation=impl)
        del model
    gc.collect()
    assert [r() for r in refs] == [None] * len(IMPLS)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("kind", ["entk", "pntk"])
def test_auto_compiles_exactly_the_implementation_it_chose(name, kind):
    """``auto`` adds nothing to the computation: it lowers to the same program as the
    implementation ``ntk.diagnose`` reports it chose (so timing both only measures noise)."""
    import re

    apply_fn, params, shape = MODELS[name]()
    x = inputs(shape, 5, 0)
    chosen = ntk.diagnose(apply_fn, params, x, kind=kind).implementation
    assert chosen != "auto"

    def program(impl):
        text = ntk.kernel_fn(apply_fn, kind=kind, implementation=impl).lower(params, x).as_text()
        return re.sub(r"module @\S+|loc\([^)]*\)|#loc\d*( = .*)?", "", text)

    assert program("auto") == program(chosen)
    others = [i for i in IMPLS if i not in ("auto", chosen)]
    assert all(program(i) != program(chosen) for i in others)  # the comparison can fail


def test_blocked_kernels_choose_the_implementation_for_a_block():
    """With batch_size, auto chooses for the block that is computed, not for all N at once: a
    budget that the structured eNTK of N points exceeds but one of its blocks fits."""
    from ntk.kernels.estimates import implementation_estimates

    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(6, 32)), rng.normal(size=(32, 4))
    params = {"w1": jnp.asarray(w1, jnp.float32), "w2": jnp.asarray(w2, jnp.float32)}

    def f(p, x):
        return jnp.tanh(x @ p["w1"]) @ p["w2"]

    x = jnp.asarray(rng.normal(size=(64, 6)), jnp.float32)
    full = implementation_estimates(f, params, x, None, 4, False)["structured"][1]
    part = implementation_estimates(f, params, x[:8], None, 4, False)["structured"][1]
    assert part < full
    budget = (part + full) / 2
    whole = ntk.kernel_fn(f, kind="entk", memory_budget=budget)
    blocks = ntk.kernel_fn(f, kind="entk", memory_budget=budget, batch_size=8)
    assert whole.prepared(params, x, None, {})[0].implementation != "structured"
    assert blocks.prepared(params, x, None, {})[0].implementation == "structured"
    np.testing.assert_allclose(blocks(params, x), whole(params, x), rtol=2e-4, atol=1e-4)
