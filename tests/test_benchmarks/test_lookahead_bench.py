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
    ratios = out["entk_over_pntk"]
    assert ratios["solve_flops"] > 1 and ratios["kernel_flops"] > 1
    assert ratios["warm_time"] > 0
