"""The official scoring rules, by hand-computed cases and on the real SQuAD v2.0 / CMRC 2018 dev files."""

from __future__ import annotations

import json
import random
import socket
from pathlib import Path

import pytest

from conftest import shared_file

from mrc_cli.errors import DataError
from mrc_cli.metrics import detect_metric, load_metric, score
from mrc_cli.metrics import rules
from mrc_cli.metrics.rules import (
    exact_squad,
    f1_cmrc,
    f1_squad,
    longest_common_run,
    normalize_squad,
    segment_cmrc,
    strip_cmrc_punctuation,
)



def gold(qid: str, *answers: str, impossible: bool = False, **text: str) -> dict:
    return {"id": qid, "answers": list(answers), "is_impossible": impossible, **text}


# --- SQuAD normalisation, EM and F1 ---


def test_normalize_squad_drops_articles_punctuation_and_extra_whitespace():
    assert normalize_squad("The  Quick, brown-fox!") == "quick brownfox"
    assert normalize_squad("an apple a day") == "apple day"
    # Articles go by word boundary only: "theatre" and "Anna" keep their letters.
    assert normalize_squad("Theatre of Anna") == "theatre of anna"
    # Punctuation goes before articles, so "the." and "(a)" are articles too.
    assert normalize_squad("the. (a) thing") == "thing"


def test_squad_exact_and_f1_by_hand():
    assert exact_squad("the Broncos", "Broncos.") == 1
    # [cat, sat] against [cat, on, mat]: 1 common token, P = 1/3, R = 1/2, F1 = 0.4
    assert f1_squad("the cat sat", "cat on a mat") == pytest.approx(0.4)
    # Bag of tokens, not order: the same tokens in another order score 1.
    assert f1_squad("red green", "green red") == 1.0


def test_empty_sides_differ_between_v1_and_v2():
    # "a" normalises to nothing: v1.1 finds no common token (0), v2.0 sees "no answer" on both sides (1).
    assert f1_squad("a", "") == 0.0
    assert f1_squad("a", "", v2=True) == 1.0
    assert f1_squad("Denver", "", v2=True) == 0.0


def test_score_squad_takes_the_best_gold_and_counts_missing_and_unknown():
    golds = [gold("q1", "the cat sat", "a dog"), gold("q2", "the cat sat"), gold("q3", "Paris"), gold("q4", "x")]
    predictions = {"q1": "Dog", "q2": "cat on a mat", "q3": "", "q9": "stray"}
    result = score(golds, predictions, metric="squad")
    # q1 matches its second gold (1, 1); q2 is partial (0, 0.4); q3 is empty (0, 0); q4 is missing (0, 0).
    assert result == {
        "metric": "squad",
        "exact_match": pytest.approx(100 * 1 / 4),
        "f1": pytest.approx(100 * 1.4 / 4),
        "total": 4,
        "missing": 1,
        "unknown_ids": 1,
    }


def test_squad_refuses_unanswerable_questions():
    with pytest.raises(DataError, match="question q2: no gold answer.*squad_v2"):
        score([gold("q1", "x"), gold("q2", impossible=True)], {"q1": "x"}, metric="squad")


# --- SQuAD v2.0 ---


def test_squad_v2_has_ans_no_ans_split_by_hand():
    golds = [
        gold("h1", "Denver Broncos", "Broncos"),
        gold("h2", "Santa Clara, California"),
        gold("h3", "in 2016"),
        gold("n1", impossible=True),
        gold("n2", impossible=True),
    ]
    predictions = {"h1": "the Broncos", "h2": "Santa Clara", "n1": "", "n2": "Levi's Stadium"}
    result = score(golds, predictions, metric="squad_v2")
    # exact: h1 1, h2 0, h3 missing 0, n1 1, n2 0.  f1: h2 = [santa clara] vs [santa clara california] = 0.8.
    assert result == {
        "metric": "squad_v2",
        "exact": pytest.approx(100 * 2 / 5),
        "f1": pytest.approx(100 * 2.8 / 5),
        "total": 5,
        "HasAns_exact": pytest.approx(100 * 1 / 3),
        "HasAns_f1": pytest.approx(100 * 1.8 / 3),
        "HasAns_total": 3,
        "NoAns_exact": pytest.approx(50.0),
        "NoAns_f1": pytest.approx(50.0),
        "NoAns_total": 2,
        "missing": 1,
        "unknown_ids": 0,
    }


