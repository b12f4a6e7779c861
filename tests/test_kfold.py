"""`mrc kfold` and the out-of-fold null threshold: the article split on real data, folds in memory with their feature
cache, the threshold sweep and report on constructed numbers, and end to end on the tiny BERT: files, OOF coverage and
score, the threshold stored for `mrc predict` and reported by `mrc eval`, finished folds skipped, a stopped one resumed;
every fold a process of its own (in the test's process where a test is not about that)."""

from __future__ import annotations

import json
import math
import shutil
from collections import defaultdict
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import QUICKSTART, shared_file, tiny_run_config
from mrc_cli import kfold as kfold_module, runs
from mrc_cli.checkpoint import read_checkpoint_config, resolve_checkpoint
from mrc_cli.cli import app
from mrc_cli.config import DataConfig, load_config, save_config
from mrc_cli.data import to_dataset
from mrc_cli.errors import ConfigError, DataError
from mrc_cli.features import build_features, column
from mrc_cli.kfold import article_groups, fold_rows, kfold
from mrc_cli.metrics import score
from mrc_cli.splits import select_split
from mrc_cli.tracking import read_metrics
from mrc_cli.thresholds import (answers_at_threshold, format_threshold_report, null_share, null_threshold_sweep,
                                threshold_report)
from mrc_cli.training import train
from mrc_cli.validate import load_examples


def _no_training(*args, **kwargs):
    pytest.fail("nothing should have trained")


def _train_here(cfg, gpu, by, command):
    """A fold trained in the test's process by what its child would run: fast, and what a test patches is seen. The
    child process itself is tested by the test that says so."""
    assert (gpu, by, command) == (None, "kfold", "train-fold")
    kfold_module.train_fold(cfg)


# --- the split ---------------------------------------------------------------------------------------------------


def _fold_of(rows: list[list[int]]) -> dict[int, int]:
    return {row: k for k, fold in enumerate(rows) for row in fold}


def _folds_per(values: list[str], rows: list[list[int]]) -> dict[str, set[int]]:
    fold_of, folds = _fold_of(rows), defaultdict(set)
    for row, value in enumerate(values):
        folds[value].add(fold_of[row])
    return folds


def test_folds_hold_whole_articles_and_balance_questions_on_squad():
    examples = load_examples(str(shared_file("squad_v1.1_train_head.json")), "train")[0]
    rows = fold_rows(examples, 4, seed=0)
    assert sorted(row for fold in rows for row in fold) == list(range(len(examples))) == list(range(4370))
    titles, contexts = column(examples, "title"), column(examples, "context")
    assert all(len(folds) == 1 for folds in _folds_per(titles, rows).values())
    assert all(len(folds) == 1 for folds in _folds_per(contexts, rows).values())
    # 12 articles of 137..758 questions, largest first into the emptiest fold
    assert [len(fold) for fold in rows] == [1027, 1121, 1160, 1062]
    assert [sorted({titles[row] for row in fold}) for fold in rows][0] == ["Beyoncé", "University_of_Notre_Dame"]
    assert fold_rows(examples, 4, seed=0) == rows and fold_rows(examples, 4, seed=7) == rows  # no two of one size


def test_without_titles_each_context_is_a_group_and_the_seed_orders_ties():
    records = load_examples(str(shared_file("squad_v2.0_dev_head.json")), "train")[0].to_list()
    examples = to_dataset([{**record, "title": ""} for record in records])
    rows = fold_rows(examples, 5, seed=0)
    contexts = column(examples, "context")
    assert sorted(row for fold in rows for row in fold) == list(range(1407))
    assert all(len(folds) == 1 for folds in _folds_per(contexts, rows).values())
    assert [len(fold) for fold in rows] == [283, 280, 280, 282, 282]  # 173 contexts of 3..10 questions
    other = fold_rows(examples, 5, seed=1)
    assert other != rows and sorted(map(len, other)) == sorted(map(len, rows))
    assert fold_rows(examples, 5, seed=1) == other


def test_a_context_under_two_titles_joins_the_articles():
    titles = ["a", "b", "b", "c", "", ""]
    contexts = ["x", "y", "x", "z", "w", "w"]
    assert article_groups(titles, contexts) == [[0, 1, 2], [3], [4, 5]]
    with pytest.raises(DataError, match="t.json: 3 articles \\(by title, or by context where a question has none\\) cannot "
                                        "make 4 folds .*; use fewer --folds \\(at most 3\\)"):
        fold_rows(to_dataset([{"id": str(i), "title": t, "context": c, "question": "q?", "is_impossible": True,
                               "answers": {"text": [], "answer_start": []}} for i, (t, c) in enumerate(zip(titles, contexts))]),
                  4, 0, "t.json")


def test_a_fold_is_featurized_from_its_rows_and_its_features_cached(wordpiece_tokenizer, tmp_path):
    """A slice of a loaded file shares the file's Arrow buffers: its features must not be the whole file's."""
    data = DataConfig(max_seq_length=128, doc_stride=32, max_query_length=32, cache_dir=str(tmp_path / "cache"))
    examples, report, golds = load_examples(str(QUICKSTART / "en_train.json"), "train", cache_dir=tmp_path / "ex")
    whole, _ = build_features(examples, wordpiece_tokenizer, data, labels=True, offsets=False)
    split = select_split(examples, report, golds, list(range(10)), wordpiece_tokenizer, data, "train")
    alone, _ = build_features(to_dataset(examples.select(range(10)).to_list()), wordpiece_tokenizer, data,
                              labels=True, offsets=False, cache=False)
    assert split.summary.examples == 10 and not split.summary.from_cache
    assert column(split.features, "input_ids") == column(alone, "input_ids") != column(whole, "input_ids")
    assert [g["id"] for g in split.golds] == column(examples, "id")[:10]
    again = select_split(examples, report, golds, list(range(10)), wordpiece_tokenizer, data, "train")
    assert again.summary.from_cache and column(again.features, "input_ids") == column(alone, "input_ids")


