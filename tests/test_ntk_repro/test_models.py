"""Models: shapes on every dataset, parameter counts, parameterisations, BatchNorm, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntk
from ntk_repro.data import load_dataset, reshape_for
from ntk_repro.models import (
    MODELS,
    build_model,
    init_model,
    input_kind,
    kernel_model,
    param_count,
)

TINY = {"mlp": {"width": 8}, "cnn": {"width": 4}, "resnet18": {"width": 2}}
# Two stages of one block each: the same layers as ResNet-18, much less to compile.
SMALL = {**TINY, "resnet18": {"width": 2, "stage_sizes": (1, 1)}}
DATASETS = {
    "digits": {},
    "mnist1d": {},
    "synthetic": {"dim": 12, "train_size": 16, "test_size": 8, "num_classes": 5},
}


@pytest.mark.parametrize("data_name", sorted(DATASETS))
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_every_model_on_every_dataset(model_name, data_name):
    """The full layouts (ResNet-18 included) on 8x8x1 digits, [40, 1] mnist1d, flat synthetic."""
    ds = load_dataset(data_name, n_train=6, n_test=4, **DATASETS[data_name])
    kind = input_kind(model_name)
    if kind == "spatial" and len(ds.sample_shape) == 1:
        with pytest.raises(ValueError, match=f"model '{model_name}' needs inputs with a spatial"):
            reshape_for(ds, kind, model=model_name)
        return
    ds = reshape_for(ds, kind, model=model_name)
    model = build_model(model_name, num_classes=ds.num_classes, **TINY[model_name])
    variables = init_model(model, jax.random.key(0), ds.input_shape)
    apply_fn, params, state = kernel_model(model, variables)
    logits_NO = jax.jit(apply_fn)(params, ds.x_train, **state)
    assert logits_NO.shape == (6, ds.num_classes)
    assert logits_NO.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(logits_NO)))
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)} == {jnp.dtype("float32")}


@pytest.mark.parametrize("model_name", ["cnn", "resnet18"])
def test_spatial_models_reject_flat_inputs(model_name):
    model = build_model(model_name, num_classes=3, width=2)
    with pytest.raises(ValueError, match=r"input shape: .* needs spatial inputs .* \(1, 40\)"):
        init_model(model, jax.random.key(0), (40,))


def _shapes(model, input_shape):
    """The variables' shapes, without compiling or running the initialiser."""
    x_1X = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x_1X)


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("width", [4, 8, 32])
def test_mlp_param_count_exact(width, depth):
    d, o = 64, 10
    model = build_model("mlp", num_classes=o, width=width, depth=depth)
    params = _shapes(model, (d,))["params"]
    expected = d * width + width + (depth - 1) * (width * width + width) + width * o + o
    assert param_count(params) == expected


@pytest.mark.parametrize("depth", [1, 2])
def test_cnn_param_count_exact(depth):
    width, o, k = 6, 10, 3
    model = build_model("cnn", num_classes=o, width=width, depth=depth, kernel_size=k)
    params = _shapes(model, (8, 8, 1))["params"]
    side = 8 // 2**depth  # one 2x avg-pool per block
    expected = (k * k * 1 * width + width) + (depth - 1) * (k * k * width * width + width)
    expected += side * side * width * o + o
    assert param_count(params) == expected