def test_squad_v2_empty_prediction_on_answerable_and_unanswerable():
    golds = [gold("h", "Denver"), gold("n", impossible=True)]
    result = score(golds, {"h": "", "n": ""}, metric="squad_v2")
    assert (result["HasAns_exact"], result["HasAns_f1"]) == (0.0, 0.0)
    assert (result["NoAns_exact"], result["NoAns_f1"]) == (100.0, 100.0)


def test_squad_v2_gold_that_normalises_to_nothing_is_the_empty_answer():
    # Both golds normalise to "": the gold becomes "", yet the question stays in HasAns (it has answers).
    result = score([gold("q", "The", ".")], {"q": ""}, metric="squad_v2")
    assert result["exact"] == 100.0 and result["f1"] == 100.0
    assert result["HasAns_total"] == 1
    # An empty group's keys are left out, as in the official script.
    assert not any(key.startswith("NoAns_") for key in result)
    # With a real answer beside it, "The" is dropped: "" no longer matches.
    assert score([gold("q", "The", "Denver")], {"q": ""}, metric="squad_v2")["exact"] == 0.0


def test_squad_v2_missing_prediction_scores_zero_even_when_unanswerable():
    result = score([gold("n1", impossible=True), gold("n2", impossible=True)], {"n1": ""}, metric="squad_v2")
    assert result["exact"] == 50.0 and result["total"] == 2 and result["missing"] == 1


def _threshold_case() -> tuple[list[dict], dict[str, str]]:
    golds = [gold("a", "x y"), gold("b", impossible=True), gold("c", "z"), gold("d", impossible=True)]
    predictions = {"a": "x", "b": "w", "c": "z", "d": ""}
    return golds, predictions


def test_squad_v2_best_thresholds_by_hand():
    golds, predictions = _threshold_case()
    # Raw: a exact 0 / f1 2/3, b 0 (answers an unanswerable), c 1, d 1 (right "no answer").
    # b's odds exceed the 1.0 threshold, so b counts as "no answer" and becomes right.
    null_odds = {"a": 0.3, "b": 1.5, "c": 0.1, "d": 0.9}
    result = score(golds, predictions, metric="squad_v2", null_odds=null_odds)
    assert result["exact"] == pytest.approx(100 * 3 / 4)
    assert result["f1"] == pytest.approx(100 * (2 / 3 + 3) / 4)
    # Sweep, starting at 2 (b and d right when every answer is withheld), in odds order c, a, d, b:
    #   exact: c +1 -> 3 (best, 0.1); a +0 -> 3; d +0 -> 3; b -1 -> 2.
    #   f1:    c +1 -> 3 (best, 0.1); a +2/3 -> 3.67 (best, 0.3); d +0; b -1 -> 2.67.
    assert result["best_exact"] == pytest.approx(100 * 3 / 4)
    assert result["best_exact_thresh"] == 0.1
    assert result["best_f1"] == pytest.approx(100 * (3 + 2 / 3) / 4)
    assert result["best_f1_thresh"] == 0.3


def test_squad_v2_best_threshold_keeps_zero_when_withholding_everything_wins():
    golds = [gold("a", "x"), gold("b", impossible=True), gold("c", impossible=True)]
    # Start at 2 (b, c). Releasing b first (it answers an unanswerable) costs 1, which a (right) only wins back,
    # and a tie does not move the threshold: the start stays best.
    null_odds = {"a": 0.5, "b": 0.2, "c": 0.6}
    result = score(golds, {"a": "x", "b": "w", "c": ""}, metric="squad_v2", null_odds=null_odds)
    assert result["best_exact"] == pytest.approx(100 * 2 / 3)
    assert result["best_exact_thresh"] == 0.0


def test_squad_v2_best_thresholds_count_a_missing_prediction_as_zero():
    golds, predictions = _threshold_case()
    golds.append(gold("e", impossible=True))  # no prediction: never right, even with every answer withheld
    null_odds = {"a": 0.3, "b": 1.5, "c": 0.1, "d": 0.9}
    result = score(golds, predictions, metric="squad_v2", null_odds=null_odds)
    assert result["best_exact"] == pytest.approx(100 * 3 / 5)
    assert result["missing"] == 1


def test_squad_v2_null_odds_must_cover_every_prediction():
    golds, predictions = _threshold_case()
    with pytest.raises(DataError, match="no value for question c"):
        score(golds, predictions, metric="squad_v2", null_odds={"a": 0.3, "b": 0.6, "d": 0.9})


