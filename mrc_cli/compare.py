"""Training variants measured over seeds: every variant and a reference run once per seed at the same budget, then
a table of mean +/- std, a plot of the per-seed scores and a verdict per variant against the reference.

A trick that costs more per step (R-Drop: each batch twice; FGM: a second forward and backward) can win at equal
steps and lose at equal compute. With `equal_compute` a second reference trains after the variants: per seed, the
reference trained longer, to the model FLOPs of the costliest variant at that seed, and each variant gets a second
verdict against it.

The verdict is a paired test: a seed gives every variant the same data order and head initialization, so the
per-seed difference to the reference removes that share of the seed noise. With few seeds only large effects can be
called (3 seeds: the 95 % interval is 4.30 standard errors wide on each side), and the table says so.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import os
import platform
import queue
import re
import statistics
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrc_cli.config import (RunConfig, TrainConfig, apply_sets, check_data_config, check_train_config, config_to_dict,
                            refuse_unread_sets)
from mrc_cli.data import missing_file
from mrc_cli.errors import ConfigError
from mrc_cli.files import check_output_folder, refuse_other_files, write_text_atomically
from mrc_cli.model import check_dropout_settings
from mrc_cli.plotting import save_figure
from mrc_cli.runs import (NOT_RESULTS, FinishedRun, load_record, refuse_several_processes, train_run, write_json,
                          write_record)
from mrc_cli.tokenizer import check_model_folder, check_not_missing_folder, load_tokenizer
from mrc_cli.training import check_patience, file_sha256
from mrc_cli.tricks import check_head_warmup

REFERENCE = "baseline"  # the config unchanged, unless a variant of this name says otherwise
EQUAL_COMPUTE = f"{REFERENCE}@equal_compute"  # the reference trained to the costliest variant's compute
# a variant spending less than this share of EQUAL_COMPUTE's FLOPs is not at equal compute with it: only "better"
EQUAL_ENOUGH = 0.9
RUN_RECORD = "compare_run.json"  # written when a run has finished: the next compare skips it
SET_BY_COMPARE = ("train.seed", "train.output_dir", "train.resume")
# how the runs are scored, or on what: a variant of them alone pairs F1s that do not compare (the same weights, F1 0
# by SQuAD's rules beside 3.27 by CMRC's), so every run is scored alike: set for all of them in the config or --set
SCORED_BY = {"data.metric": "the official rules its F1 is scored by", "data.dev_file": "the questions it is scored on"}
ONE_SEED = "one seed: no verdict"
INSIDE = "inside the seed spread"
NO_SPREAD = "the same difference at every seed: no spread to test, no verdict"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+@-]*")  # a folder name
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
            raise ConfigError(f"{where}: the name names its run folders: letters, digits and _ . + - @ only, e.g. "
                              "ema:train.ema_decay=0.999")
        keys = [item.partition("=")[0].strip() for item in self.sets]
        twice = sorted({key for key in keys if keys.count(key) > 1})
        if twice:
            raise ConfigError(f"{where}: {', '.join(twice)} set twice; give each key once")
        for item in self.sets:
            if not re.match(_SETTING, item):
                raise ConfigError(f"{where}: {item!r} is not section.key=value (e.g. train.lr=5e-5)")
            key = item.partition("=")[0].strip()
            if key in SET_BY_COMPARE:
                raise ConfigError(f"{where}: compare sets {key} for each run itself (seeds: --seeds or --seed-list, "
                                  "folders: --out)")
            if key in SCORED_BY:
                raise ConfigError(f"{where}: {key} is {SCORED_BY[key]}, not something a run learns; a verdict "
                                  f"pairs the variants' F1s, so all are scored alike: set it for every run with "
                                  f"--set {item.strip()} (or in the config)")

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
        settings = tuple(item.strip() for item in _NEXT_SETTING.split(body))
        refuse_unread_sets(settings, "compare", f"variant {text!r}:")
        return cls(name.strip(), settings)


@dataclass
class Run:
    variant: Variant
    seed: int
    cfg: RunConfig
    settings: dict  # the config as planned; the run's config.yaml adds derived values (decode.allow_null)
    facts: dict = field(default_factory=dict)  # what its record says besides the results: the equal-compute scale

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.train.output_dir)


def compare(base: RunConfig, variants: list[Variant], seeds: list[int], out_dir: str | Path,
            equal_compute: bool = False) -> dict:
    """Train the reference and every variant once per seed, each run in OUT/<variant>/seed-<k>, and return what
    compare.json holds (written to `out_dir` with compare.md and compare.png). Runs finished by an earlier call are
    skipped, unfinished ones resume from their newest checkpoint. Several visible GPUs run as many runs at once.
    `equal_compute`: then the reference again, trained to the costliest variant's compute (EQUAL_COMPUTE), and a
    second verdict per variant against it."""
    refuse_several_processes("compare", "starts a process for each run itself (one per GPU where several "
                                         "are visible)")
    out_dir = Path(out_dir)
    check_output_folder(out_dir)
    refuse_other_files(out_dir, "--out", lambda entry: entry.name.startswith("compare.") or
                       (entry.is_dir() and any(entry.glob("seed-*"))), "comparison")
    variants = _with_reference(variants, equal_compute)
    runs = _plan_runs(base, variants, seeds, out_dir)
    _refuse_idle_variants(runs)
    print(f"{len(runs)} runs: {len(variants)} variants x {len(seeds)} seeds, against {REFERENCE}" if len(variants) > 1
          else f"{len(runs)} runs: {REFERENCE} alone x {len(seeds)} seeds, its seed spread (--variant adds what to "
               "compare with it)", flush=True)
    gpus = _visible_gpus(base.train)
    _run_all(runs, gpus)
    rows = [_load_record(run) for run in runs]
    longer, skipped = (_plan_equal_compute(base, runs, rows, out_dir) if equal_compute else []), None
    if longer and all(run.facts["compute_scale"] <= 1 for run in longer):  # the first verdicts are at equal compute
        costliest = max(longer, key=lambda run: run.facts["compute_scale"]).facts
        skipped = (f"no {EQUAL_COMPUTE} runs: no variant costs more than {REFERENCE} (the costliest, "
                   f"{costliest['compute_of']}, {costliest['compute_scale']:g}x its compute), so each verdict is already "
                   "at equal or lower compute")
        print(skipped, flush=True)
        longer = []
    if longer:
        print(f"{len(longer)} runs of {EQUAL_COMPUTE}: {REFERENCE} trained to the compute of the costliest variant, "
              "seed by seed", flush=True)
        seeds_folders = (run.run_dir.parent / f"seed-{run.seed}" for run in longer)
        outdated = sorted({*(folder for folder in seeds_folders if folder.is_dir()),  # kept so before (unsized)
                           *(folder for run in longer for folder in run.run_dir.parent.glob(f"seed-{run.seed}-*"))}
                          - {run.run_dir for run in longer})
        if outdated:  # kept: a comparison without the variant that outdated them finds them again
            print(f"not used now (another costliest variant's length): {', '.join(map(str, outdated))}", flush=True)
        _run_all(longer, gpus)
        rows += [_load_record(run) for run in longer]
        variants = [*variants, Variant(EQUAL_COMPUTE, variants[0].sets)]  # its length per seed: in its runs' records
    result = {
        "settings": {"reference": REFERENCE, "seeds": list(seeds), "out_dir": str(out_dir),
                     "variants": [{"name": v.name, "sets": list(v.sets)} for v in variants],
                     "verdict": "two-sided paired t-test of the per-seed F1 differences, 95 %",
                     "equal_compute": equal_compute, "config": config_to_dict(base),
                     **({"equal_compute_skipped": skipped} if skipped else {})},
        "machine": _machine(),
        "runs": rows,
        "variants": summarize(rows, variants, seeds),
    }
    others = sorted(folder.name for folder in out_dir.iterdir() if folder.is_dir() and any(folder.glob("seed-*"))
                    and folder.name not in {EQUAL_COMPUTE, *(v.name for v in variants)})
    if others:  # compare.json and compare.md are of this call's variants: an earlier call's go unmentioned otherwise
        print(f"{out_dir} also holds runs of {', '.join(others)}, not in this comparison: give them again as --variant "
              "to compare them too (their finished runs are skipped)", flush=True)
    write_json(out_dir / "compare.json", result)
    write_text_atomically(out_dir / "compare.md", markdown_table(result) + "\n")
    plot_comparison(result, out_dir / "compare.png")
    return result


def _with_reference(variants: list[Variant], equal_compute: bool = False) -> list[Variant]:
    """The reference first: the user's variant of that name, else the config unchanged. EQUAL_COMPUTE is not a
    user's name, and `equal_compute` needs a variant to match."""
    names = [v.name for v in variants]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError(f"variant names must differ: {', '.join(twice)} given twice")
    if EQUAL_COMPUTE in names:
        raise ConfigError(f"{EQUAL_COMPUTE} names the run that --equal-compute adds; call your variant otherwise")
    if equal_compute and not set(names) - {REFERENCE}:
        raise ConfigError(f"--equal-compute trains {REFERENCE} to the compute of the costliest variant: give a "
                          f"--variant besides {REFERENCE}")
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
            try:
                check_train_config(cfg.train)
                # a variant's own file or folder, missing: found before the other runs' hours, not after them
                for key, source in (("data.train_file", cfg.data.train_file), ("data.dev_file", cfg.data.dev_file)):
                    if source and missing_file(source):
                        raise ConfigError(f"{key} {source}: no such file")
                check_model_folder(cfg.model.name_or_path)
                for folder in (cfg.model.tokenizer, cfg.train.init_from):
                    if folder:
                        check_not_missing_folder(folder)
                special = special_tokens(cfg.model.tokenizer or cfg.model.name_or_path)
                if special is not None:
                    check_data_config(cfg.data, special)
                check_dropout_settings(cfg)  # R-Drop or multi-sample dropout without dropout: after the others trained
                check_patience(cfg.train, evaluates=True)  # every run has a dev file
                if cfg.train.max_steps:  # (a length in epochs is known once the data is featurized)
                    check_head_warmup(cfg.train.head_warmup, cfg.train.max_steps)
            except ConfigError as err:
                raise ConfigError(f"variant {variant.text!r}: {err}") from None
            runs.append(Run(variant, seed, cfg, config_to_dict(cfg)))
    return runs


