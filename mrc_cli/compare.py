"""Training variants measured over seeds: every variant and a reference run once per seed at the same budget, then
a table of mean +/- std, a plot of the per-seed scores and a verdict per variant against the reference.

The verdict is a paired test: a seed gives every variant the same data order and head initialization, so the
per-seed difference to the reference removes that share of the seed noise. With few seeds only large effects can be
called (3 seeds: the 95 % interval is 4.30 standard errors wide on each side), and the table says so.
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import queue
import re
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrc_cli.checkpoint import latest_checkpoint
from mrc_cli.config import RunConfig, TrainConfig, apply_sets, check_train_config, config_to_dict
from mrc_cli.errors import ConfigError
from mrc_cli.inference import headline
from mrc_cli.runs import (load_record, refuse_several_processes, start_run, train_in_own_process, write_json,
                          write_record)
from mrc_cli.tracking import read_metrics

REFERENCE = "baseline"  # the config unchanged, unless a variant of this name says otherwise
RUN_RECORD = "compare_run.json"  # written when a run has finished: the next compare skips it
SET_BY_COMPARE = ("train.seed", "train.output_dir", "train.resume")
ONE_SEED = "one seed: no verdict"
INSIDE = "inside the seed spread"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")  # a folder name
_SETTING = r"\s*[A-Za-z_]\w*\.[A-Za-z_]\w*\s*="  # "section.key="
_NEXT_SETTING = re.compile(rf",(?={_SETTING})")  # a comma not followed by section.key= belongs to the value

# two-sided 95 % critical values of Student's t for 1..30 degrees of freedom; beyond 30 the normal 1.96 (slightly
# narrow: 2.02 at 40), since seeds cost a training run each and more than 31 are rare
_T_95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


@dataclass
class Variant:
    """A named set of config overrides ("train.lr=5e-5"), as `--set` takes them."""

    name: str
    sets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        where = f"variant {self.text!r}"
        if not _NAME.fullmatch(self.name):
            raise ConfigError(f"{where}: the name names its run folders: letters, digits and _ . + - only, e.g. "
                              "ema:train.ema_decay=0.999")
        for item in self.sets:
            if not re.match(_SETTING, item):
                raise ConfigError(f"{where}: {item!r} is not section.key=value (e.g. train.lr=5e-5)")
            key = item.partition("=")[0].strip()
            if key in SET_BY_COMPARE:
                raise ConfigError(f"{where}: compare sets {key} for each run itself (seeds: --seeds or --seed-list, "
                                  "folders: --out)")

    @property
    def text(self) -> str:
        return f"{self.name}:{','.join(self.sets)}" if self.sets else self.name

    @classmethod
    def parse(cls, text: str) -> Variant:
        """Read `name:section.key=value,section.key=value`. A comma starts a new setting only where `section.key=`
        follows it, so a value may hold commas (train.report_to=tensorboard,wandb)."""
        name, sep, body = text.partition(":")
        if not sep or not body.strip():
            raise ConfigError(f"variant {text!r}: expected name:section.key=value[,section.key=value...], e.g. "
                              "ema:train.ema_decay=0.999")
        return cls(name.strip(), tuple(item.strip() for item in _NEXT_SETTING.split(body)))


@dataclass
class Run:
    variant: Variant
    seed: int
    cfg: RunConfig
    settings: dict  # the config as planned; train() fills derived values (decode.allow_null) into cfg

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.train.output_dir)


def compare(base: RunConfig, variants: list[Variant], seeds: list[int], out_dir: str | Path) -> dict:
    """Train the reference and every variant once per seed, each run in OUT/<variant>/seed-<k>, and return what
    compare.json holds (written to `out_dir` with compare.md and compare.png). Runs finished by an earlier call are
    skipped, unfinished ones resume from their newest checkpoint. Several visible GPUs run as many runs at once."""
    out_dir = Path(out_dir)
    variants = _with_reference(variants)
    runs = _plan_runs(base, variants, seeds, out_dir)
    print(f"{len(runs)} runs: {len(variants)} variants x {len(seeds)} seeds, against {REFERENCE}", flush=True)
    _run_all(runs, _visible_gpus(base.train))
    rows = [_load_record(run) for run in runs]
    result = {
        "settings": {"reference": REFERENCE, "seeds": list(seeds), "out_dir": str(out_dir),
                     "variants": [{"name": v.name, "sets": list(v.sets)} for v in variants],
                     "verdict": "two-sided paired t-test of the per-seed F1 differences, 95 %",
                     "config": config_to_dict(base)},
        "machine": _machine(),
        "runs": rows,
        "variants": summarize(rows, variants, seeds),
    }
    write_json(out_dir / "compare.json", result)
    (out_dir / "compare.md").write_text(markdown_table(result) + "\n", encoding="utf-8")
    plot_comparison(result, out_dir / "compare.png")
    return result


def _with_reference(variants: list[Variant]) -> list[Variant]:
    """The reference first: the user's variant of that name, else the config unchanged."""
    names = [v.name for v in variants]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError(f"variant names must differ: {', '.join(twice)} given twice")
    given = [v for v in variants if v.name == REFERENCE]
    return [*given, *(v for v in variants if v.name != REFERENCE)] if given else [Variant(REFERENCE), *variants]


