"""The data commands from the shell's side: validate, preprocess and score, with exit codes and files."""

import json

import pytest
from typer.testing import CliRunner

from conftest import shared_file, write_squad
from mrc_cli.cli import app
from mrc_cli.errors import ConfigError
from mrc_cli.validate import validate_file

runner = CliRunner()
REPORT_KEYS = {"questions", "answers", "misaligned", "relocated", "unlocatable", "duplicate_ids", "empty_questions",
               "empty_contexts", "errors"}


def test_validate_json_on_real_cmrc():
    result = runner.invoke(app, ["validate", str(shared_file("cmrc2018_dev.json")), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert REPORT_KEYS <= set(report)
    assert (report["questions"], report["misaligned"], report["relocated"], report["unlocatable"]) == (3219, 200, 167, 33)


def test_validate_exit_codes_follow_the_use(tmp_path):
    qa = {"id": "dup", "question": "Who?", "answers": [{"text": "cat", "answer_start": 4}]}
    path = write_squad(tmp_path / "d.json", [("The cat sat.", [qa, qa])])
    assert runner.invoke(app, ["validate", str(path), "--for", "train"]).exit_code == 0
    result = runner.invoke(app, ["validate", str(path), "--for", "eval"])
    assert result.exit_code == 1 and "question id dup occurs 2 times" in result.stdout


def test_validate_prints_each_message_and_the_verdict_on_lines_of_their_own(tmp_path):
    qa = {"id": "dup", "question": "Who?", "answers": [{"text": "cat", "answer_start": 4}]}
    path = write_squad(tmp_path / "d.json", [("The cat sat.", [qa, qa, {**qa, "id": "x", "question": " "}])])
    result = runner.invoke(app, ["validate", str(path), "--for", "eval"])
    assert result.exit_code == 1 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[-3:] == ["errors:", f"  {path}: question id dup occurs 2 times (a prediction file keyed by id would be "
                          "ambiguous; make ids unique)", "usable for eval: no"]
    assert f"  {path}: question x: the question is empty (left out of eval)" in lines


def test_validate_unreadable_file_is_a_report_not_a_traceback(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text('{"data": [{"paragraphs": [{"context": "abc", "qas": [')
    result = runner.invoke(app, ["validate", str(path), "--json"])
    assert result.exit_code == 1
    assert "not valid JSON" in json.loads(result.stdout)["errors"][0]


def test_preprocess_fills_the_cache_that_the_next_run_loads(minilm_path, tmp_path):
    args = ["preprocess", "--model", minilm_path, "--data", str(shared_file("squad_v2.0_dev_head.json")),
            "--for", "eval", "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "1407 examples -> " in first.stdout and "tokenized" in first.stdout
    assert f"cached in {tmp_path / 'cache'}" in first.stdout
    second = runner.invoke(app, args)
    assert "loaded from cache" in second.stdout
    from mrc_cli.config import DataConfig
    from mrc_cli.splits import featurize_file
    from mrc_cli.tokenizer import load_tokenizer

    split = featurize_file(str(shared_file("squad_v2.0_dev_head.json")), load_tokenizer(minilm_path),
                           DataConfig(cache_dir=str(tmp_path / "cache")), "eval")  # what `mrc eval` would read
    assert split.summary.from_cache
    assert {"input_ids", "offset_mapping", "word_ids", "example_id", "start_positions"} <= set(split.features.column_names)


def test_preprocess_bad_stride_is_one_line_error(minilm_path, tmp_path):
    result = runner.invoke(app, ["preprocess", "--model", minilm_path, "--data", "data/quickstart/en_dev.json",
                                 "--doc-stride", "400"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: doc_stride 400 must be below") and "Traceback" not in result.output


def test_score_counts_missing_predictions(tmp_path):
    gold = shared_file("squad_v2.0_dev_head.json")
    data = json.loads(gold.read_text())["data"]
    qas = [qa for a in data for p in a["paragraphs"] for qa in p["qas"]]
    preds = {qa["id"]: (qa["answers"][0]["text"] if qa["answers"] else "") for qa in qas[:1000]}
    (tmp_path / "p.json").write_text(json.dumps(preds))
    result = runner.invoke(app, ["score", str(gold), str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert scores["missing"] == 407 and scores["total"] == 1407 and scores["metric"] == "squad_v2"  # picked by the data
    assert abs(scores["exact"] - 100 * 1000 / 1407) < 0.01  # all given predictions right, missing ones score 0


def test_score_rejects_a_predictions_file_of_the_wrong_shape(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps([{"id": "x", "prediction_text": "y"}]))
    result = runner.invoke(app, ["score", "data/quickstart/en_dev.json", str(tmp_path / "p.json")])
    assert result.exit_code == 1 and "a predictions file is one JSON object" in result.stderr


def test_score_names_the_null_odds_file_that_lacks_a_question(tmp_path):
    gold = write_squad(tmp_path / "gold.json", [("Paris is in France. Rome is in Italy.", [
        {"id": "a", "question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}]},
        {"id": "b", "question": "Where is Rome?", "answers": [], "is_impossible": True}])])
    (tmp_path / "p.json").write_text(json.dumps({"a": "France", "b": ""}))
    (tmp_path / "odds.json").write_text(json.dumps({"a": -3.0}))
    result = runner.invoke(app, ["score", str(gold), str(tmp_path / "p.json"), "--null-odds", str(tmp_path / "odds.json")])
    assert result.exit_code == 1 and result.stderr.startswith(
        f"Error: {tmp_path / 'odds.json'}: no null odds for question b, which {tmp_path / 'p.json'} answers")
    (tmp_path / "odds.json").write_text('{"a": -3.0, "b": NaN}')  # as Python's json writes float("nan")
    result = runner.invoke(app, ["score", str(gold), str(tmp_path / "p.json"), "--null-odds", str(tmp_path / "odds.json")])
    assert result.exit_code == 1 and result.stderr == f"Error: {tmp_path / 'odds.json'}: question b: the null odds are NaN, not a number\n"


def test_score_refuses_a_question_answered_twice_and_json_nested_too_deeply(tmp_path):
    """json.loads would keep the last of two answers to one id silently, and raise RecursionError on deep nesting."""
    twice = tmp_path / "twice.json"
    twice.write_text('{"a": "x", "b": "y", "a": "z"}')
    result = runner.invoke(app, ["score", "data/quickstart/en_dev.json", str(twice)])
    assert result.exit_code == 1 and result.stderr == (f"Error: {twice}: question a is given more than once; which "
                                                       "predictions is meant? Keep one of each\n")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    result = runner.invoke(app, ["score", "data/quickstart/en_dev.json", str(deep)])
    assert result.exit_code == 1 and "not a readable JSON predictions file (nested too deeply)" in result.stderr


def test_score_accepts_a_gold_file_with_an_empty_question(tmp_path):
    """Scoring needs ids and gold answers only: the empty question is scored like any other (as the CMRC 2018 scorer
    does with its trial file)."""
    context = "北京是中国的首都，上海是中国最大的城市。"
    gold = write_squad(tmp_path / "gold.json", [(context, [
        {"id": "empty", "question": "", "answers": [{"text": "北京", "answer_start": 0}]},
        {"id": "ok", "question": "中国最大的城市是哪里？", "answers": [{"text": "上海", "answer_start": 9}]},
    ])])
    (tmp_path / "p.json").write_text(json.dumps({"empty": "北京", "ok": "上海市"}, ensure_ascii=False), encoding="utf-8")
    result = runner.invoke(app, ["score", str(gold), str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    # EM: "empty" right, "ok" wrong; F1 of "上海市" against "上海": 2 of 3 characters, 2 of 2 -> 0.8
    assert (scores["TOTAL"], scores["SKIP"], scores["metric"]) == (2, 0, "cmrc2018")
    assert scores["EM"] == pytest.approx(50.0) and scores["F1"] == pytest.approx(90.0)


def test_validate_fix_writes_the_repaired_questions_and_all_lists_every_repair(tmp_path):
    """The real CMRC dev file: 167 answers relocated into the copy, which then needs none; 33 not in their context
    stay (kept for scoring; their questions have other answers to train on)."""
    source, fixed = shared_file("cmrc2018_dev.json"), tmp_path / "fixed.json"
    result = runner.invoke(app, ["validate", str(source), "--fix", str(fixed), "--all"])
    assert result.exit_code == 0 and result.stdout.endswith(f"wrote {fixed}\n")
    assert sum(line.endswith(("relocated)", "relocated without it)", "(kept for scoring only)"))
               for line in result.stdout.splitlines()) == 200  # every repair listed, not the first 20
    again = runner.invoke(app, ["validate", str(fixed), "--json"])
    report = json.loads(again.stdout)
    assert (report["questions"], report["answers"], report["relocated"], report["unlocatable"]) == (3219, 9657, 0, 33)
    original = {qa["id"]: qa for a in json.loads(source.read_text())["data"] for p in a["paragraphs"] for qa in p["qas"]}
    for article in json.loads(fixed.read_text())["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                assert len(qa["answers"]) == len(original[qa["id"]]["answers"])
                for answer in qa["answers"]:
                    start = answer["answer_start"]
                    assert start == -1 or paragraph["context"][start:start + len(answer["text"])] == answer["text"]
    result = runner.invoke(app, ["validate", str(fixed), "--fix", str(tmp_path / "." / "fixed.json")])
    assert result.exit_code == 1 and result.stderr == (f"Error: --fix {fixed}: the data file itself, which this would "
                                                       "overwrite; write to another file, e.g. --fix fixed.json\n")
    with pytest.raises(ConfigError, match="the data file itself"):  # from Python as well
        validate_file(str(fixed), "eval", fixed=fixed)


def test_score_and_analyze_find_a_spaced_cmrc_gold_id_by_its_stripped_id(tmp_path):
    """Every gold id spaced, every prediction keyed by the stripped id (as the official script looks them up): not
    'the predictions of another file', and analyze scores what score scores."""
    context = "北京是中国的首都，上海是中国最大的城市。"
    gold = write_squad(tmp_path / "gold.json", [(context, [
        {"id": " Q1 ", "question": "中国的首都是哪里？", "answers": [{"text": "北京", "answer_start": 0}]},
        {"id": "Q2 ", "question": "中国最大的城市是哪里？", "answers": [{"text": "上海", "answer_start": 9}]}])])
    (tmp_path / "p.json").write_text(json.dumps({"Q1": "北京", "Q2": "上海"}, ensure_ascii=False), encoding="utf-8")
    result = runner.invoke(app, ["score", str(gold), str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["EM"] == 100.0
    result = runner.invoke(app, ["analyze", "--gold", str(gold), "--pred", str(tmp_path / "p.json"),
                                 "--out", str(tmp_path / "analysis")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "analysis" / "analysis.json").read_text())["overall"]["A"]["exact"] == 100.0