# settings that change no answer of a run: NOT_RESULTS (logging, saving, tokenizing) and the answer probabilities'
# calibration and the provenance of its threshold
_NO_ANSWER_CHANGES = {*NOT_RESULTS, ("train", "seed"), ("decode", "temperature"), ("decode", "null_bias"),
                      ("decode", "null_share"), ("decode", "null_threshold_from")}
# a setting that does nothing while another holds: (section, key) -> why, or None, from a run's settings
_INERT = {
    ("train", "epochs"): lambda s: (f"train.max_steps {s['train']['max_steps']} sets the runs' length" if
                                    s["train"]["max_steps"] else None),
    **{("train", key): lambda s: ("train.adversarial is none" if s["train"]["adversarial"] == "none" else None)
       for key in ("adv_epsilon", "adv_alpha", "adv_steps")},
}


def _refuse_idle_variants(runs: list[Run]) -> None:
    """A variant that trains what the baseline or an earlier variant trains (train.lr=1e-3 where the config has it)
    is refused: every seed would train again for a difference of 0, called "inside the seed spread". A setting made
    inert by another (train.epochs while train.max_steps is set) is left out of that test, and noted where a variant
    sets it."""
    first = [run for run in runs if run.seed == runs[0].seed]  # seed by seed: every variant once
    learnt: dict[str, Run] = {}
    for run in first:
        inert = _inert_settings(run.settings)
        for key in (item.partition("=")[0].strip() for item in run.variant.sets):
            if key in inert:
                print(f"note: variant {run.variant.name}: {key} changes nothing while {inert[key]}", flush=True)
        same = learnt.setdefault(_what_it_learns(run.settings, inert), run)
        if same is not run:
            raise ConfigError(f"variant {run.variant.text!r} trains what {same.variant.name} trains "
                              f"({'; '.join(_why_the_same(run, same, inert))}): every seed would train again for a "
                              "difference of 0; drop it, or give it a value that differs")