# --- the null threshold on constructed numbers ---------------------------------------------------------------------

GOLDS = [
    {"id": "q1", "answers": ["Paris"], "is_impossible": False},
    {"id": "q2", "answers": ["blue whale"], "is_impossible": False},
    {"id": "q3", "answers": [], "is_impossible": True},
    {"id": "q4", "answers": [], "is_impossible": True},
    {"id": "q5", "answers": ["1998"], "is_impossible": False},
]
NULL = {"text": "", "start": -1, "end": -1, "score": 1.0, "probability": 0.5}
NBEST = {
    "q1": [{"text": "Paris", "start": 0, "end": 5}, {"text": "Lyon", "start": 9, "end": 13}],
    "q2": [{"text": "whale", "start": 5, "end": 10}],  # F1 2/3 against "blue whale"
    "q3": [NULL, {"text": "x", "start": 0, "end": 1}],  # the null candidate first: passed over
    "q4": [{"text": "y", "start": 0, "end": 1}, NULL],
    "q5": [{"text": "1998", "start": 3, "end": 7}],
}
ODDS = {"q1": -2.0, "q2": 0.5, "q3": 1.0, "q4": 3.0, "q5": 2.0}


def test_the_sweep_releases_answers_by_null_odds_and_keeps_the_first_best_threshold():
    sweep = null_threshold_sweep(GOLDS, NBEST, ODDS)
    # all withheld: q3, q4 right (2); q1 +1 -> 3; q2 +2/3 -> 3.67 (t 0.5); q3 -1; q5 +1 -> 3.67 again, not better
    # the middle of the best range, not its edge: halfway from q2's (q1's) odds to q3's (q2's)
    assert sweep["best_f1"] == pytest.approx(100 * (3 + 2 / 3) / 5) and sweep["best_f1_thresh"] == 0.75
    assert (sweep["best_exact"], sweep["best_exact_thresh"]) == (60.0, -0.75)
    for metric in ("f1", "exact"):
        answers = answers_at_threshold(NBEST, ODDS, sweep[f"best_{metric}_thresh"])
        assert score(GOLDS, answers, "squad_v2")[metric] == pytest.approx(sweep[f"best_{metric}"])
        for nudge in (-1e-6, 1e-6):  # another backend's logits: the same answers at the threshold kept
            moved = {qid: odds + nudge for qid, odds in ODDS.items()}
            assert answers_at_threshold(NBEST, moved, sweep[f"best_{metric}_thresh"]) == answers
    assert answers_at_threshold(NBEST, ODDS, 1.5) == {"q1": "Paris", "q2": "whale", "q3": "x", "q4": "", "q5": ""}


def test_where_every_answer_null_is_best_the_threshold_gives_every_answer_null():
    odds = {"q1": -2.0, "q2": -1.0, "q3": 1.0, "q4": -3.0, "q5": -0.5}
    nbest = {**NBEST, "q1": [{"text": "Rome", "start": 0, "end": 4}], "q5": [{"text": "1999", "start": 3, "end": 7}]}
    sweep = null_threshold_sweep(GOLDS, nbest, odds)
    assert sweep["best_f1"] == 40.0 and sweep["best_f1_thresh"] == -4.0  # the official sweep says 0.0
    assert all(a == "" for a in answers_at_threshold(nbest, odds, sweep["best_f1_thresh"]).values())
    assert score(GOLDS, answers_at_threshold(nbest, odds, sweep["best_f1_thresh"]), "squad_v2")["f1"] == 40.0


@pytest.mark.parametrize("golds, nbest, odds", [
    # every span wrong, 1 of 3 unanswerable: all null is best, and 100/3 is not 100 * (1/3) in floats
    (GOLDS[:2] + GOLDS[3:4], {"q1": [{"text": "Rome", "start": 0, "end": 4}], "q2": [{"text": "cat", "start": 0, "end": 3}],
                               "q4": [{"text": "y", "start": 0, "end": 1}]}, {"q1": -2.0, "q2": -1.0, "q4": -3.0}),
    (GOLDS, NBEST, {**ODDS, "q4": float("inf")}),  # decoding gives a question without a span infinite null odds
    (GOLDS + [{"id": "q6", "answers": [], "is_impossible": True}], NBEST, ODDS),  # q6 left out of eval: missing
])
def test_the_kept_threshold_gives_the_best_score_it_reports(golds, nbest, odds):
    sweep = null_threshold_sweep(golds, nbest, odds)
    for metric in ("exact", "f1"):
        threshold = sweep[f"best_{metric}_thresh"]
        assert math.isfinite(threshold)
        answers = answers_at_threshold(nbest, odds, threshold)
        assert score(golds, answers, "squad_v2")[metric] == pytest.approx(sweep[f"best_{metric}"])


def test_tied_null_odds_keep_the_official_threshold():
    """The official sweep scores tied questions one by one, so its best may lie between them, where no threshold
    is: the middle of the range would not give it either, and the official edge is kept."""
    odds = {"q1": 1.0, "q3": 1.0, "q2": 2.0, "q4": 3.0, "q5": 2.0}
    assert null_threshold_sweep(GOLDS, NBEST, odds)["best_exact_thresh"] == 1.0


