"""Score a predictions file against a gold data file with the official rules (`mrc score`)."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from mrc_cli.errors import DataError
from mrc_cli.files import from_json
from mrc_cli.metrics import detect_metric, score
from mrc_cli.validate import load_examples


@dataclass
class PredictionFiles:
    """A predictions file and what may accompany it: n-best lists, null odds, the metrics of `mrc eval`."""

    predictions: Path
    nbest: Path | None = None
    null_odds: Path | None = None
    metrics: Path | None = None


def find_prediction_files(pred: str | Path, nbest: str | Path | None = None,
                          null_odds: str | Path | None = None) -> PredictionFiles:
    """A predictions file as given, or the folder `mrc eval --out` wrote with nbest.json, null_odds.json and
    metrics.json beside predictions.json; nbest and null_odds given here replace the folder's."""
    path = Path(pred)
    explicit = PredictionFiles(path, Path(nbest) if nbest else None, Path(null_odds) if null_odds else None)
    if not path.is_dir():
        if not path.is_file():
            raise DataError(f"{path}: no such predictions file or folder")
        return explicit
    if not (path / "predictions.json").is_file():
        raise DataError(f"{path}: no predictions.json in this folder; give a predictions file {{question id: answer}} "
                        "or the folder `mrc eval --out` wrote")
    beside = {name: path / f"{name}.json" for name in ("nbest", "null_odds", "metrics")}
    beside = {name: file if file.is_file() else None for name, file in beside.items()}
    return PredictionFiles(path / "predictions.json", explicit.nbest or beside["nbest"],
                           explicit.null_odds or beside["null_odds"], beside["metrics"])


def read_json_map(path: str | Path, value_type: type, what: str) -> dict:
    """A JSON object {question id: value}, e.g. a predictions or null-odds file."""
    path = Path(path)
    repeated = Counter()  # json.loads keeps the last of a key given twice, silently

    def pairs(items: list) -> dict:
        repeated.update(key for key, n in Counter(key for key, _ in items).items() if n > 1)
        return dict(items)

    try:
        obj = from_json(path.read_text(encoding="utf-8-sig"), object_pairs_hook=pairs)
    except FileNotFoundError:
        raise DataError(f"{path}: no such {what} file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: a folder, not a {what} file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable JSON {what} file ({err})") from None
    except RecursionError:
        raise DataError(f"{path}: not a readable JSON {what} file (nested too deeply)") from None
    if repeated:
        qid = next(iter(repeated))
        more = f" (and {len(repeated) - 1} other ids)" if len(repeated) > 1 else ""
        raise DataError(f"{path}: question {qid} is given more than once{more}; which {what} is meant? Keep one of "
                        "each")
    if not isinstance(obj, dict):
        raise DataError(f"{path}: a {what} file is one JSON object {{question id: value}}, found a {type(obj).__name__}")
    for qid, value in obj.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) if value_type is float else isinstance(value, value_type)
        if isinstance(value, float) and value_type is float and math.isnan(value):  # never above a threshold, nor comparable in a sweep
            raise DataError(f"{path}: question {qid}: the {what} are NaN, not a number")
        if not ok:
            nbest = isinstance(value, list) and value and isinstance(value[0], dict) and "text" in value[0]
            hint = ("; this is an n-best file: give predictions.json, or the folder `mrc eval --out` wrote"
                    if nbest else "")
            raise DataError(f"{path}: question {qid}: expected a {value_type.__name__}, found "
                            f"{_short(repr(value))}{hint}")
    return obj


def check_predictions_match(path: str | Path, predictions: dict, gold_ids: set[str], gold: str) -> None:
    """A predictions file that answers none of the gold questions is another file's, or an empty one, not a score of
    0."""
    if not predictions and gold_ids:
        raise DataError(f"{path}: no predictions (an empty JSON object), so each of the {len(gold_ids)} questions of "
                        f"{gold} would score 0; was it written by a run that failed?")
    if predictions and gold_ids and gold_ids.isdisjoint(predictions):
        raise DataError(f"{path}: none of its {len(predictions)} predictions is for a question of {gold} (its ids "
                        f"begin {', '.join(list(predictions)[:3])}); are these the predictions of another file?")


def read_null_odds(path: str | Path, predictions_path: str | Path, answered: Iterable[str]) -> dict[str, float]:
    """A null odds file that has a value for each of the `answered` questions (those the predictions file answers)."""
    odds = read_json_map(path, float, "null odds")
    lacking = [qid for qid in answered if qid not in odds]
    if lacking:
        raise DataError(f"{path}: no null odds for question {lacking[0]}, which {predictions_path} answers "
                        f"({len(lacking)} answered questions lack one); give null odds for every answered question, "
                        "or none")
    return odds


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def score_files(gold: str, predictions: str, metric: str = "auto", null_odds: str | None = None,
                fmt: str = "auto") -> tuple[dict, list[str]]:
    """(the official scores, warnings about the gold file such as duplicate question ids). `predictions`: a file, or
    the folder `mrc eval --out` wrote (with its null_odds.json for SQuAD v2 rules)."""
    _, report, golds = load_examples(gold, "score", fmt)
    files = find_prediction_files(predictions, null_odds=null_odds)
    preds = read_json_map(files.predictions, str, "predictions")
    # a CMRC gold id with spaces around it is also found by the stripped id (metrics.rules.prediction_key)
    check_predictions_match(files.predictions, preds, {i for g in golds for i in (g["id"], g["id"].strip())}, gold)
    answered = [g["id"] for g in golds if g["id"] in preds]
    if null_odds is not None:  # given: the official script's use, answers above its 1.0 count as null
        return score(golds, preds, metric, read_null_odds(null_odds, files.predictions, answered)), report.warnings
    # an `mrc eval` folder's: its answers were decided at the model's threshold, the odds only sweep for best_*
    # (SQuAD v2 rules; v1.1 and CMRC scores take none)
    with_odds = files.null_odds and (metric if metric != "auto" else detect_metric(golds)) == "squad_v2"
    odds = read_null_odds(files.null_odds, files.predictions, answered) if with_odds else None
    return score(golds, preds, metric, odds, null_threshold=math.inf), report.warnings
