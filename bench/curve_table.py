"""A learning-curve table (bench/record_curves.py writes one): configurations of a search space
with their validation loss after every epoch, read for replaying search policies on it
(bench/asha_replay.py): the nearest configuration to a proposal, the best final loss, and the
late bloomers.

The file is gzip'd JSON: `meta` (with `search_space`, the space's parameters as the spec
writes them, and `epochs`), `params` (one mapping per configuration) and `curves` (per
configuration `val_loss`, `val_accuracy`, `seconds`: one entry per epoch, None after a
non-finite loss).
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def save_table(path: Path, meta: dict[str, Any], params: list[dict], curves: list[dict]) -> None:
    """Write a table; gzip's header holds neither a time nor a file name, so that the same
    table gives the same bytes."""
    data = json.dumps(
        {"meta": meta, "params": params, "curves": curves}, separators=(",", ":")
    ).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as f:
        f.write(data)


def _unit(value: float, spec: dict[str, Any]) -> float:
    """A parameter's value in [0, 1] over its range, on a log scale where the space says so."""
    low, high = float(spec["low"]), float(spec["high"])
    if spec.get("log"):
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    return (value - low) / (high - low)


@dataclass(frozen=True)
class CurveTable:
    meta: dict[str, Any]
    params: list[dict[str, Any]]
    val_loss: np.ndarray  # (configurations, epochs), NaN after a non-finite loss
    names: tuple[str, ...]  # the space's numeric parameters, the axes of `points`
    points: np.ndarray  # (configurations, parameters) in the unit cube

    @classmethod
    def load(cls, path: Path) -> CurveTable:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            doc = json.load(f)
        space = doc["meta"]["search_space"]
        names = tuple(n for n, s in space.items() if s["type"] in ("float", "int"))
        loss = np.array(
            [[math.nan if v is None else v for v in c["val_loss"]] for c in doc["curves"]],
            dtype=float,
        )
        points = np.array(
            [[_unit(p[n], space[n]) for n in names] for p in doc["params"]], dtype=float
        )
        return cls(doc["meta"], doc["params"], loss, names, points)

    @property
    def epochs(self) -> int:
        return int(self.meta["epochs"])

    @property
    def size(self) -> int:
        return len(self.params)

    @property
    def final(self) -> np.ndarray:
        """Each configuration's final val_loss (NaN when it never finished)."""
        return self.val_loss[:, -1]

    @property
    def best(self) -> float:
        return float(np.nanmin(self.final))

    def nearest(self, params: dict[str, Any], exclude: Collection[int] = ()) -> int:
        """The configuration nearest to `params` in the unit cube (log scale where the space
        says log), leaving out the rows in `exclude` unless that leaves none; ties go to the
        lowest index."""
        space = self.meta["search_space"]
        point = np.array([_unit(params[n], space[n]) for n in self.names])
        distance = ((self.points - point) ** 2).sum(axis=1)
        if exclude and len(exclude) < self.size:
            distance[list(exclude)] = np.inf
        return int(np.argmin(distance))

    def late_bloomers(self, top: int = 5) -> list[int]:
        """Of the `top` configurations by final loss, those worse than the median after one
        epoch: the ones a pruner that judges early is likely to lose."""
        ranked = [int(i) for i in np.argsort(np.where(np.isnan(self.final), np.inf, self.final))]
        first = self.val_loss[:, 0]
        median = float(np.nanmedian(first))
        return [i for i in ranked[:top] if first[i] > median]
