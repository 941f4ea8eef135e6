"""The reproduction: presets under debug=smoke, report, W&B offline, recompute, launchers."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _study import CONF, ROOT, compose_cfg
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ntk_repro import experiment
from ntk_repro.report.build import SUMMARY_FIELDS, build_report

PRESETS = sorted(p.stem for p in (Path(CONF) / "experiment").glob("*.yaml"))


def test_every_preset_opens_with_a_command_and_no_hand_copied_numbers():
    assert set(PRESETS) >= {"width_init", "training", "spectra", "regression", "cost"}
    for name in PRESETS:
        head = (ROOT / "conf" / "experiment" / f"{name}.yaml").read_text().splitlines()[:12]
        text = "\n".join(head)
        assert "Command:" in text, f"{name}.yaml header lacks Command:"
        # numbers belong to runs: a measured runtime or result in a header goes stale
        for word in ("Runtime:", "Headline:", "Expected:"):
            assert word not in text, f"{name}.yaml header has a hand-copied {word}"


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """Every preset run under debug=smoke (MLP width 32), W&B offline in the run dir."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name in PRESETS:
        cfg = compose_cfg(
            [
                f"experiment={name}",
                "debug=smoke",
                "model.width=32",
                "logger=wandb",
                "logger.mode=offline",
            ]
        )
        run_dir = root / name
        experiment.run(cfg, run_dir)
        out[name] = run_dir
    return root, out


@pytest.mark.slow
def test_presets_run_and_log_kernels(smoke_runs):
    _, runs = smoke_runs
    for name, run_dir in runs.items():
        recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        with_k = [r for r in recs if "relative_frobenius_error" in r]
        assert with_k and with_k[0]["epoch"] == 0, name
        r = with_k[0]
        assert 0.0 < r["relative_frobenius_error"] < 2.0
        assert r["n"] == 20 and r["num_outputs"] == 10
        assert (run_dir / "kernels" / "epoch_0000.npz").exists()
    training = [
        json.loads(x) for x in (runs["training"] / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in training if "relative_frobenius_error" in r] == [0, 1, 2]
    cost = json.loads((runs["cost"] / "metrics.jsonl").read_text().splitlines()[0])
    for kind in ("trace", "diagonal", "single_logit"):
        assert f"relative_frobenius_error_{kind}" in cost


@pytest.mark.slow
def test_wandb_offline_run_holds_images_and_stays_in_run_dir(smoke_runs):
    _, runs = smoke_runs
    run_dir = runs["width_init"]
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    images = list(offline[0].rglob("media/images/*.png"))
    assert images, "no wandb.Image logged"
    assert not (Path.cwd() / "wandb").exists()


@pytest.mark.slow
def test_report_has_every_figure_and_a_finite_summary(smoke_runs, tmp_path):
    root, _ = smoke_runs
    out = build_report(root, tmp_path)
    for name in (
        "frobenius_vs_width",
        "frobenius_vs_epoch",
        "eigen_vs_width",
        "regression_vs_width",
        "cost_vs_width",
        "cost_vs_outputs",
        "spectra",
        "heatmaps",
    ):
        assert Path(out["figures"][name]).stat().st_size > 1000, name
    full = json.loads((tmp_path / "summary.json").read_text())
    assert {c["id"] for c in full["claims"]} >= {"C1", "C2", "C3", "C4", "C5", "C6", "C7"}
    summary = [r for r in full["rows"] if r.get("relative_frobenius_error") is not None]
    assert len(summary) >= len(PRESETS)
    for row in summary:
        for field in SUMMARY_FIELDS:
            assert field in row, field
            if field not in ("depth",):
                assert row[field] is not None and (
                    not isinstance(row[field], float) or math.isfinite(row[field])
                ), (field, row[field])
    text = (tmp_path / "report.md").read_text()
    assert "![frobenius_vs_width](fig_frobenius_width.png)" in text
    assert "agrees" in text


@pytest.mark.slow
def test_recompute_matches_numbers_logged_during_training(smoke_runs):
    _, runs = smoke_runs
    run_dir = runs["training"]
    logged = {
        r["epoch"]: r
        for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        if "relative_frobenius_error" in r
    }
    again = experiment.recompute(run_dir)
    assert [r["epoch"] for r in again] == sorted(logged)
    for r in again:
        for key in (
            "relative_frobenius_error",
            "lambda_max_rel_error",
            "kr_pred_rel_diff",
            "kr_acc_entk",
            "kr_acc_pntk",
            "cond_entk",
        ):
            np.testing.assert_allclose(r[key], logged[r["epoch"]][key], rtol=1e-6)


def test_paper_configs_compose():
    cfg = compose_cfg(
        [
            "experiment=width_init",
            "data=cifar10",
            "model=resnet18",
            "model.width=64",
            "kernel.n_per_class=20",
            "kernel.batch_size=100",
        ]
    )
    assert cfg.kernel.enabled and cfg.data.name == "cifar10"
    assert OmegaConf.to_container(cfg, resolve=True)["trainer"]["epochs"] == 0


@pytest.mark.parametrize(
    "launcher", ["basic", "joblib", "submitit_local", "submitit_slurm", "slurm"]
)
def test_launchers_compose(launcher):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert launcher.split("_")[-1].lower() in cfg.hydra.launcher._target_.lower()
    if launcher == "slurm":  # the preset's own values on top of the plugin's schema
        assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.timeout_min == 240


@pytest.mark.slow
def test_submitit_local_sweep(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "WANDB_MODE": "disabled"}
    cmd = [
        sys.executable, str(ROOT / "experiments" / "train.py"), "-m",
        "hydra/launcher=submitit_local", "experiment=width_init", "debug=smoke",
        "model.width=8,16", f"hydra.sweep.dir={tmp_path}", "hydra.launcher.timeout_min=10",
    ]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=tmp_path, env=env, capture_output=True, timeout=600)
    runs = sorted(p.parent.name for p in tmp_path.rglob("metrics.jsonl"))
    assert runs == ["mlp_w16_s0", "mlp_w8_s0"]


