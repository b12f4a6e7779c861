"""`mrc analyze` on the real SQuAD and CMRC files: slices from known perturbations, agreement with `mrc score`, the
SQuAD v2 answer/no-answer confusion from hand-built null odds, two files compared, windows, the CLI's files, bad inputs."""

from __future__ import annotations

import errno
import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import shared_file
from mrc_cli.analysis import analyze, count_windows, question_type
from mrc_cli.cli import app
from mrc_cli.errors import ConfigError, DataError
from mrc_cli.metrics import score
from mrc_cli.metrics.rules import f1_squad, normalize_squad
from mrc_cli.plotting import cjk_font, cjk_text
from mrc_cli.scoring import score_files

SQUAD_V1, SQUAD_V2, CMRC = "squad_v1.1_train_head.json", "squad_v2.0_dev_head.json", "cmrc2018_dev.json"
WRONG = "zzz"  # shares no token with any gold answer of these files


def questions(gold: Path) -> list[dict]:
    data = json.loads(gold.read_text(encoding="utf-8"))["data"]
    return [qa for article in data for paragraph in article["paragraphs"] for qa in paragraph["qas"]]


def first_answer(qa: dict) -> str:
    return "" if qa.get("is_impossible") or not qa["answers"] else qa["answers"][0]["text"]


def write_json(path: Path, obj) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return str(path)


def by_label(result: dict, family: str) -> dict[str, dict]:
    return {row["slice"]: row for row in result["slices"][family]}


def f1_lost(rows: list[dict], name: str = "A") -> float:
    """Questions' worth of F1 lost over a family's slices: the same in every family."""
    return sum(row["count"] * (100 - row[name]["f1"]) for row in rows) / 100


def test_question_types_earliest_keyword_wins_most_specific_at_a_tie():
    english = {
        "Who ruled Normandy when the Vikings came?": "who",  # earliest, though "when" is listed first
        "How many people live there?": "how many/much",
        "how  much did it cost": "how many/much",
        "How long did it last?": "how",
        "In which year was it founded?": "which",
        "What's the capital?": "what",
        "To whom did she appear?": "whom",
        "Is it abstract or concrete?": "other",
    }
    chinese = {
        "北京是什么时候成为首都的？": "when",  # 什么时候 over 什么 at the same character
        "锣鼓经常用的节奏型称为什么？": "what",  # 称为 + 什么, not 为什么
        "苏博为什么改名成苏镜宇？": "why",
        "莱索托哪一年独立？": "when",
        "纳撒尼尔·瑟蒙德在什么时间宣布退役？": "when",  # 什么时间 over 什么, like 什么时候
        "奥斯曼大道在什么年代完成？": "when",
        "马特·理查德·史东从科罗拉多大学获得了什么学位？": "what",  # 多大 of 科罗拉多大学 is not "how big"
        "罗店镇全镇面积是多大？": "how",
        "他出生在哪里？": "where",
        "由谁改编的？": "who",
        "几内亚的首都是哪座城市？": "which",  # 几内亚 is Guinea, not 几 (how many)
        "广茂铁路全长多少公里？": "how many/much",
        "前燕是怎么灭亡的？": "how",
        "乔许·哈却森的职业是？": "other",
    }
    assert {q: question_type(q, "en") for q in english} == english
    assert {q: question_type(q, "zh") for q in chinese} == chinese