# --- CMRC 2018 ---


def test_cmrc_segmentation_mixes_characters_and_treebank_words():
    # "-" is dropped before splitting, so its neighbours join; "." is not CMRC punctuation and stays a token.
    assert segment_cmrc("ω-Force开发的 PS3游戏 in 2010年.") == (
        "ωforce", "开", "发", "的", "ps3", "游", "戏", "in", "2010", "年", ".",
    )
    assert segment_cmrc("Don't 光荣") == ("do", "n't", "光", "荣")


def test_cmrc_punctuation_removal():
    # Full-width and listed ASCII marks go; "…" stays (the official list's "……" never matches one character).
    assert strip_cmrc_punctuation(" 《战国无双3》：Ω-Force… ") == "战国无双3ωforce…"
    assert strip_cmrc_punctuation("「1998年」，") == "1998年"


def test_cmrc_f1_uses_the_longest_contiguous_run():
    # Same tokens, other order: the longest common run is 丙丁 (2 of 4 each side), so F1 = 0.5, not 1.
    assert f1_cmrc("甲乙丙丁", "甲丙丁乙") == 0.5
    # [光 荣] inside [光 荣 和 ωforce]: P = 1, R = 1/2, F1 = 2/3.
    assert f1_cmrc("光荣和ω-force", "光荣") == pytest.approx(2 / 3)


def test_longest_common_run_matches_brute_force():
    rng = random.Random(0)

    def brute_force(a, b):
        runs_of_a = {a[i:k] for i in range(len(a)) for k in range(i + 1, len(a) + 1)}
        runs_of_b = {b[i:k] for i in range(len(b)) for k in range(i + 1, len(b) + 1)}
        return max(map(len, runs_of_a & runs_of_b), default=0)

    for _ in range(300):
        a = tuple(rng.choices("abc", k=rng.randint(0, 9)))
        b = tuple(rng.choices("abc", k=rng.randint(0, 9)))
        assert longest_common_run(a, b) == brute_force(a, b), (a, b)


def test_score_cmrc2018_by_hand():
    golds = [gold("q1", "光荣和ω-force"), gold("q2", "1998年", "1998年7月"), gold("q3", "东京")]
    predictions = {"q1": "光荣", "q2": "1998年。", "q7": "无"}
    result = score(golds, predictions, metric="cmrc2018")
    # q1: EM 0, F1 2/3. q2: EM 1 ("。" dropped), F1 1. q3: missing (SKIP), 0.
    em, f1 = 100 * 1 / 3, 100 * (2 / 3 + 1) / 3
    assert result == {
        "metric": "cmrc2018",
        "EM": pytest.approx(em),
        "F1": pytest.approx(f1),
        "AVERAGE": pytest.approx((em + f1) / 2),
        "TOTAL": 3,
        "SKIP": 1,
        "missing": 1,
        "unknown_ids": 1,
    }


def test_chinese_text_scored_by_squad_rules_asked_for_says_so():
    """SQuAD rules take an unspaced Chinese answer as one token: "光荣" for "光荣和ω-force" scores 0 F1, not 2/3."""
    golds = [gold("q1", "光荣和ω-force"), gold("q2", "1998年")]
    predictions = {"q1": "光荣", "q2": "1998年"}
    squad = score(golds, predictions, metric="squad")
    assert (squad["f1"], squad["exact_match"]) == (50.0, 50.0)
    assert squad["metric_note"].startswith("the text is Chinese, scored by the squad rules asked for")
    assert "metric_note" not in score(golds, predictions) and "metric_note" not in score(golds, predictions, "cmrc2018")
    english = [gold("q1", "the glory"), gold("q2", "1998")]
    assert "metric_note" not in score(english, {"q1": "glory", "q2": "1998"}, metric="squad")


def test_cmrc2018_matches_a_spaced_gold_id_by_its_stripped_id_as_the_official_script_does():
    """cmrc2018_evaluate.py looks predictions up by qas['id'].strip(); our own files keep the id as given."""
    golds = [gold(" q1 ", "东京"), gold("q2\t", "大阪")]
    result = score(golds, {"q1": "东京", "q2\t": "大阪"}, metric="cmrc2018")
    assert (result["EM"], result["SKIP"], result["unknown_ids"]) == (100.0, 0, 0)
    assert rules.prediction_key(" q1 ", {"q1": "x"}, "cmrc2018") == "q1"
    assert rules.prediction_key(" q1 ", {" q1 ": "x"}, "cmrc2018") == rules.prediction_key(" q1 ", {}, "squad") == " q1 "
    # SQuAD's scripts use the id as given
    assert score([gold(" q1 ", "Tokyo")], {"q1": "Tokyo"}, metric="squad")["missing"] == 1


