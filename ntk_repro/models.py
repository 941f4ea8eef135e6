"""Flax Linen models for the reproduction: MLP, CNN and ResNet-18, each with a width knob.

Every model maps ``x: [N, *input_shape] float32`` to logits ``[N, num_classes]`` and takes
``train: bool`` (BatchNorm uses batch statistics when ``train=True``, running statistics when
``train=False``; kernels are always taken with ``train=False``).

Parameterisations (picked by name from :data:`PARAMETERIZATIONS`):

* ``"standard"``: ``W ~ N(0, σ_w²/fan_in)``, ``b ~ N(0, σ_b²)``, ``y = x·W + b``.
* ``"ntk"`` (Jacot et al. 2018): ``W ~ N(0, 1)``, ``b ~ N(0, 1)``,
  ``y = x·(σ_w/√fan_in · W) + σ_b · b``. The scale is a constant scalar multiply on the weight,
  feeding a plain ``lax.dot_general`` / ``lax.conv_general_dilated``, so the structured
  derivative kernels in :mod:`ntk.kernels` recognise every layer.

Input layouts. ``MLP`` flattens whatever it gets. ``CNN`` and ``ResNet18`` need a spatial layout
``[N, H, W, C]`` (images) or ``[N, L, C]`` (1-D signals such as mnist1d as ``[40, 1]``); flat
``[N, D]`` vectors raise a ``ValueError``. Each model class states this in ``input_kind``
(``"flat"`` or ``"spatial"``), which :func:`ntk_repro.data.reshape_for` uses.

Example::

    model = build_model("mlp", num_classes=10, width=128, depth=2)
    variables = init_model(model, jax.random.key(0), (64,))
    apply_fn, params, state = kernel_model(model, variables)  # (params, x_N64) -> [N, 10]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from ntk.adapters import from_linen
from ntk.checks import lookup

__all__ = [
    "ACTIVATIONS",
    "CNN",
    "MLP",
    "MODELS",
    "NORMS",
    "PARAMETERIZATIONS",
    "Conv",
    "Dense",
    "ResNet18",
    "build_model",
    "init_model",
    "kernel_model",
    "param_count",
    "variables",
]

SQRT2 = math.sqrt(2.0)


# --- parameterisations -------------------------------------------------------------------


def _standard(sigma: float, fan_in: int) -> tuple[float, float]:
    return sigma / math.sqrt(fan_in), 1.0


def _ntk(sigma: float, fan_in: int) -> tuple[float, float]:
    return 1.0, sigma / math.sqrt(fan_in)


# name -> fn(sigma, fan_in) -> (init std, forward scale). Biases use fan_in = 1.
PARAMETERIZATIONS: dict[str, Callable[[float, int], tuple[float, float]]] = {
    "standard": _standard,
    "ntk": _ntk,
}

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "gelu": nn.gelu,
    "erf": jax.scipy.special.erf,
    "identity": lambda x: x,
}


def _normal(std: float):
    """float32 N(0, std²) initialiser (explicit dtype: tests run with x64 enabled)."""

    def init(key, shape, dtype=jnp.float32):
        del dtype
        return std * jax.random.normal(key, shape, jnp.float32)

    return init


class Dense(nn.Module):
    """Dense layer ``[..., fan_in] -> [..., features]`` with standard or NTK parameterisation."""

    features: int
    parameterization: str = "ntk"
    sigma_w: float = 1.0
    sigma_b: float = 0.0
    use_bias: bool = True

    @nn.compact
    def __call__(self, x_NI: jax.Array) -> jax.Array:
        param_fn = lookup("parameterization", self.parameterization, PARAMETERIZATIONS)
        fan_in = x_NI.shape[-1]
        w_std, w_scale = param_fn(self.sigma_w, fan_in)
        w_IO = self.param("kernel", _normal(w_std), (fan_in, self.features))
        if w_scale != 1.0:
            w_IO = w_IO * w_scale
        dims = (((x_NI.ndim - 1,), (0,)), ((), ()))
        y_NO = lax.dot_general(x_NI, w_IO, dims)
        if self.use_bias:
            y_NO = y_NO + _bias(self, param_fn, self.sigma_b, self.features, y_NO.ndim)
        return y_NO


class Conv(nn.Module):
    """'SAME' convolution ``[N, *spatial, C_in] -> [N, *spatial', features]`` (1-D or 2-D).

    The weight is ``[k, (k,) C_in, features]`` (``WIO`` / ``HWIO``); fan_in = ``k^d · C_in``.
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    parameterization: str = "ntk"
    sigma_w: float = 1.0
    sigma_b: float = 0.0
    use_bias: bool = True

    @nn.compact
    def __call__(self, x_NSC: jax.Array) -> jax.Array:
        param_fn = lookup("parameterization", self.parameterization, PARAMETERIZATIONS)
        n_spatial = x_NSC.ndim - 2
        if n_spatial not in _CONV_DIMS:
            raise ValueError(
                f"input shape: Conv needs [batch, length, channels] or "
                f"[batch, height, width, channels], got {x_NSC.shape}"
            )
        c_in = x_NSC.shape[-1]
        w_shape = (self.kernel_size,) * n_spatial + (c_in, self.features)
        w_std, w_scale = param_fn(self.sigma_w, self.kernel_size**n_spatial * c_in)
        w = self.param("kernel", _normal(w_std), w_shape)
        if w_scale != 1.0:
            w = w * w_scale
        y = lax.conv_general_dilated(
            x_NSC,
            w,
            window_strides=(self.strides,) * n_spatial,
            padding="SAME",
            dimension_numbers=_CONV_DIMS[n_spatial],
        )
        if self.use_bias:
            y = y + _bias(self, param_fn, self.sigma_b, self.features, y.ndim)
        return y


_CONV_DIMS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}


