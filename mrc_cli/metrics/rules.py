"""The official scoring rules of SQuAD v1.1, SQuAD v2.0 and CMRC 2018, in plain Python.

Each `score_*` function takes gold records `{"id": str, "answers": [str], "is_impossible": bool}` and predictions
`{id: answer text}` ("" means "no answer") and returns the official figures in percent, summed in gold order as
the official scripts do, so the floats agree to the last bit.

One deliberate difference: a gold question without a prediction scores 0 and still counts in the total, as in the
v1.1 and CMRC 2018 scripts. The v2.0 script instead leaves it out of `total` and then crashes on the HasAns/NoAns
split, so for v2.0 our figures equal the official ones whenever every question has a prediction.
Every result also reports `missing` (gold questions without prediction) and `unknown_ids` (predictions for ids
that are not in the gold data; they are ignored).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from difflib import SequenceMatcher
from functools import lru_cache

from nltk.tokenize import NLTKWordTokenizer

from mrc_cli.errors import DataError

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_DROP_ASCII_PUNCTUATION = str.maketrans("", "", string.punctuation)

# The official CMRC 2018 list also holds "……", but it compares one character at a time, so a two-character
# entry never matches: "…" is kept, and so are ASCII punctuation marks missing from the list, such as "." or ",".
CMRC_PUNCTUATION = "-:_*^/\\~`+=，。：？！“”；’《》·、「」（）－～『』"
_DROP_CMRC_PUNCTUATION = str.maketrans("", "", CMRC_PUNCTUATION)
# A capturing group makes re.split keep each CJK character: odd positions are CJK characters, even ones the
# (possibly empty) runs of other characters between them.
_CJK_CHARACTER = re.compile("([\u4e00-\u9fa5])")
# What nltk.word_tokenize runs on each sentence. word_tokenize first splits sentences with Punkt, whose model is
# a separate download; we skip that step. The two differ only where a run holds a sentence end followed by more
# text ("end. next": we keep "end." whole); in CMRC 2018 dev that happens for initials such as "henry a. walsh".
_WORD_TOKENIZER = NLTKWordTokenizer()


def normalize_squad(text: str) -> str:
    """Lower-case, drop ASCII punctuation, drop the articles a/an/the, fold whitespace (the official order)."""
    text = text.lower().translate(_DROP_ASCII_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_squad(gold: str, prediction: str) -> int:
    return int(normalize_squad(gold) == normalize_squad(prediction))


def f1_squad(gold: str, prediction: str, v2: bool = False) -> float:
    """Bag-of-tokens F1 of the normalised texts.

    The scripts differ when a side has no tokens: v1.1 scores 0 (no common token), v2.0 scores 1 when both sides
    are empty, because there "" is the answer to an unanswerable question.
    """
    gold_tokens = normalize_squad(gold).split()
    prediction_tokens = normalize_squad(prediction).split()
    if v2 and not (gold_tokens and prediction_tokens):
        return float(gold_tokens == prediction_tokens)
    num_same = sum((Counter(gold_tokens) & Counter(prediction_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def strip_cmrc_punctuation(text: str) -> str:
    """Lower-case, strip, then drop the CMRC punctuation: the form CMRC 2018 compares for EM."""
    return text.lower().strip().translate(_DROP_CMRC_PUNCTUATION)


@lru_cache(maxsize=2**16)
def segment_cmrc(text: str) -> tuple[str, ...]:
    """CMRC 2018 "mixed segmentation": each CJK character is a token, other runs go through NLTK's tokenizer.

    The official script drops punctuation before it splits, so its neighbours join: "ω-force" -> ["ωforce"].
    Cached because every prediction is compared with each of its (usually three) gold answers.
    """
    tokens: list[str] = []
    for position, piece in enumerate(_CJK_CHARACTER.split(strip_cmrc_punctuation(text))):
        if position % 2:
            tokens.append(piece)
        elif piece:
            tokens.extend(_WORD_TOKENIZER.tokenize(piece))
    return tuple(tokens)


def longest_common_run(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    """Length of the longest contiguous run of tokens shared by a and b."""
    # Without a junk filter (autojunk=False), find_longest_match returns the true longest common block.
    return SequenceMatcher(None, a, b, autojunk=False).find_longest_match(0, len(a), 0, len(b)).size


def exact_cmrc(gold: str, prediction: str) -> int:
    return int(strip_cmrc_punctuation(gold) == strip_cmrc_punctuation(prediction))


def f1_cmrc(gold: str, prediction: str) -> float:
    """F1 with the longest common run of mixed-segmentation tokens as the true positives."""
    gold_tokens, prediction_tokens = segment_cmrc(gold), segment_cmrc(prediction)
    num_same = longest_common_run(gold_tokens, prediction_tokens)
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def score_question(gold: dict, prediction: str, metric: str) -> tuple[int, float]:
    """(exact, f1) of one prediction, each the best over the gold answers, by the rules of metric (squad,
    squad_v2 or cmrc2018): what the score_* functions sum, and what error analysis slices."""
    if metric == "squad_v2":
        answers = _squad_v2_golds(gold)
        return max(exact_squad(a, prediction) for a in answers), max(f1_squad(a, prediction, v2=True) for a in answers)
    answers = _required_answers(gold, metric)
    exact, f1 = (exact_squad, f1_squad) if metric == "squad" else (exact_cmrc, f1_cmrc)
    return max(exact(a, prediction) for a in answers), max(f1(a, prediction) for a in answers)


def prediction_key(qid: str, predictions: dict, metric: str) -> str:
    """The key of a gold id's prediction: the id as given, or under CMRC 2018 rules, whose script looks predictions
    up by the stripped id, the stripped id where only that is there (our own files keep the id as given)."""
    return qid.strip() if metric == "cmrc2018" and qid not in predictions else qid


def _pair(golds: list[dict], predictions: dict[str, str],
          metric: str = "squad") -> tuple[list[tuple[dict, str | None]], int]:
    """Each gold record with its prediction (None when there is none; found by prediction_key for `metric`), and the
    number of unknown prediction ids."""
    if not golds:
        raise DataError("no gold questions to score")
    ids = [prediction_key(gold["id"], predictions, metric) for gold in golds]
    num_unknown = len(predictions.keys() - {gold["id"] for gold in golds} - {gold["id"].strip() for gold in golds})
    return [(gold, predictions.get(qid)) for gold, qid in zip(golds, ids)], num_unknown


def answerable(gold: dict) -> bool:
    """As the official SQuAD v2.0 script has it: by the answers alone (is_impossible marks what they say)."""
    return bool(gold["answers"])


def _required_answers(gold: dict, metric: str) -> list[str]:
    if not answerable(gold):
        raise DataError(
            f"question {gold['id']}: no gold answer, but {metric} scores answerable questions only "
            "(use the squad_v2 metric for data with unanswerable questions)"
        )
    return gold["answers"]


def score_squad(golds: list[dict], predictions: dict[str, str]) -> dict:
    """SQuAD v1.1: exact_match and f1, each the best over the gold answers."""
    pairs, num_unknown = _pair(golds, predictions)
    exact, f1 = [], []
    for gold, prediction in pairs:
        _required_answers(gold, "squad")
        if prediction is None:
            exact.append(0)
            f1.append(0.0)
            continue
        question_exact, question_f1 = score_question(gold, prediction, "squad")
        exact.append(question_exact)
        f1.append(question_f1)
    total = len(pairs)
    return {
        "exact_match": 100.0 * sum(exact) / total,
        "f1": 100.0 * sum(f1) / total,
        "total": total,
        "missing": sum(prediction is None for _, prediction in pairs),
        "unknown_ids": num_unknown,
    }


def _squad_v2_golds(gold: dict) -> list[str]:
    """Official v2.0: answers that normalise to nothing are dropped; with none left the gold is ""."""
    answers = gold["answers"] if answerable(gold) else []
    return [answer for answer in answers if normalize_squad(answer)] or [""]


def score_squad_v2(
    golds: list[dict],
    predictions: dict[str, str],
    null_odds: dict[str, float] | None = None,
    null_threshold: float = 1.0,
) -> dict:
    """SQuAD v2.0: exact and f1 overall and split HasAns/NoAns; best thresholds when null odds are given.

    With null odds, an answer whose null odds exceed null_threshold counts as "no answer" (the official
    --na-prob-thresh, default 1.0), and best_* report the sweep of `_best_threshold`.
    """
    # the official script keys every score by question id: of a repeated id the last question counts, once
    golds = list({gold["id"]: gold for gold in golds}.values())
    pairs, num_unknown = _pair(golds, predictions)
    has_answer = {gold["id"]: answerable(gold) for gold in golds}
    # Raw scores exist for predicted questions only, as in the official get_raw_scores.
    raw_exact, raw_f1 = {}, {}
    for gold, prediction in pairs:
        if prediction is not None:
            raw_exact[gold["id"]], raw_f1[gold["id"]] = score_question(gold, prediction, "squad_v2")
    if null_odds is not None:
        _check_null_odds(raw_exact, null_odds)
    exact = _apply_null_threshold(raw_exact, null_odds, null_threshold, has_answer)
    f1 = _apply_null_threshold(raw_f1, null_odds, null_threshold, has_answer)

    result = _percentages("", golds, exact, f1)
    for prefix, has in (("HasAns_", True), ("NoAns_", False)):
        group = [gold for gold in golds if has_answer[gold["id"]] == has]
        if group:  # the official script leaves out an empty group's keys
            result.update(_percentages(prefix, group, exact, f1))
    if null_odds is not None:
        total = len(golds)
        result["best_exact"], result["best_exact_thresh"] = _best_threshold(
            raw_exact, predictions, null_odds, has_answer, total
        )
        result["best_f1"], result["best_f1_thresh"] = _best_threshold(raw_f1, predictions, null_odds, has_answer, total)
    result["missing"] = len(golds) - len(raw_exact)
    result["unknown_ids"] = num_unknown
    return result


def _check_null_odds(raw_scores: dict[str, float], null_odds: dict[str, float]) -> None:
    lacking = [qid for qid in raw_scores if qid not in null_odds]
    if lacking:
        raise DataError(
            f"null odds: no value for question {lacking[0]} ({len(lacking)} predicted questions lack one); "
            "give null odds for every predicted question, or none"
        )


def _apply_null_threshold(
    raw_scores: dict[str, float], null_odds: dict[str, float] | None, threshold: float, has_answer: dict[str, bool]
) -> dict[str, float]:
    """Scores after answers above the null threshold become "no answer": right exactly when there is none."""
    if null_odds is None:
        return raw_scores
    return {
        qid: float(not has_answer[qid]) if null_odds[qid] > threshold else score for qid, score in raw_scores.items()
    }


def _percentages(prefix: str, golds: list[dict], exact: dict[str, float], f1: dict[str, float]) -> dict:
    """exact and f1 over these golds in percent; a question without prediction (absent from the scores) adds 0."""
    total = len(golds)
    return {
        f"{prefix}exact": 100.0 * sum(exact.get(gold["id"], 0) for gold in golds) / total,
        f"{prefix}f1": 100.0 * sum(f1.get(gold["id"], 0) for gold in golds) / total,
        f"{prefix}total": total,
    }


def _best_threshold(
    raw_scores: dict[str, float],
    predictions: dict[str, str],
    null_odds: dict[str, float],
    has_answer: dict[str, bool],
    total: int,
) -> tuple[float, float]:
    """The official find_best_thresh: the best score over null thresholds, and that threshold.

    Start from every answer withheld (each predicted unanswerable question right, threshold 0.0), then release
    answers in increasing order of null odds: an answerable question gains its raw score, an unanswerable one
    loses 1 if its prediction is not "" (the raw string, so " " counts as an answer). Ties keep the order of
    null_odds (a stable sort), and the threshold moves only on a strict improvement, as in the official script.
    Questions without prediction score 0 throughout; the official script divides by the number of predictions.
    """
    score = sum(not has_answer[qid] for qid in raw_scores)
    best_score, best_threshold = score, 0.0
    for qid in sorted(null_odds, key=null_odds.__getitem__):
        if qid not in raw_scores:
            continue
        if has_answer[qid]:
            score += raw_scores[qid]
        elif predictions[qid]:
            score -= 1
        if score > best_score:
            best_score, best_threshold = score, null_odds[qid]
    return 100.0 * best_score / total, best_threshold


def score_cmrc2018(golds: list[dict], predictions: dict[str, str]) -> dict:
    """CMRC 2018: EM, F1, their AVERAGE, TOTAL and SKIP (questions without prediction, scored 0).

    The official script prints EM, F1 and AVERAGE rounded to 3 decimals; we return them unrounded.
    `missing` repeats SKIP so that every metric reports it under one name.
    """
    pairs, num_unknown = _pair(golds, predictions, "cmrc2018")
    exact, f1 = [], []
    num_skipped = 0
    for gold, prediction in pairs:
        _required_answers(gold, "cmrc2018")
        if prediction is None:
            num_skipped += 1
            continue
        question_exact, question_f1 = score_question(gold, prediction, "cmrc2018")
        exact.append(question_exact)
        f1.append(question_f1)
    total = len(pairs)
    em_percent = 100.0 * sum(exact) / total
    f1_percent = 100.0 * sum(f1) / total
    return {
        "EM": em_percent,
        "F1": f1_percent,
        "AVERAGE": (em_percent + f1_percent) * 0.5,
        "TOTAL": total,
        "SKIP": num_skipped,
        "missing": num_skipped,
        "unknown_ids": num_unknown,
    }
