"""benchmarks.lookahead on tiny sizes: both kernels time in their own process and the JSON
holds the time ratio beside the FLOP ratio."""

import json

import pytest

from benchmarks import lookahead


@pytest.mark.slow
def test_lookahead_benchmark_writes_ratios(tmp_path):
    lookahead.main(
        [str(tmp_path), "--n-labelled", "6", "--n-candidates", "10", "--n-pool", "12",
         "--chunk", "4", "--width", "4"]
    )  # fmt: skip
    out = json.loads((tmp_path / "lookahead_cnn_w4.json").read_text())
    for kind in ("pntk", "entk"):
        run = out["runs"][kind]
        assert run["peak_rss_bytes"] > 0 and run["kernel_flops_estimate"] > 0, run
        assert len(run["warm_seconds"]) == 3  # --repeats defaults to 3; the fastest reported
        assert run["fastest_warm_seconds"] == min(run["warm_seconds"])
    ratios = out["entk_over_pntk"]
    assert ratios["solve_flops"] > 1 and ratios["kernel_flops"] > 1
    assert ratios["warm_time"] > 0


def test_solve_flops_follow_the_update_order():
    """The pNTK's update costs 2·U·N·C (W = K_UL V), not 2·U·N·C·O; the eNTK's 2·UO·NO·C."""
    n, c, u, o = 50, 40, 30, 10
    grow_u = lookahead._solve_flops(n, c, 2 * u, o, 1) - lookahead._solve_flops(n, c, u, o, 1)
    # the terms linear in U: f_L(U) (2·U·N·O), W (2·U·N·C), K_UC − W and ⊗ e (U·C·(1 + O))
    assert grow_u == 2 * u * n * o + 2 * u * n * c + u * c * (1 + o)
    grow_u = lookahead._solve_flops(n, c, 2 * u, o, o) - lookahead._solve_flops(n, c, u, o, o)
    assert grow_u == 2 * u * o * n * o + 2 * u * o * n * o * c + 2 * u * o * c * o


def test_repeats_must_be_positive(tmp_path):
    with pytest.raises(SystemExit):
        lookahead.main([str(tmp_path), "--repeats", "0"])