def _inert_settings(settings: dict) -> dict[str, str]:
    """The settings that do nothing in a run with these settings: {section.key: why}."""
    return {f"{section}.{key}": why for (section, key), rule in _INERT.items() if (why := rule(settings))}


def _what_it_learns(settings: dict, inert: dict[str, str]) -> str:
    """The settings that decide a run's answers, as one comparable text."""
    kept = {section: {key: value for key, value in values.items() if (section, key) not in _NO_ANSWER_CHANGES
                      and f"{section}.{key}" not in inert}
            for section, values in settings.items()}
    return json.dumps(kept, sort_keys=True, default=str)


def _why_the_same(run: Run, same: Run, inert: dict[str, str]) -> list[str]:
    reasons = []
    for item in run.variant.sets:
        key = item.partition("=")[0].strip()
        section, name = key.split(".", 1)
        value, there = run.settings[section][name], same.settings[section][name]
        reasons.append(f"{key} changes nothing while {inert[key]}" if key in inert else
                       f"{key} is {value!r} there too" if value == there else f"{key} changes no answer")
    return reasons or ["the config unchanged"]


@functools.cache
def special_tokens(tokenizer: str) -> int | None:
    """The special tokens of a question-context pair (3 for BERT's [CLS] q [SEP] c [SEP]), for check_data_config:
    a window setting that fits no question fails here, not in the variant's run after the others trained. None
    where the tokenizer does not load: the run that needs it says why, at once."""
    try:
        return load_tokenizer(tokenizer).num_special_tokens_to_add(pair=True)
    except ConfigError:
        return None


