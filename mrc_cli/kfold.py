"""k-fold training (`mrc kfold`): the training data split into K folds by article, K models trained with one config,
each on all folds but one and evaluated on the one held out, so that every training question gets an out-of-fold
(OOF) prediction. Their score is the recipe's on this data; for SQuAD v2 data the null threshold best on them is
chosen on questions no model trained on, and stored with every fold's best checkpoint for `mrc predict`.

Each fold trains in a process of its own (`runs.train_in_own_process`: one process training fold after fold grew
until killed), which builds its splits in memory (`splits.select_split`) from the training file and the ids of the
questions it holds out; folds are never written as data files. An article (where the data names articles) and a
context stay in one fold: questions on one paragraph in training and held out would leak its answers.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from mrc_cli.checkpoint import read_checkpoint_config, resolve_checkpoint
from mrc_cli.config import RunConfig, check_train_config, config_to_dict
from mrc_cli.errors import ConfigError, DataError
from mrc_cli.files import check_output_folder, refuse_other_files
from mrc_cli.features import cache_root, column
from mrc_cli.inference import headline, write_answer_files
from mrc_cli.metrics import score, scored_with_nulls, unscorable
from mrc_cli.runs import (FOLD_RECORD, HELD_OUT, check_facts, load_record, refuse_several_processes, train_run, write_json,
                          write_record)
from mrc_cli.scoring import read_json_map
from mrc_cli.splits import load_scorable, select_split
from mrc_cli.thresholds import (answers_at_threshold, null_share, null_share_warning, null_threshold_sweep,
                                 store_threshold)
from mrc_cli.tokenizer import check_model_folder, load_tokenizer
from mrc_cli.training import TrainResult, train
from mrc_cli.validate import MAX_LISTED, load_examples, refuse_repeated_ids


@dataclass
class Fold:
    index: int
    rows: list[int]  # rows of the training examples held out: this fold's dev split
    cfg: RunConfig
    settings: dict  # the config as planned; the run's config.yaml adds derived values
    of: int  # the number of folds

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.train.output_dir)


def article_groups(titles: list[str], contexts: list[str]) -> list[list[int]]:
    """Rows that must share a fold: those of one article (a non-empty title) or one context, joined transitively (a
    context repeated under two titles joins both articles); groups in the order of their first row."""
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def root(node: tuple[str, str]) -> tuple[str, str]:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]  # path halving keeps the trees flat
            node = parent[node]
        return node

    for title, context in zip(titles, contexts):
        if title:
            parent[root(("context", context))] = root(("title", title))
    groups: dict[tuple[str, str], list[int]] = {}
    for row, context in enumerate(contexts):
        groups.setdefault(root(("context", context)), []).append(row)
    return list(groups.values())


def fold_rows(examples, folds: int, seed: int, source: str = "the training data") -> list[list[int]]:
    """The rows of an examples Dataset each fold holds out (sorted): whole groups (`article_groups`), the largest
    first, each into the fold with the fewest questions so far; `seed` orders groups of equal size."""
    groups = article_groups(column(examples, "title"), column(examples, "context"))
    if len(groups) < folds:
        raise DataError(f"{source}: {len(groups)} articles (by title, or by context where a question has none) cannot "
                        f"make {folds} folds without an article in two of them; "
                        + (f"use fewer --folds (at most {len(groups)})" if len(groups) >= 2 else
                           "k-fold needs a training file of 2 articles or more"))
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    order.sort(key=lambda g: -len(groups[g]))  # stable: groups of one size keep the shuffled order
    held_out, sizes = [[] for _ in range(folds)], [0] * folds
    for g in order:
        k = sizes.index(min(sizes))
        held_out[k] += groups[g]
        sizes[k] += len(groups[g])
    return [sorted(rows) for rows in held_out]


def kfold(cfg: RunConfig, folds: int, out_dir: str | Path) -> dict:
    """Train `folds` models with `cfg` (in OUT/fold-<k>), each on every fold but k and evaluated on fold k, and return
    what OUT/kfold.json holds: each fold's figures, the score of the OOF predictions (merged in OUT/oof/) and, for
    SQuAD v2 data, the null threshold chosen on them, then stored with every fold's best checkpoint. Finished folds
    are skipped, an unfinished one resumes from its newest checkpoint. With data.dev_file, every fold's best
    checkpoint is then scored there (with `thresholds.threshold_report` where the threshold is stored)."""
    out_dir = Path(out_dir)
    check_train_config(cfg.train)  # here too, not only as the folds are planned: before the data is read
    check_output_folder(out_dir)
    refuse_other_files(out_dir, "--out", lambda entry: entry.name in ("kfold.json", "oof") or
                       entry.name.startswith("fold-"), "k-fold run")
    if folds < 2:
        raise ConfigError(f"--folds {folds}: k-fold training needs at least 2 folds")
    source = cfg.data.train_file
    if not source:
        raise ConfigError("no training data: pass --train FILE or set data.train_file in the config")
    refuse_several_processes("kfold", "trains its folds one after another, each in one process it starts "
                                       "itself")
    check_model_folder(cfg.model.name_or_path)  # here, not in the first fold's process after the data is read
    examples, report, golds = load_examples(source, "train", cfg.data.format, cache_root(cfg.data) / "examples")
    print(report.summary(), flush=True)
    refuse_repeated_ids(column(examples, "id"), source, "k-fold keys its held-out questions and out-of-fold answers by "
                        "id")
    # the held-out folds and the dev file are scored after every fold has trained: refused now if they cannot be
    problem = unscorable(golds, source, cfg.data.metric)
    if problem:
        raise DataError(problem)
    if cfg.data.dev_file:
        load_scorable(cfg.data.dev_file, cfg.data)
    if cfg.train.eval_steps or cfg.train.patience:
        print("k-fold evaluates each fold once, at its end (train.eval_steps and train.patience are not used): a "
              "checkpoint chosen by the held-out questions would flatter their out-of-fold score", flush=True)
    plan = _plan_folds(cfg, fold_rows(examples, folds, cfg.train.seed, source), golds, out_dir)
    ids = column(examples, "id")
    todo = []
    for fold in plan:
        if _finished(fold, ids) is None:
            todo.append(fold)
        else:
            print(f"fold {fold.index + 1}/{folds}: done, skipped", flush=True)
    for fold in todo:
        _run_fold(fold, ids, folds)

    scores = _score_oof(plan, golds, ids, out_dir / "oof", cfg.data.metric)  # first: it adds to the fold records
    result = {
        "settings": {"folds": folds, "seed": cfg.train.seed, "train_file": source, "dev_file": cfg.data.dev_file,
                     "out_dir": str(out_dir), "config": config_to_dict(cfg)},
        "questions": len(golds),
        "left_out": _left_out(golds, set(ids), source),
        "folds": [_finished(fold, ids) for fold in plan],
        **scores,
    }
    if cfg.data.dev_file:
        result["dev"] = _score_dev(plan, cfg.data.dev_file)
    write_json(out_dir / "kfold.json", result)
    return result


def _plan_folds(cfg: RunConfig, held_out: list[list[int]], golds: list[dict], out_dir: Path) -> list[Fold]:
    """Every fold's config, checked before the first one trains."""
    base = copy.deepcopy(cfg)
    base.data.dev_file = None  # a fold's dev split is its held-out fold; the dev file is scored after training
    # evaluated once, at the end: a checkpoint chosen by its held-out questions would flatter their OOF score, and
    # the OOF files and threshold would come from another step than the model that predict uses
    base.train.eval_steps, base.train.patience = 0, 0
    if scored_with_nulls(golds):
        base.decode.allow_null = True  # every fold decodes nulls, also one whose held-out questions all have answers
    plan = []
    for k, rows in enumerate(held_out):
        fold_cfg = copy.deepcopy(base)
        fold_cfg.train.output_dir, fold_cfg.train.resume = str(out_dir / f"fold-{k}"), "auto"
        check_train_config(fold_cfg.train)
        plan.append(Fold(k, rows, fold_cfg, config_to_dict(fold_cfg), len(held_out)))
    return plan


