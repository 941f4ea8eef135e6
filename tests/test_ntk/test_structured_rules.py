"""The structured rules beyond dense/conv layers: embeddings (gather), shared and tied
weights, scan-stacked layers, per-head weights and grouped convolutions.

Every case is compared with the independent float64 Jacobian-contraction reference at 1e-10:
with and without x2, blocked and unblocked, under jit, for every kernel kind, and with each
leaf forced to the structured sum and to the materialised Jacobian."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _models import reference_entk
from flax import nnx

import ntk
from ntk.kernels.api import clear_caches
from ntk.kernels.structured import contract as sd_contract
from ntk.kernels.structured import kernel as structured

pytestmark = pytest.mark.slow  # ~25 min together on a busy 2-core machine: make test-slow

V, D, T = 13, 4, 5  # vocabulary, width, sequence length


def _p(key, *shape, scale=None):
    scale = 1.0 / math.sqrt(shape[0] if len(shape) > 1 else 1) if scale is None else scale
    return scale * jax.random.normal(jax.random.key(key), shape, jnp.float64)


def _tokens(seed, n, high=V, low=0):
    """Token ids with repeats inside each example and shared ids across examples."""
    return jax.random.randint(jax.random.key(seed), (n, T), low, high)


def _x(seed, n, *shape):
    return jax.random.normal(jax.random.key(seed), (n, *shape), jnp.float64)


# --- plain JAX cases: (f, params, x1, x2, structured leaf names) ---------------------------


def tied_embedding_lm():
    """GPT-style: lookup E[ids] + positions, a causal mixing layer, tied output projection
    h @ E.T at the last position, and a candidate head E[cands] (a gather with constant
    indices)."""
    params = {"E": _p(1, V, D, scale=1.0), "pos": _p(2, T, D, scale=0.3), "W": _p(3, D, D)}
    cands = jnp.array([2, 5, 5, 11])

    def f(p, ids):
        h = p["E"][ids] + p["pos"][None]  # [N, T, D]
        mask = jnp.tril(jnp.ones((T, T)))
        h = jnp.tanh(jnp.einsum("st,ntd->nsd", mask, h) @ p["W"])
        last = h[:, -1]  # [N, D]
        logits = last @ p["E"].T  # tied projection [N, V]
        scores = last @ p["E"][cands].T  # [N, 4]
        return jnp.concatenate([logits[:, :3], scores], axis=1)

    return f, params, _tokens(0, 5), _tokens(1, 3), {"E", "W"}


def take_modes():
    """jnp.take with out-of-range ids (fill: no dependence on the table; clip: clamped)
    and negative ids (wrapped by indexing), and a one-hot matmul embedding."""
    params = {"A": _p(4, V, D, scale=1.0), "B": _p(5, V, D, scale=1.0), "C": _p(6, V, D)}
    params["out"] = _p(7, 3 * D, 3)

    def f(p, ids):
        a = jnp.take(p["A"], ids, axis=0, mode="fill", fill_value=0.0)
        b = jnp.take(p["B"], ids, axis=0, mode="clip")
        c = jax.nn.one_hot(ids, V, dtype=p["C"].dtype) @ p["C"]
        h = jnp.tanh(jnp.concatenate([a, b, c], axis=-1)).mean(axis=1)
        return h @ p["out"]

    return f, params, _tokens(8, 5, V + 3, -2), _tokens(9, 3, V + 3), {"A", "B", "C", "out"}


def shared_weights():
    """One matrix used three times (twice as W, once as W.T) plus W @ W; a fused qkv weight
    split into three and a slice of another weight (disjoint parts)."""
    params = {"W": _p(10, 6, 6), "qkv": _p(11, 6, 18), "M": _p(12, 6, 8), "out": _p(13, 6, 3)}

    def f(p, x):
        w = p["W"]
        h = jnp.tanh(x @ w)
        h = jnp.tanh(h @ w.T + h @ (w @ w) * 0.3)
        q, k, v = jnp.split(h @ p["qkv"], 3, axis=-1)
        h = jnp.tanh(q * k + v)
        h = h + jnp.tanh(h @ p["M"][:, :6])
        return h @ p["out"]

    return f, params, _x(14, 5, 6), _x(15, 3, 6), {"W", "qkv", "M", "out"}


def scan_layers():
    """Stacked layers in lax.scan (forward and reverse), a weight closed over by the scan
    (shared by all iterations), nested scans, and a static fori_loop."""
    params = {
        "w": _p(16, 3, 5, 5),
        "b": _p(17, 3, 5, scale=0.1),
        "u": _p(18, 2, 5, 5),
        "shared": _p(19, 5, 5),
        "inner": _p(20, 2, 2, 5, 5),
        "loop": _p(21, 5, 5),
        "out": _p(22, 5, 3),
    }

    def f(p, x):
        def layer(h, wb):
            return jnp.tanh(h @ wb[0] + wb[1][None]), None

        h, _ = jax.lax.scan(layer, x, (p["w"], p["b"]))
        h, _ = jax.lax.scan(lambda h, u: (jnp.tanh(h @ u + h @ p["shared"]), None), h, p["u"])
        h, _ = jax.lax.scan(lambda h, u: (jnp.sin(h @ u), None), h, p["u"], reverse=True)

        def outer(h, ws):
            h, _ = jax.lax.scan(lambda c, w: (jnp.tanh(c @ w @ p["shared"]), None), h, ws)
            return h, None

        h, _ = jax.lax.scan(outer, h, p["inner"])
        h = jax.lax.fori_loop(0, 2, lambda i, c: jnp.tanh(c @ p["loop"]), h)
        return h @ p["out"]

    want = {"w", "u", "shared", "inner", "loop", "out"}
    return f, params, _x(23, 4, 5), _x(24, 3, 5), want


def per_head_and_grouped_conv():
    """dot_general with batch dims on the weight (both operand orders) and grouped,
    depthwise (channel multiplier 2) and NCHW grouped convolutions."""
    params = {
        "heads": _p(25, 2, 3, 4),  # [H, C, Dh]
        "heads_t": _p(26, 2, 4, 3),  # [H, Dh, C], used as the lhs
        "grouped": _p(27, 3, 3, 2, 4, scale=0.3),  # 4 input channels, 2 groups
        "depthwise": _p(28, 3, 3, 1, 8, scale=0.3),  # 4 groups, multiplier 2
        "nchw": _p(29, 4, 4, 2, 2, scale=0.3),  # OIHW, 2 groups
        "out": _p(30, 4 + 6, 3),
    }
    dn = ("NHWC", "HWIO", "NHWC")

    def f(p, x):
        n = x.shape[0]
        img = x.reshape(n, 3, 3, 2)
        h = jax.lax.conv_general_dilated(
            jnp.concatenate([img, img**2], -1),
            p["grouped"],
            (1, 1),
            "SAME",
            dimension_numbers=dn,
            feature_group_count=2,
        )
        h = jax.lax.conv_general_dilated(
            jnp.tanh(h),
            p["depthwise"],
            (1, 1),
            "SAME",
            dimension_numbers=dn,
            feature_group_count=4,
        )
        h = jax.lax.conv_general_dilated(
            jnp.tanh(jnp.transpose(h, (0, 3, 1, 2))),
            p["nchw"],
            (2, 2),
            "VALID",
            dimension_numbers=("NCHW", "OIHW", "NCHW"),
            feature_group_count=2,
        )  # [N, 4, 1, 1]
        xh = x.reshape(n, 2, 9)[:, :, :3]  # [N, H, C]
        a = jnp.einsum("nhc,hcd->nhd", xh, p["heads"])
        b = jnp.einsum("hdc,nhd->nhc", p["heads_t"], jnp.tanh(a))  # [N, H, C]
        z = jnp.concatenate([h.reshape(n, -1), b.reshape(n, -1)], -1)
        return jnp.tanh(z) @ p["out"]

    want = {"heads", "heads_t", "grouped", "depthwise", "nchw", "out"}
    return f, params, _x(31, 4, 18), _x(32, 3, 18), want


# --- the same rules through Flax Linen and NNX ---------------------------------------------


def linen_transformer():
    """Linen: Embed + attend (tied), causal MultiHeadDotProductAttention, nn.scan MLP stack,
    LayerNorm; O = 3 logits read from the tied projection."""

    class Block(nn.Module):
        @nn.compact
        def __call__(self, h, _):
            dense = lambda n: nn.Dense(n, param_dtype=jnp.float64)
            return h + dense(D)(jnp.tanh(dense(2 * D)(h))), None

    class LM(nn.Module):
        @nn.compact
        def __call__(self, ids):
            emb = nn.Embed(V, D, param_dtype=jnp.float64)
            pos = self.param("pos", nn.initializers.normal(0.3), (T, D), jnp.float64)
            h = emb(ids) + pos[None]
            mask = nn.make_causal_mask(ids)
            h = h + nn.MultiHeadDotProductAttention(2, param_dtype=jnp.float64)(h, mask=mask)
            h = nn.LayerNorm(param_dtype=jnp.float64)(h)
            stack = nn.scan(
                Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=2
            )
            h, _ = stack(name="stack")(h, None)
            return emb.attend(h[:, -1])[:, :3]

    ids = _tokens(33, 4)
    model = LM()
    variables = model.init(jax.random.key(0), ids)
    f, params = ntk.from_linen(model, variables)
    want = {"Embed_0/embedding", "stack/Dense_0/kernel", "stack/Dense_1/kernel"}
    want |= {f"MultiHeadDotProductAttention_0/{n}/kernel" for n in ("query", "key", "value")}
    want |= {"MultiHeadDotProductAttention_0/out/kernel"}
    return f, params, ids, _tokens(34, 3), want


def nnx_model():
    """NNX: Embed, a grouped Conv, Linear layers and a layer stack through nnx.scan."""

    class Layer(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(D, D, rngs=rngs, param_dtype=jnp.float64)

        def __call__(self, h):
            return jnp.tanh(self.lin(h))

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.emb = nnx.Embed(V, D, rngs=rngs, param_dtype=jnp.float64)
            self.conv = nnx.Conv(
                D, 2 * D, (3,), feature_group_count=2, rngs=rngs, param_dtype=jnp.float64
            )

            @nnx.split_rngs(splits=3)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def make(r):
                return Layer(r)

            self.layers = make(rngs)
            self.head = nnx.Linear(2 * D, 3, rngs=rngs, param_dtype=jnp.float64)

        def __call__(self, ids):
            h = self.emb(ids)

            @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
            def run(h, layer):
                return layer(h)

            h = run(h, self.layers)
            h = jnp.tanh(self.conv(h)).mean(axis=1)
            return self.head(h)

    f, params = ntk.from_nnx(Net(nnx.Rngs(0)))
    return f, params, _tokens(35, 4), _tokens(36, 3), None


CASES = {
    "tied_embedding_lm": tied_embedding_lm,
    "take_modes": take_modes,
    "shared_weights": shared_weights,
    "scan_layers": scan_layers,
    "per_head_and_grouped_conv": per_head_and_grouped_conv,
    "linen_transformer": linen_transformer,
    "nnx_model": nnx_model,
}


def _assert_close(got, want, rtol=1e-10):
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=rtol * np.max(np.abs(want)))


def _names(params):
    return [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def _want(ref):
    o = ref.shape[-1]
    return {
        "entk": ref,
        "pntk": ref.sum((2, 3)) / o,
        "trace": np.einsum("abkk->ab", ref) / o,
        "diagonal": np.einsum("abkk->abk", ref),
    }


@pytest.mark.parametrize("name", sorted(CASES))
def test_rules_exact_every_kind(name):
    f, params, x, x2, _ = CASES[name]()
    ref = reference_entk(f, params, x)
    ref12 = reference_entk(f, params, x, x2)
    _assert_close(ntk.entk(f, params, x, implementation="structured"), ref)
    for kind, want in _want(ref12).items():
        got = ntk.kernel(f, params, x, x2, kind=kind, implementation="structured")
        _assert_close(got, want)


@pytest.mark.parametrize("name", sorted(CASES))
def test_rules_blocked_and_jit(name):
    f, params, x, x2, _ = CASES[name]()
    ref = reference_entk(f, params, x)
    ref12 = reference_entk(f, params, x, x2)
    blocked = ntk.entk(f, params, x, implementation="structured", batch_size=3)
    _assert_close(blocked, ref)
    _assert_close(ntk.entk(f, params, x, x2, implementation="structured", batch_size=2), ref12)
    jitted = jax.jit(lambda p, a, b: ntk.trace_ntk(f, p, a, b, implementation="structured"))
    _assert_close(jitted(params, x, x2), _want(ref12)["trace"])


@pytest.mark.parametrize("method", ["sum", "materialise"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_rules_exact_with_each_method(name, method, monkeypatch):
    """Every structured leaf forced to the sum over position pairs, or to a materialised
    J_W (a segment sum for gathers); with K = 1 the latter is the vjp route."""
    real = sd_contract.choose

    def forced(rule, n1, n2, k, diag):
        c = real(rule, n1, n2, k, diag)
        return sd_contract.Choice(method, *[getattr(c, a) for a in list(c.__dict__)[1:]])

    monkeypatch.setattr(sd_contract, "choose", forced)
    clear_caches()
    try:
        f, params, x, x2, _ = CASES[name]()
        want = _want(reference_entk(f, params, x, x2))
        for kind in ("entk", "pntk"):
            got = ntk.kernel(f, params, x, x2, kind=kind, implementation="structured")
            _assert_close(got, want[kind])
    finally:
        clear_caches()


@pytest.mark.parametrize("name", sorted(n for n in CASES if CASES[n]()[4] is not None))
def test_rules_take_the_structured_path(name):
    f, params, x, _, want = CASES[name]()
    plan = structured.plan_for(f, params, x, 3)
    names = [n.replace("']['", "/").strip("[']") for n in _names(params)]
    got = {names[i] for i in plan.rules}
    assert got == want, {names[i]: why for i, why in plan.reasons.items()}


def test_embedding_cost_independent_of_vocabulary():
    """The structured estimate of a lookup + tied projection at the last position does not
    grow with V beyond the O logits read; Jacobian contraction grows like V·d."""

    def make(v):
        params = {"E": jnp.zeros((v, 8)), "W": jnp.zeros((8, 8))}

        def f(p, ids):
            h = jnp.tanh(p["E"][ids].mean(axis=1) @ p["W"])
            return h @ p["E"][jnp.arange(10)].T  # the logits of 10 candidate tokens

        return f, params

    costs = {}
    for v in (1000, 50_000):
        f, params = make(v)
        ids = jnp.zeros((4, 6), jnp.int32)
        reports = structured.leaf_reports(f, params, ids, 4, 10, False)
        costs[v] = {r.name: r for r in reports}
        assert costs[v]["['E']"].path == "structured"
    small, big = costs[1000]["['E']"], costs[50_000]["['E']"]
    assert big.flops == small.flops and big.memory_bytes == small.memory_bytes
    assert big.fallback_flops == 50 * small.fallback_flops


def test_diagnose_names_rules_and_reasons():
    f, params, x, _, _ = tied_embedding_lm()
    d = ntk.diagnose(f, params, x)
    by_name = {r.name: r for r in d.leaves}
    assert by_name["['E']"].path == "structured" and "gather" in by_name["['E']"].rule
    assert "transposed" in by_name["['E']"].rule
    assert by_name["['pos']"].path == "fallback" and "add" in by_name["['pos']"].rule
    assert by_name["['pos']"].flops == by_name["['pos']"].fallback_flops > 0
    assert set(d.estimates) == set(ntk.IMPLEMENTATIONS) and d.implementation in d.estimates
    assert 0 < d.structured_fraction < 1
    text = str(d)
    assert "['E']" in text and "fallback" in text and "auto ->" in text
    pntk = ntk.diagnose(f, params, x, kind="pntk")
    assert all(r.memory_bytes <= r.fallback_memory_bytes * 10 for r in pntk.leaves)


def test_auto_respects_the_memory_budget():
    """auto picks the cheapest implementation whose estimated peak memory fits the budget,
    and the least memory when none fits; the kernel is the same either way."""
    from ntk.kernels.estimates import implementation_estimates

    k = jax.random.split(jax.random.key(0), 3)
    params = {"w1": jax.random.normal(k[0], (16, 64)), "w2": jax.random.normal(k[1], (64, 10))}

    def f(p, x):
        return jnp.tanh(x @ p["w1"]) @ p["w2"]

    x = jax.random.normal(k[2], (8, 16))
    est = implementation_estimates(f, params, x, None, 10, False)
    for budget in sorted({m for _, m in est.values()}) + [0.0]:
        got = ntk.choose_implementation(f, params, x, None, 10, False, memory_budget=budget)
        fits = [n for n, (_, m) in est.items() if m <= budget]
        if fits:
            assert got == min(fits, key=lambda n: est[n][0])
        else:
            assert got == min(est, key=lambda n: est[n][1])
    small = min(est, key=lambda n: est[n][1])
    fn = ntk.kernel_fn(f, memory_budget=est[small][1])
    assert fn.prepared(params, x, None, {})[0].implementation == small
    _assert_close(fn(params, x), reference_entk(f, params, x))