def _plan_equal_compute(base: RunConfig, runs: list[Run], rows: list[dict], out_dir: Path) -> list[Run]:
    """Per seed, the reference's run again, its length scaled by the ratio of the costliest variant's model FLOPs to
    its own at that seed: train.max_steps where the reference sets it, else train.epochs. Warm-up and decay are
    fractions of the steps, so the schedule keeps its shape. The scale is rounded (3 decimals) and read from finished
    records, so a second compare plans the same settings and skips the run."""
    flops = {}
    for run, row in zip(runs, rows):
        if "compute" not in row:
            raise ConfigError(f"{run.run_dir}: finished before mrc-cli recorded a run's compute, which --equal-compute "
                              "scales by; choose another --out, or delete that folder to run it again")
        flops[run.variant.name, run.seed] = row["compute"]["flops"]
    planned = []
    for reference in (run for run in runs if run.variant.name == REFERENCE):
        costliest = max((name for name, seed in flops if seed == reference.seed and name != REFERENCE),
                        key=lambda name: flops[name, reference.seed])
        scale = round(flops[costliest, reference.seed] / flops[REFERENCE, reference.seed], 3)
        length = reference.settings["train"]
        setting = (f"train.max_steps={max(1, round(length['max_steps'] * scale))}" if length["max_steps"] else
                   f"train.epochs={round(length['epochs'] * scale, 4)}")
        (run,) = _plan_runs(base, [Variant(EQUAL_COMPUTE, (*reference.variant.sets, setting))], [reference.seed],
                            out_dir)
        # a folder per length: a costlier variant added later needs a longer run, beside the one it outdates
        unsized = run.run_dir  # where mrc-cli kept the run before: taken where it finished at this length
        run.cfg.train.output_dir = f"{unsized}-{setting.removeprefix('train.')}"
        run.settings = config_to_dict(run.cfg)
        with contextlib.suppress(ConfigError):  # another length's: listed as not used
            if load_record(unsized / RUN_RECORD, run.settings) is not None:
                run.cfg.train.output_dir = str(unsized)
                run.settings = config_to_dict(run.cfg)
        run.facts = {"compute_scale": scale, "compute_of": costliest, "length": setting}
        planned.append(run)
    return planned


def _run_all(runs: list[Run], gpus: list[str]) -> None:
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
    finished = train_run(run.cfg, run.settings, label + (f" on GPU {gpu}" if gpu else ""), gpu, "compare")
    _write_record(run, finished)
    finished.stop_if_signalled(run.run_dir, "compare")


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


def _write_record(run: Run, finished: FinishedRun) -> None:
    """The run's scores at its last step, its length, compute and speed, and its planned config: the mark of a
    finished run."""
    write_record(run.run_dir / RUN_RECORD, {
        "variant": run.variant.name, "seed": run.seed, **finished.record(),
        # feature passes and model FLOPs of the whole run, resumed or not (mrc_cli.compute)
        "compute": finished.metrics["compute"],
        # features per second of training (evaluation and saving excluded) in the process that finished the run
        "features_per_s": next(r["features_per_s"] for r in reversed(finished.logged) if "features_per_s" in r),
        **run.facts,
    }, run.settings)


def _load_record(run: Run) -> dict | None:
    """A finished run's record, or None; one finished with other settings is refused (its scores would pass for
    this comparison's). A run is its settings: one copied from another compare's folder (a variant of another name
    with these settings, e.g. the baseline trained longer as `epochs4:train.epochs=4`) counts as this run, under this
    run's name and with this plan's facts (the equal-compute scale its record may lack)."""
    record = load_record(run.run_dir / RUN_RECORD, run.settings)
    if record is None:
        return None
    _refuse_other_data(run)
    return {**record, **run.facts, "variant": run.variant.name, "seed": run.seed}