def _plan_runs(base: RunConfig, variants: list[Variant], seeds: list[int], out_dir: Path) -> list[Run]:
    """Every run's config, built and checked before anything trains: a mistyped key fails in a second, not after
    the first hour of runs. Seed by seed, so a compare stopped early leaves complete pairs with the reference."""
    if not seeds or len(set(seeds)) != len(seeds) or any(seed < 0 for seed in seeds):
        raise ConfigError(f"seeds {list(seeds)}: give at least one, each once, none negative")
    runs = []
    for seed in seeds:
        for variant in variants:
            cfg = copy.deepcopy(base)
            apply_sets(cfg, variant.sets, source=f"variant {variant.text!r}")
            if not cfg.data.dev_file:
                raise ConfigError(f"{variant.name}: no dev file, so nothing to compare on; pass --dev FILE or set "
                                  "data.dev_file")
            cfg.train.seed, cfg.train.resume = seed, "auto"
            cfg.train.output_dir = str(out_dir / variant.name / f"seed-{seed}")
            check_train_config(cfg.train)
            runs.append(Run(variant, seed, cfg, config_to_dict(cfg)))
    return runs


def _run_all(runs: list[Run], gpus: list[str]) -> None:
    refuse_several_processes("compare")
    todo = []
    for i, run in enumerate(runs, 1):
        label = f"run {i}/{len(runs)}: {run.variant.name} seed {run.seed}"
        if _load_record(run) is not None:
            print(f"{label}: done, skipped", flush=True)
        else:
            todo.append((label, run))
    if gpus:
        _run_on_gpus(todo, gpus, lambda job, gpu: _execute(*job, gpu))
    else:
        for label, run in todo:
            _execute(label, run, None)


def _execute(label: str, run: Run, gpu: str | None) -> None:
    """One run as a `mrc train` process (on that GPU, else as this process sees the devices), then its record."""
    resumed_from = latest_checkpoint(run.run_dir)
    print(label + (f" on GPU {gpu}" if gpu else "") + (f", resuming from {resumed_from}" if resumed_from else ""),
          flush=True)
    start_run(run.run_dir, run.settings)
    started = time.perf_counter()
    train_in_own_process(run.cfg, gpu, "compare")
    _write_record(run, time.perf_counter() - started, resumed_from)


def _visible_gpus(train_cfg: TrainConfig) -> list[str]:
    """The GPUs to spread runs over, as CUDA_VISIBLE_DEVICES names them; none (runs go one after another, each in a
    process that sees the devices this one does) unless several are visible and train.cpu is off."""
    import torch

    count = 0 if train_cfg.cpu else torch.cuda.device_count()
    if count < 2:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")  # a child's "0" would be the machine's first GPU, not ours
    return visible.split(",")[:count] if visible else [str(i) for i in range(count)]


