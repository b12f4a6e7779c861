"""Official SQuAD v1.1, SQuAD v2.0 and CMRC 2018 scores, offline.

`score` applies the rules of `mrc_cli.metrics.rules` directly. `load_metric` gives the same rules as evaluate
modules: `evaluate.load("squad")` fetches its script from the Hub, while ours ship in this folder and load by
path, so they work without a network.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from mrc_cli.errors import DataError
from mrc_cli.metrics import rules

if TYPE_CHECKING:
    import evaluate

METRICS = ("squad", "squad_v2", "cmrc2018")

_MODULES_DIR = Path(__file__).resolve().parent
_CJK_CHARACTER = re.compile("[\u4e00-\u9fa5]")
# letters of the scripts that write beside Chinese characters: Japanese kana, Korean Hangul (syllables, jamo), Thai
_BESIDE_HANZI = "\u3040-\u30ff\uac00-\ud7af\u1100-\u11ff\u0e00-\u0e7f"
_BESIDE_HANZI_LETTER = re.compile(f"[{_BESIDE_HANZI}]")
_SPACED_WORD = re.compile(f"[^\\W\\d_\u4e00-\u9fff{_BESIDE_HANZI}]+")  # a word of Latin, Cyrillic, Greek ... script


def _check_name(name: str, choices: tuple[str, ...]) -> None:
    if name not in choices:
        raise DataError(f"unknown metric {name!r}: choose one of {', '.join(choices)}")


def load_metric(name: str) -> evaluate.EvaluationModule:
    """The evaluate module of one of METRICS, loaded from its folder in this package (no Hub access)."""
    _check_name(name, METRICS)
    import evaluate  # deferred: evaluate pulls in datasets, which scoring with `score` does not need

    # An absolute path: evaluate treats a relative name without a local script as a Hub id.
    return evaluate.load(str(_MODULES_DIR / name))


def detect_metric(golds: list[dict]) -> str:
    """cmrc2018 when the contexts and answers hold more Chinese characters than words of other scripts, squad_v2
    when a question is unanswerable, else squad. Words, not characters: Chinese articles about software or companies
    hold English names, digits and punctuation, and by a majority of characters 8 of the 848 CMRC 2018 dev articles
    were English (scored by SQuAD rules, where an unspaced Chinese answer is one token: no partial credit). By this
    rule all 848 are Chinese (at least 1.9 characters a Latin word) and no SQuAD article comes near (0.006 at most).
    Text with kana, Hangul or Thai letters half as many as its Chinese characters or more is Japanese (even
    kanji-heavy Japanese has that much kana), Korean with hanja or Thai, not Chinese (a CMRC article on a Japanese
    game quotes katakana titles: 28 kana to 181 characters). Questions are left out: validate's records have them,
    eval's golds do not."""
    if is_chinese("".join(gold.get("context", "") + "".join(gold["answers"]) for gold in golds)):
        return "cmrc2018"
    return "squad_v2" if scored_with_nulls(golds) else "squad"


def is_chinese(text: str) -> bool:
    """detect_metric's test of a text: more Chinese characters than words of other scripts, and kana, Hangul or Thai
    letters fewer than half as many."""
    chinese = len(_CJK_CHARACTER.findall(text))
    return chinese > len(_SPACED_WORD.findall(text)) and len(_BESIDE_HANZI_LETTER.findall(text)) < chinese / 2


def scored_with_nulls(golds: list[dict]) -> bool:
    """Whether the official rules for these golds take "" for an answer (a question is unanswerable): the SQuAD v2
    null rule that `mrc eval` decodes them with (mrc_cli.reader.answer_file), and export's parity check."""
    return not all(rules.answerable(gold) for gold in golds)


def unscorable(golds: list[dict], source: str, metric: str = "auto") -> str | None:
    """Why `metric` (auto: the one picked for these golds) cannot score them, or None: unanswerable questions under
    rules that have none (CMRC 2018's, picked for Chinese data; SQuAD v1.1's, only where asked for)."""
    unanswerable = [gold["id"] for gold in golds if not rules.answerable(gold)]
    rules_of = detect_metric(golds) if metric == "auto" else metric
    if not unanswerable or rules_of == "squad_v2":
        return None
    why = "the text is Chinese, scored by the CMRC 2018 rules" if metric == "auto" else f"the {metric} rules asked for"
    return (f"{source}: {len(unanswerable)} of {len(golds)} questions {'is' if len(unanswerable) == 1 else 'are'} "
            f"unanswerable (the first: {unanswerable[0]}), but {why} have no unanswerable questions: leave them out of "
            "the file, or score by SQuAD v2.0's rules (mrc eval --metric squad_v2, --set data.metric=squad_v2 for a run "
            "or mrc kfold, mrc score --metric squad_v2; they take an unspaced Chinese answer as one word: no partial "
            "credit)")


