"""Structured derivatives: exactness on unusual models, which leaves take the fast path, and
both per-site strategies (structured sum and materialised weight Jacobian)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _compiles import count_backend_compiles
from _models import MODELS, inputs, reference_entk

import ntk
from ntk.kernels.api import clear_caches
from ntk.kernels.structured import contract as sd_contract
from ntk.kernels.structured import kernel as structured

DN_NHWC = ("NHWC", "HWIO", "NHWC")


def _p(key, *shape, scale=None):
    scale = 1.0 / math.sqrt(shape[0] if len(shape) > 1 else 1) if scale is None else scale
    return scale * jax.random.normal(jax.random.key(key), shape, jnp.float64)


def weight_used_twice():
    params = {"w": _p(0, 6, 6), "out": _p(1, 6, 3)}

    def f(p, x):
        h = jnp.tanh(x @ p["w"])
        return jnp.tanh(h @ p["w"]) @ p["out"]

    return f, params, inputs((6,), 5, 0), {"structured": {"w", "out"}}


def embedding():
    params = {"emb": _p(2, 11, 4, scale=1.0), "w": _p(3, 12, 3), "b": _p(4, 3, scale=0.1)}

    def f(p, x):
        e = p["emb"][x]  # [N, T, 4] gather
        return jnp.tanh(e.reshape(x.shape[0], -1)) @ p["w"] + p["b"][None]

    x = jax.random.randint(jax.random.key(9), (5, 3), 0, 11)
    return f, params, x, {"structured": {"emb", "w"}, "bias": {"b"}}


def scaled_transposed_weights():
    params = {"a": _p(5, 4, 7), "b": _p(6, 5, 7), "c": _p(7, 5, 3), "d": _p(8, 3, 3)}

    def f(p, x):
        h = jnp.tanh(x @ (p["a"] * 0.7))  # scaled weight
        h = jnp.tanh(h @ p["b"].T / 3.0)  # transposed and divided
        h = jnp.tanh((p["c"].T @ h.T).T)  # weight as the lhs operand
        return h @ (-p["d"])  # negated

    return f, params, inputs((4,), 5, 0), {"structured": {"a", "b", "c", "d"}}


def sequence_dense_general():
    """DenseGeneral-style einsum over [N, T, C] with a weight [C, H, D] and a bias [H, D]."""
    params = {"w": _p(10, 3, 2, 4), "bias": _p(11, 2, 4, scale=0.1), "out": _p(12, 40, 3)}

    def f(p, x):
        h = jnp.einsum("ntc,chd->nthd", x, p["w"]) + p["bias"][None, None]
        return jnp.tanh(h).reshape(x.shape[0], -1) @ p["out"]

    return f, params, inputs((5, 3), 4, 0), {"structured": {"w", "out"}, "bias": {"bias"}}


def conv_variants():
    params = {
        "strided": _p(13, 3, 3, 2, 4, scale=0.3),  # HWIO, stride 2, asymmetric padding
        "dilated": _p(14, 2, 2, 4, 4, scale=0.3),  # rhs dilation
        "transposed": _p(15, 3, 4, 2, 2, scale=0.3),  # OIHW with lhs dilation
        "depthwise": _p(16, 3, 3, 1, 3, scale=0.3),  # feature_group_count=3: per group
        "conv1d": _p(17, 3, 3, 2, scale=0.3),  # 1-D conv over the flattened width
        "out": _p(18, 4, 2),
    }

    def f(p, x):
        h = jax.lax.conv_general_dilated(
            x, p["strided"], (2, 2), ((1, 0), (0, 1)), dimension_numbers=DN_NHWC
        )
        h = jnp.tanh(h)
        h = jax.lax.conv_general_dilated(
            h, p["dilated"], (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=DN_NHWC
        )
        h = jnp.tanh(jnp.transpose(h, (0, 3, 1, 2)))  # NCHW
        h = jax.lax.conv_general_dilated(
            h,
            p["transposed"],
            (1, 1),
            ((1, 1), (0, 1)),
            lhs_dilation=(2, 2),
            dimension_numbers=("NCHW", "OIHW", "NCHW"),
        )
        h = jnp.transpose(jnp.tanh(h), (0, 2, 3, 1))  # NHWC, 3 channels
        h = jax.lax.conv_general_dilated(
            h, p["depthwise"], (2, 2), "SAME", dimension_numbers=DN_NHWC, feature_group_count=3
        )
        h = jnp.tanh(h).mean(axis=2)  # [N, H', 3]
        h = jax.lax.conv_general_dilated(
            h, p["conv1d"], (1,), "VALID", dimension_numbers=("NWC", "WIO", "NWC")
        )
        return jnp.tanh(h).reshape(h.shape[0], -1) @ p["out"]

    structured_leaves = {"strided", "dilated", "transposed", "depthwise", "conv1d", "out"}
    return f, params, inputs((9, 9, 2), 4, 0), {"structured": structured_leaves}


def nested_jit_checkpoint_and_param_product():
    params = {"w": _p(19, 4, 6), "u": _p(20, 6, 6), "v": _p(21, 6, 3), "z": _p(22, 4, 3)}

    @jax.jit
    def dense(h, w):
        return jnp.dot(h, w)

    @jax.checkpoint
    def block(h, u):
        return jnp.tanh(dense(h, u))

    def f(p, x):
        h = jax.nn.relu(dense(x, p["w"]))  # custom_jvp relu on top of a jitted dot
        h = block(h, p["u"])
        return h @ (p["u"] @ p["v"]) * 0.5 + x @ p["z"]  # u used twice; v via a param product

    return f, params, inputs((4,), 5, 0), {"structured": {"w", "u", "v", "z"}}


def flax_resnet_block():
    class Block(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            h = nn.Conv(4, (3, 3))(x)
            h = nn.BatchNorm(use_running_average=not train)(h)
            h = nn.relu(h)
            h = nn.Conv(4, (3, 3), use_bias=False)(h)
            h = nn.GroupNorm(num_groups=2)(h)
            h = nn.relu(h + nn.Conv(4, (1, 1))(x))  # projection skip
            h = nn.avg_pool(h, (2, 2), (2, 2))
            h = h.reshape(h.shape[0], -1)
            h = nn.LayerNorm()(nn.Dense(6)(h))
            return nn.Dense(3)(h)

    x = inputs((6, 6, 2), 4, 0)
    block = Block()
    variables = jax.tree_util.tree_map(
        lambda a: jnp.asarray(a, jnp.float64), block.init(jax.random.key(0), x)
    )
    variables["batch_stats"] = jax.tree_util.tree_map(lambda a: a + 0.2, variables["batch_stats"])
    f, params = ntk.from_linen(block, variables, train=False)
    return f, params, x, None


def scanned_layers():
    """Stacked weights applied by lax.scan (as nn.scan / nnx.scan do): one group per layer,
    the stacked bias folded in."""
    params = {"w": _p(23, 3, 5, 5), "b": _p(24, 3, 5, scale=0.1), "out": _p(25, 5, 3)}

    def f(p, x):
        def layer(h, wb):
            return jnp.tanh(h @ wb[0] + wb[1][None]), None

        h, _ = jax.lax.scan(layer, x, (p["w"], p["b"]))
        return h @ p["out"]

    return f, params, inputs((5,), 5, 0), {"structured": {"w", "out"}, "bias": {"b"}}


def per_head_weights_and_attention():
    """Weights with a batch (head) dim are one group per head; q/k/v projections inside
    softmax attention and a custom_vjp activation under cond and fori_loop stay structured."""

    @jax.custom_vjp
    def act(h):
        return jnp.sin(h)

    act.defvjp(lambda h: (jnp.sin(h), h), lambda h, g: (g * jnp.cos(h),))
    params = {
        "heads": _p(26, 2, 3, 4),  # [H, C, D], used with H as a dot_general batch dim
        "q": _p(27, 4, 4),
        "k": _p(28, 4, 4),
        "v": _p(29, 4, 4),
        "gain": jnp.asarray(1.3, jnp.float64),
        "out": _p(30, 8, 3),
    }

    def f(p, x):
        xh = x.reshape(x.shape[0], 2, 3)
        h = jnp.einsum("nhc,hcd->nhd", xh, p["heads"])  # [N, T=2, 4]
        q, k, v = h @ p["q"], h @ p["k"], h @ p["v"]
        a = jax.nn.softmax(jnp.einsum("ntd,nsd->nts", q, k) / 2.0, axis=-1)
        h = act(jnp.einsum("nts,nsd->ntd", a, v))
        h = jax.lax.cond(True, lambda t: t * p["gain"], lambda t: t, h)
        h = jax.lax.fori_loop(0, 2, lambda i, t: jnp.tanh(t), h)
        return h.reshape(x.shape[0], -1) @ p["out"]

    return f, params, inputs((6,), 5, 0), {"structured": {"heads", "q", "k", "v", "out"}}


def parameter_products():
    """Two different leaves meeting in one dot_general: a low-rank layer U·V, a LoRA adapter
    beside a dense weight, an outer product of two parameter vectors, a bilinear form."""
    params = {
        "U": _p(31, 6, 2),
        "V": _p(32, 2, 6),
        "W": _p(33, 6, 5),
        "A": _p(34, 6, 2),
        "B": _p(35, 2, 5),
        "u": _p(36, 5, scale=0.5),
        "v": _p(37, 3, scale=0.5),
        "M": _p(38, 3, 3),
    }

    def f(p, x):
        h = jnp.tanh(x @ (p["U"] @ p["V"]))  # low rank
        h = jnp.tanh(h @ p["W"] + (h @ p["A"]) @ p["B"])  # LoRA
        outer = jnp.outer(p["u"], p["v"])  # [5, 3]
        bilinear = jnp.einsum("i,ij,j->", p["v"], p["M"], p["v"])  # v used twice
        return jnp.tanh(h @ outer) * (1.0 + 0.1 * bilinear)

    return f, params, inputs((6,), 5, 0), None


CASES = {
    "weight_used_twice": weight_used_twice,
    "embedding": embedding,
    "scaled_transposed_weights": scaled_transposed_weights,
    "sequence_dense_general": sequence_dense_general,
    "conv_variants": conv_variants,
    "nested_jit_checkpoint_and_param_product": nested_jit_checkpoint_and_param_product,
    "flax_resnet_block": flax_resnet_block,
    "scanned_layers": scanned_layers,
    "per_head_weights_and_attention": per_head_weights_and_attention,
    "parameter_products": parameter_products,
}


def _assert_close(got, want, rtol=1e-10):
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=rtol * np.max(np.abs(want)))


@pytest.mark.parametrize("name", sorted(CASES))
def test_structured_exact_on_unusual_models(name):
    f, params, x, _ = CASES[name]()
    x2 = x[:3] + (0 if jnp.issubdtype(x.dtype, jnp.integer) else 0.5)
    ref = reference_entk(f, params, x)
    ref12 = reference_entk(f, params, x, x2)
    _assert_close(ntk.entk(f, params, x, implementation="structured"), ref)
    _assert_close(ntk.entk(f, params, x, x2, implementation="structured"), ref12)
    o = ref.shape[-1]
    _assert_close(ntk.pntk(f, params, x, x2, implementation="structured"), ref12.sum((2, 3)) / o)
    _assert_close(
        ntk.trace_ntk(f, params, x, x2, implementation="structured"),
        np.einsum("abkk->ab", ref12) / o,
    )


@pytest.mark.parametrize("name", sorted(n for n in CASES if CASES[n]()[3] is not None))
def test_which_leaves_are_structured(name):
    f, params, x, want = CASES[name]()
    plan = structured.plan_for(f, params, x, 1)
    names = list(params)  # dict leaves flatten in sorted-key order
    names.sort()
    got = {names[i] for i in plan.sites}
    biases = {names[s.bias_leaf] for s in plan.sites.values() if s.bias_leaf is not None}
    assert got == want["structured"]
    assert biases == want.get("bias", set())
    assert {names[i] for i in plan.fallback} == set(names) - got - biases


def test_test_models_take_the_fast_path():
    f, params, shape = MODELS["mlp"]()
    plan = structured.plan_for(f, params, inputs(shape, 2, 0), 3)
    names = sorted(params)
    assert {names[i] for i in plan.sites} == {"w1", "w2", "w3"}
    assert {names[s.bias_leaf] for s in plan.sites.values()} == {"b1", "b2", "b3"}
    assert plan.fallback == []
    f, params, shape = MODELS["cnn"]()
    plan = structured.plan_for(f, params, inputs(shape, 2, 0), 3)
    assert {sorted(params)[i] for i in plan.sites} == {"c1", "c2", "w"}


@pytest.mark.parametrize("force", ["structured_sum", "materialised"])
@pytest.mark.parametrize("kind", ["entk", "diagonal", "pntk"])
def test_both_site_strategies_are_exact(force, kind, monkeypatch):
    """Conv sites (S > 1) by the structured sum and by a materialised J_W (from patches when
    K > 1, from the vjp as a fallback leaf when K = 1, as for the pNTK)."""

    def fake_costs(*args, **kwargs):
        return (0.0, math.inf, 0.0) if force == "structured_sum" else (math.inf, 0.0, 0.0)

    monkeypatch.setattr(sd_contract, "site_costs", fake_costs)
    clear_caches()
    try:
        f, params, x, _ = conv_variants()
        x2 = x[:3] + 0.5
        ref = reference_entk(f, params, x, x2)
        want = {
            "entk": ref,
            "diagonal": np.einsum("abkk->abk", ref),
            "pntk": ref.sum((2, 3)) / ref.shape[-1],
        }[kind]
        got = ntk.kernel(f, params, x, x2, kind=kind, implementation="structured")
        _assert_close(got, want)
    finally:
        clear_caches()


def test_single_cotangent_materialises_by_vjp_off_the_cpu(monkeypatch):
    """Where patches are not slices (off the CPU), K = 1 turns the sites that would
    materialise J_W into fallback leaves; K > 1 keeps them, and so does the CPU."""
    f, params, x, want = conv_variants()
    plan = structured.plan_for(f, params, x, 1)
    monkeypatch.setattr(sd_contract, "site_costs", lambda *a, **k: (math.inf, 0.0, 0.0))
    monkeypatch.setattr(structured, "slice_patches", lambda: True)
    assert structured.effective_plan(plan, 4, 4, 1, False)[0] is plan
    monkeypatch.setattr(structured, "slice_patches", lambda: False)
    one, _ = structured.effective_plan(plan, 4, 4, 1, False)
    names = sorted(params)
    convs = {n for n in want["structured"] if n != "out"}
    assert {names[i] for i in one.rules} == want["structured"] - convs  # only the dense (S=1)
    assert set(one.fallback) == set(plan.fallback) | {names.index(n) for n in convs}
    assert structured.effective_plan(plan, 4, 4, 3, False)[0] is plan


def test_structured_float32_and_jit_and_no_recompile():
    f, params, shape = MODELS["cnn"]()
    p32 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)
    x = inputs(shape, 4, 0).astype(jnp.float32)
    ref = reference_entk(f, params, x.astype(jnp.float64))
    got = jax.jit(lambda p, a: ntk.entk(f, p, a, implementation="structured"))(p32, x)
    assert got.dtype == jnp.float32
    _assert_close(got, ref, rtol=1e-4)
    ntk.entk(f, p32, x, implementation="structured")
    p2, x2 = jax.tree_util.tree_map(lambda a: 2 * a, p32), x + 1
    with count_backend_compiles() as n:
        ntk.entk(f, p2, x2, implementation="structured")
    assert n[0] == 0


def test_auto_prefers_structured_for_a_wide_mlp():
    k = jax.random.split(jax.random.key(0), 3)
    params = {"w1": jax.random.normal(k[0], (16, 256)), "w2": jax.random.normal(k[1], (256, 10))}

    def f(p, x):
        return jnp.tanh(x @ p["w1"]) @ p["w2"]

    x = jax.random.normal(k[2], (16, 16))
    assert ntk.choose_implementation(f, params, x, None, 10, False) == "structured"


@pytest.mark.parametrize("implementation", ["structured", "auto"])
def test_parameter_times_parameter_all_kinds(implementation):
    """Regression: two leaves in one dot_general raised KeyError for entk, trace, diagonal."""
    f, params, x, _ = parameter_products()
    x2 = x[:3] + 0.5
    ref = reference_entk(f, params, x, x2)
    o = ref.shape[-1]
    want = {
        "entk": ref,
        "trace": np.einsum("abkk->ab", ref) / o,
        "diagonal": np.einsum("abkk->abk", ref),
        "pntk": ref.sum((2, 3)) / o,
    }
    for kind, w in want.items():
        _assert_close(ntk.kernel(f, params, x, x2, kind=kind, implementation=implementation), w)
    sym = ntk.kernel(f, params, x, kind="entk", implementation=implementation)
    _assert_close(sym, reference_entk(f, params, x))