def test_kernels_at_checkpoints_compile_once(tmp_path):
    """The study's kernels at several checkpoints of one BatchNorm model: after the first
    checkpoint, no backend compile at all (counted with jax.monitoring)."""
    import jax
    from _compiles import count_backend_compiles

    from ntk_repro.analysis.evalset import EvalSet
    from ntk_repro.models import build_model, init_model

    model = build_model("cnn", num_classes=3, width=4, depth=1, norm="batchnorm")
    variables = init_model(model, jax.random.key(0), (6, 6, 1))
    r = np.random.default_rng(0)
    evalset = EvalSet(
        r.normal(size=(6, 6, 6, 1)).astype(np.float32),
        np.arange(6) % 3,
        r.normal(size=(3, 6, 6, 1)).astype(np.float32),
        np.arange(3) % 3,
        3,
    )
    kcfg = {"ridges": [0.0, 0.1], "implementation": "auto", "batch_size": None}
    counts = []
    for c in range(3):
        moved = jax.tree_util.tree_map(lambda a, c=c: a * (1.0 + 0.2 * c), variables)
        with count_backend_compiles() as n:
            scalars = experiment.kernels_at(model, moved, evalset, kcfg, tmp_path, epoch=c + 1)
        counts.append(n[0])
        assert np.isfinite(scalars["relative_frobenius_error"])
        assert scalars["kernel_bytes_entk"] > scalars["kernel_bytes_pntk"] > 0
    assert counts[0] > 0 and counts[1:] == [0, 0], counts


# --- the report on synthetic runs (fast) -----------------------------------------------------


def _fake_run(root, name, cfg, records):
    import yaml

    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return d


def _fake_width_runs(root, ridges=(0.0, 0.01, 1.0)):
    rng = np.random.default_rng(0)
    for model in ("mlp", "cnn"):
        for w in (16, 64, 256):
            for seed in (0, 1):
                e = 0.5 * (w / 16) ** -0.5 * np.exp(0.02 * rng.standard_normal())
                rec = {
                    "epoch": 0,
                    "step": 0,
                    "n": 20,
                    "n_test": 20,
                    "num_outputs": 10,
                    "relative_frobenius_error": e,
                    "lambda_max_rel_error": e,
                    "lambda_min_rel_error": 3 * e,
                    "cond_entk": 100.0,
                    "cond_pntk": 120.0,
                    "time_entk_s": 0.1,
                    "time_pntk_s": 0.01,
                    "kernel_bytes_entk": 1000,
                    "kernel_bytes_pntk": 100,
                    "lin_pred_rel_diff": e,
                }
                for r in ridges:
                    tag = f"@ridge={r:g}"
                    rec.update(
                        {
                            "kr_pred_rel_diff" + tag: e / (1 + r),
                            "kr_acc_entk" + tag: 0.9,
                            "kr_acc_pntk" + tag: 0.9,
                            "kr_argmax_disagree" + tag: 0.0,
                        }
                    )
                cfg = {
                    "seed": seed,
                    "experiment_name": "width_init",
                    "model": {"name": model, "width": w, "depth": 2, "parameterization": "ntk"},
                }
                _fake_run(root, f"{model}_w{w}_s{seed}", cfg, [rec])


