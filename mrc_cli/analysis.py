"""Error analysis (`mrc analyze`): EM/F1 of one or two prediction files by slice of the gold data, the worst questions
of each slice, SQuAD v2's answer / no-answer confusion and, for two files, where one beats the other.

Slices: question type, gold answer length, gold answer position in the context, windows per question (when a
tokenizer and data settings are given) and answerable or not. Each question is scored by the official rules
(`rules.score_question`) and a slice's figures are sums in gold order, so the overall figures equal `mrc score`'s.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from mrc_cli.analysis_report import write_analysis
from mrc_cli.decoding import best_span_text
from mrc_cli.config import check_null_threshold
from mrc_cli.errors import DataError
from mrc_cli.metrics import METRICS, detect_metric, rules
from mrc_cli.scoring import (PredictionFiles, check_predictions_match, find_prediction_files, read_json_map,
                             read_null_odds)
from mrc_cli.validate import load_examples, validated_records

if TYPE_CHECKING:
    from mrc_cli.config import RunConfig

NAMES = ("A", "B")  # the prediction files, in --pred order

# Question types, most specific first: the keyword that starts earliest in the question wins, and of keywords starting
# at the same character the one listed first ("how many" over "how", 什么时候 over 什么). Earliest rather than first
# listed because the wh-word of "Who ruled when ...?" is its first one, and Chinese puts it anywhere (XX是什么时候建成的？).
_QUESTION_TYPES = {
    "en": [
        ("when", r"\bwhen\b"), ("where", r"\bwhere\b"), ("who", r"\bwho\b"), ("whom", r"\bwhom\b"),
        ("whose", r"\bwhose\b"), ("why", r"\bwhy\b"), ("how many/much", r"\bhow\s+(?:many|much)\b"),
        ("how", r"\bhow\b"), ("which", r"\bwhich\b"), ("what", r"\bwhat\b"),
    ],
    "zh": [  # English names: the chart's default font has no CJK glyphs
        ("when", "什么时[候间]|什么年代|何时|何年|哪一?年|哪一?天|哪个?时[候期代]|几月|几日"),
        ("where", "哪里|哪儿|何处|何地|什么地方"),
        ("who", "谁|什么人|何人|哪位"),
        # 称为什么 / 成为什么 ... are 为 + 什么 ("is called what"), not "why"
        ("why", "(?<![称成作名译改])为什么|为何|为啥|因何"),
        ("how many/much", "多少|几(?!内亚)"),  # 几内亚: Guinea
        ("how", "怎么|怎样|如何|多大(?!学)|多[长高久远重宽深厚]"),  # 多大学: a university (科罗拉多大学, 多伦多大学)
        ("which", "哪"),
        ("what", "什么|啥|何种|有何"),
    ],
}
_TYPE_PATTERNS = {
    language: re.compile("|".join(f"(?P<t{i}>{pattern})" for i, (_, pattern) in enumerate(types)), re.IGNORECASE)
    for language, types in _QUESTION_TYPES.items()
}
# Gold answer length buckets (upper bound, label): English in words (45 % of SQuAD answers are one word), Chinese in
# characters (CMRC 2018's answers spread from 2 to 20).
_LENGTH_BUCKETS = {
    "en": [(1, "1 word"), (2, "2 words"), (3, "3 words"), (5, "4-5 words"), (None, "6+ words")],
    "zh": [(2, "1-2 chars"), (4, "3-4 chars"), (6, "5-6 chars"), (10, "7-10 chars"), (20, "11-20 chars"),
           (None, "21+ chars")],
}
_WINDOW_BUCKETS = [(0, "none (left out)"), (1, "1 window"), (2, "2 windows"), (3, "3 windows"), (None, "4+ windows")]
_POSITIONS = ["0-20%", "20-40%", "40-60%", "60-80%", "80-100%"]  # of the context's characters
NO_ANSWER = "no answer"
NOT_LOCATED = "not located"  # no gold answer found in the context, or the question left out (empty)
HAS_ANSWER = "has answer"


@dataclass
class WindowCounts:
    counts: dict[tuple[str, str], int]  # (question, context) -> windows: a repeated id's questions keep their own
    settings: str  # the tokenizer and data settings that made them, for the report


def count_windows(gold: str, checkpoint: str | None = None, cfg: RunConfig | None = None) -> WindowCounts:
    """Windows per question of the gold file as a trained model (`checkpoint`) or a RunConfig's tokenizer and data
    settings cut it: the features `mrc predict` builds (and their feature cache)."""
    if checkpoint is None and cfg is None:
        raise ValueError("count_windows needs a checkpoint or a RunConfig")
    from mrc_cli.features import cache_root, column
    from mrc_cli.splits import select_split

    if checkpoint is not None:
        from mrc_cli.loading import load_tokenizer_and_config

        tokenizer, cfg = load_tokenizer_and_config(checkpoint)
        source = checkpoint
    else:
        from mrc_cli.tokenizer import load_tokenizer

        source = cfg.model.tokenizer or cfg.model.name_or_path
        tokenizer = load_tokenizer(source)
    # the questions analyze scores, a repeated id among them (predict refuses one); each its own windows
    examples, report, golds = load_examples(gold, "score", cfg.data.format, cache_root(cfg.data) / "examples")
    ids = column(examples, "id")
    if len(set(ids)) < len(ids):
        examples = examples.remove_columns("id").add_column("id", [str(row) for row in range(len(ids))])
    split = select_split(examples, report, golds, list(range(len(examples))), tokenizer, cfg.data, "predict")
    per_id = Counter(column(split.features, "example_id"))
    settings = (f"tokenizer of {source}, max_seq_length {cfg.data.max_seq_length}, doc_stride "
                f"{cfg.data.doc_stride}, max_query_length {cfg.data.max_query_length}")
    return WindowCounts({(question, context): per_id[i] for i, question, context in
                         zip(column(examples, "id"), column(examples, "question"), column(examples, "context"))},
                        settings)


def analyze(
    gold: str,
    predictions: Sequence[str | Path],
    nbest: Sequence[str | Path | None] | None = None,
    null_odds: Sequence[str | Path | None] | None = None,
    threshold: float | Sequence[float | None] | None = None,
    windows: WindowCounts | None = None,
    metric: str = "auto",
    num_examples: int = 5,
    fmt: str = "auto",
    out_dir: str | Path | None = None,
) -> dict:
    """EM/F1 by slice of one or two prediction files (each a file or an `mrc eval --out` folder) on a gold file.

    nbest and null_odds: one entry per prediction (None: the folder's, if any). threshold (SQuAD v2 with null odds):
    one for all predictions or one each; None takes best_f1_thresh from the folder's metrics.json, else 0.
    With out_dir, writes analysis.json and analysis.png there. Returns the analysis as a JSON-ready dict. One file
    (a path rather than a list of them) is a list of one, as are its nbest and null_odds.
    """
    predictions, nbest, null_odds = (_one_path(given) for given in (predictions, nbest, null_odds))
    num = len(predictions)
    if num not in (1, 2):
        raise DataError(f"analyze takes one or two prediction files (--pred A [--pred B]), got {num}")
    if metric not in ("auto", *METRICS):
        raise DataError(f"unknown metric {metric!r}: choose one of auto, {', '.join(METRICS)}")
    examples, report, golds = load_examples(gold, "score", fmt)  # the gold files mrc score takes
    if not golds:
        raise DataError(f"{gold}: no questions to analyze")
    detected = detect_metric(golds)
    metric = detected if metric == "auto" else metric
    language = "zh" if detected == "cmrc2018" else "en"
    records = validated_records(golds, examples.to_list())
    if metric == "squad_v2":  # the official v2.0 script keys questions by id: a repeated id is its last one, once
        keep = sorted({gold["id"]: i for i, gold in enumerate(golds)}.values())
        golds, records = [golds[i] for i in keep], [records[i] for i in keep]
    labels, left_out = _slice_questions(records, golds, language, windows)
    groups = _group(labels, language)
    thresholds = list(threshold) if isinstance(threshold, Sequence) else [threshold]
    for value in thresholds:
        check_null_threshold(value)
    thresholds = _one_each(thresholds * num if len(thresholds) == 1 else thresholds, num, "threshold")
    runs = [
        _score_run(find_prediction_files(pred, nb, odds), golds, metric, t)
        for pred, nb, odds, t in zip(predictions, _one_each(nbest, num, "nbest"), _one_each(null_odds, num, "null odds"),
                                     thresholds)
    ]
    names = NAMES[:num]
    # what an example shows; an empty question (left out of eval) has no record
    shown = [{"id": g["id"], "question": record["question"] if record else "", "gold": g["answers"]}
             for g, record in zip(golds, records)]
    result = {
        "gold": str(gold),
        "warnings": report.warnings,  # about the gold file, as mrc score gives them
        "metric": metric,
        "questions": len(golds),
        "predictions": {name: run["files"] for name, run in zip(names, runs)},
        "overall": _slice_row("all", range(len(golds)), runs, names),
        "slices": {family: [_slice_row(label, members, runs, names) for label, members in slices.items()]
                   for family, slices in groups.items()},
        "left_out": left_out,
        "worst": {name: _worst(groups, shown, {name: run}, num_examples) for name, run in zip(names, runs)},
    }
    if metric == "squad_v2":
        result["confusion"] = {name: _confusion(golds, run["texts"]) for name, run in zip(names, runs)}
    if num == 2:
        result["comparison"] = _compare(shown, runs, num_examples)
    if out_dir is not None:
        result["files"] = write_analysis(result, out_dir)
    return result


def _one_path(given):
    return [given] if isinstance(given, (str, os.PathLike)) else given


def _one_each(values: Sequence | None, num: int, what: str) -> list:
    if values is None:
        return [None] * num
    values = list(values)
    if len(values) != num:
        raise DataError(f"{len(values)} {what} values for {num} prediction files: give one per --pred, in order")
    return values


# --- slices -------------------------------------------------------------------------------------------------------


def question_type(question: str, language: str) -> str:
    match = _TYPE_PATTERNS[language].search(question)
    return _QUESTION_TYPES[language][int(match.lastgroup[1:])][0] if match else "other"


def _bucket(value: int, buckets: list[tuple[int | None, str]]) -> str:
    return next(label for upper, label in buckets if upper is None or value <= upper)


def answer_length(answer: str, language: str) -> str:
    size = len("".join(answer.split())) if language == "zh" else len(answer.split())
    return _bucket(size, _LENGTH_BUCKETS[language])


def answer_position(start: int, context: str) -> str:
    """Which fifth of the context the answer starts in."""
    return _POSITIONS[min(start * len(_POSITIONS) // max(len(context), 1), len(_POSITIONS) - 1)]


def _slice_questions(records: list[dict | None], golds: list[dict], language: str,
                     windows: WindowCounts | None) -> tuple[list[dict], dict]:
    """Each gold question's label in every slice family, and the families left out with the reason."""
    left_out = {}
    if windows is None:
        left_out["windows"] = ("windows per question depend on the tokenizer and data settings, and predictions "
                               "files do not record them: give --checkpoint (or --model) to count them")
    if all(rules.answerable(gold) for gold in golds):
        left_out["answerable"] = "every question has an answer"
    slices = []
    for gold, record in zip(golds, records):  # record None: an empty question, left out of eval
        answerable = rules.answerable(gold)
        labels = {"question_type": question_type(record["question"], language) if record else "other"}
        if answerable:  # length and position of one answer: the first found in the context, else the first
            starts = record["answers"]["answer_start"] if record else []
            found = next((i for i, start in enumerate(starts) if start >= 0), None)
            labels["answer_length"] = answer_length(gold["answers"][found or 0], language)
            labels["answer_position"] = (NOT_LOCATED if found is None else
                                         answer_position(starts[found], gold["context"]))
        else:
            labels["answer_length"] = labels["answer_position"] = NO_ANSWER
        if windows is not None:
            count = windows.counts.get((record["question"], record["context"]), 0) if record else 0
            labels["windows"] = _bucket(count, _WINDOW_BUCKETS)
        if "answerable" not in left_out:
            labels["answerable"] = HAS_ANSWER if answerable else NO_ANSWER
        slices.append(labels)
    return slices, left_out


def _group(labels: list[dict], language: str) -> dict[str, dict[str, list[int]]]:
    """family -> label -> indices of its questions; labels in a fixed order (types as listed, buckets ascending),
    empty ones left out."""
    orders = {
        "question_type": [label for label, _ in _QUESTION_TYPES[language]] + ["other"],
        "answer_length": [label for _, label in _LENGTH_BUCKETS[language]] + [NO_ANSWER],
        "answer_position": _POSITIONS + [NOT_LOCATED, NO_ANSWER],
        "windows": [label for _, label in _WINDOW_BUCKETS],
        "answerable": [HAS_ANSWER, NO_ANSWER],
    }
    groups = {}
    for family, order in orders.items():
        members: dict[str, list[int]] = {label: [] for label in order}
        for i, question in enumerate(labels):
            if family in question:
                members[question[family]].append(i)
        if any(members.values()):
            groups[family] = {label: indices for label, indices in members.items() if indices}
    return groups


# --- scores -------------------------------------------------------------------------------------------------------


def _score_run(files: PredictionFiles, golds: list[dict], metric: str, threshold: float | None) -> dict:
    """Per-question texts and official exact/f1 (0 for a question without prediction, as the scorers count it)."""
    texts, info = _answers(files, metric, threshold, {gold["id"] for gold in golds})
    exact, f1, shown = [], [], []
    for gold in golds:
        text = texts.get(gold["id"])
        question_exact, question_f1 = (0, 0.0) if text is None else rules.score_question(gold, text, metric)
        exact.append(question_exact)
        f1.append(question_f1)
        shown.append(text)
    info["missing"] = sum(text is None for text in shown)
    return {"files": info, "texts": shown, "exact": exact, "f1": f1}


def _answers(files: PredictionFiles, metric: str, threshold: float | None,
             gold_ids: set[str]) -> tuple[dict[str, str], dict]:
    """The answers to the gold questions and what was used. SQuAD v2 with null odds: an answer whose null odds exceed
    the threshold becomes "" (the decoder's rule), otherwise it is the best span of the n-best list (if given), so a
    higher threshold than decoding used also restores answers that predictions.json withheld."""
    given = read_json_map(files.predictions, str, "predictions")
    keys = {qid: rules.prediction_key(qid, given, metric) for qid in gold_ids}  # CMRC's: also by the stripped id
    check_predictions_match(files.predictions, given, set(keys.values()), "the gold file")
    info = {"predictions": str(files.predictions), "nbest": _str(files.nbest), "null_odds": _str(files.null_odds),
            # ignored, as the scorers do; a stripped id is a submission's copy for CMRC 2018's script (reader)
            "unknown_ids": len(given.keys() - set(keys.values()) - {qid.strip() for qid in gold_ids})}
    predictions = {qid: given[key] for qid, key in keys.items() if key in given}
    if metric != "squad_v2" or files.null_odds is None:
        why = "no null odds" if files.null_odds is None else f"the {metric} metric has no unanswerable questions"
        return predictions, {**info, "threshold": None, "threshold_from": f"not applied: {why}"}
    odds = read_null_odds(files.null_odds, files.predictions, predictions)
    nbest = _read_nbest(files.nbest) if files.nbest else None
    threshold, source = _threshold(threshold, files.metrics)
    answers = {}
    for qid, text in predictions.items():
        if odds[qid] > threshold:
            answers[qid] = ""
        elif nbest is not None:
            if qid not in nbest:
                raise DataError(f"{files.nbest}: no n-best list for question {qid}, which {files.predictions} answers")
            answers[qid] = best_span_text(nbest[qid])
        else:
            answers[qid] = text
    info.update(threshold=threshold, threshold_from=source,
                answers_changed=sum(answers[qid] != text for qid, text in predictions.items()))
    if nbest is None:  # withheld at decoding, below the threshold now: the span is only in the n-best list
        info["withheld_without_nbest"] = sum(not text and odds[qid] <= threshold for qid, text in predictions.items())
    return answers, info


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _threshold(threshold: float | None, metrics: Path | None) -> tuple[float, str]:
    if threshold is not None:
        return float(threshold), "as given"
    if metrics is not None:
        try:
            stored = json.loads(metrics.read_text(encoding="utf-8")).get("best_f1_thresh")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
            raise DataError(f"{metrics}: not a readable metrics file ({err})") from None
        if stored is not None:
            return float(stored), f"best_f1_thresh of {metrics}"
    return 0.0, "the default: none given and no best_f1_thresh in a metrics.json beside the predictions"


def _read_nbest(path: Path) -> dict[str, list[dict]]:
    nbest = read_json_map(path, list, "n-best")
    for qid, candidates in nbest.items():
        if not all(isinstance(c, dict) and isinstance(c.get("text"), str) and isinstance(c.get("start"), int)
                   for c in candidates):
            raise DataError(f"{path}: question {qid}: an n-best list holds {{\"text\", \"start\", ...}} objects "
                            "(as `mrc eval` writes nbest.json)")
    return nbest


def _slice_row(label: str, members: Sequence[int], runs: list[dict], names: Sequence[str]) -> dict:
    """EM and F1 in percent over the members; the F1 difference B - A when there are two runs."""
    row = {"slice": label, "count": len(members)}
    for name, run in zip(names, runs):
        row[name] = {"exact": 100.0 * sum(run["exact"][i] for i in members) / len(members),
                     "f1": 100.0 * sum(run["f1"][i] for i in members) / len(members)}
    if len(runs) == 2:
        row["f1_diff"] = row["B"]["f1"] - row["A"]["f1"]
    return row


def _example(shown: dict, i: int, runs: dict[str, dict]) -> dict:
    """A question as a list shows it: id, question, gold answers, and each run's prediction (None: missing) and F1,
    suffixed with the run's name when there are two."""
    example = dict(shown)
    for name, run in runs.items():
        suffix = f"_{name}" if len(runs) > 1 else ""
        example.update({f"prediction{suffix}": run["texts"][i], f"f1{suffix}": 100.0 * run["f1"][i]})
    return example


def _worst(groups: dict, shown: list[dict], named_run: dict[str, dict], num: int) -> dict:
    """family -> label -> up to num questions the run answered wrong (not exact), lowest F1 first."""
    (run,) = named_run.values()
    return {
        family: {label: [_example(shown[i], i, named_run)
                         for i in sorted((i for i in members if not run["exact"][i]), key=lambda i: run["f1"][i])[:num]]
                 for label, members in slices.items()}
        for family, slices in groups.items()
    }


def _confusion(golds: list[dict], texts: list[str | None]) -> dict:
    """gold has answer / no answer -> predicted answered / no answer / missing (no prediction), counts."""
    table = {gold_side: {"answered": 0, NO_ANSWER: 0, "missing": 0} for gold_side in (HAS_ANSWER, NO_ANSWER)}
    for gold, text in zip(golds, texts):
        gold_side = HAS_ANSWER if rules.answerable(gold) else NO_ANSWER
        table[gold_side]["missing" if text is None else "answered" if text else NO_ANSWER] += 1
    return table


def _compare(shown: list[dict], runs: list[dict], num: int) -> dict:
    """Questions where A's F1 beats B's and the reverse; where one is exactly right and the other not."""
    a, b = runs
    n = range(len(shown))
    wins = Counter("A" if a["f1"][i] > b["f1"][i] else "B" if b["f1"][i] > a["f1"][i] else "tie" for i in n)
    comparison = {"f1_better": {key: wins[key] for key in ("A", "B", "tie")}}
    for name, right, wrong in (("A", a, b), ("B", b, a)):
        other = "B" if name == "A" else "A"
        members = sorted((i for i in n if right["exact"][i] and not wrong["exact"][i]), key=lambda i: wrong["f1"][i])
        comparison[f"{name}_right_{other}_wrong"] = {
            "count": len(members), "examples": [_example(shown[i], i, dict(zip(NAMES, runs))) for i in members[:num]],
        }
    return comparison