def _run_on_gpus(jobs: list, gpus: list[str], launch: Callable[[Any, str], None]) -> None:
    """launch(job, gpu) for every job, one job per GPU at a time. A failed job does not stop the others (they are
    independent runs); its error is raised when all are done."""
    free = queue.SimpleQueue()
    for gpu in gpus:
        free.put(gpu)

    def one(job) -> None:
        gpu = free.get()
        try:
            launch(job, gpu)
        finally:
            free.put(gpu)

    with ThreadPoolExecutor(max_workers=len(gpus)) as pool:
        futures = [pool.submit(one, job) for job in jobs]
    for future in futures:
        future.result()


def _write_record(run: Run, wall_s: float, resumed_from: Path | None) -> None:
    """The run's scores at its last step, its length and speed, and its planned config: the mark of a finished run."""
    scores = headline(json.loads((run.run_dir / "metrics.json").read_text(encoding="utf-8")))
    logged = read_metrics(run.run_dir / "metrics.jsonl")
    write_record(run.run_dir / RUN_RECORD, {
        "variant": run.variant.name, "seed": run.seed, **scores, "steps": logged[-1]["step"],
        "wall_s": wall_s,  # of this call: a resumed run's counts only the part after the resume
        # features per second of training (evaluation and saving excluded) in the process that finished the run
        "features_per_s": next(r["features_per_s"] for r in reversed(logged) if "features_per_s" in r),
        "resumed_from": resumed_from.name if resumed_from else None,
    }, run.settings)


def _load_record(run: Run) -> dict | None:
    """A finished run's record, or None; one finished with other settings is refused (its scores would pass for
    this comparison's)."""
    return load_record(run.run_dir / RUN_RECORD, run.settings)


# --- the summary: pure functions of the records ----------------------------------------------------------------


def paired_difference(differences: list[float]) -> dict:
    """Mean of per-seed differences (variant - reference) with its 95 % interval (two-sided paired t-test); the
    verdict is better or worse when the interval excludes 0."""
    n, mean = len(differences), statistics.fmean(differences)
    if n == 1:
        return {"n": 1, "mean": mean, "low": None, "high": None, "t_crit": None, "verdict": ONE_SEED}
    t_crit = t_critical(n - 1)
    half = t_crit * statistics.stdev(differences) / math.sqrt(n)
    low, high = mean - half, mean + half
    verdict = "better" if low > 0 else "worse" if high < 0 else INSIDE
    return {"n": n, "mean": mean, "low": low, "high": high, "t_crit": t_crit, "verdict": verdict}


def t_critical(df: int) -> float:
    return _T_95[df - 1] if df <= len(_T_95) else 1.96


def summarize(rows: list[dict], variants: list[Variant], seeds: list[int]) -> list[dict]:
    """Per variant (the reference first): mean and std over seeds of EM, F1, wall time and features/s; the step
    counts and whether they are the reference's; the paired differences to the reference and the F1 verdict."""
    by_run = {(row["variant"], row["seed"]): row for row in rows}
    reference_steps = sorted({by_run[(variants[0].name, seed)]["steps"] for seed in seeds})
    summaries = []
    for variant in variants:
        mine = [by_run[(variant.name, seed)] for seed in seeds]
        steps = sorted({row["steps"] for row in mine})
        summary = {"variant": variant.name, "sets": list(variant.sets), "seeds": len(seeds),
                   **{key: _mean_std([row[key] for row in mine]) for key in ("exact", "f1", "wall_s", "features_per_s")},
                   "steps": steps, "same_budget": len(steps) == 1 and steps == reference_steps}
        if variant is variants[0]:
            summary["verdict"] = "reference"
        else:
            summary["vs_reference"] = {key: paired_difference([row[key] - by_run[(variants[0].name, row["seed"])][key]
                                                               for row in mine]) for key in ("f1", "exact")}
            summary["verdict"] = summary["vs_reference"]["f1"]["verdict"]
        summaries.append(summary)
    return summaries


def _mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None}