# --- choosing and naming metrics ---


def test_detect_metric():
    chinese = gold("c", "光荣", context="《战国无双3》是由光荣和ω-force开发的", question="谁开发的？")
    english = gold("e", "Normandy", context="The Normans gave their name to Normandy.", question="Where?")
    unanswerable = gold("u", impossible=True, context="The Normans gave their name to Normandy.", question="Who?")
    assert detect_metric([chinese]) == "cmrc2018"
    assert detect_metric([english]) == "squad"
    assert detect_metric([english, unanswerable]) == "squad_v2"
    assert score([english], {"e": "normandy"})["exact_match"] == 100.0


def test_every_cmrc_article_is_chinese_and_every_squad_article_english():
    """Chinese articles about software or companies (CMRC dev: BCPL, PukiWiki, Playfish) hold English names, digits
    and punctuation: by a majority of characters they were English, scored by SQuAD rules without partial credit."""
    from conftest import shared_file

    for name, metric in (("cmrc2018_dev.json", "cmrc2018"), ("squad_v1.1_train_head.json", "squad")):
        articles = json.loads(shared_file(name).read_text(encoding="utf-8"))["data"]
        detected = {detect_metric([gold(qa["id"], *[a["text"] for a in qa["answers"]], context=p["context"],
                                        question=qa["question"]) for p in article["paragraphs"] for qa in p["qas"]])
                    for article in articles}
        assert detected == {metric}, name
    bcpl = gold("b", "Martin Richards", context="BCPL（Basic Combined Programming Language）是Martin Richards于1966年设计的"
                                               "程序语言。", question="BCPL是谁设计的？")
    assert detect_metric([bcpl]) == "cmrc2018"
    # words of other scripts count too: Chinese characters in Russian, Korean, Thai or Japanese text leave them so
    for text in ("Москва — столица России. 北京 тоже столица.", "세종(世宗)은 조선의 제4대 왕이다. 훈민정음을 창제하였다.",
                 "ติ่มซำ (點心) เป็นอาหารจีน ที่นิยมในฮ่องกง",
                 "日本語は、主に日本国内や日本人同士の間で使用されている言語である。日本は法令によって公用語を規定していない。"):
        assert detect_metric([gold("x", text[:2], context=text)]) == "squad", text


def test_unknown_metric_names_the_valid_ones():
    with pytest.raises(DataError, match="squad1.*auto, squad, squad_v2, cmrc2018"):
        score([gold("q", "x")], {"q": "x"}, metric="squad1")
    with pytest.raises(DataError, match="'auto'.*squad, squad_v2, cmrc2018"):
        load_metric("auto")


def test_predictions_are_answer_texts_or_the_apis_predictions():
    """score takes what the Python API's predict functions return (Predictions: their text) as well as {id: text};
    anything else is refused with what was expected, not an AttributeError from inside the rules."""
    from mrc_cli.decoding import Prediction

    golds = [gold("q", "x"), gold("r", "y")]
    predicted = {"q": Prediction("q", "x", 0, 1, 1.0, 0.0, -1.0), "r": "z"}
    assert score(golds, predicted)["exact_match"] == score(golds, {"q": "x", "r": "z"})["exact_match"] == 50.0
    with pytest.raises(DataError, match=r"predictions\['q'\]: expected an answer text .*got int '5'"):
        score(golds, {"q": 5})
    with pytest.raises(DataError, match=r"predictions: expected \{id: answer text\}, got a list"):
        score(golds, ["x", "y"])


def test_null_odds_only_for_squad_v2():
    with pytest.raises(DataError, match="squad_v2 metric only"):
        score([gold("q", "x")], {"q": "x"}, metric="squad", null_odds={"q": 0.1})


def test_evaluate_modules_load_by_path_without_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted while loading a metric")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    golds = [gold("q1", "Denver Broncos"), gold("q2", "Santa Clara")]
    for name in ("squad", "squad_v2", "cmrc2018"):
        references, predictions = to_evaluate_inputs(name, golds, {"q1": "Broncos"})
        # the evaluate modules give the figures alone, as the Hub's do; score() names the rules too
        assert {"metric": name, **load_metric(name).compute(predictions=predictions, references=references)} == score(
            golds, {"q1": "Broncos"}, metric=name
        ), name