def _run_fold(fold: Fold, ids: list[str], folds: int) -> None:
    """Train one fold on the other folds' questions, evaluated on its own, in a process of its own; then its record."""
    num_trained = len(ids) - len(fold.rows)
    # the child cannot be handed the split in memory: it reads the training file and these ids (not rows: a reader
    # of the folder sees which questions the fold held out); written once the run is known to be this fold
    finished = train_run(fold.cfg, fold.settings, f"fold {fold.index + 1}/{folds}: training on {num_trained} "
                         f"questions, {len(fold.rows)} held out", None, "kfold", "train-fold", _facts(fold, ids),
                         lambda: write_json(fold.run_dir / HELD_OUT, {"ids": [ids[row] for row in fold.rows]}))
    write_record(fold.run_dir / FOLD_RECORD, {"fold": fold.index, "trained_on": num_trained, "held_out": len(fold.rows),
                                              **finished.record(), **_facts(fold, ids)}, fold.settings)
    finished.stop_if_signalled(fold.run_dir, "kfold")


def train_fold(cfg: RunConfig) -> TrainResult:
    """`mrc train-fold`, the process `mrc kfold` starts for a fold: train on the questions of data.train_file but
    those listed in the run directory's held_out_ids.json, evaluated on those."""
    listed = Path(cfg.train.output_dir) / HELD_OUT
    if not listed.is_file():
        raise ConfigError(f"{listed} is missing: mrc train-fold trains a fold planned by mrc kfold; run mrc kfold")
    held_out = set(json.loads(listed.read_text(encoding="utf-8"))["ids"])
    data = cfg.data
    examples, report, golds = load_examples(data.train_file, "train", data.format, cache_root(data) / "examples")
    ids = column(examples, "id")
    rows = [row for row, question in enumerate(ids) if question in held_out]
    if len(rows) != len(held_out):
        raise DataError(f"{data.train_file}: {len(held_out) - len(rows)} of the questions {listed} holds out are not "
                        "in it (the file changed since mrc kfold planned the folds); run mrc kfold again")
    train_rows = [row for row, question in enumerate(ids) if question not in held_out]
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name_or_path)
    return train(cfg, select_split(examples, report, golds, train_rows, tokenizer, data, "train"),
                 select_split(examples, report, golds, rows, tokenizer, data, "eval"))