def markdown_table(result: dict) -> str:
    """compare.md: one row per variant, then what the verdict means at this number of seeds."""
    reference, seeds = result["settings"]["reference"], result["settings"]["seeds"]
    lines = [f"| variant | settings | EM | F1 | ΔF1 vs {reference} [95 % CI] | verdict | steps | wall s | features/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in result["variants"]:
        budget = "/".join(map(str, s["steps"])) + ("" if s["same_budget"] else " (differs)")
        cells = [s["variant"], ", ".join(s["sets"]).replace("|", "\\|") or "(the config)", _pm(s["exact"], 2),
                 _pm(s["f1"], 2), _interval(s["vs_reference"]["f1"]) if "vs_reference" in s else "", s["verdict"],
                 budget, _pm(s["wall_s"], 0), _pm(s["features_per_s"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    n = len(seeds)
    lines += ["", f"Seeds {', '.join(map(str, seeds))}; EM and F1 on the dev set at each run's last step, mean ± std "
                  "over seeds."]
    if n == 1:
        lines.append("One seed: no verdict (the spread over seeds is unknown); use --seeds 3 or more.")
    else:
        lines.append(f"Verdict: two-sided paired t-test of the per-seed F1 differences against {reference} (a seed "
                     f"gives both runs the same data order and head init), 95 %: t = {t_critical(n - 1):.2f} at {n - 1} "
                     f"degrees of freedom, so with {n} seeds only differences beyond {t_critical(n - 1):.2f} standard "
                     "errors are called; \"inside the seed spread\" is not \"no effect\".")
    other = [s["variant"] for s in result["variants"] if not s["same_budget"]]
    if other:
        lines.append(f"Not the same budget: {', '.join(other)} ran another number of steps than {reference}'s "
                     f"{'/'.join(map(str, result['variants'][0]['steps']))} (early stopping, or a setting that changes "
                     "the schedule): the difference mixes the setting with the budget.")
    resumed = [f"{r['variant']} seed {r['seed']}" for r in result["runs"] if r["resumed_from"]]
    if resumed:
        lines.append(f"Resumed: {', '.join(resumed)}; their wall time counts only the part after the resume.")
    return "\n".join(lines)


def _pm(stat: dict, digits: int) -> str:
    mean = f"{stat['mean']:.{digits}f}"
    return mean if stat["std"] is None else f"{mean} ± {stat['std']:.{digits}f}"


def _interval(diff: dict) -> str:
    if diff["low"] is None:
        return f"{diff['mean']:+.2f}"
    return f"{diff['mean']:+.2f} [{diff['low']:+.2f}, {diff['high']:+.2f}]"


def plot_comparison(result: dict, out: Path) -> Path:
    """F1 (left) and EM (right) per variant: each seed's run as a dot, the mean with std bars beside them, the
    reference's mean as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summaries = result["variants"]
    fig, panels = plt.subplots(1, 2, figsize=(max(8.0, 2.2 * len(summaries)), 4))
    for ax, key, label in zip(panels, ("f1", "exact"), ("dev F1", "dev EM")):
        for x, s in enumerate(summaries):
            points = [r[key] for r in result["runs"] if r["variant"] == s["variant"]]
            offsets = [0.25 * (i / max(1, len(points) - 1) - 0.5) for i in range(len(points))]
            ax.scatter([x - 0.1 + o for o in offsets], points, s=16, color="tab:blue", alpha=0.7,
                       label="a seed's run" if x == 0 else None)
            ax.errorbar(x + 0.25, s[key]["mean"], yerr=s[key]["std"] or 0, fmt="o", color="black", capsize=4,
                        label="mean ± std" if x == 0 else None)
        ax.axhline(summaries[0][key]["mean"], ls="--", lw=0.8, color="grey")
        ax.set_xticks(range(len(summaries)), [s["variant"] for s in summaries], rotation=15)
        ax.set(ylabel=f"{label} (%)", title=f"{label} over seeds {', '.join(map(str, result['settings']['seeds']))}")
        ax.grid(axis="y", alpha=0.3)
    panels[0].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _machine() -> dict:
    """Where the runs trained: versions, GPUs, and the CPU features that decide bf16 on a CPU."""
    import torch

    from mrc_cli.precision import cpu_bf16_support

    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "cpu_cores": os.cpu_count(), "cpu_capability": torch.backends.cpu.get_cpu_capability(), **cpu_bf16_support()}