def _bias(module: nn.Module, param_fn, sigma_b: float, features: int, ndim: int) -> jax.Array:
    """The scaled bias reshaped to ``[1, ..., 1, features]`` (no implicit rank promotion)."""
    b_std, b_scale = param_fn(sigma_b, 1)
    b_F = module.param("bias", _normal(b_std), (features,))
    if b_scale != 1.0:
        b_F = b_F * b_scale
    return b_F.reshape((1,) * (ndim - 1) + (features,))


# --- normalisation -----------------------------------------------------------------------


def _groups(features: int) -> int:
    return math.gcd(features, 8)  # a divisor of `features`, at most 8 groups


# name -> fn(train, features) -> layer. "batchnorm" keeps running stats in "batch_stats".
NORMS: dict[str, Callable[[bool, int], Callable[[jax.Array], jax.Array]]] = {
    "none": lambda train, features: lambda x: x,
    "batchnorm": lambda train, features: nn.BatchNorm(
        use_running_average=not train, momentum=0.9, param_dtype=jnp.float32
    ),
    "layernorm": lambda train, features: nn.LayerNorm(param_dtype=jnp.float32),
    "groupnorm": lambda train, features: nn.GroupNorm(
        num_groups=_groups(features), param_dtype=jnp.float32
    ),
}


def _check_common(module: Any) -> None:
    """Validates the hyper-parameters every model shares (raises ValueError naming them)."""
    for field in ("num_classes", "width"):
        value = getattr(module, field)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{field}: must be a positive int, got {value!r}")
    lookup("parameterization", module.parameterization, PARAMETERIZATIONS)
    lookup("activation", module.activation, ACTIVATIONS)
    lookup("norm", module.norm, NORMS)


def _check_spatial(name: str, x: jax.Array) -> None:
    if x.ndim not in (3, 4):
        raise ValueError(
            f"input shape: {name} needs spatial inputs [batch, length, channels] or "
            f"[batch, height, width, channels], got {tuple(x.shape)}; "
            "flat feature vectors need model=mlp"
        )


# --- models ------------------------------------------------------------------------------


class _Network(nn.Module):
    """The hyper-parameters every model of the study shares, and their checks."""

    num_classes: int
    width: int = 512
    depth: int = 2
    activation: str = "relu"
    norm: str = "none"
    parameterization: str = "ntk"
    sigma_w: float = SQRT2
    sigma_b: float = 0.1
    readout_sigma_w: float = 1.0

    def __post_init__(self):
        _check_common(self)
        self._check_architecture()
        super().__post_init__()

    def _check_architecture(self) -> None:
        if not isinstance(self.depth, int) or self.depth <= 0:
            raise ValueError(f"depth: must be a positive int, got {self.depth!r}")


class MLP(_Network):
    """Fully connected network: ``depth`` hidden layers of ``width`` units, then a readout.

    ``x: [N, ...]`` is flattened to ``[N, D]``; returns ``[N, num_classes]``.
    Parameter count (no norm): ``D·W + W + (depth-1)·(W² + W) + W·O + O``.
    """

    input_kind: ClassVar[str] = "flat"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        h_NW = x.reshape(x.shape[0], -1)
        for _ in range(self.depth):
            h_NW = Dense(self.width, self.parameterization, self.sigma_w, self.sigma_b)(h_NW)
            h_NW = act(NORMS[self.norm](train, self.width)(h_NW))
        readout = Dense(self.num_classes, self.parameterization, self.readout_sigma_w, self.sigma_b)
        return readout(h_NW)


