"""Benchmark cases on models as the JAX ecosystem writes them (``make bench``, own table/plot).

A GPT-2-shaped decoder with tied embeddings (vocabulary 1,000 and 50,257), a BERT-shaped
encoder, a ViT, a Flax ResNet-18 with BatchNorm, and a 10-layer MLP written with ``nn.scan``
next to the same MLP unrolled; all Flax Linen, float32, widths reduced for a CPU. Each case
reports warm time, compile time, XLA's temporary bytes and peak RSS per implementation, and
which leaves the structured rules cover (from :func:`ntk.diagnose`).

They run in the suite's two passes (:mod:`benchmarks.suite`); this module builds them and
draws their table and plot.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

D, HEADS, LAYERS, SEQ = 64, 4, 2, 16  # width, heads, depth and sequence length (CPU scale)


def _transformer_block(nn, causal: bool):
    class Block(nn.Module):
        @nn.compact
        def __call__(self, h):
            y = nn.LayerNorm()(h)
            mask = nn.make_causal_mask(jnp_ones(h.shape[:2])) if causal else None
            h = h + nn.MultiHeadDotProductAttention(HEADS)(y, mask=mask)
            y = nn.Dense(4 * D)(nn.LayerNorm()(h))
            return h + nn.Dense(D)(nn.gelu(y))

    return Block


def jnp_ones(shape):
    import jax.numpy as jnp

    return jnp.ones(shape)


def gpt2(vocab: int, o: int):
    """Decoder: token + position embeddings, causal blocks, final LayerNorm; the O outputs
    are the tied-embedding logits of O candidate tokens at the last position."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    block = _transformer_block(nn, causal=True)

    class GPT(nn.Module):
        @nn.compact
        def __call__(self, ids):
            emb = nn.Embed(vocab, D)
            pos = self.param("pos", nn.initializers.normal(0.02), (SEQ, D))
            h = emb(ids) + pos[None]
            for _ in range(LAYERS):
                h = block()(h)
            last = nn.LayerNorm()(h)[:, -1]
            cands = jnp.take(emb.embedding, jnp.arange(o), axis=0)  # tied output rows
            return last @ cands.T

    ids = jax.random.randint(jax.random.key(1), (1, SEQ), 0, vocab)
    return GPT(), ids, lambda n, key: jax.random.randint(key, (n, SEQ), 0, vocab)


def bert(vocab: int, o: int):
    """Encoder: token + position + type embeddings, LayerNorm, bidirectional blocks, a
    pooled [CLS] head."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    block = _transformer_block(nn, causal=False)

    class BERT(nn.Module):
        @nn.compact
        def __call__(self, ids):
            h = nn.Embed(vocab, D)(ids) + nn.Embed(SEQ, D)(jnp.arange(SEQ))[None]
            h = nn.LayerNorm()(h + nn.Embed(2, D)(jnp.zeros_like(ids)))
            for _ in range(LAYERS):
                h = block()(h)
            return nn.Dense(o)(jnp.tanh(nn.Dense(D)(h[:, 0])))

    ids = jax.random.randint(jax.random.key(1), (1, SEQ), 0, vocab)
    return BERT(), ids, lambda n, key: jax.random.randint(key, (n, SEQ), 0, vocab)


def vit(_: int, o: int):
    """ViT: 4x4 patches of a 16x16x3 image by a strided conv, a [CLS] token, positions."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    block = _transformer_block(nn, causal=False)

    class ViT(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.Conv(D, (4, 4), strides=(4, 4))(x)
            h = h.reshape(h.shape[0], -1, D)
            cls = self.param("cls", nn.initializers.zeros, (1, 1, D))
            h = jnp.concatenate([jnp.broadcast_to(cls, (h.shape[0], 1, D)), h], axis=1)
            h = h + self.param("pos", nn.initializers.normal(0.02), (h.shape[1], D))[None]
            for _ in range(LAYERS):
                h = block()(h)
            return nn.Dense(o)(nn.LayerNorm()(h[:, 0]))

    x = jnp.zeros((1, 16, 16, 3))
    return ViT(), x, lambda n, key: jax.random.normal(key, (n, 16, 16, 3))


def resnet18(_: int, o: int, width: int = 16):
    """ResNet-18 (BatchNorm, eval mode) on 16x16x3 images, base width 16."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    class Res(nn.Module):
        feats: int
        stride: int

        @nn.compact
        def __call__(self, x):
            bn = lambda: nn.BatchNorm(use_running_average=True)  # noqa: E731
            h = nn.relu(bn()(nn.Conv(self.feats, (3, 3), self.stride, use_bias=False)(x)))
            h = bn()(nn.Conv(self.feats, (3, 3), use_bias=False)(h))
            if x.shape[-1] != self.feats or self.stride != 1:
                x = bn()(nn.Conv(self.feats, (1, 1), self.stride, use_bias=False)(x))
            return nn.relu(h + x)

    class ResNet18(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(width, (3, 3))(x)))
            for i, feats in enumerate((width, 2 * width, 4 * width, 8 * width)):
                h = Res(feats, 1 if i == 0 else 2)(h)
                h = Res(feats, 1)(h)
            return nn.Dense(o)(h.mean(axis=(1, 2)))

    x = jnp.zeros((1, 16, 16, 3))
    return ResNet18(), x, lambda n, key: jax.random.normal(key, (n, 16, 16, 3))


def _mlp_layer(nn):
    class Layer(nn.Module):
        @nn.compact
        def __call__(self, h, _=None):
            return nn.tanh(nn.Dense(256)(h)), None

    return Layer


def mlp_scan(_: int, o: int):
    """10 Dense(256) layers stacked with nn.scan (stacked kernels [10, 256, 256])."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    layer = _mlp_layer(nn)

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.Dense(256)(x)
            stack = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True},
                            length=10)  # fmt: skip
            h, _ = stack()(h, None)
            return nn.Dense(o)(h)

    return MLP(), jnp.zeros((1, 64)), lambda n, key: jax.random.normal(key, (n, 64))