def test_threshold_report_at_zero_out_of_fold_and_best():
    report = threshold_report(GOLDS, NBEST, ODDS, oof_threshold=1.5)
    assert report["zero"] == {"threshold": 0.0, "exact": 60.0, "f1": 60.0}  # q1, q3, q4 right
    assert report["oof"] == {"threshold": 1.5, "exact": 40.0, "f1": pytest.approx(100 * (2 + 2 / 3) / 5)}
    assert report["best"] == {"threshold": 0.75, "exact": 60.0, "f1": pytest.approx(100 * (3 + 2 / 3) / 5)}
    assert report["optimism_f1"] == pytest.approx(20.0)


def test_a_threshold_chosen_on_another_null_rate_is_flagged():
    share = null_share(GOLDS)
    assert share == 0.4  # q3, q4
    for chosen, flagged in ((0.4, False), (0.45, False), (0.07, True), (None, False)):
        report = threshold_report(GOLDS, NBEST, ODDS, oof_threshold=1.5, oof_null_share=chosen)
        assert (report["null_share"], report["oof_null_share"]) == (share, chosen)
        assert ("warning: the out-of-fold threshold was chosen on questions 7% unanswerable, these are 40%"
                in format_threshold_report(report)) == flagged


# --- end to end: 2 folds of the tiny BERT, 3 steps each -------------------------------------------------------------


def _squad(articles: list[dict]) -> dict:
    return {"version": "v2.0", "data": articles}