class CNN(_Network):
    """ConvNet: ``depth`` blocks of conv(``width`` channels) → norm → act → 2×avg-pool, then a
    dense readout on the flattened features.

    ``x: [N, H, W, C]`` or ``[N, L, C]``; returns ``[N, num_classes]``. Pooling is skipped
    once a spatial side is below 2.
    """

    input_kind: ClassVar[str] = "spatial"

    width: int = 64
    kernel_size: int = 3

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        _check_spatial("CNN", x)
        act = ACTIVATIONS[self.activation]
        h = x
        for _ in range(self.depth):
            conv = Conv(
                self.width,
                self.kernel_size,
                1,
                self.parameterization,
                self.sigma_w,
                self.sigma_b,
                use_bias=True,
            )
            h = act(NORMS[self.norm](train, self.width)(conv(h)))
            n_spatial = h.ndim - 2
            if min(h.shape[1:-1]) >= 2:
                window = (2,) * n_spatial
                h = nn.avg_pool(h, window, strides=window, padding="VALID")
        h_NF = h.reshape(h.shape[0], -1)
        readout = Dense(self.num_classes, self.parameterization, self.readout_sigma_w, self.sigma_b)
        return readout(h_NF)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 convs with a projection shortcut when the shape changes."""

    features: int
    strides: int
    activation: str
    norm: str
    parameterization: str
    sigma_w: float
    sigma_b: float

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        use_bias = self.norm == "none"  # a norm right after the conv makes a bias redundant
        conv_args = (self.parameterization, self.sigma_w, self.sigma_b, use_bias)
        y = Conv(self.features, 3, self.strides, *conv_args)(x)
        y = act(NORMS[self.norm](train, self.features)(y))
        y = Conv(self.features, 3, 1, *conv_args)(y)
        y = NORMS[self.norm](train, self.features)(y)
        shortcut = x
        if self.strides != 1 or x.shape[-1] != self.features:
            shortcut = Conv(self.features, 1, self.strides, *conv_args)(x)
            shortcut = NORMS[self.norm](train, self.features)(shortcut)
        return act(y + shortcut)


# ResNet depth -> basic blocks per stage (He et al. 2016, Table 1; basic-block depths only)
RESNET_STAGES: dict[int, tuple[int, ...]] = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


class ResNet18(_Network):
    """ResNet-18 for small inputs: 3×3 stride-1 stem (no max-pool), basic blocks ``[2, 2, 2, 2]``
    with stage widths ``width · [1, 2, 4, 8]`` (stride 2 from stage 2 on, 'SAME' padding, so
    8×8 inputs end at 1×1), global average pool and a dense readout.

    ``depth`` picks the blocks per stage from :data:`RESNET_STAGES` (10, 18, 34); an explicit
    ``stage_sizes`` takes precedence over it.

    ``x: [N, H, W, C]`` or ``[N, L, C]``; returns ``[N, num_classes]``.
    """

    input_kind: ClassVar[str] = "spatial"

    width: int = 64
    depth: int = 18
    norm: str = "groupnorm"
    stage_sizes: Sequence[int] | None = None

    def _check_architecture(self) -> None:
        if self.stage_sizes is None:
            lookup("depth", self.depth, RESNET_STAGES)
        elif len(self.stage_sizes) == 0 or any(int(s) <= 0 for s in self.stage_sizes):
            raise ValueError(f"stage_sizes: must be positive ints, got {self.stage_sizes!r}")

    @property
    def stages(self) -> tuple[int, ...]:
        """Basic blocks per stage: ``stage_sizes``, else those of ``depth``."""
        if self.stage_sizes is not None:
            return tuple(int(s) for s in self.stage_sizes)
        return RESNET_STAGES[self.depth]

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        _check_spatial("ResNet18", x)
        act = ACTIVATIONS[self.activation]
        stem = Conv(
            self.width, 3, 1, self.parameterization, self.sigma_w, self.sigma_b, self.norm == "none"
        )
        h = act(NORMS[self.norm](train, self.width)(stem(x)))
        for stage, n_blocks in enumerate(self.stages):
            features = self.width * 2**stage
            for block in range(int(n_blocks)):
                strides = 2 if stage > 0 and block == 0 else 1
                h = BasicBlock(
                    features,
                    strides,
                    self.activation,
                    self.norm,
                    self.parameterization,
                    self.sigma_w,
                    self.sigma_b,
                )(h, train)
        h_NF = jnp.mean(h, axis=tuple(range(1, h.ndim - 1)))
        readout = Dense(self.num_classes, self.parameterization, self.readout_sigma_w, self.sigma_b)
        return readout(h_NF)


# --- registry and helpers ----------------------------------------------------------------

MODELS: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN, "resnet18": ResNet18}


def _model_cls(name: str) -> type[nn.Module]:
    return lookup("model", name, MODELS)


def input_kind(name: str) -> str:
    """``"flat"`` or ``"spatial"``: the input layout the model ``name`` takes."""
    return _model_cls(name).input_kind


def build_model(
    name: str, *, num_classes: int, num_outputs: int | None = None, **kwargs: Any
) -> nn.Module:
    """Builds the model ``name`` from :data:`MODELS` with its hyper-parameters.

    Args:
      name: a key of :data:`MODELS` (``"mlp"``, ``"cnn"``, ``"resnet18"``).
      num_classes: O, the number of logits (the data's classes).
      num_outputs: a wider readout than the classes, O = ``num_outputs`` (``model.num_outputs``
        in the configs; for cost measurements with many logits on the same inputs).
      **kwargs: the model's fields (``width``, ``depth``, ``norm``, ``parameterization``, ...).

    Raises:
      ValueError: unknown name, unknown hyper-parameter, or an invalid value (names it).
    """
    cls = _model_cls(name)
    fields = {f.name for f in dataclasses.fields(cls) if f.init} - {"parent", "name", "num_classes"}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(f"model {name!r}: unknown options {unknown}; valid: {sorted(fields)}")
    if kwargs.get("stage_sizes") is not None:
        kwargs = {**kwargs, "stage_sizes": tuple(int(s) for s in kwargs["stage_sizes"])}
    if num_outputs is not None:
        if not isinstance(num_outputs, int) or isinstance(num_outputs, bool) or num_outputs <= 0:
            raise ValueError(f"num_outputs: must be a positive int or null, got {num_outputs!r}")
        num_classes = num_outputs
    return cls(num_classes=num_classes, **kwargs)


_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def init_model(model: nn.Module, key: jax.Array, input_shape: Sequence[int]) -> dict:
    """Initialises ``model`` for per-example inputs of shape ``input_shape``.

    Returns the variables dict: ``"params"`` (float32) and, with BatchNorm, ``"batch_stats"``.
    """
    x_1X = jnp.zeros((1, *tuple(input_shape)), jnp.float32)
    # One program compiled without backend optimisation: init runs once, and XLA:CPU spends
    # seconds optimising the threefry code of each parameter's draw (eager init compiles
    # every op separately, which is slower still).
    init = jax.jit(lambda k, x: model.init(k, x, train=False), compiler_options=_FAST_COMPILE)
    return init(key, x_1X)


def variables(params: Any, batch_stats: Any = None) -> dict:
    """The Linen variables ``{"params", ["batch_stats"]}`` (``batch_stats`` only if non-empty):
    the one place the study assembles them."""
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


_KERNEL_FNS: dict = {}


def kernel_model(model: nn.Module, variables: dict) -> tuple[Callable, Any, dict]:
    """``(apply_fn, params, state)`` for ``ntk.kernel_fn(apply_fn)(params, x, **state)``: the
    model in eval mode (``train=False``) through :func:`ntk.from_linen`, its non-parameter
    collections (``batch_stats``) as ``state``. One ``apply_fn`` per model and set of
    collections, so the kernels of every checkpoint of a run share their compiled
    computations (the collections' values come in ``state`` on each call)."""
    state = {k: v for k, v in variables.items() if k != "params"}
    key = (model, tuple(sorted(state)))
    if key not in _KERNEL_FNS:
        if len(_KERNEL_FNS) >= 32:  # bounded, oldest first
            del _KERNEL_FNS[next(iter(_KERNEL_FNS))]
        _KERNEL_FNS[key] = from_linen(model, variables, train=False)[0]
    return _KERNEL_FNS[key], variables["params"], state


def param_count(params: Any) -> int:
    """Total number of scalars in a parameter pytree (arrays or ``jax.ShapeDtypeStruct``)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))