def _refuse_other_data(run: Run) -> None:
    """A finished run trained or scored on a file whose content changed since (edited in place): its scores would
    pass for this data's. Its run_info.json holds the files' hashes (none for runs of before them: taken as they
    are)."""
    info = run.run_dir / "run_info.json"
    then = json.loads(info.read_text(encoding="utf-8")) if info.is_file() else {}
    for what, path in (("train", run.cfg.data.train_file), ("dev", run.cfg.data.dev_file)):
        was, now = then.get(f"{what}_file_sha256"), _sha256(path)
        if was and now and was != now:
            raise ConfigError(f"{run.run_dir} finished on another {what} file: {path} changed since (SHA-256 {was} "
                              f"there, {now} now), and its scores would pass for this one's; choose another --out, or "
                              "delete that folder to run it again")


@functools.lru_cache(maxsize=None)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str | None:
    return file_sha256(path)


def _sha256(path: str | None) -> str | None:
    """A data file's hash, read once per content (by size and modification time) however many runs name it."""
    if not path or not os.path.isfile(path):
        return None
    stat = os.stat(path)
    return _sha256_of(path, stat.st_size, stat.st_mtime_ns)


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
    # an interval of width 0 (one question flipped alike at two seeds) is no evidence of a small spread
    verdict = (INSIDE if mean == 0 else NO_SPREAD) if half == 0 else "better" if low > 0 else "worse" if high < 0 \
        else INSIDE
    return {"n": n, "mean": mean, "low": low, "high": high, "t_crit": t_crit, "verdict": verdict}


def t_critical(df: int) -> float:
    return _T_95[df - 1] if df <= len(_T_95) else 1.96


def summarize(rows: list[dict], variants: list[Variant], seeds: list[int]) -> list[dict]:
    """Per variant (the reference first): mean and std over seeds of EM, F1, wall time and features/s; its compute;
    the step counts and whether they are the reference's; the paired differences to the reference and the F1
    verdict. Where `variants` holds EQUAL_COMPUTE, each variant but the reference also gets them against that run."""
    _refuse_other_rules(rows)
    by_run = {(row["variant"], row["seed"]): row for row in rows}
    reference = variants[0].name
    against = {"verdict": ("vs_reference", reference)}  # verdict key: (differences key, the run paired with)
    if any(v.name == EQUAL_COMPUTE for v in variants):
        against["verdict_equal_compute"] = ("vs_equal_compute", EQUAL_COMPUTE)
    reference_rows = [by_run[(reference, seed)] for seed in seeds]
    reference_steps = sorted({row["steps"] for row in reference_rows})
    summaries = []
    for variant in variants:
        mine = [by_run[(variant.name, seed)] for seed in seeds]
        steps = sorted({row["steps"] for row in mine})
        summary = {"variant": variant.name, "sets": list(variant.sets), "seeds": len(seeds),
                   **{key: _mean_std([row[key] for row in mine]) for key in ("exact", "f1", "wall_s", "features_per_s")},
                   "compute": _compute_summary(mine, reference_rows),
                   "steps": steps, "same_budget": len(steps) == 1 and steps == reference_steps}
        if variant.name == EQUAL_COMPUTE:
            summary.update({key: [row[key] for row in mine] for key in ("compute_scale", "compute_of")})
            # the scale assumed the reference's FLOPs per step; the added steps hold other features
            summary["flops_vs_costliest"] = statistics.fmean(
                row["compute"]["flops"] / by_run[(row["compute_of"], row["seed"])]["compute"]["flops"] for row in mine)
        for verdict, (key, other) in against.items():
            share = _flops_share(mine, by_run) if other == EQUAL_COMPUTE else None
            if variant.name == other:
                summary[verdict] = "reference"
            elif variant.name != reference:  # the reference against EQUAL_COMPUTE: the reverse of that one's verdict
                summary[key] = {k: paired_difference([row[k] - by_run[(other, row["seed"])][k] for row in mine])
                                for k in ("f1", "exact")}
                summary[verdict] = summary[key]["f1"]["verdict"]
                # a cheaper variant: better holds a fortiori; worse or inside would only say it had less compute
                if share is not None and share < EQUAL_ENOUGH and summary[verdict] in ("worse", INSIDE):
                    summary[verdict] = f"none: {share:.2f}x the FLOPs of {EQUAL_COMPUTE}, not equal compute"
        summaries.append(summary)
    return summaries


