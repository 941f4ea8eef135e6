"""The Hydra entry point: every config composes, smoke runs, CLI errors, kill -9 and resume."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ntk_repro.train import checkpoint as ckpt
from ntk_repro.train.loop import resolve_config, train, validate_config

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
SCRIPT = ROOT / "experiments" / "train.py"


def _options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_config_groups_match_the_registries():
    """Every registered model, dataset and optimiser has a config, and every config a name
    the registry knows (configs and code cannot drift apart)."""
    from ntk_repro.data import LOADERS
    from ntk_repro.models import MODELS
    from ntk_repro.train.optim import OPTIMIZERS

    assert set(_options("model")) == set(MODELS)
    assert set(_options("data")) == set(LOADERS)
    assert set(_options("optimizer")) == set(OPTIMIZERS)


@pytest.mark.parametrize("debug", [[], ["debug=smoke"]], ids=["full", "smoke"])
def test_every_config_composes_and_validates(debug, monkeypatch):
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    for model in _options("model"):
        for data in _options("data"):
            for optimizer in _options("optimizer"):
                overrides = [f"model={model}", f"data={data}", f"optimizer={optimizer}", *debug]
                cfg = _compose(overrides)
                assert (cfg.model.name, cfg.data.name, cfg.optimizer.name) == (
                    model,
                    data,
                    optimizer,
                )
                resolved = resolve_config(cfg)
                validate_config(resolved)
                assert OmegaConf.to_container(cfg, resolve=True)["seed"] == 0
                if debug:
                    assert cfg.trainer.epochs == 2 and cfg.trainer.progress is False
                    assert cfg.model.width == 4 and cfg.data.n_train == 96


def test_tfds_data_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    assert _compose(["data=mnist"]).data.data_dir == str(tmp_path)


# Every model on every embedded dataset, except ResNet-18 on mnist1d (slow to compile; its
# shapes are covered in test_models).
SMOKE_PAIRS = [
    (model, data)
    for model in _options("model")
    for data in ("digits", "mnist1d", "synthetic")
    if (model, data) != ("resnet18", "mnist1d")
]


@pytest.mark.slow
@pytest.mark.parametrize(("model", "data"), SMOKE_PAIRS)
def test_smoke_runs(tmp_path, model, data):
    cfg = _compose([f"model={model}", f"data={data}", "debug=smoke"])
    if model != "mlp" and data == "synthetic":
        with pytest.raises(ValueError, match=f"model '{model}' needs inputs with a spatial"):
            train(cfg, tmp_path)
        return
    result = train(cfg, tmp_path)
    assert [r["epoch"] for r in result.metrics] == [0, 1, 2]
    assert ckpt.checkpoint_epochs_saved(tmp_path) == [0, 1, 2]
    assert all(np.isfinite(r["train_loss"]) for r in result.metrics)
    assert (tmp_path / "config.yaml").exists()


# --- the real command line ---------------------------------------------------------------


def _env():
    env = dict(os.environ)
    env.update({"JAX_PLATFORMS": "cpu", "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"})
    return env


def _command(out_dir, *overrides):
    return [sys.executable, str(SCRIPT), *overrides, f"hydra.run.dir={out_dir}"]


# Enough epochs that a kill after the second checkpoint lands mid-run.
RESUME_ARGS = [
    "model=mlp",
    "data=digits",
    "model.width=256",
    "trainer.epochs=10",
    "trainer.batch_size=16",
    "trainer.checkpoint_every=1",
    "trainer.progress=false",
    "seed=3",
]


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted_run(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"

    subprocess.run(
        _command(full_dir, *RESUME_ARGS), cwd=cwd, env=_env(), check=True, capture_output=True
    )

    proc = subprocess.Popen(
        _command(killed_dir, *RESUME_ARGS),
        cwd=cwd,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while len(ckpt.checkpoint_epochs_saved(killed_dir)) < 2:
            assert proc.poll() is None, "the run ended before its second checkpoint"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved_at_kill = ckpt.checkpoint_epochs_saved(killed_dir)
    assert 10 not in saved_at_kill  # killed mid-run

    rerun = subprocess.run(
        _command(killed_dir, *RESUME_ARGS), cwd=cwd, env=_env(), capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming {killed_dir} from epoch {saved_at_kill[-1]}" in rerun.stderr + rerun.stdout

    assert (killed_dir / "metrics.jsonl").read_text() == (full_dir / "metrics.jsonl").read_text()
    assert ckpt.checkpoint_epochs_saved(killed_dir) == list(range(11))
    final_full = list(ckpt.iter_checkpoints(full_dir, epochs=[10]))[0]
    final_resumed = list(ckpt.iter_checkpoints(killed_dir, epochs=[10]))[0]
    for a, b in zip(_flat(final_full.params), _flat(final_resumed.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert os.listdir(cwd) == []  # nothing written outside hydra.run.dir


def _flat(tree):
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(tree)]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.width=0", "width: must be a positive int, got 0"),
        ("model=vgg", "Could not find 'model/vgg'"),
    ],
)
@pytest.mark.slow
def test_cli_bad_input_fails_with_message(tmp_path, override, message):
    result = subprocess.run(
        _command(tmp_path / "out", "debug=smoke", override),
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()


_KERNEL_ON = "defaults:\n  - override /kernel: default\n"


@pytest.mark.parametrize(
    ("preset", "message"),
    [
        ("trainer:\n  epochz: 3\n", "epochz"),  # a misspelt key in a YAML file
        ("trainer:\n  epochs: many\n", "epochs"),  # a value of the wrong type
        ("optimizer:\n  momentun: 0.5\n", "momentun"),
        ("optimizer:\n  nesterov: maybe\n", "nesterov"),
        ("model:\n  widht: 8\n", "widht"),
        ("model:\n  width: wide\n", "width"),
        ("data:\n  n_trian: 8\n", "n_trian"),
        ("data:\n  classes: three\n", "classes"),
        (f"{_KERNEL_ON}kernel:\n  ridge: [0.0]\n", "ridge"),
        (f"{_KERNEL_ON}kernel:\n  compare_float32: sometimes\n", "compare_float32"),
        (f"{_KERNEL_ON}kernel:\n  ridges: [0.0, 0.1]\n", None),
        ("paths:\n  result_dir: /tmp\n", "result_dir"),
        ("logger:\n  mode: offline\n", None),  # a good preset composes
        ("model:\n  width: 8\n  num_outputs: 20\n", None),
    ],
)
def test_schemas_check_keys_and_types_at_composition(tmp_path, preset, message):
    import shutil

    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "experiment" / "probe.yaml").write_text("# @package _global_\n" + preset)
    overrides = ["experiment=probe", "logger=wandb"]
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        if message is None:
            cfg = compose(config_name="train", overrides=overrides)
            assert cfg.logger.mode == "offline" and cfg.model.num_outputs in (None, 20)
            return
        with pytest.raises(Exception, match=message):
            compose(config_name="train", overrides=overrides)


def test_paths_group_moves_every_output(tmp_path):
    """paths.results_dir is the one place outputs are rooted: runs, sweeps, presets, report."""
    root = str(tmp_path / "out")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for preset in _options("experiment"):
            cfg = compose(
                config_name="train",
                overrides=[f"experiment={preset}", f"paths.results_dir={root}"],
                return_hydra_config=True,
            )
            dirs = OmegaConf.to_container(cfg.hydra, resolve=False)
            run, sweep = cfg.hydra.run.dir, cfg.hydra.sweep.dir
            assert run.startswith(root) and sweep.startswith(root + "/runs/"), (preset, dirs)
        for name in ("report", "bench"):
            cfg = compose(config_name=name, overrides=[f"paths.results_dir={root}"])
            assert cfg.out_dir.startswith(root), name


def test_python_api_defaults_are_the_yaml_defaults():
    """train(dict) fills trainer keys from conf/trainer/default.yaml, not from a Python copy."""
    yaml_cfg = OmegaConf.to_container(_compose([]), resolve=True)["trainer"]
    resolved = resolve_config({"model": {"name": "mlp"}, "trainer": {}})["trainer"]
    assert resolved == yaml_cfg