@pytest.fixture(scope="module")
def kfolded(tmp_path_factory, tiny_bert_dir):
    """`mrc kfold --folds 2` on SQuAD v2-style data (the quickstart train set, 6 dev articles and a question whose answer
    is not in its context), scored on the other 4 dev articles; checkpoints at steps 2 and 3 of each fold."""
    root = tmp_path_factory.mktemp("kfold")
    train_articles = json.loads((QUICKSTART / "en_train.json").read_text())["data"]
    dev_articles = json.loads((QUICKSTART / "en_dev.json").read_text())["data"]
    unlocatable = {"id": "NOT_IN_CONTEXT", "question": "What is not here?", "is_impossible": False,
                   "answers": [{"text": "a zebra crossing", "answer_start": 3}]}
    train_articles[0]["paragraphs"][0]["qas"].append(unlocatable)
    train_file, dev_file = root / "train.json", root / "dev.json"
    train_file.write_text(json.dumps(_squad(train_articles + dev_articles[:6])))
    dev_file.write_text(json.dumps(_squad(dev_articles[6:])))
    config = root / "base.yaml"
    # eval_steps and patience set: a fold is still evaluated at its end only
    save_config(tiny_run_config(tiny_bert_dir, root / "unused", max_steps=3, save_steps=2, eval_steps=2, patience=1), config)
    out = root / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runs, "train_in_own_process", _train_here)
        result = CliRunner().invoke(app, ["kfold", "-c", str(config), "--folds", "2", "--train", str(train_file),
                                          "--dev", str(dev_file), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, config, train_file, dev_file, result.stdout


def _cfg(config, train_file, dev_file, *sets):
    return load_config(config, {"data.train_file": str(train_file), "data.dev_file": str(dev_file)}, list(sets))


def test_kfold_writes_every_fold_the_oof_files_and_the_report(kfolded):
    out, _, train_file, _, stdout = kfolded
    saved = json.loads((out / "kfold.json").read_text())
    assert saved["questions"] == 177 + 29 + 1
    assert saved["left_out"]["count"] == 1 and saved["left_out"]["ids"] == ["NOT_IN_CONTEXT"]
    assert [(f["fold"], f["steps"], f["trained_on"] + f["held_out"]) for f in saved["folds"]] == [(0, 3, 206), (1, 3, 206)]
    assert [f["held_out"] for f in saved["folds"]] == [103, 103]
    for fold in saved["folds"]:
        run_dir = out / f"fold-{fold['fold']}"
        assert fold["f1"] == json.loads((run_dir / "metrics.json").read_text())["f1"]
        assert (run_dir / "kfold_fold.json").is_file() and resolve_checkpoint(run_dir).name == "step-000003"
    for name in ("predictions.json", "nbest.json", "null_odds.json"):
        assert (out / "oof" / name).is_file()
    assert "| OOF | | 206 |" in stdout and "1 questions left out: no locatable answer" in stdout
    assert f"Null threshold chosen out of fold: {saved['null_threshold']:.3f}" in stdout
    assert len([line for line in stdout.splitlines() if line.startswith("| ")]) == 4
    assert "k-fold evaluates each fold once, at its end" in stdout
    for k in (0, 1):  # one evaluation, at step 3: the OOF files and the best checkpoint are the same step's
        assert [r["step"] for r in read_metrics(out / f"fold-{k}" / "metrics.jsonl") if "f1" in r] == [3]


def test_oof_predictions_cover_every_usable_question_once_and_no_article_is_in_two_folds(kfolded):
    out, _, train_file, _, _ = kfolded
    examples = load_examples(str(train_file), "train")[0]
    title_of = dict(zip(column(examples, "id"), column(examples, "title")))
    held_out = [set(json.loads((out / f"fold-{k}" / "predictions.json").read_text())) for k in (0, 1)]
    assert not held_out[0] & held_out[1]
    oof = json.loads((out / "oof" / "predictions.json").read_text())
    assert set(oof) == held_out[0] | held_out[1] == set(title_of)  # every question but NOT_IN_CONTEXT
    assert set(json.loads((out / "oof" / "null_odds.json").read_text())) == set(json.loads((out / "oof" / "nbest.json").read_text())) == set(oof)
    assert not {title_of[q] for q in held_out[0]} & {title_of[q] for q in held_out[1]}
    for k in (0, 1):  # all a fold's process is handed of its split: the ids it holds out, in file order
        listed = json.loads((out / f"fold-{k}" / "held_out_ids.json").read_text())
        assert listed == {"ids": [question for question in title_of if question in held_out[k]]}


def test_the_oof_score_is_mrc_score_of_the_oof_predictions(kfolded):
    out, _, train_file, _, _ = kfolded
    result = CliRunner().invoke(app, ["score", str(train_file), str(out / "oof" / "predictions.json")])
    assert result.exit_code == 0, result.output
    scored = json.loads(result.stdout)
    saved = json.loads((out / "kfold.json").read_text())["oof"]
    assert {key: saved[key] for key in scored} == scored
    assert (scored["total"], scored["missing"], scored["NoAns_total"]) == (207, 1, 6)


def test_the_oof_threshold_is_stored_with_every_fold_and_predict_applies_it(kfolded, tmp_path):
    out, _, train_file, dev_file, _ = kfolded
    saved = json.loads((out / "kfold.json").read_text())
    _, _, golds = load_examples(str(train_file), "train")
    nbest = json.loads((out / "oof" / "nbest.json").read_text())
    odds = json.loads((out / "oof" / "null_odds.json").read_text())
    threshold = null_threshold_sweep(golds, nbest, odds)["best_f1_thresh"]
    assert saved["null_threshold"] == threshold != 0.0
    for k in (0, 1):
        decode = read_checkpoint_config(resolve_checkpoint(out / f"fold-{k}")).decode
        assert (decode.null_score_diff_threshold, decode.null_threshold_from, decode.allow_null) == (threshold, "oof", True)
        assert decode.null_share == null_share(golds)  # the share the threshold was chosen at, for eval to compare

    result = CliRunner().invoke(app, ["predict", "--checkpoint", str(out / "fold-0"), "--data", str(dev_file),
                                      "--out", str(tmp_path / "sub.json")])
    assert result.exit_code == 0, result.output
    submission = json.loads((tmp_path / "sub.json").read_text())
    dev_nbest = json.loads((out / "fold-0" / "dev" / "nbest.json").read_text())
    dev_odds = json.loads((out / "fold-0" / "dev" / "null_odds.json").read_text())
    assert len(submission) == 20 and submission == answers_at_threshold(dev_nbest, dev_odds, threshold)
    assert submission != answers_at_threshold(dev_nbest, dev_odds, 0.0)


def test_oof_weights_are_the_folds_held_out_f1_shares(kfolded, tmp_path):
    out, _, _, dev_file, _ = kfolded
    saved = json.loads((out / "kfold.json").read_text())
    records = [json.loads((out / f"fold-{k}" / "kfold_fold.json").read_text()) for k in (0, 1)]
    # SQuAD v2 data: the F1 at the threshold the k-fold run chose, not at 0 (there mostly the fold's null share)
    assert all(record["oof_threshold"] == saved["null_threshold"] for record in records)
    f1 = [record["f1_at_oof_threshold"] for record in records]
    assert f1 != [fold["f1"] for fold in saved["folds"]]
    assert min(f1) > 0 and f1[0] != f1[1]  # else equal weights would pass for these
    members = [str(out / "fold-0"), str(resolve_checkpoint(out / "fold-1"))]  # a run directory and a checkpoint
    result = CliRunner().invoke(app, ["ensemble", *sum((["--checkpoint", m] for m in members), []), "--weights", "oof",
                                      "--data", str(dev_file), "--out", str(tmp_path / "ens"), "--save", str(tmp_path / "saved")])
    assert result.exit_code == 0, result.output
    weights = yaml.safe_load((tmp_path / "saved" / "ensemble.yaml").read_text())["weights"]
    assert weights == pytest.approx([f1[0] / sum(f1), f1[1] / sum(f1)])

    result = CliRunner().invoke(app, ["ensemble", "--checkpoint", members[0], "--checkpoint", str(tmp_path / "saved"),
                                      "--weights", "oof", "--data", str(dev_file), "--out", str(tmp_path / "ens2")])
    assert result.exit_code == 1 and "member 2" in result.stderr and "was not trained by `mrc kfold`" in result.stderr
    zero = shutil.copytree(out / "fold-1", tmp_path / "fold-zero")  # a tiny model's fold can score 0
    record = json.loads((zero / "kfold_fold.json").read_text())
    (zero / "kfold_fold.json").write_text(json.dumps({**record, "f1": 0.0, "f1_at_oof_threshold": 0.0}))
    result = CliRunner().invoke(app, ["ensemble", "--checkpoint", members[0], "--checkpoint", str(zero),
                                      "--weights", "oof", "--data", str(dev_file), "--out", str(tmp_path / "ens3")])
    assert result.exit_code == 1 and f"member 2 ({zero}) scored F1 0.0 on the fold it was held out of" in result.stderr


def test_oof_weights_refuse_folds_of_different_kfold_runs_and_warn_without_the_oof_threshold_f1(kfolded, tmp_path):
    out, _, _, dev_file, _ = kfolded
    other = shutil.copytree(out / "fold-1", tmp_path / "other")  # a fold of another k-fold run: CMRC beside SQuAD v2
    record = json.loads((other / "kfold_fold.json").read_text())

    def weights_of(**changes):
        (other / "kfold_fold.json").write_text(json.dumps({**record, **changes}))
        return CliRunner().invoke(app, ["ensemble", "--checkpoint", str(out / "fold-0"), "--checkpoint", str(other),
                                        "--weights", "oof", "--data", str(dev_file), "--out", str(tmp_path / "ens")])

    result = weights_of(metric="cmrc2018", folds=3)
    assert result.exit_code == 1
    assert (f"--weights oof: members 1 ({out / 'fold-0'}) and 2 ({other}) are folds of different mrc kfold runs "
            "(other number of folds, metric)") in result.stderr
    config = {**record["config"], "data": {**record["config"]["data"], "train_file": "zh_train.json"}}
    result = weights_of(config=config)
    assert result.exit_code == 1 and "(other settings)" in result.stderr
    info = json.loads((other / "run_info.json").read_text())
    (other / "run_info.json").write_text(json.dumps({**info, "train_file_sha256": "0" * 64}))
    result = weights_of()
    assert result.exit_code == 1 and "(other training data (SHA-256))" in result.stderr
    (other / "run_info.json").write_text(json.dumps(info))
    # a record of before the F1 at the out-of-fold threshold: its F1 at 0, with a warning
    unthresholded = {key: value for key, value in record.items() if key not in ("f1_at_oof_threshold", "oof_threshold")}
    (other / "kfold_fold.json").write_text(json.dumps(unthresholded))
    result = CliRunner().invoke(app, ["ensemble", "--checkpoint", str(out / "fold-0"), "--checkpoint", str(other),
                                      "--weights", "oof", "--data", str(dev_file), "--out", str(tmp_path / "ens2")])
    assert result.exit_code == 0, result.output
    assert "warning: --weights oof: member(s) 2 have only their held-out F1 at null threshold 0" in result.stderr


def test_the_chain_folds_ensemble_student_submission_runs_from_the_cli(kfolded, tiny_albert_dir, tmp_path):
    out, _, train_file, dev_file, _ = kfolded
    saved, student = tmp_path / "ensemble", tmp_path / "student"
    runner = CliRunner()
    result = runner.invoke(app, ["ensemble", "--checkpoint", str(out / "fold-0"), "--checkpoint", str(out / "fold-1"),
                                 "--weights", "oof", "--data", str(dev_file), "--out", str(tmp_path / "ens"),
                                 "--save", str(saved)])
    assert result.exit_code == 0, result.output
    # a SentencePiece ALBERT student of the WordPiece folds' ensemble
    result = runner.invoke(app, ["distil", "--teacher", str(saved), "--student", str(tiny_albert_dir), "--train",
                                 str(train_file), "--dev", str(dev_file), "--output-dir", str(student),
                                 "--set", "train.max_steps=2", "--set", "data.max_seq_length=128", "--set",
                                 "data.doc_stride=32", "--set", "data.max_query_length=32", "--set", "train.precision=no",
                                 "--set", "train.cpu=true", "--set", f"data.cache_dir={tmp_path / 'cache'}"])
    assert result.exit_code == 0, result.output
    assert f"teacher {saved}" in (student / "train.log").read_text()
    result = runner.invoke(app, ["predict", "--checkpoint", str(student), "--data", str(dev_file), "--out",
                                 str(tmp_path / "submission.json")])
    assert result.exit_code == 0, result.output
    dev_ids = {qa["id"] for a in json.loads(dev_file.read_text())["data"] for p in a["paragraphs"] for qa in p["qas"]}
    assert set(json.loads((tmp_path / "submission.json").read_text())) == dev_ids


def test_eval_reports_the_oof_threshold_against_zero_and_the_dev_optimal_one(kfolded, tmp_path):
    out, _, _, dev_file, _ = kfolded
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(out / "fold-1"), "--data", str(dev_file),
                                      "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    report = metrics["threshold_report"]
    saved = json.loads((out / "kfold.json").read_text())
    assert report == saved["dev"][1]["threshold_report"]
    assert report["oof"]["threshold"] == saved["null_threshold"]
    assert (report["oof"]["f1"], report["oof"]["exact"]) == (metrics["f1"], metrics["exact"])  # decoded at it
    assert report["best"]["threshold"] == metrics["best_f1_thresh"] and report["best"]["f1"] >= report["oof"]["f1"]
    assert report["optimism_f1"] == report["best"]["f1"] - report["oof"]["f1"]
    assert report["null_share"] == null_share(load_examples(str(dev_file), "eval")[2])
    assert report["oof_null_share"] == read_checkpoint_config(resolve_checkpoint(out / "fold-1")).decode.null_share
    oof, best = report["oof"], report["best"]
    assert f"{oof['threshold']:>7.3f}  out of fold         {oof['exact']:6.2f} {oof['f1']:6.2f}" in result.stdout
    assert f"{best['threshold']:>7.3f}  best on this data   {best['exact']:6.2f} {best['f1']:6.2f}" in result.stdout


def test_kfold_warns_once_where_the_dev_null_rate_is_another(kfolded):
    result = json.loads((kfolded[0] / "kfold.json").read_text())
    assert "warning:" not in kfold_module.format_kfold(result)  # chosen at 3 %, dev 10 %: within 10 points
    for row in result["dev"]:
        row["threshold_report"]["oof_null_share"] = 0.5
    assert kfold_module.format_kfold(result).count(
        "warning: the out-of-fold threshold was chosen on questions 50% unanswerable, these are 10%") == 1


def test_kfold_says_where_dev_data_without_unanswerable_questions_was_scored_with_the_null_rule_off(
        kfolded, monkeypatch, tmp_path):
    out, config, train_file, dev_file, _ = kfolded
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    data = json.loads(dev_file.read_text())
    for paragraph in (p for article in data["data"] for p in article["paragraphs"]):
        paragraph["qas"] = [qa for qa in paragraph["qas"] if qa["answers"]]
    answerable = tmp_path / "answerable.json"
    answerable.write_text(json.dumps(data))
    monkeypatch.setattr(runs, "train_in_own_process", _no_training)
    result = kfold(_cfg(config, train_file, answerable), 2, copy)
    assert all(row["null_rule"].startswith("off for this data") for row in result["dev"])
    table = kfold_module.format_kfold(result)
    assert "with the null rule off: that file has no unanswerable questions" in table
    assert "at the null threshold it carries" not in table


def test_a_second_kfold_skips_finished_folds(kfolded, monkeypatch, capsys):
    out, config, train_file, dev_file, _ = kfolded
    before = json.loads((out / "kfold.json").read_text())
    monkeypatch.setattr(runs, "train_in_own_process", _no_training)
    result = kfold(_cfg(config, train_file, dev_file), 2, out)
    assert capsys.readouterr().out.count(": done, skipped") == 2
    assert result["folds"] == before["folds"] and result["oof"] == before["oof"]
    assert result["null_threshold"] == before["null_threshold"]
    # nor do settings that change no weight, or the same file by another path
    import os

    again = kfold(_cfg(config, os.path.relpath(train_file), dev_file, "train.log_steps=5", "train.save_steps=7",
                       "train.keep_last=1", "data.num_proc=2"), 2, out)
    assert capsys.readouterr().out.count(": done, skipped") == 2 and again["oof"] == before["oof"]


def test_a_second_kfold_keeps_a_threshold_mrc_eval_stored_since(kfolded, monkeypatch):
    """mrc eval --store-threshold on a fold's checkpoint after kfold: a rerun (all folds skipped) had put the OOF
    threshold back silently, under a calibration fitted at the other one."""
    from mrc_cli.thresholds import store_threshold

    out, config, train_file, dev_file, _ = kfolded
    best = [resolve_checkpoint(out / f"fold-{k}") for k in (0, 1)]
    files = [*(b / "config.yaml" for b in best), out / "kfold.json"]
    before = {path: path.read_bytes() for path in files}
    try:
        store_threshold(best[0], read_checkpoint_config(best[0]), 5.0, "dev")
        monkeypatch.setattr(runs, "train_in_own_process", _no_training)
        result = kfold(_cfg(config, train_file, dev_file), 2, out)
        kept, oof = (read_checkpoint_config(b).decode for b in best)
        assert (kept.null_score_diff_threshold, kept.null_threshold_from) == (5.0, "dev")
        assert (oof.null_score_diff_threshold, oof.null_threshold_from) == (result["null_threshold"], "oof")
        assert "not stored for fold(s) 0, which keep the threshold mrc eval --store-threshold stored" in \
               kfold_module.format_kfold(result)
    finally:
        for path, content in before.items():
            path.write_bytes(content)


def test_a_folds_answers_are_kept_its_own_and_never_rebuilt_from_others(kfolded, monkeypatch, tmp_path):
    """eval, ensemble and predict refuse to write into a fold's (a run's) folder; answers replaced there anyway are
    refused when the out-of-fold score is rebuilt, not scored as the fold's."""
    out, config, train_file, dev_file, _ = kfolded
    fold = out / "fold-0"
    before = (fold / "predictions.json").read_bytes()
    runner = CliRunner()
    for command in (["eval", "--checkpoint", str(fold), "--data", str(dev_file), "--out", str(fold)],
                    ["ensemble", "--checkpoint", str(fold), "--data", str(dev_file), "--out", str(fold)],
                    ["predict", "--checkpoint", str(fold), "--data", str(dev_file), "--out", str(fold / "predictions.json")]):
        result = runner.invoke(app, command)
        assert result.exit_code == 1 and "a training run's" in result.stderr, result.output
    assert (fold / "predictions.json").read_bytes() == before

    copy = tmp_path / "out"
    shutil.copytree(out, copy, symlinks=True)
    answers = json.loads((copy / "fold-0" / "predictions.json").read_text())
    answers.pop(next(iter(answers)))
    answers["a dev question"] = "x"
    (copy / "fold-0" / "predictions.json").write_text(json.dumps(answers))
    monkeypatch.setattr(runs, "train_in_own_process", _no_training)
    with pytest.raises(DataError, match="fold-0/predictions.json: not the fold's answers to its held-out questions "
                                        "\\(1 answers to others, 1 held-out ones missing\\)"):
        kfold(_cfg(config, train_file, dev_file), 2, copy)


def test_finished_folds_of_other_settings_or_other_questions_are_refused(kfolded, monkeypatch, tmp_path):
    out, config, train_file, dev_file, _ = kfolded
    monkeypatch.setattr(runs, "train_in_own_process", _no_training)
    with pytest.raises(ConfigError, match="fold-0 finished with other settings \\(train.max_steps: 3 there, 4 now\\)"):
        kfold(_cfg(config, train_file, dev_file, "train.max_steps=4"), 2, out)
    # the training file edited in place: a question of fold 0 deleted
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    edited = tmp_path / "train.json"
    gone = sorted(json.loads((out / "fold-0" / "predictions.json").read_text()))[0]
    data = json.loads(train_file.read_text())
    for paragraph in (p for article in data["data"] for p in article["paragraphs"]):
        paragraph["qas"] = [qa for qa in paragraph["qas"] if qa["id"] != gone]
    edited.write_text(json.dumps(data))
    for record_file in copy.glob("fold-*/kfold_fold.json"):
        record = json.loads(record_file.read_text())
        record["config"]["data"]["train_file"] = str(edited)
        record_file.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="fold-0 finished with other held_out_ids"):
        kfold(_cfg(config, edited, dev_file), 2, copy)


def test_a_started_fold_is_resumed_only_with_the_settings_and_folds_it_started_with(kfolded, tmp_path, monkeypatch):
    out, config, train_file, dev_file, _ = kfolded
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    for record in copy.glob("fold-*/kfold_fold.json"):
        record.unlink()  # as if killed before the end: fold-0 would resume from its checkpoint
    monkeypatch.setattr(runs, "train_in_own_process", _no_training)
    with pytest.raises(ConfigError, match=r"fold-0 was started with other settings \(train.lr: 0.0001 there, 0.5 now\)"):
        kfold(_cfg(config, train_file, dev_file, "train.lr=0.5"), 2, copy)
    with pytest.raises(ConfigError, match=r"fold-0 was started with other folds \(2 there, 3 now\), held_out_ids"):
        kfold(_cfg(config, train_file, dev_file), 3, copy)


def test_a_fold_stopped_after_its_checkpoint_resumes(kfolded, tmp_path, monkeypatch, capsys):
    out, config, train_file, dev_file, _ = kfolded
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    run_dir = copy / "fold-1"
    finished = json.loads((run_dir / "kfold_fold.json").read_text())
    (run_dir / "kfold_fold.json").unlink()  # as if killed after the checkpoint at step 2
    shutil.rmtree(run_dir / "checkpoints" / "step-000003")
    calls = []
    monkeypatch.setattr(runs, "train_in_own_process", _train_here)
    monkeypatch.setattr(kfold_module, "train", lambda *args: calls.append(args) or train(*args))
    result = kfold(_cfg(config, train_file, dev_file), 2, copy)
    printed = capsys.readouterr().out
    assert len(calls) == 1 and printed.count(": done, skipped") == 1
    assert f"fold 2/2: training on {finished['trained_on']} questions, {finished['held_out']} held out, resuming from " \
           f"{run_dir / 'checkpoints' / 'step-000002'}" in printed
    row = result["folds"][1]
    assert (row["steps"], row["resumed_from"]) == (3, "step-000002")
    assert (row["exact"], row["f1"]) == (finished["exact"], finished["f1"])  # as the uninterrupted fold ended
    assert (copy / "oof" / "predictions.json").read_text() == (out / "oof" / "predictions.json").read_text()
    assert result["null_threshold"] == json.loads((out / "kfold.json").read_text())["null_threshold"]


def test_kfold_on_answerable_only_data_scores_the_oof_predictions_and_stores_no_threshold(tiny_bert_dir, tmp_path,
                                                                                          monkeypatch):
    monkeypatch.setattr(runs, "train_in_own_process", _train_here)
    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "unused", max_steps=1)
    cfg.data.dev_file = None
    result = kfold(cfg, 3, tmp_path / "out")
    assert [f["held_out"] for f in result["folds"]] == [59, 59, 59] and result["left_out"]["count"] == 0
    oof = json.loads((tmp_path / "out" / "oof" / "predictions.json").read_text())
    assert len(oof) == 177 and all(oof.values())  # every question answered: no null answers without v2 data
    scored = score(load_examples(cfg.data.train_file, "eval")[2], oof)
    assert result["oof"] == scored and set(scored) >= {"exact_match", "f1"}
    assert result["null_threshold"] is None and "dev" not in result
    decode = read_checkpoint_config(resolve_checkpoint(tmp_path / "out" / "fold-2")).decode
    assert (decode.null_score_diff_threshold, decode.null_threshold_from, decode.allow_null) == (0.0, "config", False)
    assert "Null threshold" not in kfold_module.format_kfold(result)