def _refuse_other_rules(rows: list[dict]) -> None:
    """Runs scored by other official rules (their records' metric) are not paired: their F1s do not compare. A record
    of before compare recorded the metric is taken as scored alike."""
    metrics = {row["metric"] for row in rows if row.get("metric")}
    if len(metrics) > 1:
        runs = "; ".join(f"{row['variant']} seed {row['seed']}: {row['metric']}" for row in rows if row.get("metric"))
        raise ConfigError(f"the runs were scored by different official rules ({runs}), and their F1s do not compare; "
                          "set data.metric for all of them (--set data.metric=...) and delete the runs scored "
                          "otherwise, or choose another --out")


def _flops_share(mine: list[dict], by_run: dict) -> float | None:
    """The mean over seeds of a variant's FLOPs over those of the costliest variant at the same seed, which
    EQUAL_COMPUTE was trained to (its own can overshoot over a few steps); None without records of compute."""
    pairs = [(row, by_run[(by_run[(EQUAL_COMPUTE, row["seed"])]["compute_of"], row["seed"])]) for row in mine]
    if not all("compute" in row and "compute" in theirs for row, theirs in pairs):
        return None
    return statistics.fmean(row["compute"]["flops"] / theirs["compute"]["flops"] for row, theirs in pairs)


def _mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None}


def _compute_summary(mine: list[dict], reference_rows: list[dict]) -> dict | None:
    """Mean and std over seeds of model FLOPs and forward feature passes, and the mean per-seed ratio of FLOPs to the
    reference's; None where a record has none (finished before mrc-cli recorded compute)."""
    if not all("compute" in row for row in (*mine, *reference_rows)):
        return None
    return {**{key: _mean_std([row["compute"][key] for row in mine]) for key in ("flops", "forward_passes")},
            "vs_reference": statistics.fmean(row["compute"]["flops"] / ref["compute"]["flops"]
                                             for row, ref in zip(mine, reference_rows))}