def test_perfect_predictions_score_100_everywhere_and_wrong_answers_drop_their_slice(tmp_path):
    gold = shared_file(SQUAD_V1)
    qas = questions(gold)
    predictions = {qa["id"]: first_answer(qa) for qa in qas}
    perfect = analyze(str(gold), write_json(tmp_path / "perfect.json", predictions))  # one file: not a list of one
    assert perfect["metric"] == "squad" and perfect["overall"] == {"slice": "all", "count": 4370,
                                                                   "A": {"exact": 100.0, "f1": 100.0}}
    for rows in perfect["slices"].values():
        assert sum(row["count"] for row in rows) == 4370
        assert all(row["A"] == {"exact": 100.0, "f1": 100.0} for row in rows)
    assert not any(examples for labels in perfect["worst"]["A"].values() for examples in labels.values())
    assert perfect["left_out"]["answerable"] == "every question has an answer" and "answerable" not in perfect["slices"]
    assert "--checkpoint" in perfect["left_out"]["windows"] and "windows" not in perfect["slices"]

    who = [qa for qa in qas if question_type(qa["question"], "en") == "who"]
    for qa in who[:12]:
        predictions[qa["id"]] = WRONG
    partial = [qa for qa in who[12:] if len(normalize_squad(first_answer(qa)).split()) >= 2][:3]
    for qa in partial:  # the last word only: F1 between 0 and 1
        predictions[qa["id"]] = first_answer(qa).split()[-1]
    partial_f1 = {qa["id"]: f1_squad(first_answer(qa), predictions[qa["id"]]) for qa in partial}
    assert all(0 < f1 < 1 for f1 in partial_f1.values())
    lost = 12 + sum(1 - f1 for f1 in partial_f1.values())
    result = analyze(str(gold), [write_json(tmp_path / "wrong.json", predictions)], num_examples=20)
    types = by_label(result, "question_type")
    assert types["who"]["count"] == len(who) == 554
    assert types["who"]["A"]["f1"] == pytest.approx(100 * (554 - lost) / 554)
    assert types["who"]["A"]["exact"] == pytest.approx(100 * (554 - 15) / 554)
    assert all(row["A"]["f1"] == 100.0 for label, row in types.items() if label != "who")
    assert result["overall"]["A"]["exact"] == pytest.approx(100 * (4370 - 15) / 4370)
    for rows in result["slices"].values():
        assert f1_lost(rows) == pytest.approx(lost)
    worst = result["worst"]["A"]["question_type"]
    assert [e["id"] for e in worst["who"]] == [qa["id"] for qa in who[:12]] + sorted(partial_f1, key=partial_f1.get)
    assert worst["what"] == []
    assert worst["who"][0] == {"id": who[0]["id"], "question": who[0]["question"],
                               "gold": [first_answer(who[0])], "prediction": WRONG, "f1": 0.0}


