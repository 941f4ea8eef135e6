"""Divergence: a non-finite training loss stops the run (or, opted in, restarts it at a lower
learning rate), keeps the last finite checkpoint, computes no kernel from non-finite
parameters, and the report lists diverged runs and leaves them out of its rows."""

import json
import logging
import math
import shutil

import jax
import numpy as np
import pytest

from ntk_repro.report.build import _diverged_md, build_report, divergence_of, gather_runs, run_rows
from ntk_repro.train import checkpoint as ckpt
from ntk_repro.train.loop import load_data, resolve_config, train, validate_config
from ntk_repro.train.optim import build_optimizer
from ntk_repro.train.steps import TrainState, epoch_batches, make_train_step

# A tiny MLP on 256 digits with the MSE loss and plain SGD (8 steps per epoch): learning
# rate 200 trains through epoch 1 and blows up in epoch 2; 300 blows up in epoch 1 and its
# tenth, 30, converges (both measured); 1e6 blows up at any tenth tried here.
STOP_LR, RECOVER_LR, HOPELESS_LR = 200.0, 300.0, 1e6


def _cfg(lr, **trainer):
    return {
        "seed": 0,
        "model": {"name": "mlp", "width": 32, "depth": 1},
        "data": {"name": "digits", "n_train": 256, "n_test": 100},
        "optimizer": {"name": "sgd", "learning_rate": lr, "schedule": "constant", "momentum": 0.0},
        "trainer": {
            "epochs": 3,
            "batch_size": 32,
            "checkpoint_epochs": [0, 1, 2],
            "train_eval_size": None,
            "loss": "mse",
            "progress": False,
            **trainer,
        },
        "logger": {"name": "none"},
    }


def _finite(tree) -> bool:
    return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(tree))


class _Kernels:
    """A checkpoint callback standing in for the kernel one: records what it was given and
    returns a kernel scalar, so the run's checkpoints become report rows."""

    def __init__(self):
        self.epochs, self.all_finite = [], True

    def __call__(self, event):
        self.epochs.append(event.epoch)
        self.all_finite &= _finite(event.params) and _finite(event.state)
        return {"relative_frobenius_error": 0.1}


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def _train_logged(cfg, out, callbacks=()):
    handler, logger = _Messages(), logging.getLogger("ntk_repro.train.loop")
    logger.addHandler(handler)
    try:
        result = train(cfg, out, callbacks=callbacks)
    finally:
        logger.removeHandler(handler)
    return result, handler.records


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """The default ``trainer.on_divergence=stop`` run at STOP_LR."""
    out = tmp_path_factory.mktemp("runs") / "stopped"
    kernels = _Kernels()
    result, messages = _train_logged(_cfg(STOP_LR), out, [kernels])
    return out, result, messages, kernels


def _first_nonfinite_step(cfg, out, epoch):
    """Replays ``epoch`` from the checkpoint before it, step by step (the slow way the loop
    avoids); returns the global step whose loss is the first non-finite one."""
    cfg = resolve_config(cfg)
    ds = load_data(cfg)
    (prev,) = ckpt.iter_checkpoints(out, epochs=[epoch - 1])
    tx = build_optimizer(cfg["optimizer"], steps_per_epoch=8, epochs=cfg["trainer"]["epochs"])
    state = TrainState(prev.params, {}, tx.init(prev.params))
    step_fn = make_train_step(prev.model, tx, "mse")
    for i, idx_B in enumerate(epoch_batches(len(ds.y_train), 32, 0, epoch)):
        state, m = step_fn(state, ds.x_train[idx_B], ds.y_train[idx_B])
        if not np.isfinite(float(m["loss"])):
            return prev.step + i + 1
    raise AssertionError(f"epoch {epoch} has no non-finite loss")