def markdown_table(result: dict) -> str:
    """compare.md: one row per variant, then what the verdicts mean at this number of seeds."""
    reference, seeds = result["settings"]["reference"], result["settings"]["seeds"]
    summaries = result["variants"]
    longer = next((s for s in summaries if s["variant"] == EQUAL_COMPUTE), None)
    header = ["variant", "settings", "EM", "F1", f"ΔF1 vs {reference} [95 % CI]", "verdict"]
    if longer:
        header += [f"ΔF1 vs {EQUAL_COMPUTE} [95 % CI]", "verdict at equal compute"]
    header += ["steps", f"FLOPs (x {reference})", "wall s", "features/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summaries:
        cells = [s["variant"], _settings(s), _pm(s["exact"], 2), _pm(s["f1"], 2),
                 _interval(s["vs_reference"]["f1"]) if "vs_reference" in s else "", s["verdict"]]
        if longer:
            cells += [_interval(s["vs_equal_compute"]["f1"]) if "vs_equal_compute" in s else "",
                      s.get("verdict_equal_compute", "")]
        budget = "/".join(map(str, s["steps"])) + ("" if s["same_budget"] else " (differs)")
        flops = f"{s['compute']['flops']['mean']:.3g} ({s['compute']['vs_reference']:.2f}x)" if s["compute"] else ""
        cells += [budget, flops, _pm(s["wall_s"], 0), _pm(s["features_per_s"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    n = len(seeds)
    lines += ["", f"Seeds {', '.join(map(str, seeds))}; EM and F1 on the dev set at each run's last step, mean ± std "
                  "over seeds. FLOPs: the model FLOPs of training (forward 2 x non-embedding parameters per token plus "
                  "attention, backward twice that: mrc_cli/compute.py), mean over seeds."]
    if n == 1:
        lines.append("One seed: no verdict (the spread over seeds is unknown); use --seeds 3 or more.")
    else:
        lines.append(f"Verdict: two-sided paired t-test of the per-seed F1 differences against {reference} (a seed "
                     f"gives both runs the same data order and head init), 95 %: t = {t_critical(n - 1):.2f} at {n - 1} "
                     f"degrees of freedom, so with {n} seeds only differences beyond {t_critical(n - 1):.2f} standard "
                     "errors are called; \"inside the seed spread\" is not \"no effect\".")
    if longer:
        lines.append(f"{EQUAL_COMPUTE}: {reference} with its length (train.epochs, or train.max_steps where set) x "
                     f"{_scales(longer)}, to the FLOPs of the costliest variant at each seed "
                     f"({'/'.join(sorted(set(longer['compute_of'])))}); it spent {longer['flops_vs_costliest']:.2f}x "
                     "their FLOPs (its added steps hold other features: close to 1x over whole epochs, not over a few "
                     "steps). Warm-up and decay stay the same fractions of its steps. \"verdict\" pairs each variant "
                     f"with {reference} at equal steps (does the setting help per step?), \"verdict at equal compute\" "
                     f"with {EQUAL_COMPUTE} (does it beat spending its compute on more steps?); a variant below "
                     f"{EQUAL_ENOUGH:.0%} of its FLOPs is called better there, or gets none: worse would only say it "
                     "had less compute.")
    skipped = result["settings"].get("equal_compute_skipped")
    if skipped:
        lines.append(skipped[0].upper() + skipped[1:] + ".")
    other = [s["variant"] for s in summaries if not s["same_budget"] and s["variant"] != EQUAL_COMPUTE]
    if other:
        lines.append(f"Not the same budget: {', '.join(other)} ran another number of steps than {reference}'s "
                     f"{'/'.join(map(str, summaries[0]['steps']))} (early stopping, or a setting that changes "
                     "the schedule): the difference mixes the setting with the budget.")
    resumed = [f"{r['variant']} seed {r['seed']}" for r in result["runs"] if r["resumed_from"]]
    if resumed:
        lines.append(f"Resumed: {', '.join(resumed)}; their wall time adds up their parts, each up to its last "
                     "checkpoint (one an older mrc-cli saved, without its time, counts 0).")
    return "\n".join(lines)


def _settings(summary: dict) -> str:
    text = ", ".join(summary["sets"]).replace("|", "\\|") or "(the config)"
    return text + (f", length x {_scales(summary)}" if "compute_scale" in summary else "")


def _scales(summary: dict) -> str:
    """The equal-compute run's length factors, one per seed where they differ."""
    return "/".join(f"{scale:g}" for scale in sorted(set(summary["compute_scale"])))


def _pm(stat: dict, digits: int) -> str:
    mean = f"{stat['mean']:.{digits}f}"
    return mean if stat["std"] is None else f"{mean} ± {stat['std']:.{digits}f}"


def _interval(diff: dict) -> str:
    if diff["low"] is None:
        return f"{diff['mean']:+.2f}"
    return f"{diff['mean']:+.2f} [{diff['low']:+.2f}, {diff['high']:+.2f}]"


def plot_comparison(result: dict, out: Path) -> Path:
    """F1 (left) and EM (middle) per variant: each seed's run as a dot, the mean with std bars beside them, the
    reference's mean as a dashed line; right, where the runs recorded their compute, each run's F1 against it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summaries = result["variants"]
    with_compute = all(s["compute"] for s in summaries)
    fig, panels = plt.subplots(1, 2 + with_compute, figsize=(max(8.0, 2.2 * len(summaries)) + 5 * with_compute, 4))
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
    if with_compute:
        _plot_f1_against_compute(panels[2], result)
    fig.tight_layout()
    return save_figure(fig, out)


def _plot_f1_against_compute(ax, result: dict) -> None:
    """Each run's dev F1 against its training FLOPs (log scale): a colour per variant, EQUAL_COMPUTE's as squares."""
    for i, s in enumerate(result["variants"]):
        runs = [r for r in result["runs"] if r["variant"] == s["variant"]]
        ax.scatter([r["compute"]["flops"] for r in runs], [r["f1"] for r in runs], s=30, color=f"C{i % 10}",
                   marker="s" if s["variant"] == EQUAL_COMPUTE else "o", alpha=0.8, label=s["variant"])
    ax.set_xscale("log")
    ax.set(xlabel="training compute (model FLOPs)", ylabel="dev F1 (%)", title="dev F1 against training compute")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)


def _machine() -> dict:
    """Where the runs trained: versions, GPUs, and the CPU features that decide bf16 on a CPU."""
    import torch

    from mrc_cli.precision import cpu_bf16_support

    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "cpu_cores": os.cpu_count(), "cpu_capability": torch.backends.cpu.get_cpu_capability(), **cpu_bf16_support()}