def test_kfold_refuses_repeated_ids_before_any_fold_trains(tiny_bert_dir, tmp_path, monkeypatch):
    """Held-out questions and out-of-fold answers are keyed by id: a repeat had failed the second fold's process
    after the first had trained, saying the file changed."""
    monkeypatch.setattr(runs, "train_in_own_process", lambda *args, **kwargs: pytest.fail("a fold was trained"))
    articles = json.loads((QUICKSTART / "en_train.json").read_text())["data"]
    articles[-1]["paragraphs"][0]["qas"][0]["id"] = articles[0]["paragraphs"][0]["qas"][0]["id"]
    (tmp_path / "train.json").write_text(json.dumps(_squad(articles)))
    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "unused", max_steps=1)
    cfg.data.train_file, cfg.data.dev_file = str(tmp_path / "train.json"), None
    repeated = articles[0]["paragraphs"][0]["qas"][0]["id"]
    with pytest.raises(DataError, match=f"train.json: 1 repeated question id \\({repeated}\\): k-fold keys its held-out"):
        kfold(cfg, 2, tmp_path / "out")
    assert not (tmp_path / "out" / "fold-0").exists()


def test_kfold_refuses_a_trained_model_and_a_folder_of_other_files_before_any_work(kfolded, tiny_bert_dir, tmp_path,
                                                                                    monkeypatch):
    out, config, train_file, dev_file, _ = kfolded
    monkeypatch.setattr(runs, "train_in_own_process", lambda *args, **kwargs: pytest.fail("a fold was trained"))
    trained = out / "fold-0"
    with pytest.raises(ConfigError, match=f"{trained}: an mrc-cli training run or checkpoint, not an encoder folder"):
        kfold(_cfg(config, train_file, dev_file, f"model.name_or_path={trained}"), 2, tmp_path / "new")
    for folder in (trained, Path(tiny_bert_dir)):  # a run directory, a model folder
        with pytest.raises(ConfigError, match=f"--out {folder} holds other files .* and no k-fold run"):
            kfold(_cfg(config, train_file, dev_file), 2, folder)
    assert not (tmp_path / "new").exists() and not (trained / "kfold.json").exists()