def test_first_nonfinite_loss_stops_the_run_with_a_clear_message(stopped):
    out, result, messages, _ = stopped
    step = _first_nonfinite_step(_cfg(STOP_LR), out, epoch=2)
    assert 8 < step <= 16
    errors = [r.getMessage() for r in messages if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert f"training diverged at epoch 2, step {step} (learning rate 200)" in errors[0]
    assert "trainer.on_divergence=lower_lr" in errors[0]
    # the run stops at the end of the last finite epoch: nothing of epoch 2 or 3 is kept
    assert (result.epoch, result.step) == (1, 8)
    assert [r["epoch"] for r in result.metrics] == [0, 1]
    assert ckpt.read_metrics(out) == result.metrics
    assert all(np.isfinite(r["train_loss"]) for r in result.metrics)
    assert _finite(result.state)
    assert result.diverged == {
        "epoch": 2,
        "step": step,
        "learning_rate": STOP_LR,
        "reason": "training loss is inf",
    }


def test_diverged_run_is_marked_in_its_records(stopped):
    out, result, _, _ = stopped
    status = json.loads((out / ckpt.STATUS_FILE).read_text())
    assert status["status"] == "diverged"
    assert status["diverged"] == result.diverged
    assert status["lr_lowered"] == [] and status["learning_rate"] == STOP_LR
    assert (status["epoch"], status["step"]) == (1, 8)


def test_last_finite_checkpoint_is_kept_and_no_kernel_of_nonfinite_params(stopped):
    out, _, _, kernels = stopped
    assert ckpt.checkpoint_epochs_saved(out) == [0, 1]  # epoch 2 is not saved
    saved = list(ckpt.iter_checkpoints(out))
    assert all(_finite(c.params) for c in saved)
    assert kernels.epochs == [0, 1] and kernels.all_finite


def test_lower_lr_restarts_from_the_last_checkpoint_and_recovers(tmp_path):
    kernels = _Kernels()
    cfg = _cfg(RECOVER_LR, on_divergence="lower_lr")
    result, messages = _train_logged(cfg, tmp_path, [kernels])
    assert result.diverged is None
    assert result.learning_rate == pytest.approx(RECOVER_LR / 10)
    (lowered,) = result.lr_lowered
    assert lowered["epoch"] == 1 and 0 < lowered["step"] <= 8
    assert lowered["old_lr"] == RECOVER_LR and lowered["new_lr"] == pytest.approx(30.0)
    assert lowered["restart_epoch"] == 0
    warnings = [r.getMessage() for r in messages]
    assert len(warnings) == 1 and "restarting from the checkpoint of epoch 0" in warnings[0]
    assert [r["epoch"] for r in result.metrics] == [0, 1, 2, 3]
    assert all(np.isfinite(r["train_loss"]) for r in result.metrics)
    assert result.metrics[-1]["train_loss"] < 0.5 * result.metrics[0]["train_loss"]
    status = json.loads((tmp_path / ckpt.STATUS_FILE).read_text())
    assert status["status"] == "finished" and status["lr_lowered"] == result.lr_lowered
    assert status["learning_rate"] == pytest.approx(30.0)
    assert ckpt.checkpoint_epochs_saved(tmp_path) == [0, 1, 2, 3]
    assert kernels.epochs == [0, 1, 2, 3] and kernels.all_finite


def test_lower_lr_gives_up_after_max_lr_restarts(tmp_path):
    cfg = _cfg(HOPELESS_LR, on_divergence="lower_lr", max_lr_restarts=1)
    result, messages = _train_logged(cfg, tmp_path)
    assert [d["new_lr"] for d in result.lr_lowered] == [pytest.approx(HOPELESS_LR / 10)]
    assert result.diverged["learning_rate"] == pytest.approx(HOPELESS_LR / 10)
    errors = [r.getMessage() for r in messages if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "trainer.max_lr_restarts=1" in errors[0]
    assert json.loads((tmp_path / ckpt.STATUS_FILE).read_text())["status"] == "diverged"
    assert all(_finite(c.params) for c in ckpt.iter_checkpoints(tmp_path))


def test_a_stopped_run_resumes_with_lower_lr_and_walks_back_past_a_blown_up_checkpoint(
    stopped, tmp_path
):
    """The stopped run's epoch-1 checkpoint is finite but blown up (train_loss ~1e27): the
    restart from it at lr/10 diverges again in epoch 2, so the next goes back to epoch 0."""
    out = tmp_path / "run"
    shutil.copytree(stopped[0], out)
    assert stopped[1].metrics[-1]["train_loss"] > 1e20
    result = train(_cfg(STOP_LR, on_divergence="lower_lr"), out)
    assert result.resumed_from == 1 and result.diverged is None
    assert [(d["restart_epoch"], d["new_lr"]) for d in result.lr_lowered] == [
        (1, pytest.approx(20.0)),
        (0, pytest.approx(2.0)),
    ]
    assert [d["dropped_checkpoints"] for d in result.lr_lowered] == [[], [1]]
    assert json.loads((out / ckpt.STATUS_FILE).read_text())["status"] == "finished"
    assert [r["epoch"] for r in result.metrics] == [0, 1, 2, 3]
    assert all(np.isfinite(r["train_loss"]) for r in result.metrics)
    assert result.metrics[-1]["train_loss"] < 1.0
    assert ckpt.checkpoint_epochs_saved(out) == [0, 1, 2, 3]
    assert all(_finite(c.params) for c in ckpt.iter_checkpoints(out))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("on_divergence", "retry", r"trainer.on_divergence: must be one of \['stop', 'lower_lr'\]"),
        ("max_lr_restarts", -1, "trainer.max_lr_restarts: must be an int >= 0, got -1"),
        ("max_lr_restarts", 1.5, "trainer.max_lr_restarts: must be an int >= 0, got 1.5"),
    ],
)
def test_bad_divergence_config_names_the_key(key, value, message):
    with pytest.raises(ValueError, match=message):
        validate_config(resolve_config(_cfg(1.0, **{key: value})))


