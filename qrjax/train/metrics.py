"""JSONL metric logging (one JSON object per line, appended across resumed runs)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path


class MetricWriter:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after `step`: on resume they describe work the restored checkpoint does not contain."""
        if self.path.exists():
            keep = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= step]
            self.path.write_text("".join(line + "\n" for line in keep))

    def write(self, step: int, metrics: dict, **extra) -> dict:
        row = {"step": int(step), "time": round(time.time(), 3), **extra}
        for k, v in metrics.items():
            v = float(v)
            row[k] = v if math.isfinite(v) else str(v)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        return row


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