def score(
    golds: list[dict],
    predictions: dict[str, str],
    metric: str = "auto",
    null_odds: dict[str, float] | None = None,
    null_threshold: float = 1.0,
) -> dict:
    """Score predictions (id -> answer text, "" for no answer) against gold records with the official rules.

    golds are `{"id", "answers": [str], "is_impossible": bool}` records (or read_data's, whose answers are
    `{"text": [str], "answer_start": [int]}`: validate's repaired texts, where it relocated an answer, are not the
    official ones); metric "auto" picks one with
    detect_metric. null_odds (id -> odds that the question has no answer) apply to squad_v2 only: answers whose odds
    exceed `null_threshold` count as null (the official --na-prob-thresh, 1.0; infinite: the answers as given, the odds
    for the best_* sweep only). Returns `metric` (the rules applied: auto picks them by the data), the official figures
    in percent and `missing` and `unknown_ids` counts (see mrc_cli.metrics.rules).
    """
    _check_name(metric, ("auto", *METRICS))
    golds = [_with_answer_texts(gold) for gold in golds]
    predictions = _answer_texts(predictions)
    asked = metric
    if metric == "auto":
        metric = detect_metric(golds)
    if metric == "squad_v2":
        scores = rules.score_squad_v2(golds, predictions, null_odds, null_threshold)
    elif null_odds is not None:
        raise DataError(f"null odds apply to the squad_v2 metric only, but the metric is {metric}")
    else:
        scores = (rules.score_squad if metric == "squad" else rules.score_cmrc2018)(golds, predictions)
    # SQuAD v1.1's rules asked for on Chinese text: squad_v2 is the documented choice for unanswerable Chinese
    # questions (unscorable), and what the threshold sweeps call score() with, several times an evaluation
    if asked == "squad" and detect_metric(golds) == "cmrc2018":
        scores["metric_note"] = ("the text is Chinese, scored by the squad rules asked for: they take an unspaced "
                                 "Chinese answer as one word, with no partial credit; cmrc2018 (or auto) scores it by "
                                 "characters")
    return {"metric": metric, **scores}


def _answer_texts(predictions) -> dict[str, str]:
    """{id: answer text} as given, or of the `Prediction`s that predict_answers and ensemble_predict return (their
    text); anything else refused with what was expected."""
    if not isinstance(predictions, Mapping):
        raise DataError(f"predictions: expected {{id: answer text}}, got a {type(predictions).__name__}")
    texts = {qid: getattr(answer, "text", answer) for qid, answer in predictions.items()}
    wrong = next(((qid, answer) for qid, answer in texts.items() if not isinstance(answer, str)), None)
    if wrong:
        raise DataError(f"predictions[{wrong[0]!r}]: expected an answer text (\"\" for no answer), got "
                        f"{type(wrong[1]).__name__} {str(wrong[1])[:40]!r}")
    return texts


def _with_answer_texts(gold: dict) -> dict:
    """A gold record whose answers are a list of texts: the rules would take a dict's keys for its answers."""
    answers = gold.get("answers")
    if isinstance(answers, dict) and isinstance(answers.get("text"), list):
        gold = {**gold, "answers": answers["text"]}
    elif not isinstance(answers, list):
        raise DataError(f"question {gold.get('id')}: gold answers must be a list of texts or {{\"text\": [...]}}, "
                        f"got {type(answers).__name__}")
    if not all(isinstance(answer, str) for answer in gold["answers"]):
        raise DataError(f"question {gold.get('id')}: gold answers must be texts, got {gold['answers']!r:.80}")
    return gold


def from_evaluate_inputs(predictions: list[dict], references: list[dict]) -> tuple[list[dict], dict[str, str]]:
    """Gold records and an id -> text map from the evaluate modules' Hub-style inputs.

    A reference with no answer text is unanswerable (as in the Hub's squad_v2); a prediction_text of None marks
    a question without prediction.
    """
    golds = [
        {"id": ref["id"], "answers": list(ref["answers"]["text"]), "is_impossible": not ref["answers"]["text"]}
        for ref in references
    ]
    texts = {pred["id"]: pred["prediction_text"] for pred in predictions if pred["prediction_text"] is not None}
    return golds, texts