# --- the real dev files ---


def read_squad_json(path: Path) -> list[dict]:
    """Gold records from a SQuAD-style nested file; unanswerable questions keep an empty answer list."""
    golds = []
    for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                golds.append({
                    "id": qa["id"],
                    "question": qa["question"],
                    "context": paragraph["context"],
                    "answers": [answer["text"] for answer in qa["answers"]],
                    "is_impossible": qa.get("is_impossible", False),
                })
    return golds


def to_evaluate_inputs(name: str, golds: list[dict], predictions: dict[str, str], null_odds=None):
    """The Hub-style references and predictions lists of an evaluate module, in gold order."""
    references = [
        {"id": g["id"], "answers": {"text": [] if g["is_impossible"] else g["answers"],
                                    "answer_start": [0] * (0 if g["is_impossible"] else len(g["answers"]))}}
        for g in golds
    ]
    rows = [{"id": g["id"], "prediction_text": predictions.get(g["id"])} for g in golds]
    if name == "squad_v2":  # its rows need the key even without null odds, as on the Hub
        for row in rows:
            row["no_answer_probability"] = null_odds[row["id"]] if null_odds else None
    return references, rows


def first_answers(golds: list[dict]) -> dict[str, str]:
    return {g["id"]: "" if g["is_impossible"] else g["answers"][0] for g in golds}


