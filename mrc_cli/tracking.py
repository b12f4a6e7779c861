"""What a run leaves for people: a log, metrics as JSON lines, a PNG of the curves, and the experiment trackers of
train.report_to (TensorBoard, Weights & Biases, MLflow ...: accelerate's, which owns their set-up and their files)."""

from __future__ import annotations

import time
from pathlib import Path

from tqdm.auto import tqdm

from mrc_cli.errors import ConfigError
from mrc_cli.files import from_json, to_json, write_text_atomically
from mrc_cli.plotting import save_figure


def tracker_names(report_to: str) -> list[str] | None:
    """train.report_to as accelerate's tracker names, each checked: accelerate would skip a missing one silently."""
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    names = [name.strip() for name in report_to.split(",") if name.strip() and name.strip() != "none"]
    for name in names:
        if name not in LoggerType.list() or name == "all":
            raise ConfigError(f"train.report_to: unknown tracker {name!r}; choose none or from "
                              f"{', '.join(n for n in LoggerType.list() if n != 'all')}")
        if LoggerType(name) not in get_available_trackers():
            raise ConfigError(f"train.report_to: {name} is not installed here (pip install {name}), or set none")
    return names or None


class RunLog:
    """Prints on the main process (without breaking the progress bar) and appends to train.log and metrics.jsonl."""

    def __init__(self, run_dir: Path, enabled: bool, trackers=None):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.trackers = trackers  # an Accelerator whose trackers are initialised (accelerate logs on the main process)

    def info(self, message: str, shown: bool = True) -> None:
        """A line on the screen (unless not `shown`: what the command prints anyway as it ends) and in train.log."""
        if not self.enabled:
            return
        if shown:
            tqdm.write(message)
        self.run_dir.mkdir(parents=True, exist_ok=True)  # not before the first line: a run that fails its checks leaves nothing
        with open(self.run_dir / "train.log", "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def metrics(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(to_json({"step": step, **values}) + "\n")
        if self.trackers is not None:
            self.trackers.log({k: v for k, v in values.items() if isinstance(v, (int, float))}, step=step)

    def truncate_metrics(self, step: int) -> None:
        """Drop metric lines after `step` (a resumed run repeats the steps after its checkpoint)."""
        path = self.run_dir / "metrics.jsonl"
        if self.enabled and path.is_file():
            kept = [r for r in read_metrics(path) if r["step"] <= step]
            write_text_atomically(path, "".join(to_json(r) + "\n" for r in kept))

    def close(self) -> None:
        if self.trackers is not None:
            self.trackers.end_training()


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [from_json(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_curves(metrics_file: Path, out: Path) -> Path:
    """Training loss and dev loss over steps (left), dev EM/F1 over steps (right, where the run has evaluations:
    mrc pretrain's has none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mrc_cli.inference import headline  # here, not at the top: it imports torch, and config's checks import us

    # EM and F1 by the names each metric writes (squad: exact_match, cmrc2018: EM/F1)
    rows = [{**r, **headline(r)} for r in read_metrics(metrics_file)]
    scored = any(r["f1"] is not None for r in rows)
    fig, axes = plt.subplots(1, 2 if scored else 1, figsize=(11 if scored else 6, 4), squeeze=False)
    left, right = axes[0][0], axes[0][-1]
    for key, ax, label in (("loss", left, "train loss"), ("dev_loss", left, "dev loss"),
                           ("exact", right, "dev EM"), ("f1", right, "dev F1")):
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker="o" if key != "loss" else None, label=label)
    left.set(xlabel="optimizer step", ylabel="loss", title="Loss")
    if scored:
        right.set(xlabel="optimizer step", ylabel="%", title="Dev EM / F1")
    for ax in {left, right}:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    return save_figure(fig, out)