@pytest.mark.parametrize("name", [SQUAD_V1, SQUAD_V2, CMRC])
def test_overall_scores_equal_mrc_score(tmp_path, name):
    """Right, half and wrong answers, 30 questions without prediction, one unknown id; SQuAD v2 with null odds at
    the default threshold 0, answers above it "" in predictions.json as the decoder writes them."""
    gold = shared_file(name)
    rng = random.Random(0)
    predictions, null_odds = {}, {}
    for qa in questions(gold)[:-30]:
        answer, draw = first_answer(qa), rng.random()
        predictions[qa["id"]] = answer if draw < 0.6 else answer[: len(answer) // 2] if draw < 0.8 else "the wrong one"
        null_odds[qa["id"]] = rng.uniform(-5, 5)
        if name == SQUAD_V2 and null_odds[qa["id"]] > 0:
            predictions[qa["id"]] = ""
    predictions["not-a-question"] = "x"
    folder = tmp_path / "eval"
    pred_file = write_json(folder / "predictions.json", predictions)
    if name == SQUAD_V2:
        write_json(folder / "null_odds.json", null_odds)
    official, _ = score_files(str(gold), pred_file)
    result = analyze(str(gold), [str(folder)])
    exact, f1 = {SQUAD_V1: ("exact_match", "f1"), SQUAD_V2: ("exact", "f1"), CMRC: ("EM", "F1")}[name]
    assert result["overall"]["A"] == {"exact": official[exact], "f1": official[f1]}
    assert 20 < official[f1] < 90 and official["metric"] == {SQUAD_V1: "squad", SQUAD_V2: "squad_v2", CMRC: "cmrc2018"}[name]
    files = result["predictions"]["A"]
    assert (files["missing"], files["unknown_ids"]) == (official["missing"], official["unknown_ids"]) == (30, 1)
    if name == SQUAD_V2:
        assert files["threshold"] == 0.0 and files["threshold_from"].startswith("the default: none given")
        assert files["answers_changed"] == 0
    else:
        assert files["threshold"] is None


def squad_v2_eval_folder(folder: Path, qas: list[dict], odds_of) -> Path:
    """What `mrc eval --out` writes for hand-built null odds: answerable questions' best span is their gold answer,
    unanswerable ones' a wrong span; predictions.json decided at threshold 0."""
    predictions, nbest, null_odds = {}, {}, {}
    for qa in qas:
        qid, odds = qa["id"], odds_of(qa)
        span = {"text": first_answer(qa) or "Normandy", "start": qa["answers"][0]["answer_start"] if qa["answers"] else 0}
        null = {"text": "", "start": -1}
        nbest[qid] = [null, span] if odds > 0 else [span, null]  # the null candidate first where it scores higher
        predictions[qid], null_odds[qid] = ("" if odds > 0 else span["text"]), odds
    for name, obj in (("predictions", predictions), ("nbest", nbest), ("null_odds", null_odds)):
        write_json(folder / f"{name}.json", obj)
    return folder


def test_squad_v2_confusion_at_the_default_given_and_stored_thresholds(tmp_path):
    gold = shared_file(SQUAD_V2)
    qas = questions(gold)
    answerable = [qa["id"] for qa in qas if not qa["is_impossible"]]
    unanswerable = [qa["id"] for qa in qas if qa["is_impossible"]]
    assert (len(answerable), len(unanswerable)) == (705, 702)
    # answerable: 40 withheld at 0 only, 10 also at 3; unanswerable: 30 answered at 0 and 3, 20 at 3 only
    odds = {**{q: 2.0 for q in answerable[:40]}, **{q: 5.0 for q in answerable[40:50]},
            **{q: 1.0 for q in unanswerable[30:50]}, **{q: 10.0 for q in unanswerable[50:]}}
    folder = squad_v2_eval_folder(tmp_path / "eval", qas, lambda qa: odds.get(qa["id"], -1.0))

    at_zero = analyze(str(gold), [str(folder)])
    assert at_zero["confusion"]["A"] == {"has answer": {"answered": 655, "no answer": 50, "missing": 0},
                                         "no answer": {"answered": 30, "no answer": 672, "missing": 0}}
    assert at_zero["overall"]["A"]["exact"] == pytest.approx(100 * (655 + 672) / 1407)
    assert by_label(at_zero, "answerable")["no answer"]["A"]["f1"] == pytest.approx(100 * 672 / 702)

    write_json(folder / "metrics.json", {"f1": 0.0, "best_f1_thresh": 3.0})
    stored = analyze(str(gold), [str(folder)])
    files = stored["predictions"]["A"]
    assert files["threshold"] == 3.0 and files["threshold_from"] == f"best_f1_thresh of {folder / 'metrics.json'}"
    assert files["answers_changed"] == 40 + 20  # restored from the n-best lists
    assert stored["confusion"]["A"] == {"has answer": {"answered": 695, "no answer": 10, "missing": 0},
                                        "no answer": {"answered": 50, "no answer": 652, "missing": 0}}
    assert stored["overall"]["A"]["exact"] == pytest.approx(100 * (695 + 652) / 1407)

    # a predictions file with its null odds but no n-best: above the threshold answers become "", none come back
    given = analyze(str(gold), [str(folder / "predictions.json")], null_odds=[folder / "null_odds.json"], threshold=3.0)
    files = given["predictions"]["A"]
    assert (files["threshold_from"], files["answers_changed"], files["withheld_without_nbest"]) == ("as given", 0, 60)
    assert given["confusion"] == at_zero["confusion"]
    with pytest.raises(ConfigError, match="--threshold nan: a number"):  # above nothing: never null, silently
        analyze(str(gold), [str(folder)], threshold=float("nan"))


def test_squad_v2_at_the_stored_best_threshold_scores_the_sweeps_best_f1(tmp_path):
    gold = shared_file(SQUAD_V2)
    qas = questions(gold)
    rng = random.Random(1)
    odds = {qa["id"]: rng.uniform(-4, 4) for qa in qas}
    folder = squad_v2_eval_folder(tmp_path / "eval", qas, lambda qa: odds[qa["id"]])
    golds = [{"id": qa["id"], "answers": [a["text"] for a in qa["answers"]], "is_impossible": qa["is_impossible"]}
             for qa in qas]
    best_spans = {qa["id"]: first_answer(qa) or "Normandy" for qa in qas}
    sweep = score(golds, best_spans, "squad_v2", null_odds=odds)  # what `mrc eval` puts in metrics.json
    write_json(folder / "metrics.json", sweep)
    result = analyze(str(gold), [str(folder)])
    assert result["predictions"]["A"]["threshold"] == sweep["best_f1_thresh"]
    assert result["overall"]["A"]["f1"] == pytest.approx(sweep["best_f1"])


def test_chinese_slices_on_cmrc(tmp_path):
    gold = shared_file(CMRC)
    qas = questions(gold)
    predictions = {qa["id"]: first_answer(qa) for qa in qas}
    why = [qa["id"] for qa in qas if question_type(qa["question"], "zh") == "why"]
    for qid in why[:9]:
        predictions[qid] = WRONG
    result = analyze(str(gold), [write_json(tmp_path / "p.json", predictions)])
    assert result["metric"] == "cmrc2018"
    types = by_label(result, "question_type")
    assert list(types) == ["when", "where", "who", "why", "how many/much", "how", "which", "what", "other"]
    assert types["why"]["count"] == len(why) == 165
    assert types["why"]["A"]["exact"] == pytest.approx(100 * (165 - 9) / 165)
    assert list(by_label(result, "answer_length")) == ["1-2 chars", "3-4 chars", "5-6 chars", "7-10 chars",
                                                       "11-20 chars", "21+ chars"]
    for rows in result["slices"].values():
        assert sum(row["count"] for row in rows) == 3219
        assert f1_lost(rows) == pytest.approx(9)
    assert [e["prediction"] for e in result["worst"]["A"]["question_type"]["why"]] == [WRONG] * 5
    # the first wrong answer, found in the slices of its answer length and position counted by hand
    qa, context = next((qa, p["context"]) for article in json.loads(gold.read_text(encoding="utf-8"))["data"]
                       for p in article["paragraphs"] for qa in p["qas"] if qa["id"] == why[0])
    answer = first_answer(qa)
    fifth = 100 * (context.index(answer) * 5 // len(context)) // 5
    worst = result["worst"]["A"]
    assert why[0] in [e["id"] for e in worst["answer_position"][f"{fifth}-{fifth + 20}%"]]
    length = next(label for label, top in (("1-2", 2), ("3-4", 4), ("5-6", 6), ("7-10", 10), ("11-20", 20), ("21+", 1e9))
                  if len(answer) <= top)
    assert why[0] in [e["id"] for e in worst["answer_length"][f"{length} chars"]]


def test_two_files_side_by_side(tmp_path):
    gold = shared_file(SQUAD_V1)
    qas = questions(gold)
    a = {qa["id"]: first_answer(qa) for qa in qas}
    b = dict(a)
    ids = [qa["id"] for qa in qas]
    for qid in ids[:2]:  # both wrong: ties
        a[qid] = b[qid] = WRONG
    for qid in ids[2:5]:  # A wrong, B right
        a[qid] = WRONG
    for qid in ids[5:11]:  # B wrong, A right
        b[qid] = WRONG
    partial = [qa for qa in qas[11:] if len(normalize_squad(first_answer(qa)).split()) >= 2][:3]
    for qa in partial:  # B half right: its last word only
        b[qa["id"]] = first_answer(qa).split()[-1]
    result = analyze(str(gold), [write_json(tmp_path / "a.json", a), write_json(tmp_path / "b.json", b)], num_examples=5)
    comparison = result["comparison"]
    assert comparison["f1_better"] == {"A": 6 + 3, "B": 3, "tie": 4370 - 12}
    assert comparison["A_right_B_wrong"]["count"] == 9 and comparison["B_right_A_wrong"]["count"] == 3
    assert [e["id"] for e in comparison["A_right_B_wrong"]["examples"]] == ids[5:10]  # B's F1 0 first
    assert [e["id"] for e in comparison["B_right_A_wrong"]["examples"]] == ids[2:5]
    example = comparison["B_right_A_wrong"]["examples"][0]
    assert (example["prediction_A"], example["f1_A"], example["prediction_B"], example["f1_B"]) == (
        WRONG, 0.0, first_answer(qas[2]), 100.0)
    overall = result["overall"]
    assert overall["A"]["exact"] == pytest.approx(100 * (4370 - 5) / 4370)
    assert overall["B"]["exact"] == pytest.approx(100 * (4370 - 11) / 4370)
    assert overall["f1_diff"] == pytest.approx(overall["B"]["f1"] - overall["A"]["f1"]) and overall["f1_diff"] < 0
    for rows in result["slices"].values():
        assert f1_lost(rows, "A") == pytest.approx(5)
        assert all(row["f1_diff"] == pytest.approx(row["B"]["f1"] - row["A"]["f1"]) for row in rows)
    assert set(result["worst"]) == {"A", "B"}


def test_windows_per_question_as_the_tokenizer_cuts_them(tmp_path, minilm_path, wordpiece_tokenizer):
    from mrc_cli.config import RunConfig

    gold = shared_file(SQUAD_V2)
    cfg = RunConfig()
    cfg.model.name_or_path = minilm_path
    cfg.data.max_seq_length, cfg.data.doc_stride, cfg.data.cache_dir = 128, 32, str(tmp_path / "cache")
    windows = count_windows(str(gold), cfg=cfg)
    assert "max_seq_length 128, doc_stride 32" in windows.settings
    for qa in questions(gold)[::200]:  # the tokenizer's own overflow count, question by question
        context = next(p["context"] for a in json.loads(gold.read_text())["data"] for p in a["paragraphs"]
                       if qa in p["qas"])
        encoded = wordpiece_tokenizer(qa["question"], context, truncation="only_second", max_length=128, stride=32,
                                      return_overflowing_tokens=True)
        assert windows.counts[(qa["question"], context)] == len(encoded["input_ids"])
    first = questions(gold)[0]["id"]
    result = analyze(str(gold), [write_json(tmp_path / "p.json", {first: "zzz"})], windows=windows)
    rows = by_label(result, "windows")
    assert sum(row["count"] for row in rows.values()) == 1407 and "windows" not in result["left_out"]
    counts = list(windows.counts.values())
    assert rows["1 window"]["count"] == counts.count(1) and rows["2 windows"]["count"] == counts.count(2)
    assert result["predictions"]["A"]["missing"] == 1406 and result["overall"]["A"]["f1"] == 0.0


@pytest.fixture
def export_dir(tmp_path, wordpiece_tokenizer) -> Path:
    """An export folder's tokenizer and settings (no weights: counting windows needs none)."""
    from mrc_cli.config import RunConfig, save_config

    folder = tmp_path / "export"
    wordpiece_tokenizer.save_pretrained(str(folder))
    cfg = RunConfig()
    cfg.data.max_seq_length, cfg.data.doc_stride, cfg.data.cache_dir = 128, 32, str(tmp_path / "cache")
    save_config(cfg, folder / "mrc_cli.yaml")
    return folder


NOTES = ("   0 questions without prediction (scored 0), 0 unknown ids (ignored); null threshold 0, the default: none given "
         "and no best_f1_thresh in a metrics.json beside the predictions; 0 answers differ from the predictions file")


def test_cli_compares_two_eval_folders_and_writes_json_and_png(tmp_path, export_dir):
    gold = shared_file(SQUAD_V2)
    qas = questions(gold)
    first = squad_v2_eval_folder(tmp_path / "a", qas, lambda qa: -1.0)  # answers everything
    second = squad_v2_eval_folder(tmp_path / "b", qas, lambda qa: 1.0 if qa["is_impossible"] else -1.0)  # perfect
    out = tmp_path / "analysis"
    result = CliRunner().invoke(app, ["analyze", "--gold", str(gold), "--pred", str(first), "--pred", str(second),
                                      "--checkpoint", str(export_dir), "--out", str(out), "--examples", "2"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("slice"))
    assert header.split() == ["slice", "count", "A", "EM", "A", "F1", "B", "EM", "B", "F1", "B-A", "F1"]
    assert next(line for line in lines if line.startswith("all")).split() == [
        "all", "1407", f"{100 * 705 / 1407:.2f}", f"{100 * 705 / 1407:.2f}", "100.00", "100.00",
        f"{100 * 702 / 1407:+.2f}"]
    assert lines[1:5] == [f"A: {first / 'predictions.json'}", NOTES, f"B: {second / 'predictions.json'}", NOTES]
    assert "windows per question" in lines and "  1 window" in " ".join(lines)
    assert "per question F1: A better 0, B better 702, ties 705; A right and B wrong 0, B right and A wrong 702" in lines
    assert lines[-1] == f"wrote {out / 'analysis.json'}, {out / 'analysis.png'}"
    saved = json.loads((out / "analysis.json").read_text(encoding="utf-8"))
    assert saved["predictions"]["B"]["predictions"] == str(second / "predictions.json")
    assert saved["predictions"]["B"]["threshold_from"].startswith("the default: none given")
    assert saved["confusion"]["A"]["no answer"] == {"answered": 702, "no answer": 0, "missing": 0}
    assert len(saved["comparison"]["B_right_A_wrong"]["examples"]) == 2
    assert sum(row["count"] for row in saved["slices"]["windows"]) == 1407
    assert (out / "analysis.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_chinese_file_names_are_drawn_without_glyph_warnings(tmp_path, recwarn):
    """DejaVu Sans, matplotlib's default font, has no CJK glyph: one warning per character of the title, each with a
    source line, where no CJK font is installed."""
    context = "北京是中华人民共和国的首都。"
    gold = write_json(tmp_path / "开发集.json", {"version": "v1.0", "data": [{"title": "首都", "paragraphs": [
        {"context": context, "qas": [{"id": "q1", "question": "中国的首都是哪里？",
                                      "answers": [{"text": "北京", "answer_start": 0}]}]}]}]})
    pred = write_json(tmp_path / "预测" / "结果.json", {"q1": "北京"})
    analyze(gold, [pred], out_dir=tmp_path / "analysis")
    assert (tmp_path / "analysis" / "analysis.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [str(w.message) for w in recwarn if "missing from font" in str(w.message)] == []


@pytest.mark.parametrize("cut", ["analysis.json", "analysis.png"])
def test_a_write_cut_short_keeps_the_previous_file_and_leaves_no_temporary_one(tmp_path, monkeypatch, cut):
    """A full disk or a kill while a result file is written leaves the previous one whole (a later reader parses
    it), not a truncated one, and nothing beside it."""
    import matplotlib.figure

    gold = write_json(tmp_path / "dev.json", {"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": "Paris is the capital of France.", "qas": [{"id": "q1", "question": "What is the capital?",
                                                                "answers": [{"text": "Paris", "answer_start": 0}]}]}]}]})
    pred = write_json(tmp_path / "pred.json", {"q1": "Paris"})
    out = tmp_path / "analysis"
    analyze(gold, [pred], out_dir=out)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    full_disk = OSError(errno.ENOSPC, "No space left on device")
    write_text = Path.write_text

    def half_of_the_text(path, text, *args, **kwargs):
        write_text(path, text[: len(text) // 2], *args, **kwargs)
        raise full_disk

    def half_of_the_png(fig, fname, *args, **kwargs):
        Path(fname).write_bytes(before["analysis.png"][:100])
        raise full_disk

    if cut == "analysis.json":
        monkeypatch.setattr(Path, "write_text", half_of_the_text)
    else:
        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half_of_the_png)
    with pytest.raises(OSError, match="No space left on device"):
        analyze(gold, [pred], out_dir=out)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


def test_chart_text_falls_back_to_an_installed_cjk_font(monkeypatch):
    from matplotlib import font_manager, rcParams

    dejavu = [font for font in font_manager.fontManager.ttflist if font.name == "DejaVu Sans"]
    cjk = font_manager.FontEntry(fname=dejavu[0].fname, name="WenQuanYi Zen Hei")  # as fonts-wqy-zenhei adds it
    monkeypatch.setattr(font_manager.fontManager, "ttflist", [*dejavu, cjk])
    assert cjk_font() == "WenQuanYi Zen Hei"
    with cjk_text():
        assert rcParams["font.family"] == ["sans-serif", "WenQuanYi Zen Hei"]  # the default first: Latin text as before
    assert rcParams["font.family"] == ["sans-serif"]
    monkeypatch.setattr(font_manager.fontManager, "ttflist", dejavu)
    assert cjk_font() is None


def test_bad_inputs_name_the_file_and_the_problem(tmp_path):
    gold = str(shared_file(SQUAD_V2))
    broken = tmp_path / "broken.json"
    broken.write_text('{"56ddde6b9a695914005b9628": "France"')
    with pytest.raises(DataError, match=f"{broken}: not a readable JSON predictions file"):
        analyze(gold, [str(broken)])
    with pytest.raises(DataError, match=f"{tmp_path}: no predictions.json in this folder"):
        analyze(gold, [str(tmp_path)])
    folder = tmp_path / "eval"
    write_json(folder / "predictions.json", {"56ddde6b9a695914005b9628": "France"})
    write_json(folder / "null_odds.json", {})
    with pytest.raises(DataError, match="null_odds.json: no null odds for question 56ddde6b9a695914005b9628"):
        analyze(gold, [str(folder)])
    with pytest.raises(DataError, match="one or two prediction files"):
        analyze(gold, [str(broken)] * 3)
    runner = CliRunner()
    result = runner.invoke(app, ["analyze", "--gold", gold, "--pred", str(broken)])
    assert result.exit_code == 1 and result.stderr.startswith(f"Error: {broken}: not a readable JSON")
    result = runner.invoke(app, ["analyze", "--gold", gold, "--pred", str(folder), "--checkpoint", "c", "--model", "m"])
    assert result.exit_code == 2 and "not both" in result.output
    result = runner.invoke(app, ["analyze", "--gold", gold, "--pred", str(folder), "--set", "data.doc_stride=64"])
    assert result.exit_code == 2 and "--config and --set give the data settings of --model" in result.output


def test_a_gold_file_with_repeated_ids_is_analyzed_as_mrc_score_scores_it(tmp_path, minilm_path):
    """Each question keeps its own question, answers and windows; the repeat is a warning, as in mrc score. The answer
    slices describe one answer: the first found in the context (here the second, the first is not in it)."""
    from mrc_cli.config import RunConfig

    context = "The Eiffel Tower is 330 metres tall. It was built in 1889."
    article = lambda title, question, answers, more="": {"title": title, "paragraphs": [{"context": context + more,
        "qas": [{"id": "b", "question": question, "answers": answers}]}]}
    gold = write_json(tmp_path / "gold.json", {"data": [
        article("A", "When was it built?", [{"text": "1889", "answer_start": 53}], " It is in Paris." * 20),
        article("B", "How tall is it?", [{"text": "three hundred and thirty metres long", "answer_start": 0},
                                          {"text": "330 metres", "answer_start": 20}])]})
    pred = write_json(tmp_path / "pred.json", {"b": "1889"})
    cfg = RunConfig()
    cfg.model.name_or_path = minilm_path
    cfg.data.max_seq_length, cfg.data.doc_stride, cfg.data.max_query_length = 64, 16, 16
    cfg.data.cache_dir = str(tmp_path / "cache")
    result = analyze(gold, pred, windows=count_windows(gold, cfg=cfg))  # what predict would refuse to cut
    assert [(row["slice"], row["count"], row["A"]["f1"]) for row in result["slices"]["windows"]] == [
        ("1 window", 1, 0.0), ("3 windows", 1, 100.0)]
    scores, warnings = score_files(gold, pred)
    assert (result["overall"]["A"]["exact"], result["overall"]["A"]["f1"]) == (scores["exact_match"], scores["f1"]) == (
        50.0, 50.0)
    assert result["warnings"] == warnings and "question id b occurs 2 times" in warnings[0]
    assert [(row["slice"], row["count"], row["A"]["f1"]) for row in result["slices"]["question_type"]] == [
        ("when", 1, 100.0), ("how", 1, 0.0)]  # each repeat of b with its own question
    assert [e["question"] for e in result["worst"]["A"]["question_type"]["how"]] == ["How tall is it?"]
    # "330 metres" for both slices: not the 6 words of the first answer, which is not in the context
    assert [(row["slice"], row["A"]["f1"]) for row in result["slices"]["answer_length"]] == [("1 word", 100.0),
                                                                                             ("2 words", 0.0)]
    assert [(row["slice"], row["A"]["f1"]) for row in result["slices"]["answer_position"]] == [("0-20%", 100.0),
                                                                                               ("20-40%", 0.0)]