def test_report_lists_diverged_runs_and_leaves_them_out(stopped):
    out, _, _, _ = stopped
    root = out.parent
    fine = root / "fine"
    train(_cfg(1.0, epochs=1, checkpoint_epochs=[0]), fine, callbacks=[_Kernels()])
    legacy = root / "legacy"  # a run made before status.json: NaN in its records
    legacy.mkdir()
    shutil.copy(out / ckpt.CONFIG_FILE, legacy / ckpt.CONFIG_FILE)
    records = [{"epoch": 0, "step": 0, "train_loss": 2.0, "relative_frobenius_error": 0.1}]
    records.append({"epoch": 1, "step": 8, "train_loss": float("nan")})
    ckpt.write_metrics(legacy, records)

    runs, diverged = gather_runs(root)
    assert runs == [fine]
    step = json.loads((out / ckpt.STATUS_FILE).read_text())["diverged"]["step"]
    assert [(d["run"], d["epoch"], d["step"], d["learning_rate"]) for d in diverged] == [
        ("legacy", 1, 8, STOP_LR),
        ("stopped", 2, step, STOP_LR),
    ]
    assert divergence_of(fine) is None
    # the stopped run has rows of its own (kernels at its finite checkpoints); none pass
    assert run_rows(out) and run_rows(legacy)
    assert {r["run_dir"] for d in runs for r in run_rows(d)} == {str(fine)}


def _width_run(root, name, width, seed, error, status=None):
    """A run directory as the width_init preset writes it, with one init record."""
    d = root / name
    d.mkdir(parents=True)
    cfg = {
        "seed": seed,
        "experiment_name": "width_init",
        "model": {"name": "mlp", "width": width, "depth": 2, "parameterization": "ntk"},
        "optimizer": {"learning_rate": 1.0},
    }
    (d / ckpt.CONFIG_FILE).write_text(json.dumps(cfg))  # JSON is YAML
    rec = {"epoch": 0, "step": 0, "n": 20, "n_test": 20, "num_outputs": 10}
    rec.update(relative_frobenius_error=error, lambda_max_rel_error=error)
    rec.update(lambda_min_rel_error=error, cond_entk=10.0, cond_pntk=10.0)
    rec.update(time_entk_s=0.1, time_pntk_s=0.01, kernel_bytes_entk=100, kernel_bytes_pntk=10)
    for key, value in [("pred_rel_diff", error), ("acc_entk", 0.9), ("acc_pntk", 0.9)]:
        rec[f"kr_{key}@ridge=0"] = value
    rec["kr_argmax_disagree@ridge=0"] = 0.0
    ckpt.write_metrics(d, [rec])
    if status is not None:
        ckpt.write_status(d, status)