def _finished(fold: Fold, ids: list[str]) -> dict | None:
    """A finished fold's record, or None. One finished with other settings, or on other held-out questions (the
    data changed), is refused: its predictions would pass for this split's."""
    record = load_record(fold.run_dir / FOLD_RECORD, fold.settings)
    if record is not None:
        facts = _facts(fold, ids)
        check_facts(fold.run_dir, {key: record.get(key) for key in facts}, facts, "finished")  # beside its figures
    return record


def _facts(fold: Fold, ids: list[str]) -> dict:
    """What a fold's run must share with the fold planned now, besides its settings."""
    return {"folds": fold.of, "held_out_ids": _digest([ids[row] for row in fold.rows])}


def _digest(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


def _left_out(golds: list[dict], used: set[str], source: str) -> dict:
    """Training questions no fold trained on or predicts (no locatable answer): counted, listed, scored 0."""
    ids = [gold["id"] for gold in golds if gold["id"] not in used]
    return {"count": len(ids), "ids": ids[:MAX_LISTED],
            "why": f"no locatable answer, so left out of training (`mrc validate {source}` lists them); without an "
                   "out-of-fold prediction they score 0 in the OOF score"}


def _check_held_out(fold: Fold, answers: dict, ids: list[str]) -> None:
    """A fold's predictions.json answers its held-out questions, all of them: files replaced since it trained (an
    `mrc eval --out` into the fold's folder, before eval refused run folders) would pass for its out-of-fold answers."""
    held_out = {ids[row] for row in fold.rows}
    if answers.keys() == held_out:
        return
    path = fold.run_dir / "predictions.json"
    raise DataError(f"{path}: not the fold's answers to its held-out questions ({len(answers.keys() - held_out)} "
                    f"answers to others, {len(held_out - answers.keys())} held-out ones missing): replaced since the "
                    f"fold trained? Delete {fold.run_dir} and run mrc kfold again, which trains that fold anew")


def _score_oof(plan: list[Fold], golds: list[dict], ids: list[str], oof_dir: Path, metric: str) -> dict:
    """The folds' final predictions, n-best lists and null odds merged into oof_dir and scored against every
    training question (official rules: what `mrc score` gives for oof_dir/predictions.json). SQuAD v2 data: the
    null threshold best for F1 on them, stored with every fold's best checkpoint."""
    answers, nbest, null_odds = {}, {}, {}
    for fold in plan:
        fold_answers = read_json_map(fold.run_dir / "predictions.json", str, "predictions")
        _check_held_out(fold, fold_answers, ids)
        answers.update(fold_answers)
        nbest.update(read_json_map(fold.run_dir / "nbest.json", list, "n-best"))
        null_odds.update(read_json_map(fold.run_dir / "null_odds.json", float, "null odds"))
    write_answer_files(oof_dir, answers, nbest, null_odds)
    scores = score(golds, answers, metric)
    if not scored_with_nulls(golds):
        return {"oof": scores, "null_threshold": None}
    sweep = null_threshold_sweep(golds, nbest, null_odds)
    threshold, kept = sweep["best_f1_thresh"], []
    _record_f1_at_threshold(plan, golds, ids, nbest, null_odds, threshold)
    for fold in plan:
        best = resolve_checkpoint(fold.run_dir)
        cfg = read_checkpoint_config(best)
        # stored by mrc eval --store-threshold since (not planned so): the user's choice
        if cfg.decode.null_threshold_from == "dev" and fold.settings["decode"]["null_threshold_from"] != "dev":
            kept.append(fold.index)
            continue
        store_threshold(best, cfg, threshold, "oof", null_share(golds))
    return {"oof": {**scores, **sweep}, "null_threshold": threshold, "threshold_kept_by_folds": kept}


def _record_f1_at_threshold(plan: list[Fold], golds: list[dict], ids: list[str], nbest: dict, null_odds: dict,
                            threshold: float) -> None:
    """Each fold's held-out F1 at the OOF threshold, in its record, for `mrc ensemble --weights oof`: its F1 at the
    threshold 0 it trained with mostly measures its share of unanswerable questions (a fold that answers "" to all
    scores that share)."""
    by_id = {gold["id"]: gold for gold in golds}
    for fold in plan:
        held_out = [ids[row] for row in fold.rows]
        answers = answers_at_threshold({qid: nbest[qid] for qid in held_out}, {qid: null_odds[qid] for qid in held_out},
                                       threshold)
        f1 = score([by_id[qid] for qid in held_out], answers, "squad_v2")["f1"]
        path = fold.run_dir / FOLD_RECORD
        record = json.loads(path.read_text(encoding="utf-8"))
        write_json(path, {**record, "oof_threshold": threshold, "f1_at_oof_threshold": f1})


def _score_dev(plan: list[Fold], dev_file: str) -> list[dict]:
    """Every fold's best checkpoint on the dev file, as `mrc eval` scores it (files in OUT/fold-<k>/dev)."""
    from mrc_cli.reader import evaluate_file

    rows = []
    for fold in plan:
        metrics = evaluate_file(str(fold.run_dir), dev_file, str(fold.run_dir / "dev"))
        rows.append({"fold": fold.index, **headline(metrics), "threshold_report": metrics.get("threshold_report"),
                     "null_rule": metrics.get("null_rule")})
    return rows


def format_kfold(result: dict) -> str:
    """The table `mrc kfold` prints: each fold on its held-out questions (and on the dev file), the OOF score, the
    questions left out and the null threshold."""
    dev = {row["fold"]: row for row in result.get("dev") or []}
    lines = ["| fold | trained on | held out | EM | F1 | steps |" + (" dev EM | dev F1 |" if dev else ""),
             "|---|---|---|---|---|---|" + ("---|---|" if dev else "")]
    for row in result["folds"]:
        cells = [row["fold"], row["trained_on"], row["held_out"], f"{row['exact']:.2f}", f"{row['f1']:.2f}", row["steps"]]
        if dev:
            cells += [f"{dev[row['fold']]['exact']:.2f}", f"{dev[row['fold']]['f1']:.2f}"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    oof = headline(result["oof"])
    lines.append(f"| OOF | | {sum(r['held_out'] for r in result['folds'])} | {oof['exact']:.2f} | {oof['f1']:.2f} | |"
                 + (" | |" if dev else ""))
    lines += ["", f"OOF: every training question scored by the model that did not train on it ({result['questions']} "
                  "questions, official rules)."]
    off = any((row.get("null_rule") or "").startswith("off") for row in dev.values())
    if dev and off:  # mrc predict keeps the rule on, with the OOF threshold: its answers are not these
        lines.append(f"dev: each fold's best checkpoint on {result['settings']['dev_file']}, with the null rule off: "
                     "that file has no unanswerable questions, so every question is answered; mrc predict with "
                     "these folds keeps the rule on, with the null threshold they carry, and may answer \"\" there.")
    elif dev:  # a threshold only where the training data had unanswerable questions to choose one on
        carried = ", at the null threshold it carries" if result["null_threshold"] is not None else ""
        lines.append(f"dev: each fold's best checkpoint on {result['settings']['dev_file']}{carried}.")
    left_out = result["left_out"]
    if left_out["count"]:
        lines.append(f"{left_out['count']} questions left out: {left_out['why']}.")
    threshold = result["null_threshold"]
    if threshold is not None:
        kept = result.get("threshold_kept_by_folds") or []
        stored = ("stored with every fold's best checkpoint for mrc predict" if not kept else
                  f"not stored for fold(s) {', '.join(map(str, kept))}, which keep the threshold mrc eval "
                  "--store-threshold stored on a dev set; stored with the others' best checkpoints")
        lines.append(f"Null threshold chosen out of fold: {threshold:.3f} (OOF F1 {result['oof']['best_f1']:.2f} at it, "
                     f"{oof['f1']:.2f} at the config's); {stored}.")
    for row in dev.values():
        report = row["threshold_report"]
        if report:
            lines.append(f"fold {row['fold']} on dev: F1 {report['zero']['f1']:.2f} at null threshold 0, "
                         f"{report['oof']['f1']:.2f} at the OOF one, {report['best']['f1']:.2f} at the best there "
                         f"({report['best']['threshold']:.3f}: tuned on the questions it scores, so optimistic)")
    warnings = {null_share_warning(row["threshold_report"]) for row in dev.values() if row["threshold_report"]}
    return "\n".join(lines + sorted(filter(None, warnings)))
