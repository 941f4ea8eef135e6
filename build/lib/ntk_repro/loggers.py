"""Experiment loggers, chosen by name from :data:`LOGGERS`.

Every run writes its local files (``metrics.jsonl``, figures) whatever the logger; a logger
only mirrors them. ``wandb`` runs offline unless ``mode: online`` is asked for, and keeps its
files under the run directory (``WANDB_DIR``), never in the working directory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


class NoLogger:
    """Logs nothing (the local files are still written by the caller)."""

    def __init__(self, **_: Any):
        pass

    def log(self, record: Mapping[str, Any], step: int) -> None:
        pass

    def log_figures(self, figures: Mapping[str, str], step: int) -> None:
        pass

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        pass

    def finish(self) -> None:
        pass


def _scalar_items(record: Mapping[str, Any]):
    for k, v in record.items():
        if isinstance(v, bool):
            yield k, int(v)
        elif isinstance(v, int | float) and math.isfinite(float(v)):
            yield k, v


class WandbLogger:
    """Weights & Biases: loss and accuracy of every evaluated epoch as it happens, kernel
    scalars at checkpoints, figures as ``wandb.Image``, tables.

    Args:
      run_dir: the run directory; W&B files go under ``run_dir/wandb``.
      project, entity, group, tags, name: W&B run identity (``group`` = the sweep).
      mode: ``"offline"`` (default), ``"online"`` or ``"disabled"``.
      config: the resolved run config, stored with the run.
    """

    def __init__(
        self,
        *,
        run_dir: str | Path,
        project: str = "ntk",
        entity: str | None = None,
        group: str | None = None,
        tags: Sequence[str] = (),
        name: str | None = None,
        mode: str = "offline",
        config: Mapping[str, Any] | None = None,
        **_: Any,
    ):
        if mode not in ("offline", "online", "disabled"):
            raise ValueError(f"logger.mode: expected offline, online or disabled, got {mode!r}")
        import wandb

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("WANDB_DIR", str(run_dir))
        os.environ.setdefault("WANDB_SILENT", "true")
        self._wandb = wandb
        self.run = wandb.init(
            project=project,
            entity=entity,
            group=group,
            tags=list(tags or ()),
            name=name,
            mode=mode,
            dir=str(run_dir),
            config=dict(config or {}),
            reinit="finish_previous",
        )

    def log(self, record: Mapping[str, Any], step: int) -> None:
        self.run.log(dict(_scalar_items(record)), step=step)

    def log_figures(self, figures: Mapping[str, str], step: int) -> None:
        self.run.log({k: self._wandb.Image(str(v)) for k, v in figures.items()}, step=step)

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """One ``wandb.Table``: a column per scalar or text field, in first-seen order."""
        if not rows:
            return
        cols: dict[str, None] = {}
        for r in rows:
            cols.update((k, None) for k, _ in _scalar_items(r))
            cols.update((k, None) for k, v in r.items() if isinstance(v, str))
        table = self._wandb.Table(columns=list(cols), data=[[r.get(c) for c in cols] for r in rows])
        self.run.log({name: table})

    def finish(self) -> None:
        self.run.finish()


LOGGERS = {"none": NoLogger, "wandb": WandbLogger}


def build_logger(cfg: Mapping[str, Any] | None, *, run_dir: str | Path, config=None):
    """The logger named by ``cfg["name"]`` (``none`` when cfg is empty)."""
    cfg = dict(cfg or {})
    name = cfg.pop("name", "none")
    if name not in LOGGERS:
        raise ValueError(f"logger.name: unknown logger {name!r}; valid: {sorted(LOGGERS)}")
    return LOGGERS[name](run_dir=run_dir, config=config, **cfg)