def test_build_report_names_diverged_runs_and_keeps_them_from_the_fits(tmp_path):
    root = tmp_path / "runs"
    for width in (16, 64, 256):
        for seed in (0, 1):
            _width_run(root, f"w{width}_s{seed}", width, seed, 0.5 * (width / 16) ** -0.5)
    # its init record is finite, but the run diverged later: not one of its rows may count
    info = {"epoch": 3, "step": 42, "learning_rate": 1e6, "reason": "training loss is nan"}
    status = {"status": "diverged", "diverged": info, "learning_rate": 1e6, "lr_lowered": []}
    _width_run(root, "w1024_s0", 1024, 0, 1e3, {**status, "epoch": 2, "step": 28})

    build_report(root, tmp_path / "out", ridges=())
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["diverged_runs"] == [
        {
            "run": "w1024_s0",
            "run_dir": str(root / "w1024_s0"),
            "epoch": 3,
            "step": 42,
            "learning_rate": 1e6,
        }
    ]
    assert summary["runs"] == 6
    assert summary["rows"] and all(r["width"] != 1024 for r in summary["rows"])
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## Diverged runs" in text and "| w1024_s0 | 3 | 42 | 1000000.0 |" in text
    assert "## Diverged runs" not in _diverged_md([])


@pytest.mark.parametrize("on_divergence", ["stop", "lower_lr"])
def test_a_nonfinite_initialisation_stops_at_epoch_0_step_0(tmp_path, on_divergence):
    """sigma_w = 1e300 overflows float32: the initial network's loss is nan. The run stops
    before any step, keeps no checkpoint, computes no kernel, names the setting, and
    lower_lr does not retry (no learning rate changes the initialisation)."""
    cfg = _cfg(STOP_LR, on_divergence=on_divergence)
    cfg["model"]["sigma_w"] = 1e300
    kernels = _Kernels()
    result, messages = _train_logged(cfg, tmp_path, [kernels])
    assert result.diverged["epoch"] == 0 and result.diverged["step"] == 0
    assert "initial" in result.diverged["reason"]
    assert (result.epoch, result.step, result.metrics, result.lr_lowered) == (0, 0, [], [])
    status = json.loads((tmp_path / ckpt.STATUS_FILE).read_text())
    assert status["status"] == "diverged" and status["diverged"] == result.diverged
    assert (status["epoch"], status["step"]) == (0, 0)
    assert ckpt.checkpoint_epochs_saved(tmp_path) == [] and kernels.epochs == []
    assert ckpt.read_metrics(tmp_path) == []
    (error,) = [r.getMessage() for r in messages]  # one error, no restart warning
    assert "epoch 0, step 0" in error and "model.sigma_w=1e+300 (overflows float32)" in error
    assert "cannot help" in error and "last finite checkpoint" not in error
    assert divergence_of(tmp_path)["epoch"] == 0


def test_the_init_message_names_the_parameters_own_dtype():
    """The overflow note uses np.finfo of the parameters' floating dtype, not float32's."""
    from ntk_repro.train.loop import _init_settings

    cfg = {"model": {"sigma_w": 1e300, "sigma_b": 1e5}, "data": {"name": "digits"}}
    f64 = {"w": np.zeros(2, np.float64), "step": np.zeros((), np.int32)}
    assert "overflows" not in _init_settings(cfg, f64)  # 1e300 < finfo(float64).max
    f32 = {"w": np.zeros(2, np.float32)}
    assert "model.sigma_w=1e+300 (overflows float32)" in _init_settings(cfg, f32)
    assert "model.sigma_b=100000 (overflows" not in _init_settings(cfg, f32)
    f16 = {"w": np.zeros(2, np.float16)}
    assert "model.sigma_b=100000 (overflows float16)" in _init_settings(cfg, f16)


def test_a_run_without_training_keeps_its_kernels_when_its_loss_is_undefined(tmp_path):
    """A cost run's wider or narrower readout (O' = 3 < 10 classes) has no defined
    cross-entropy (labels beyond the outputs): with finite parameters and no step to take,
    that is no divergence, and its kernels are computed."""
    cfg = _cfg(STOP_LR, epochs=0, checkpoint_epochs=[0], loss="cross_entropy")
    cfg["model"]["num_outputs"] = 3
    kernels = _Kernels()
    result, _ = _train_logged(cfg, tmp_path, [kernels])
    assert result.diverged is None and kernels.epochs == [0] and kernels.all_finite
    assert not math.isfinite(result.metrics[0]["train_loss"])
