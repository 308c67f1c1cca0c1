"""Training logs: always a CSV file, plus TensorBoard when it is installed (or required).

``<output_dir>/logs/train.csv`` has one row per logged step. On resume, rows after the resumed
step (written by the run that was interrupted) are dropped first, so the file reads as one run.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

from anima.errors import AnimaError

COLUMNS = ("step", "loss", "lr", "seconds_per_step", "images_per_second", "epoch")


class TrainLog:
    def __init__(self, output_dir: str | Path, backend: str = "auto", resume_step: int | None = None) -> None:
        self.dir = Path(output_dir) / "logs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.dir / "train.csv"
        rows: list[dict] = []
        if resume_step is not None and self.csv_path.is_file():
            with open(self.csv_path, newline="", encoding="utf-8") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
        with open(self.csv_path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        self.tb = None
        have_tb = importlib.util.find_spec("tensorboard") is not None
        if backend == "tensorboard" and not have_tb:
            raise AnimaError(
                "log_backend = tensorboard needs the 'tensorboard' package: pip install tensorboard"
            )
        if backend in ("auto", "tensorboard") and have_tb:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(self.dir / "tensorboard"), purge_step=resume_step)

    def write(self, row: dict) -> None:
        with open(self.csv_path, "a", newline="", encoding="utf-8") as fh:
            csv.DictWriter(fh, fieldnames=COLUMNS).writerow({k: row.get(k, "") for k in COLUMNS})
        if self.tb is not None:
            for key in ("loss", "lr", "seconds_per_step"):
                self.tb.add_scalar(f"train/{key}", row[key], row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
