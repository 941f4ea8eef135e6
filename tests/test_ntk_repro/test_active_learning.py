"""The active-learning study: strategies, rounds, the C8 verdict (which can say no) and, slow,
the whole study on tiny settings from the real config."""

import json

import numpy as np
import pytest
from _study import compose_cfg
from omegaconf import OmegaConf

from ntk_repro.active_learning.claim import check_c8
from ntk_repro.active_learning.rounds import draw_round
from ntk_repro.active_learning.strategies import STRATEGIES, Query
from ntk_repro.report.verdicts import AGREES, DISAGREES, INCONCLUSIVE


def _query(outputs_CO):
    return Query(
        outputs=lambda x: outputs_CO,
        kernels={},
        params=None,
        state={},
        x_labelled=np.zeros((2, 1)),
        y_labelled=np.zeros(2, int),
        x_candidates=np.zeros((len(outputs_CO), 1)),
        x_pool=np.zeros((3, 1)),
        batch=2,
        rng=np.random.default_rng(0),
        ridge=0.0,
        chunk_size=4,
    )


def test_myopic_strategies_pick_the_least_certain():
    out = np.array([[5.0, 0, 0], [1.0, 0.9, 0], [0.2, 0.2, 0.2], [3.0, 1.0, 0]])
    assert list(STRATEGIES["entropy"](_query(out))) == [2, 1]
    assert list(STRATEGIES["margin"](_query(out))) == [2, 1]
    picked = STRATEGIES["random"](_query(out))
    assert len(set(picked.tolist())) == 2


def test_rounds_draw_disjoint_unlabelled_subsets():
    cfg = {"n_candidates": 5, "n_pool_subset": 7}
    labelled = np.arange(10)
    cands, pool = draw_round(40, labelled, cfg, seed=0, rnd=1)
    assert len(cands) == 5 and len(pool) == 7
    assert not set(cands) & set(pool) and not (set(cands) | set(pool)) & set(labelled)
    with pytest.raises(ValueError, match="exceed the 30 unlabelled points"):
        draw_round(40, labelled, {"n_candidates": 20, "n_pool_subset": 11}, seed=0, rnd=1)


def _seeds(r, e):
    per = {"correlation": 0, "relative_error": 0, "l2_rank_correlation": 0.5, "scale": 1.0}
    return [
        {k: {**per, "correlation": ri, "relative_error": ei} for k in ("pntk", "entk")}
        for ri, ei in zip(r, e, strict=True)
    ]


@pytest.mark.parametrize(
    ("r", "e", "verdict"),
    [
        ((0.9, 0.92, 0.88), (0.3, 0.35, 0.32), AGREES),
        ((0.9, 0.92, 0.88), (1.6, 1.7, 1.65), DISAGREES),  # worse than predicting no change
        ((-0.5, -0.45, -0.55), (0.3, 0.35, 0.32), DISAGREES),
        ((0.9, 0.1, 0.5), (0.2, 1.8, 0.9), INCONCLUSIVE),
        ((0.9,), (0.3,), INCONCLUSIVE),  # one seed: no spread, no interval
    ],
)
def test_c8_verdict_follows_its_rule(r, e, verdict):
    claims = check_c8(_seeds(r, e), "cnn")
    assert [c.model for c in claims] == ["cnn, pntk", "cnn, entk"]
    assert all(c.verdict == verdict for c in claims)


@pytest.mark.slow
def test_study_runs_end_to_end_on_tiny_settings(tmp_path):
    from ntk_repro.active_learning.run import main

    cfg = compose_cfg(
        [
            "seeds=[0,1]",
            "rounds=2",
            "n_initial=10",
            "batch=2",
            "n_candidates=12",
            "n_pool_subset=20",
            "initial_steps=3",
            "round_steps=3",
            "claim.n_candidates=3",
            "kernel_batch_size=8",
            "models=[{name: mlp, width: 16, readout_sigma_w: 0.1}]",
            f"out_dir={tmp_path}",
        ],
        config_name="active_learning",
    )
    summary = main(OmegaConf.to_container(cfg, resolve=True))
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["claims"] == summary["claims"] and len(saved["claims"]) == 2
    assert {c["verdict"] for c in saved["claims"]} <= {AGREES, DISAGREES, INCONCLUSIVE}
    curves = saved["curves"]["mlp"]
    assert set(curves) == set(STRATEGIES)
    assert [r["n_labels"] for r in curves["lookahead_pntk"]] == [10, 12, 14]
    assert saved["selection_times"]["mlp"]["entk_over_pntk"] > 0
    assert (tmp_path / "fig_active_learning.png").stat().st_size > 0
    assert "## C8" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "runs" / "mlp_w16" / "seed0" / "lookahead_entk" / "checkpoints").is_dir()


@pytest.mark.parametrize("kind", ["pntk", "entk"])
def test_linearised_steps_converge_to_the_lookahead(kind):
    """C8's same-steps comparison: momentum SGD on the linearised network, run long enough,
    reaches the look-ahead's prediction (its limit); after few steps it has not."""
    import ntk
    from ntk_repro.active_learning.claim import _same_steps

    n, c, u, o, p = 4, 3, 5, 3, 40
    rng = np.random.default_rng(0)
    j = rng.normal(size=(n + c + u, o, p)) / np.sqrt(p)
    k = np.einsum("aip,bjp->abij", j, j)
    if kind == "pntk":
        g = j.sum(1) / np.sqrt(o)
        k = g @ g.T
    f0_all = rng.normal(size=(n + c + u, o))
    sl, ss, su = slice(0, n), slice(n, n + c), slice(n + c, None)
    ks = {"ll": k[sl, sl], "ls": k[sl, ss], "ss": k[ss, ss], "ul": k[su, sl], "us": k[su, ss]}
    f0 = {"l": f0_all[sl], "s": f0_all[ss], "u": f0_all[su]}
    y, labels = np.arange(n) % o, np.arange(c) % o
    la = ntk.lookahead_from_kernels(
        ks["ll"], ks["ls"], ks["ss"], ks["ul"], ks["us"], y, f0["l"], f0["s"], f0["u"],
        candidate_labels=labels, return_deltas=True,
    )  # fmt: skip
    opt = {"name": "sgd", "learning_rate": 0.5, "momentum": 0.9}
    lin, ratios = _same_steps(ks, f0, y, labels, 4000, opt)
    np.testing.assert_allclose(lin, la.deltas, atol=1e-6 * np.max(np.abs(la.deltas)))
    assert max(ratios) < 1e-12
    few, ratios = _same_steps(ks, f0, y, labels, 3, opt)
    assert np.linalg.norm(few - la.deltas) > 0.01 * np.linalg.norm(la.deltas)
    assert min(ratios) > 1e-3