def test_report_claims_list_and_regression_ridges_from_the_runs(tmp_path):
    _fake_width_runs(tmp_path / "runs")
    out = build_report(tmp_path / "runs", tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["ridges"] == [0.0, 0.01, 1.0]
    got = {(c["id"], c["model"]) for c in summary["claims"]}
    assert {(f"C{i}", m) for i in range(1, 6) for m in ("mlp", "cnn")} <= got
    for c in summary["claims"]:
        assert c["verdict"] in ("agrees", "does not agree", "inconclusive")
        assert {"id", "model", "measured", "expected", "verdict"} <= set(c)
    c1 = next(c for c in summary["claims"] if c["id"] == "C1" and c["model"] == "mlp")
    assert c1["measured"]["slope"] == pytest.approx(-0.5, abs=0.05) and c1["verdict"] == "agrees"
    assert "fig_regression_width.png" in out["figures"]["regression_vs_width"]
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| **C1**" in text and "**agrees**" in text


def test_report_refuses_ridges_the_runs_did_not_compute(tmp_path):
    _fake_width_runs(tmp_path / "runs")
    with pytest.raises(ValueError, match=r"ridges: \[0.001\] were not computed"):
        build_report(tmp_path / "runs", tmp_path / "out", ridges=(0.0, 0.001))


def test_a_plotted_series_is_never_empty(tmp_path):
    from ntk_repro.report import figures as plotting

    rows = [{"model": "mlp", "width": 64, "seed": 0, "epoch": 0, "kr_pred_rel_diff@ridge=0": 0.5}]
    with pytest.raises(ValueError, match="has no points"):
        plotting._series(None, [], [], label="empty")
    # a ridge present in one model's runs but not another's: its series would be empty
    rows.append(
        {
            "model": "cnn",
            "width": 64,
            "seed": 0,
            "epoch": 0,
            "kr_pred_rel_diff@ridge=0": 0.4,
            "kr_pred_rel_diff@ridge=0.1": 0.3,
        }
    )
    with pytest.raises(ValueError, match="ridge 0.1 has no points for MLP"):
        plotting.regression_vs_width(rows, None, tmp_path / "f.png")


def test_report_logs_figures_and_claims_to_wandb_offline(tmp_path, monkeypatch):
    _fake_width_runs(tmp_path / "runs")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "out"))
    build_report(tmp_path / "runs", tmp_path / "out")
    offline = list((tmp_path / "out" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    assert list(offline[0].rglob("media/images/*.png")), "no figure logged"
    assert list(offline[0].rglob("media/table/claims*.json")), "no claims table logged"


def test_epoch_metrics_reach_the_logger_live(tmp_path):
    """Every evaluated epoch (not only checkpoints) goes to the logger as it happens."""
    logged = []

    class Spy:
        def log(self, record, step):
            logged.append((step, dict(record)))

        def log_figures(self, figures, step):
            pass

        def log_table(self, name, rows):
            pass

        def finish(self):
            pass

    from ntk_repro import loggers

    cfg = compose_cfg(["debug=smoke", "trainer.epochs=3", "trainer.checkpoint_epochs=[0]"])
    loggers.LOGGERS["spy"] = lambda **_: Spy()
    try:
        cfg.logger.name = "spy"
        experiment.run(cfg, tmp_path)
    finally:
        del loggers.LOGGERS["spy"]
    epochs = [r["epoch"] for _, r in logged if "train_loss" in r]
    assert epochs == [0, 1, 2, 3]


def test_paper_cost_sweep_composes():
    from ntk_repro.train.loop import resolve_config, validate_config

    cfg = compose_cfg(
        [
            "experiment=cost_outputs",
            "kernel.measure=cost",
            "data=cifar10",
            "model=resnet18",
            "model.depth=34",
            "model.width=64",
            "model.num_outputs=200",
        ]
    )
    resolved = resolve_config(cfg)
    validate_config(resolved)
    assert resolved["model"]["num_outputs"] == 200 and resolved["kernel"]["dtype"] == "float32"
