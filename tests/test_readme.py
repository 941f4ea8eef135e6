"""The README's Python code blocks run, in order, in one namespace (as a reader would)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i}", "exec"), namespace)  # noqa: S102
    assert namespace["theta"].shape == (32, 32, 10, 10)
    assert namespace["p"].shape == (32, 32)
    assert namespace["k"].shape == (32, 32)