def perturb(golds: list[dict]) -> dict[str, str]:
    """Every fifth question missing; the rest empty, half an answer, wrong, or right, in turn."""
    predictions = {}
    for i, g in enumerate(golds):
        answer = "" if g["is_impossible"] else g["answers"][0]
        words = answer.split()
        # Chinese answers have no spaces: take half of the characters instead.
        half = " ".join(words[: len(words) // 2]) if len(words) > 1 else answer[: max(1, len(answer) // 2)]
        choice = {1: "", 2: half, 3: "xyzzy", 4: answer}
        if i % 5:
            predictions[g["id"]] = choice[i % 5]
    return predictions


@pytest.fixture(scope="module")
def squad_v2_golds() -> list[dict]:
    return read_squad_json(shared_file("squad_v2.0_dev_head.json"))


@pytest.fixture(scope="module")
def cmrc_golds() -> list[dict]:
    return read_squad_json(shared_file("cmrc2018_dev.json"))


def test_real_files_detect_their_metric(squad_v2_golds, cmrc_golds):
    assert detect_metric(squad_v2_golds) == "squad_v2"
    assert detect_metric([g for g in squad_v2_golds if not g["is_impossible"]]) == "squad"
    assert detect_metric(cmrc_golds) == "cmrc2018"


def test_first_gold_answer_scores_100(squad_v2_golds, cmrc_golds):
    answerable = [g for g in squad_v2_golds if not g["is_impossible"]]
    squad = score(answerable, first_answers(answerable), metric="squad")
    assert (squad["exact_match"], squad["f1"], squad["total"]) == (100.0, 100.0, 705)
    v2 = score(squad_v2_golds, first_answers(squad_v2_golds), metric="squad_v2")
    assert (v2["exact"], v2["f1"], v2["total"]) == (100.0, 100.0, 1407)
    cmrc = score(cmrc_golds, first_answers(cmrc_golds), metric="cmrc2018")
    assert (cmrc["EM"], cmrc["F1"], cmrc["TOTAL"], cmrc["SKIP"]) == (100.0, 100.0, 3219, 0)


def test_squad_v2_all_empty_scores_the_no_answer_share(squad_v2_golds):
    result = score(squad_v2_golds, {g["id"]: "" for g in squad_v2_golds}, metric="squad_v2")
    assert result["NoAns_total"] == 702
    assert result["exact"] == pytest.approx(100 * 702 / 1407)
    assert result["f1"] == pytest.approx(100 * 702 / 1407)
    assert (result["HasAns_exact"], result["NoAns_exact"]) == (0.0, 100.0)


def test_perturbed_predictions_agree_between_score_and_evaluate_modules(squad_v2_golds, cmrc_golds):
    answerable = [g for g in squad_v2_golds if not g["is_impossible"]]
    # Odds from 0 to 2 with many ties, so the 1.0 threshold and the sweep's tie order both matter.
    null_odds = {g["id"]: (i * 37 % 101) / 50 for i, g in enumerate(squad_v2_golds)}
    cases = [
        ("squad", answerable, None),
        ("squad_v2", squad_v2_golds, None),
        ("squad_v2", squad_v2_golds, null_odds),
        ("cmrc2018", cmrc_golds, None),
    ]
    for name, golds, odds in cases:
        predictions = perturb(golds)
        expected = score(golds, predictions, metric=name, null_odds=odds)
        references, rows = to_evaluate_inputs(name, golds, predictions, odds)
        assert {"metric": name, **load_metric(name).compute(predictions=rows, references=references)} == expected, name
        assert expected["missing"] == len(range(0, len(golds), 5)), name
        assert 0 < min(value for key, value in expected.items() if key in ("f1", "F1")) < 100, name
    assert "best_f1" in score(squad_v2_golds, perturb(squad_v2_golds), metric="squad_v2", null_odds=null_odds)


def test_cmrc_scoring_segments_each_distinct_text_once(cmrc_golds):
    """Each prediction is compared with each of its (three) gold answers, and the official script segments both
    sides anew every time; segment_cmrc is cached, so each distinct text goes through NLTK once. (The time this
    takes is measured by bench/bench_scoring.py, not asserted here.)"""
    predictions = perturb(cmrc_golds)
    scored = [(g, predictions[g["id"]]) for g in cmrc_golds if g["id"] in predictions]
    comparisons = sum(len(g["answers"]) for g, _ in scored)
    distinct = {text for g, prediction in scored for text in (*g["answers"], prediction)}
    segment_cmrc.cache_clear()
    score(cmrc_golds, predictions, metric="cmrc2018")
    calls = segment_cmrc.cache_info()
    assert calls.hits + calls.misses == 2 * comparisons  # a gold answer and the prediction per comparison
    assert calls.misses == len(distinct) < comparisons


# --- a gold file with a repeated question id (mrc score) ---


def _qa(qid: str, answer: str, start: int) -> dict:
    return {"id": qid, "question": "which?", "answers": [{"text": answer, "answer_start": start}]}


def test_score_cli_scores_repeated_ids_as_the_official_scripts_with_a_warning(tmp_path):
    """v1.1 (official evaluate-v1.1.py loops over every question): both questions of id d count, each against d's
    prediction. v2.0 (official evaluate-v2.0.py keys its scores by id): the last question of d counts, once."""
    from typer.testing import CliRunner

    from conftest import write_squad
    from mrc_cli.analysis import analyze
    from mrc_cli.cli import app

    context = "red green blue"
    gold = write_squad(tmp_path / "gold.json", [(context, [_qa("a", "red", 0), _qa("d", "green", 4), _qa("d", "blue", 10)])])
    predictions = tmp_path / "pred.json"
    predictions.write_text(json.dumps({"a": "red", "d": "blue"}))
    for metric, exact, total in (("squad", 100 * 2 / 3, 3), ("squad_v2", 100.0, 2)):
        result = CliRunner().invoke(app, ["score", str(gold), str(predictions), "--metric", metric])
        assert result.exit_code == 0, result.output
        scores = json.loads(result.stdout.strip().splitlines()[-1])
        assert scores["total"] == total and scores["exact" if metric == "squad_v2" else "exact_match"] == pytest.approx(exact)
        assert "Warning: " in result.stderr and ("question id d occurs 2 times (SQuAD v1.1's and CMRC 2018's official "
                                                 "scripts score each against that id's prediction, SQuAD v2.0's the "
                                                 "last one only)") in result.stderr
        analysis = analyze(str(gold), str(predictions), metric=metric)  # the same questions, as mrc score counts them
        assert (analysis["questions"], analysis["overall"]["A"]["exact"]) == (total, pytest.approx(exact))


def test_score_takes_the_records_read_data_reads_and_refuses_answers_it_cannot_read(tmp_path):
    """read_data's records hold answers as {"text", "answer_start"}: scored by their texts, not by the dict's keys."""
    from mrc_cli.data import read_data

    records = read_data("data/quickstart/en_dev.json").records
    perfect = {r["id"]: (r["answers"]["text"] or [""])[0] for r in records}
    assert score(records, perfect)["exact"] == 100.0
    with pytest.raises(DataError, match="question q: gold answers must be a list of texts"):
        score([{"id": "q", "answers": "Paris"}], {"q": "Paris"})
    with pytest.raises(DataError, match="question q: gold answers must be texts"):
        score([{"id": "q", "answers": [{"text": "Paris"}]}], {"q": "Paris"})