def mlp_unrolled(_: int, o: int):
    """The same 10-layer MLP written as a Python loop."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    layer = _mlp_layer(nn)

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.Dense(256)(x)
            for _ in range(10):
                h, _ = layer()(h)
            return nn.Dense(o)(h)

    return MLP(), jnp.zeros((1, 64)), lambda n, key: jax.random.normal(key, (n, 64))


REAL_MODELS = {
    "gpt2": gpt2,
    "bert": bert,
    "vit": vit,
    "resnet18_bn": resnet18,
    "mlp10_scan": mlp_scan,
    "mlp10_unrolled": mlp_unrolled,
}
IMPLS = ("jacobian", "ntk_vp", "structured", "auto")


def real_model_cases(kinds=("entk", "pntk")) -> list[dict]:
    """The section's cases: every model and implementation; the decoder at two vocabularies."""
    cases = []
    models = [("gpt2", 1000), ("gpt2", 50257), ("bert", 30522), ("vit", 0)]
    models += [("resnet18_bn", 0), ("mlp10_scan", 0), ("mlp10_unrolled", 0)]
    for model, vocab in models:
        for kind in kinds:
            for impl in IMPLS:
                cases.append(
                    dict(section="real_models", model=model, vocab=vocab, n=32, o=10,
                         width=D, implementation=impl, kind=kind)
                )  # fmt: skip
    return cases


def build(case: dict):
    """``(apply_fn, params, x, batch_stats kwargs)`` of a case, float32."""
    import jax

    import ntk

    module, x1, sample = REAL_MODELS[case["model"]](case.get("vocab", 0), case["o"])
    variables = module.init(jax.random.key(0), x1)
    apply_fn, params = ntk.from_linen(module, variables)
    x = sample(case["n"], jax.random.key(2))
    return apply_fn, params, x


def structure(apply_fn, params, x, kind: str) -> dict:
    """How much of the model the structured rules cover (:func:`ntk.diagnose`)."""
    import ntk

    diag = ntk.diagnose(apply_fn, params, x, kind=kind)
    return {
        "structured_fraction": diag.structured_fraction,
        "structured_leaves": sum(r.path != "fallback" for r in diag.leaves),
        "fallback_leaves": [r.name for r in diag.leaves if r.path == "fallback"],
        "leaves": len(diag.leaves),
        "measured_at": time.strftime("%Y-%m-%d %H:%M"),
    }


# --- table and plot -------------------------------------------------------------------------


def _label(r: dict) -> str:
    return r["model"] + (f" V={r['vocab']}" if r["model"] == "gpt2" else "")


def real_models_markdown(rows: list[dict]) -> str:
    """The section's table (time, compile, memory, structured leaves) and its goals."""
    rows = [r for r in rows if r.get("section") == "real_models"]
    lines = [
        "| model | kind | implementation | warm | compile | XLA temp | peak RSS | structured "
        "leaves (params) | vs jacobian | vs best |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    timed = [r for r in rows if "warm_median_s" in r]
    best: dict = {}
    for r in timed:
        if r["implementation"] != "auto":
            key = (_label(r), r["kind"])
            best[key] = min(best.get(key, np.inf), r["warm_min_s"])
    jc = {
        (_label(r), r["kind"]): r["warm_min_s"] for r in timed if r["implementation"] == "jacobian"
    }
    for r in rows:
        head = f"| {_label(r)} | {r['kind']} | {r['implementation']}"
        if "warm_median_s" not in r:
            lines.append(f"{head} | {r.get('skipped') or r.get('error')} | | | | | | |")
            continue
        key = (_label(r), r["kind"])
        impl = f" ({r['chosen']})" if r["implementation"] == "auto" else ""
        lines.append(
            f"{head}{impl} | {1e3 * r['warm_median_s']:.1f} ms | {r['compile_s']:.1f} s "
            f"| {r['xla_temp_bytes'] / 2**20:.0f} MiB | {r['peak_rss_bytes'] / 2**20:.0f} MiB "
            f"| {r['structured_leaves']}/{r['leaves']} ({100 * r['structured_fraction']:.0f}%) "
            f"| {jc[key] / r['warm_min_s']:.2f}x | {r['warm_min_s'] / best[key]:.2f} |"
            if key in jc
            else f"{head}{impl} | {1e3 * r['warm_median_s']:.1f} ms | | | | | | |"
        )
    return "\n".join(lines) + "\n"


def plot_real_models(rows: list[dict], out_dir: Path) -> str:
    """``real_models.png``: warm time per model and implementation (full eNTK)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("section") == "real_models" and "warm_median_s" in r]
    rows = [r for r in rows if r["kind"] == "entk"]
    labels = sorted({_label(r) for r in rows})
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.2
    for j, impl in enumerate(IMPLS):
        t = {_label(r): r["warm_median_s"] for r in rows if r["implementation"] == impl}
        xs = [i + (j - 1.5) * width for i, lab in enumerate(labels) if lab in t]
        ax.bar(xs, [t[lab] for lab in labels if lab in t], width, label=impl)
    ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
    ax.set(yscale="log", ylabel="warm time [s]", title="full eNTK, N=32, O=10, float32")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(out_dir) / "real_models.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
