"""What makes a stored report resumable: ``DIR/report_meta.json`` (the inputs and settings it
was started with; a resume with others is refused) and ``DIR/phases/NAME.json`` (each finished
phase's result, read back instead of computed again)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ntk import atomic
from ntk.approximation.inputs import Context
from ntk.kernels.model import is_array, split_kwargs
from ntk.scale.blocks import array_digest

META = "report_meta.json"
FORMAT = "ntk.approximation_report/1"


def _digest(tree) -> str | None:
    return None if tree is None else array_digest(tree)


def report_meta(ctx: Context, y_te, settings: dict) -> dict:
    """The inputs and settings a stored report is computed from, arrays by their digests."""
    dynamic, static = split_kwargs(ctx.apply_kwargs)
    return {
        "format": FORMAT,
        "params": _digest(ctx.params),
        "x": _digest(ctx.x),
        "x_test": _digest(ctx.x_test),
        "y": _digest(ctx.y),
        "y_test": _digest(y_te),
        "state": [_digest(dynamic), repr(static.values)],
        "kinds": list(ctx.kinds),
        "kind_options": {
            k: {o: (_digest(v) if is_array(v) else v) for o, v in sorted(opts.items())}
            for k, opts in ctx.options.items()
        },
        "ridges": list(ctx.ridges),
        **settings,
    }


def check_meta(root: Path, meta: dict) -> None:
    """``root/report_meta.json``: written if new; a resume with other inputs is refused."""
    root.mkdir(parents=True, exist_ok=True)
    file = root / META
    if not file.exists():
        if any(root.iterdir()):
            raise ValueError(
                f"path: {str(root)!r} is not empty and holds no {META}; refusing to write "
                "into it. Use a new or empty directory."
            )
        atomic.write_json(file, meta, sort_keys=True)
        return
    stored = json.loads(file.read_text())
    diff = sorted(k for k in set(stored) | set(meta) if stored.get(k) != meta.get(k))
    if diff:
        raise ValueError(
            f"path: {str(root)!r} holds a report of other inputs or settings (differing: "
            f"{diff}); refusing to resume. Use another path or delete this one."
        )


def phase(root: Path, name: str, compute: Callable[[], Any]) -> Any:
    """A finished phase's result from ``root/phases/NAME.json``, else computed and saved."""
    file = root / "phases" / f"{name}.json"
    if file.exists():
        return json.loads(file.read_text())
    out = compute()
    file.parent.mkdir(exist_ok=True)
    atomic.write_json(file, out)
    return out
