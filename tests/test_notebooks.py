"""The notebooks execute, on tiny settings, and are committed without outputs."""

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
pytestmark = pytest.mark.slow  # each notebook starts a kernel and trains


def _tiny_summary(path: Path) -> Path:
    rows = [
        {"model": "mlp", "width": w, "epoch": 0, "relative_frobenius_error": 1.0 / w**0.5}
        for w in (16, 64, 256)
    ]
    path.write_text(json.dumps(rows))
    return path


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, tmp_path, monkeypatch):
    nb = nbformat.read(path, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code")
    monkeypatch.setenv("NTK_NB_WIDTH", "16")
    monkeypatch.setenv("NTK_NB_N", "6")
    monkeypatch.setenv("NTK_NB_WIDTHS", "8,32")
    monkeypatch.setenv("NTK_NB_MODELS", "mlp")
    monkeypatch.setenv("NTK_NB_PER_CLASS", "1")
    monkeypatch.setenv("NTK_NB_SUMMARY", str(_tiny_summary(tmp_path / "summary.json")))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the inline backend: figures as outputs
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    text, images = _outputs(nb)
    for pattern in EXPECTED[path.name]:
        assert re.search(pattern, text, re.M), (path.name, pattern, text)
    assert images >= 1, (path.name, "no figure drawn")


# What each notebook must print, on the tiny settings above (regular expressions).
EXPECTED = {
    "01_quickstart.ipynb": [r"\(6, 6, 10, 10\) \(6, 6\) relative Frobenius error: \d+\.\d+"],
    "02_approximation_quality.ipynb": [r"^mlp 8 \d+\.\d+", r"^mlp 32 \d+\.\d+"],
    "03_sweep_summary.ipynb": [r"^3 checkpoints"],
    "04_is_pntk_good_enough.ipynb": [
        r"^wide 8 \d+\.\d+ readout width 8$",
        r"^bottleneck 32 \d+\.\d+ readout width 4$",
        r"^pNTK error at width 32: wide readout \d+\.\d+ < bottleneck readout \d+\.\d+$",
        r"^attention readout width 8 pNTK error \d+\.\d+",
        r"approximation report \(in memory\): N=6 points, 6 test, O=10",
    ],
    "05_lookahead_active_learning.ipynb": [
        r"^pntk changes \(24,\) query \[(\d+, ){4}\d+\] max changes \d+",
        r"^entk changes \(24,\) query \[(\d+, ){4}\d+\] max changes \d+",
        r"^pNTK vs eNTK L2 scores: correlation -?\d\.\d+",
    ],
}


def _outputs(nb) -> tuple[str, int]:
    """All text a notebook printed, and how many images it shows."""
    text, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                text.append(out["text"])
            data = out.get("data", {})
            text.append(data.get("text/plain", ""))
            images += "image/png" in data
    return "\n".join(text), images