def test_kfold_cli_hands_config_folds_and_out_to_the_library(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(kfold_module, "kfold", lambda *args: seen.append(args) or {})
    monkeypatch.setattr(kfold_module, "format_kfold", lambda result: "TABLE")
    runner = CliRunner()
    result = runner.invoke(app, ["kfold", "--folds", "5", "--model", "m", "--train", "t.json", "--dev", "d.json",
                                 "--set", "train.lr=5e-5", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "TABLE" in result.stdout
    ((cfg, folds, out),) = seen
    assert (cfg.model.name_or_path, cfg.data.train_file, cfg.data.dev_file, cfg.train.lr) == ("m", "t.json", "d.json", 5e-5)
    assert (folds, out) == (5, tmp_path)
    refused = runner.invoke(app, ["kfold", "--folds", "1"])
    assert refused.exit_code == 2 and "--folds" in refused.output


def test_a_fold_process_needs_the_held_out_ids_kfold_wrote_and_finds_them_all(tiny_bert_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(kfold_module, "train", _no_training)
    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "fold-0")
    listed = tmp_path / "fold-0" / "held_out_ids.json"
    with pytest.raises(ConfigError, match=f"{listed} is missing: mrc train-fold trains a fold planned by mrc kfold"):
        kfold_module.train_fold(cfg)
    listed.parent.mkdir()
    ids = column(load_examples(cfg.data.train_file, "train")[0], "id")
    listed.write_text(json.dumps({"ids": [ids[0], "GONE_1", "GONE_2"]}))
    with pytest.raises(DataError, match=f"en_train.json: 2 of the questions {listed} holds out are not in it \\(the "
                                        "file changed since mrc kfold planned the folds\\)"):
        kfold_module.train_fold(cfg)


@pytest.mark.slow
def test_folds_train_as_processes_of_their_own_and_score_as_in_one(tiny_bert_dir, tmp_path, monkeypatch, capfd):
    """Each fold a `mrc train-fold` process (one process training fold after fold grew until killed), which builds
    its splits from the training file and the ids in its folder: its output here and in the fold's log, and the
    figures of folds trained in the test's process."""
    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "unused", max_steps=1)
    cfg.data.dev_file = None
    result = kfold(cfg, 2, tmp_path / "out")
    printed = capfd.readouterr().out
    for fold in result["folds"]:
        run_dir = tmp_path / "out" / f"fold-{fold['fold']}"
        last_line = f'"run_dir": "{run_dir}", "steps": 1'  # the child's last line, printed by `mrc train-fold`
        assert last_line in printed and last_line in (run_dir / "kfold_output.log").read_text()
        held_out = json.loads((run_dir / "held_out_ids.json").read_text())["ids"]
        assert set(json.loads((run_dir / "predictions.json").read_text())) == set(held_out)
        assert (fold["steps"], fold["held_out"], fold["trained_on"]) == (1, len(held_out), 177 - len(held_out))

    monkeypatch.setattr(runs, "train_in_own_process", _train_here)
    here = kfold(cfg, 2, tmp_path / "here")
    figures = ("fold", "trained_on", "held_out", "exact", "f1", "steps", "held_out_ids")
    assert [{key: f[key] for key in figures} for f in result["folds"]] == [
        {key: f[key] for key in figures} for f in here["folds"]]
    assert result["oof"] == here["oof"]


def test_bad_training_settings_are_refused_before_the_data_is_read(tiny_bert_dir, tmp_path, monkeypatch):
    import mrc_cli.kfold

    monkeypatch.setattr(mrc_cli.kfold, "load_examples", lambda *args: pytest.fail("the data was read first"))
    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "unused", seed=-1)
    with pytest.raises(ConfigError, match="train.seed must be from 0 to 2\\*\\*32 - 1"):
        kfold(cfg, 2, tmp_path / "kfold")


def test_kfold_on_data_without_unanswerable_questions_names_no_threshold_for_the_dev_scores():
    fold = {"fold": 0, "trained_on": 2, "held_out": 1, "exact": 50.0, "f1": 60.0, "steps": 1}
    dev_row = {"fold": 0, "exact": 40.0, "f1": 45.0, "threshold_report": None, "null_rule": None}
    result = {"settings": {"dev_file": "zh_dev.json"}, "questions": 1, "folds": [fold], "dev": [dev_row],
              "oof": {"exact": 50.0, "f1": 60.0}, "null_threshold": None,
              "left_out": {"count": 0, "ids": [], "why": ""}}
    table = kfold_module.format_kfold(result)
    assert "dev: each fold's best checkpoint on zh_dev.json." in table
    assert "null threshold" not in table
