"""The competition chain measured (issue 15): one model against a 3-fold ensemble, a cross-"tokenization" ensemble and
a distilled student, over seeds; and the null threshold chosen out of fold against the dev-optimal one.

Offline MiniLM, one epoch at batch 16, mrc-cli's defaults (bench_tricks' squad task); scored with the v1.1 rules on the
answerable questions of the SQuAD v2 dev head. Per seed s:
- single: MiniLM at token level (bench_tricks' baseline: `--baseline-from` copies its finished runs);
- word: MiniLM at word level (`model.span_level=word`): other positions than the token model, so its probabilities
  reach the reference through the context's characters, as another tokenizer's would;
- kfold3: `mrc kfold --folds 3` (folds by article, drawn with seed s), and the ensemble of its 3 fold models, with
  `--combine prob` and `logprob`;
- cross: the ensemble of single and word;
- distil: a MiniLM student trained on the kfold3 ensemble's distributions (alpha 0.5, temperature 2).
Across seeds (one measurement each, as every seed's models are in them): seeds3, the ensemble of the 3 single models
(full data, seeds 0-2), also with `--combine logprob`; seeds3_word, of the 3 word-level ones; all6, of both;
seeds3_distil, students of seeds3 (one per seed, each against the single model of its seed).
Threshold, two set-ups, each `mrc kfold --folds 3` and its OOF threshold then reported on articles 1 and 3 of the v2 dev
head (628 questions, 323 unanswerable) at 0, at the OOF threshold and at the threshold best there, for each fold model
and their ensemble:
- mixed (`--threshold-seeds`, from MiniLM): the SQuAD v1.1 train head plus articles 0, 2, 4 of the v2 dev head (5,149
  questions, 379 unanswerable: 7 % against the reported part's 51 %);
- after_v1 (every seed, from that seed's single model): articles 0, 2, 4 only (779 questions, 49 % unanswerable),
  2 epochs: the OOF questions hold nulls as often as the reported ones.

    .venv/bin/python bench/bench_ensemble.py [--seeds 3] [--threshold-seeds 1] [--baseline-from outputs/bench/tricks]

Resumable: finished trainings (compare and kfold records, a distillation's metrics.json) and ensembles (their
metrics.json) are skipped. Writes OUT/bench_ensemble.json (command, machine with CPU flags, git revision, date, every
row per seed) and OUT/bench_ensemble.md (the tables).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # run as a script: the repository root, for `bench.*` and this checkout's mrc_cli
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_train_quality import answerable_dev, minilm_config  # noqa: E402
from bench.common import (  # noqa: E402
    OUT,
    SQUAD_TRAIN_HEAD,
    SQUAD_V2_DEV_HEAD,
    command_line,
    copy_baseline_runs,
    git_revision,
    machine,
    require_shared,
    run_script,
)

FOLDS = 3
THRESHOLD_TRAIN_ARTICLES, THRESHOLD_DEV_ARTICLES = (0, 2, 4), (1, 3)  # of the v2 dev head


def models(base, seeds: list[int], out: Path, baseline_from: str | None) -> dict:
    """single and word over the seeds, through mrc compare (the word row's verdict against single comes with it)."""
    from mrc_cli.compare import Variant, compare

    copy_baseline_runs(baseline_from, out, seeds)  # with their checkpoints: they are ensemble members
    return compare(base, [Variant("word", ("model.span_level=word",))], seeds, out)


def kfold_row(base, seed: int, out: Path) -> dict:
    """mrc kfold --folds 3 with seed `seed` (finished folds skipped): kfold.json's contents."""
    from mrc_cli.kfold import kfold

    cfg = copy.deepcopy(base)
    cfg.train.seed = seed
    return kfold(cfg, FOLDS, out)


def ensemble_row(members: list[Path], data: Path, out: Path, combine: str = "prob", save: Path | None = None) -> dict:
    """mrc ensemble of `members` on `data` (skipped when out/metrics.json exists): its metrics."""
    from mrc_cli.reader import ensemble_file

    if not (out / "metrics.json").is_file():
        if save and save.exists():
            shutil.rmtree(save)  # an ensemble stopped between saving and scoring: save it again
        ensemble_file([str(m) for m in members], str(data), str(out), combine=combine,
                      save=str(save) if save else None)
    return json.loads((out / "metrics.json").read_text(encoding="utf-8"))


def distil_row(base, teacher: Path, seed: int, out: Path) -> dict:
    """A MiniLM student of `teacher` (resumed when started, skipped when finished): its dev metrics and steps."""
    from mrc_cli.distillation import distil
    from mrc_cli.tracking import read_metrics

    if not (out / "metrics.json").is_file():
        cfg = copy.deepcopy(base)
        cfg.distil.teacher, cfg.train.seed = str(teacher), seed
        cfg.train.output_dir, cfg.train.resume = str(out), "auto"
        distil(cfg)
    return {**json.loads((out / "metrics.json").read_text(encoding="utf-8")),
            "steps": read_metrics(out / "metrics.jsonl")[-1]["step"]}


def seed_rows(base, seed: int, compared: dict, out: Path) -> dict:
    """Every row of one seed: F1/EM, optimizer steps trained, and each ensemble's best member."""
    from mrc_cli.inference import headline

    runs = {(r["variant"], r["seed"]): r for r in compared["runs"]}
    single, word = runs[("baseline", seed)], runs[("word", seed)]
    dev = Path(base.data.dev_file)
    rows = {"single": {**_scores(single), "steps": single["steps"]},
            "word": {**_scores(word), "steps": word["steps"]}}
    folds = kfold_row(base, seed, out / "kfold" / f"seed-{seed}")
    fold_dirs = [out / "kfold" / f"seed-{seed}" / f"fold-{k}" for k in range(FOLDS)]
    fold_f1 = [row["f1"] for row in folds["dev"]]
    steps = sum(row["steps"] for row in folds["folds"])
    saved = out / "ensembles" / f"kfold3-seed-{seed}"
    for combine in ("prob", "logprob"):
        metrics = ensemble_row(fold_dirs, dev, out / "ensembles" / f"kfold3-{combine}-seed-{seed}", combine,
                               saved if combine == "prob" else None)
        rows[f"kfold3_{combine}"] = {**headline(metrics), "steps": steps, "members_f1": fold_f1}
    members = [out / "models" / name / f"seed-{seed}" for name in ("baseline", "word")]
    cross = ensemble_row(members, dev, out / "ensembles" / f"cross-seed-{seed}")
    rows["cross"] = {**headline(cross), "steps": single["steps"] + word["steps"],
                     "members_f1": [single["f1"], word["f1"]]}
    student = distil_row(base, saved, seed, out / "distil" / f"seed-{seed}")
    rows["distil"] = {**headline(student), "steps": student["steps"], "teacher": "kfold3_prob",
                      "plus_teacher_training_steps": steps}
    for row in rows.values():
        if "members_f1" in row:
            row["over_best_member"] = row["f1"] - max(row["members_f1"])
    return rows


def seed_ensembles(base, compared: dict, seeds: list[int], out: Path) -> dict:
    """Ensembles of full-data models that differ by seed (and span level), and students of the first: a row each."""
    from mrc_cli.inference import headline

    runs = {(r["variant"], r["seed"]): r for r in compared["runs"]}
    dev, rows = Path(base.data.dev_file), {}
    groups = {"seeds3": (["baseline"], "prob"), "seeds3_logprob": (["baseline"], "logprob"),
              "seeds3_word": (["word"], "prob"), "all6": (["baseline", "word"], "prob")}
    for name, (variants, combine) in groups.items():
        members = [(variant, seed) for variant in variants for seed in seeds]
        metrics = ensemble_row([out / "models" / v / f"seed-{s}" for v, s in members], dev, out / "ensembles" / name,
                               combine, save=out / "ensembles" / f"{name}-saved" if name == "seeds3" else None)
        scores, members_f1 = headline(metrics), [runs[m]["f1"] for m in members]
        rows[name] = {**scores, "steps": sum(runs[m]["steps"] for m in members), "members_f1": members_f1,
                      "over_best_member": scores["f1"] - max(members_f1),
                      "over_members_mean": scores["f1"] - statistics.fmean(members_f1)}
    students = {seed: headline(distil_row(base, out / "ensembles" / "seeds3-saved", seed,
                                          out / "distil" / "seeds3" / f"seed-{seed}")) for seed in seeds}
    rows["seeds3_distil"] = {key: statistics.fmean(s[key] for s in students.values()) for key in ("exact", "f1")}
    rows["seeds3_distil"].update(
        f1_std=statistics.stdev(s["f1"] for s in students.values()),
        steps=runs[("baseline", seeds[0])]["steps"],  # a student trains as long as a single model
        teacher="seeds3", plus_teacher_training_steps=rows["seeds3"]["steps"], per_seed=students,
        over_single_paired=[students[seed]["f1"] - runs[("baseline", seed)]["f1"] for seed in seeds])
    return rows


def seed_table(rows: dict) -> str:
    lines = ["| row | optimizer steps | EM | F1 | F1 - best member | F1 - members' mean | F1 - single of its seed |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        f1 = f"{r['f1']:.2f}" + (f" ± {r['f1_std']:.2f}" if "f1_std" in r else "")
        gains = (f"{r['over_best_member']:+.2f} | {r['over_members_mean']:+.2f} | " if "members_f1" in r else
                 f" |  | {_pm(r['over_single_paired'])} (" + ", ".join(f"{d:+.2f}" for d in r["over_single_paired"]) + ")")
        lines.append(f"| {name} | {r['steps']} | {r['exact']:.2f} | {f1} | {gains} |")
    return "\n".join(lines)


def _scores(record: dict) -> dict:
    return {"exact": record["exact"], "f1": record["f1"]}


def threshold_files(out: Path) -> dict[str, Path]:
    """The threshold experiments' train files (mixed: the v1.1 train head + v2 dev articles 0, 2, 4; v2: those
    articles alone) and their dev file (articles 1, 3)."""
    train = json.loads(SQUAD_TRAIN_HEAD.read_text(encoding="utf-8"))
    dev = json.loads(SQUAD_V2_DEV_HEAD.read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    v2_train = [dev["data"][i] for i in THRESHOLD_TRAIN_ARTICLES]
    parts = {"mixed": train["data"] + v2_train, "v2": v2_train, "dev": [dev["data"][i] for i in THRESHOLD_DEV_ARTICLES]}
    paths = {name: out / file for name, file in (("mixed", "threshold_train.json"), ("v2", "threshold_train_v2.json"),
                                                 ("dev", "threshold_dev.json"))}
    for name, articles in parts.items():
        paths[name].write_text(json.dumps({"version": "v2.0", "data": articles}, ensure_ascii=False), encoding="utf-8")
    return paths


def threshold_row(base, files: dict[str, Path], train: str, seed: int, run: Path, init_from: Path | None = None) -> dict:
    """kfold in `run` on a v2-style train file (`train`: a threshold_files name), from MiniLM or `init_from` (2 epochs
    then); each fold model's and the fold ensemble's report on the v2 dev part."""
    from mrc_cli.ensemble import build_ensemble, save_ensemble
    from mrc_cli.files import from_json
    from mrc_cli.reader import evaluate_file
    from mrc_cli.thresholds import threshold_report
    from mrc_cli.validate import load_examples

    dev_file = files["dev"]
    cfg = copy.deepcopy(base)
    cfg.data.train_file, cfg.data.dev_file = str(files[train]), str(dev_file)
    if init_from is not None:
        cfg.train.init_from, cfg.train.epochs = str(init_from), 2
    result = kfold_row(cfg, seed, run)
    folds = [run / f"fold-{k}" for k in range(FOLDS)]
    saved = run / "ensemble"
    if not saved.exists():  # its decoding settings are fold 0's
        save_ensemble(build_ensemble([str(f) for f in folds]), saved)
    evaluate_file(str(saved), str(dev_file), str(run / "ensemble-eval"))
    # the folds' OOF threshold was chosen for one model's null odds: how it serves the ensemble's is measured here
    golds = load_examples(str(dev_file), "eval")[2]
    nbest, odds = (from_json((run / "ensemble-eval" / name).read_text(encoding="utf-8"))
                   for name in ("nbest.json", "null_odds.json"))
    return {"oof_threshold": result["null_threshold"], "oof_f1": result["oof"]["f1"],
            "folds": [row["threshold_report"] for row in result["dev"]],
            "ensemble": threshold_report(golds, nbest, odds, result["null_threshold"])}


def table(per_seed: dict[int, dict]) -> str:
    """mean +/- std over seeds per row, with the budget and the gain over the best member."""
    names = list(next(iter(per_seed.values())))
    lines = ["| row | seeds | optimizer steps | EM | F1 | F1 - best member | F1 - single (paired) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name in names:
        rows = [per_seed[seed][name] for seed in per_seed]
        gain = [r["over_best_member"] for r in rows if "over_best_member" in r]
        paired = [r["f1"] - per_seed[seed]["single"]["f1"] for seed, r in zip(per_seed, rows)]
        lines.append(f"| {name} | {len(rows)} | {_pm([r['steps'] for r in rows], 0)} | {_pm([r['exact'] for r in rows])} "
                     f"| {_pm([r['f1'] for r in rows])} | {_pm(gain) if gain else ''} | "
                     f"{'' if name == 'single' else _pm(paired)} |")
    return "\n".join(lines)


def threshold_table(thresholds: dict) -> str:
    """Per set-up, seed and model (each fold, the fold ensemble): F1 on the v2 dev part at 0, at the OOF threshold
    and at the best threshold there, and what the best one would overstate."""
    lines = ["| set-up | seed | model | OOF threshold | best threshold | F1 at 0 | F1 at OOF | F1 at best | best - OOF |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for setup, seeds in thresholds.items():
        for seed, row in seeds.items():
            models = [(f"fold {k}", report) for k, report in enumerate(row["folds"])] + [("ensemble", row["ensemble"])]
            for name, r in models:
                lines.append(f"| {setup} | {seed} | {name} | {r['oof']['threshold']:.2f} | {r['best']['threshold']:.2f} "
                             f"| {r['zero']['f1']:.2f} | {r['oof']['f1']:.2f} | {r['best']['f1']:.2f} "
                             f"| {r['best']['f1'] - r['oof']['f1']:.2f} |")
    return "\n".join(lines)


def _pm(values: list[float], digits: int = 2) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.{digits}f}" + (f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threshold-seeds", type=int, default=1)
    parser.add_argument("--baseline-from", help="bench_tricks' --out (outputs/bench/tricks): its finished baseline runs "
                        "are the single rows (compare refuses them if any setting differs)")
    parser.add_argument("--out", help="default: outputs/bench/ensemble")
    args = parser.parse_args()
    out = Path(args.out or OUT / "ensemble")
    out.mkdir(parents=True, exist_ok=True)
    require_shared("bench_ensemble", SQUAD_TRAIN_HEAD, SQUAD_V2_DEV_HEAD)
    # bench_tricks' dev file, so that its baseline runs are this one's single rows
    base = minilm_config(SQUAD_TRAIN_HEAD, answerable_dev(OUT / "tricks"), out / "unused")
    base.train.save_steps = 100  # a killed run resumes from its last checkpoint
    seeds = list(range(args.seeds))
    compared = models(base, seeds, out / "models", args.baseline_from)  # the run folders seed_rows reads
    per_seed = {seed: seed_rows(base, seed, compared, out) for seed in seeds}
    across = seed_ensembles(base, compared, seeds, out) if len(seeds) > 1 else {}
    files = threshold_files(out / "threshold")
    thresholds = {"mixed": {seed: threshold_row(base, files, "mixed", seed, out / "threshold" / f"seed-{seed}")
                            for seed in range(args.threshold_seeds)},
                  "after_v1": {seed: threshold_row(base, files, "v2", seed, out / "threshold" / "after_v1" / f"seed-{seed}",
                                                   out / "models" / "baseline" / f"seed-{seed}") for seed in seeds}}
    record = {"command": command_line(), "date": time.strftime("%Y-%m-%d"), "machine": machine(), **git_revision(),
              "rows": per_seed, "across_seeds": across,
              "thresholds": thresholds}
    (out / "bench_ensemble.json").write_text(json.dumps(record, indent=2, ensure_ascii=False, default=float))
    tables = "\n\n".join([table(per_seed), *([seed_table(across)] if across else []), threshold_table(thresholds)])
    (out / "bench_ensemble.md").write_text(tables + "\n", encoding="utf-8")
    print(tables)


if __name__ == "__main__":
    run_script(main)
