"""Training: accuracy, determinism, bit-exact resume, checkpoints, callbacks and bad inputs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ntk_repro.models import build_model, kernel_model, variables
from ntk_repro.train import checkpoint as ckpt
from ntk_repro.train.loop import checkpoint_epochs, train
from ntk_repro.train.optim import LOSSES, OPTIMIZERS, SCHEDULES, build_optimizer
from ntk_repro.train.steps import create_state, epoch_batches, make_train_step


def _cfg(**overrides):
    """A small digits config; ``overrides`` maps 'group.key' to a value."""
    cfg = {
        "seed": 0,
        "model": {"name": "mlp", "width": 64, "depth": 2},
        "data": {"name": "digits", "n_train": 512, "n_test": 200},
        "optimizer": {"name": "sgd", "learning_rate": 1.0, "schedule": "cosine", "momentum": 0.9},
        "trainer": {
            "epochs": 4,
            "batch_size": 32,
            "checkpoint_epochs": [0, 1, 2],
            "progress": False,
        },
        "logger": {"name": "none"},
    }
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        cfg[section][key] = value
    return cfg


def _leaves(tree):
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(tree)]


def test_mlp_on_digits_learns(tmp_path):
    cfg = _cfg(**{"model.width": 128, "data.n_train": None, "data.n_test": None})
    cfg["trainer"]["epochs"] = 6
    result = train(cfg, tmp_path)
    first, last = result.metrics[0], result.metrics[-1]
    assert last["test_acc"] > 0.90
    assert last["train_loss"] < 0.5 * first["train_loss"]
    assert last["test_loss"] < 0.5 * first["test_loss"]
    assert [r["epoch"] for r in result.metrics] == list(range(7))
    assert ckpt.checkpoint_epochs_saved(tmp_path) == [0, 1, 2, 6]


@pytest.mark.slow
def test_same_seed_same_run_and_different_seed_differs(tmp_path):
    a = train(_cfg(), tmp_path / "a")
    b = train(_cfg(), tmp_path / "b")
    c = train({**_cfg(), "seed": 1}, tmp_path / "c")
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == (
        tmp_path / "b" / "metrics.jsonl"
    ).read_text()
    for x, y in zip(_leaves(a.state.params), _leaves(b.state.params), strict=True):
        np.testing.assert_array_equal(x, y)
    assert a.metrics != c.metrics


class Interrupt(Exception):
    pass


def _interrupt_at(epoch):
    def callback(event):
        if event.epoch == epoch:
            raise Interrupt

    return callback


ADAM = {"name": "adam", "learning_rate": 1e-3, "schedule": "warmup_cosine", "warmup_epochs": 1}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "optimizer"),
    [
        ({}, None),
        ({"name": "cnn", "width": 4, "depth": 1, "norm": "batchnorm"}, None),
        ({}, ADAM),
    ],
    ids=["mlp-sgd", "cnn-batchnorm", "mlp-adam"],
)
def test_resume_is_bit_identical(tmp_path, model, optimizer):
    cfg = _cfg()
    cfg["model"].update(model)
    if optimizer is not None:
        cfg["optimizer"] = dict(optimizer)
    cfg["trainer"]["eval_every"] = 1
    full = train(cfg, tmp_path / "full")

    out = tmp_path / "resumed"
    with pytest.raises(Interrupt):
        train(cfg, out, callbacks=[_interrupt_at(2)])
    assert ckpt.checkpoint_epochs_saved(out) == [0, 1, 2]
    # A crash mid-save leaves an Orbax temporary directory: it must never count.
    junk = out / ckpt.CHECKPOINT_DIR / "3.orbax-checkpoint-tmp-1234"
    junk.mkdir()
    (junk / "garbage").write_text("partial")
    # metrics past the checkpoint (written before a crash) are dropped on resume
    with open(out / ckpt.METRICS_FILE, "a") as f:
        f.write(json.dumps({"epoch": 3, "step": 1, "train_loss": 0.0}) + "\n")

    seen = []
    resumed = train(cfg, out, callbacks=[lambda event: seen.append(event.epoch)])
    assert resumed.resumed_from == 2
    assert seen == [4]  # the checkpoints written by this call only
    assert (out / ckpt.METRICS_FILE).read_text() == (
        tmp_path / "full" / ckpt.METRICS_FILE
    ).read_text()
    for a, b in zip(_leaves(full.state), _leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(a, b)
    assert ckpt.checkpoint_epochs_saved(out) == [0, 1, 2, 4]


def test_resume_of_finished_run_is_a_no_op(tmp_path):
    first = train(_cfg(), tmp_path)
    again = train(_cfg(), tmp_path)
    assert again.resumed_from == 4 and again.metrics == first.metrics
    for a, b in zip(_leaves(first.state.params), _leaves(again.state.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_callbacks_and_iter_checkpoints(tmp_path):
    cfg = _cfg(**{"model.norm": "batchnorm"})
    events = []
    result = train(cfg, tmp_path, callbacks=[events.append])
    assert [e.epoch for e in events] == [0, 1, 2, 4]
    assert [e.step for e in events] == [0, 16, 32, 64]  # 512 // 32 = 16 steps per epoch
    x_NX = result.dataset.x_test[:5]
    for event in events:
        assert event.checkpoint_dir.is_dir()
        assert event.metrics["epoch"] == event.epoch and event.metrics["checkpoint"]
        f, params, state = kernel_model(
            event.model, variables(event.params, event.state.batch_stats)
        )
        assert f(params, x_NX, **state).shape == (5, 10)

    restored = list(ckpt.iter_checkpoints(tmp_path))
    assert [(c.epoch, c.step) for c in restored] == [(0, 0), (1, 16), (2, 32), (4, 64)]
    last = restored[-1]
    for a, b in zip(_leaves(last.params), _leaves(result.state.params), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_leaves(last.batch_stats), _leaves(result.state.batch_stats), strict=True):
        np.testing.assert_array_equal(a, b)
    f, params, state = kernel_model(last.model, variables(last.params, last.batch_stats))
    ev = events[-1]
    f_ev, params_ev, state_ev = kernel_model(ev.model, variables(ev.params, ev.state.batch_stats))
    assert f_ev is f  # one apply_fn per model: checkpoints share compiled kernels
    np.testing.assert_array_equal(
        np.asarray(f(params, x_NX, **state)), np.asarray(f(params_ev, x_NX, **state_ev))
    )
    # epoch 0 is the initialisation: params differ from the trained ones
    assert not np.array_equal(_leaves(restored[0].params)[0], _leaves(last.params)[0])
    only = list(ckpt.iter_checkpoints(tmp_path, epochs=[1, 3]))
    assert [c.epoch for c in only] == [1]

    records = ckpt.read_metrics(tmp_path)
    assert [r["epoch"] for r in records] == [0, 1, 2, 3, 4]
    for r in records:
        assert set(r) >= {"epoch", "step", "train_loss", "train_acc", "test_loss", "test_acc"}


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_optimizers_schedules_losses_keep_float32_state(opt_name, schedule, loss):
    model = build_model("mlp", num_classes=3, width=8, depth=1)
    opt_cfg = {"name": opt_name, "learning_rate": 0.1, "schedule": schedule, "warmup_epochs": 1}
    opt_cfg["weight_decay"] = 1e-4
    tx = build_optimizer(opt_cfg, steps_per_epoch=2, epochs=3)
    state = create_state(model, jax.random.key(0), (5,), tx)
    step = make_train_step(model, tx, loss)
    x_B5 = jax.random.normal(jax.random.key(1), (4, 5), jnp.float32)
    y_B = jnp.array([0, 1, 2, 0], jnp.int32)
    losses = []
    dtypes_before = [a.dtype for a in _leaves(state)]
    for _ in range(6):
        state, m = step(state, x_B5, y_B)
        losses.append(float(m["loss"]))
    assert [a.dtype for a in _leaves(state)] == dtypes_before
    assert {d for d in dtypes_before if jnp.issubdtype(d, jnp.floating)} == {jnp.dtype("float32")}
    assert step._cache_size() == 1  # no retrace: dtypes and structure are stable
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_schedules_shape():
    cfg = {"name": "sgd", "learning_rate": 1.0, "momentum": 0.0, "warmup_epochs": 1}
    for name, first, mid in [("constant", 1.0, 1.0), ("cosine", 1.0, 0.5), ("warmup_cosine", 0, 1)]:
        tx = build_optimizer({**cfg, "schedule": name}, steps_per_epoch=10, epochs=2)
        params = {"w": jnp.zeros((), jnp.float32)}
        state = tx.init(params)
        grads = {"w": jnp.ones((), jnp.float32)}
        lrs = []
        for _ in range(20):
            updates, state = tx.update(grads, state, params)
            lrs.append(-float(updates["w"]))
        assert lrs[0] == pytest.approx(first, abs=1e-6), name
        assert lrs[10] == pytest.approx(mid, abs=1e-6), name


def test_epoch_batches_are_a_deterministic_permutation():
    a = epoch_batches(103, 10, seed=0, epoch=1)
    assert a.shape == (10, 10)
    assert len(set(a.ravel().tolist())) == 100
    np.testing.assert_array_equal(a, epoch_batches(103, 10, seed=0, epoch=1))
    assert not np.array_equal(a, epoch_batches(103, 10, seed=0, epoch=2))
    assert not np.array_equal(a, epoch_batches(103, 10, seed=1, epoch=1))


def test_checkpoint_epochs_always_include_init_and_end():
    assert checkpoint_epochs({"epochs": 5, "checkpoint_epochs": [1, 2, 50]}) == [0, 1, 2, 5]
    assert checkpoint_epochs({"epochs": 6, "checkpoint_every": 2}) == [0, 2, 4, 6]
    with pytest.raises(ValueError, match="trainer.checkpoint_epochs: must be >= 0"):
        checkpoint_epochs({"epochs": 5, "checkpoint_epochs": [-1]})


def test_config_diff_names_keys():
    saved = {"model": {"width": 8, "name": "mlp"}, "trainer": {"progress": False}}
    new = {"model": {"width": 16, "name": "mlp", "depth": 2}, "trainer": {"progress": True}}
    assert ckpt.config_diff(saved, new) == [
        "model.depth: '<missing>' -> 2",
        "model.width: 8 -> 16",
    ]


# --- bad inputs: a clear error before any work ------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"model.name": "vgg"}, ValueError, r"model: unknown value 'vgg'; valid: \['cnn'"),
        ({"data.name": "imagenet"}, ValueError, r"dataset: unknown value 'imagenet'"),
        ({"model.width": 0}, ValueError, "width: must be a positive int, got 0"),
        ({"model.width": -4}, ValueError, "width: must be a positive int, got -4"),
        ({"optimizer.name": "lion"}, ValueError, "optimizer: unknown value 'lion'"),
        ({"optimizer.schedule": "step"}, ValueError, "optimizer.schedule: unknown value 'step'"),
        ({"trainer.loss": "hinge"}, ValueError, "trainer.loss: unknown value 'hinge'"),
        ({"trainer.epochs": -1}, ValueError, "trainer.epochs: must be an int >= 0"),
        (
            {"data.name": "mnist", "data.data_dir": None},
            FileNotFoundError,
            "TFDS dataset 'mnist' needs a data directory",
        ),
        (
            {"model.name": "cnn", "data.name": "synthetic", "data.n_train": None},
            ValueError,
            "model 'cnn' needs inputs with a spatial layout",
        ),
    ],
)
def test_bad_config_fails_before_any_work(tmp_path, overrides, error, message):
    out = tmp_path / "out"
    with pytest.raises(error, match=message):
        train(_cfg(**overrides), out)
    assert not (out / ckpt.CHECKPOINT_DIR).exists()
    assert not (out / ckpt.METRICS_FILE).exists()


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match="out_dir: cannot write to output directory"):
        train(_cfg(), blocker / "out")


def test_incompatible_config_refuses_to_resume(tmp_path):
    train(_cfg(), tmp_path)
    before = (tmp_path / ckpt.METRICS_FILE).read_text()
    changed = _cfg(**{"model.width": 32, "optimizer.learning_rate": 0.5})
    with pytest.raises(ValueError, match="refusing to resume") as info:
        train(changed, tmp_path)
    assert "model.width: 64 -> 32" in str(info.value)
    assert "optimizer.learning_rate: 1.0 -> 0.5" in str(info.value)
    assert (tmp_path / ckpt.METRICS_FILE).read_text() == before
    # harmless keys (progress bar) may change
    harmless = _cfg(**{"trainer.progress": True})
    assert train(harmless, tmp_path).resumed_from == 4


def test_checkpoints_without_config_refuse(tmp_path):
    train(_cfg(), tmp_path)
    (tmp_path / ckpt.CONFIG_FILE).unlink()
    with pytest.raises(ValueError, match="has checkpoints but no config.yaml"):
        train(_cfg(), tmp_path)


def test_optimizer_unknown_option():
    with pytest.raises(ValueError, match=r"optimizer: unknown options \['betas'\]"):
        build_optimizer(
            {"name": "adam", "learning_rate": 0.1, "betas": 1}, steps_per_epoch=1, epochs=1
        )


def test_optax_is_the_optimiser():
    """Three steps of the built Adam equal optax.adam's own, update for update."""
    tx = build_optimizer(
        {"name": "adam", "learning_rate": 0.1, "schedule": "constant"},
        steps_per_epoch=1,
        epochs=1,
    )
    ref = optax.adam(0.1)
    params = {"w": jnp.linspace(-1.0, 1.0, 6)}
    s, s_ref = tx.init(params), ref.init(params)
    for i in range(3):
        grads = {"w": jnp.cos(params["w"] * (i + 1))}
        u, s = tx.update(grads, s, params)
        u_ref, s_ref = ref.update(grads, s_ref, params)
        np.testing.assert_array_equal(u["w"], u_ref["w"])
        params = optax.apply_updates(params, u)