def test_resnet_params_grow_quadratically_with_width():
    """Exact count: P(w) = a·w² + b·w + c, with a from the 3x3 convs and 1x1 projections of
    the four stages (widths w, 2w, 4w, 8w; two basic blocks each): 36 + 128 + 512 + 2048."""
    counts = []
    for width in (1, 2, 3, 4, 5):
        model = build_model("resnet18", num_classes=10, width=width, norm="none")
        counts.append(param_count(_shapes(model, (8, 8, 1))["params"]))
    stage_1 = 4 * 9  # four w->w 3x3 convs
    # a stage of width m·w after one of (m/2)·w: 3x3 conv in, 3x3 conv, 1x1 projection,
    # then a second block of two 3x3 convs; in units of w²
    stage = lambda m: 9 * (m // 2) * m + 9 * m * m + (m // 2) * m + 2 * 9 * m * m
    a = stage_1 + sum(stage(m) for m in (2, 4, 8))
    assert a == 2724
    assert list(np.diff(counts, 2)) == [2 * a] * 3  # second differences of a quadratic
    assert list(np.diff(counts, 3)) == [0, 0]


def test_resnet_stage_widths():
    model = build_model("resnet18", num_classes=10, width=3, norm="batchnorm")
    params = _shapes(model, (8, 8, 1))["params"]
    out_channels = sorted(
        {
            int(v["Conv_1"]["kernel"].shape[-1])
            for k, v in params.items()
            if k.startswith("BasicBlock")
        }
    )
    assert out_channels == [3, 6, 12, 24]
    n_blocks = sum(k.startswith("BasicBlock") for k in params)
    assert n_blocks == 8


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_ntk_and_standard_parameterisations_agree_at_init(model_name):
    """The same key gives W_std = σ/√fan_in · W_ntk, so both compute the same function."""
    kw = {**SMALL[model_name], "norm": "none"}
    x_NX = jax.random.normal(jax.random.key(1), (3, 8, 8, 1), jnp.float32)
    outs, leaves = [], []
    for parameterization in ("ntk", "standard"):
        model = build_model(model_name, num_classes=4, parameterization=parameterization, **kw)
        variables = init_model(model, jax.random.key(0), x_NX.shape[1:])
        outs.append(np.asarray(jax.jit(model.apply)(variables, x_NX)))
        leaves.append(variables["params"])
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    # NTK weights are N(0, 1); standard ones are scaled down by σ/√fan_in.
    w_ntk = np.asarray(leaves[0]["Dense_0" if model_name == "mlp" else "Conv_0"]["kernel"])
    w_std = np.asarray(leaves[1]["Dense_0" if model_name == "mlp" else "Conv_0"]["kernel"])
    fan_in = math.prod(w_ntk.shape[:-1])
    np.testing.assert_allclose(w_std, w_ntk * math.sqrt(2.0) / math.sqrt(fan_in), rtol=1e-6)


def test_ntk_dense_forward_matches_formula():
    model = build_model("mlp", num_classes=3, width=5, depth=1, sigma_w=1.3, sigma_b=0.2)
    variables = init_model(model, jax.random.key(0), (7,))
    p = variables["params"]
    x_N7 = np.asarray(jax.random.normal(jax.random.key(1), (4, 7), jnp.float32), np.float64)
    w1, b1 = np.asarray(p["Dense_0"]["kernel"], np.float64), np.asarray(p["Dense_0"]["bias"])
    w2, b2 = np.asarray(p["Dense_1"]["kernel"], np.float64), np.asarray(p["Dense_1"]["bias"])
    h_N5 = np.maximum(x_N7 @ w1 * 1.3 / math.sqrt(7) + 0.2 * b1[None], 0.0)
    expected_N3 = h_N5 @ w2 * 1.0 / math.sqrt(5) + 0.2 * b2[None]
    np.testing.assert_allclose(np.asarray(model.apply(variables, x_N7)), expected_N3, rtol=1e-5)


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_batchnorm_train_updates_stats_and_kernel_fn_uses_eval_mode(model_name):
    model = build_model(model_name, num_classes=3, norm="batchnorm", **SMALL[model_name])
    x_NX = jax.random.normal(jax.random.key(1), (5, 8, 8, 1), jnp.float32)
    variables = init_model(model, jax.random.key(0), x_NX.shape[1:])
    assert "batch_stats" in variables
    logits_train, updates = model.apply(variables, x_NX, train=True, mutable=["batch_stats"])
    changed = jax.tree_util.tree_map(
        lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"], updates["batch_stats"]
    )
    assert all(jax.tree_util.tree_leaves(changed))
    apply_fn, params, state = kernel_model(model, variables)
    eval_out = np.asarray(apply_fn(params, x_NX, **state))
    np.testing.assert_array_equal(eval_out, np.asarray(model.apply(variables, x_NX, train=False)))
    assert not np.allclose(eval_out, np.asarray(logits_train))


@pytest.mark.parametrize("norm", ["layernorm", "groupnorm"])
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_batch_independent_norms_have_no_state(model_name, norm):
    model = build_model(model_name, num_classes=3, norm=norm, **SMALL[model_name])
    x_NX = jax.random.normal(jax.random.key(1), (2, 8, 8, 1), jnp.float32)
    variables = init_model(model, jax.random.key(0), x_NX.shape[1:])
    assert set(variables) == {"params"}
    # Per-example: the output for one row does not depend on the rest of the batch.
    apply = jax.jit(lambda v, x: model.apply(v, x, train=True))
    full, single = np.asarray(apply(variables, x_NX)), np.asarray(apply(variables, x_NX[:1]))
    np.testing.assert_allclose(full[:1], single, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_kernel_implementations_agree_on_models(model_name):
    """Every kernel implementation handles these layers (NTK scale as a scalar on the weight)."""
    model = build_model(model_name, num_classes=3, norm="batchnorm", **SMALL[model_name])
    x_NX = jax.random.normal(jax.random.key(1), (3, 8, 8, 1), jnp.float32)
    apply_fn, params, _ = kernel_model(model, init_model(model, jax.random.key(0), (8, 8, 1)))
    kernels = [
        np.asarray(ntk.entk(apply_fn, params, x_NX, implementation=impl))
        for impl in ntk.IMPLEMENTATIONS
    ]
    assert kernels[0].shape == (3, 3, 3, 3)
    scale = np.abs(kernels[0]).max()
    for k in kernels[1:]:
        np.testing.assert_allclose(k, kernels[0], atol=1e-4 * scale)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match=r"model: unknown value 'vgg'; valid: \['cnn', 'mlp'"):
        build_model("vgg", num_classes=10)


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("width", [0, -3])
def test_nonpositive_width_raises(model_name, width):
    with pytest.raises(ValueError, match=f"width: must be a positive int, got {width}"):
        build_model(model_name, num_classes=10, width=width)


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_nonpositive_depth_raises(model_name):
    with pytest.raises(ValueError, match="depth: must be a positive int, got 0"):
        build_model(model_name, num_classes=10, depth=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"norm": "instancenorm"}, "norm: unknown value 'instancenorm'"),
        ({"parameterization": "mup"}, "parameterization: unknown value 'mup'"),
        ({"activation": "swish"}, "activation: unknown value 'swish'"),
        ({"widht": 3}, r"model 'mlp': unknown options \['widht'\]"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model("mlp", num_classes=10, **kwargs)


@pytest.mark.parametrize(
    "name, options, shape, n",
    [  # the largest kernels of `make reproduce` (float64, N points, O = 10)
        ("mlp", {"width": 2048}, (64,), 200),
        ("mlp", {"width": 2048, "parameterization": "standard"}, (64,), 200),
        ("cnn", {"width": 128}, (8, 8, 1), 100),
        ("resnet18", {"width": 32}, (16, 16, 1), 20),
        ("resnet18", {"width": 16, "depth": 34}, (16, 16, 1), 10),
    ],
)
def test_auto_picks_structured_for_the_study_models(name, options, shape, n):
    """The study runs with implementation=auto: every model is dense/conv layers, where
    structured derivatives are the cheapest by far. NTK parameterisation once inflated the
    memory estimate (the scaled weights c·W counted per example) and auto chose NTK-vector
    products for the width-2048 MLP: minutes per kernel instead of seconds."""
    model = build_model(name, num_classes=10, **options)
    apply_fn, params, state = kernel_model(model, init_model(model, jax.random.key(0), shape))
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        x = jnp.zeros((n, *shape), jnp.float64)
        fn = ntk.kernel_fn(apply_fn, kind="entk")
        assert fn.prepared(params, x, None, state)[0].implementation == "structured"
