"""Score a predictions file against a gold data file with the official rules (`mrc score`)."""

from __future__ import annotations

import json
from pathlib import Path

from mrc_cli.errors import DataError
from mrc_cli.metrics import score
from mrc_cli.validate import load_examples


def read_json_map(path: str | Path, value_type: type, what: str) -> dict:
    """A JSON object {question id: value}, e.g. a predictions or null-odds file."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such {what} file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable JSON {what} file ({err})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: a {what} file is one JSON object {{question id: value}}, found a {type(obj).__name__}")
    for qid, value in obj.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) if value_type is float else isinstance(value, value_type)
        if not ok:
            raise DataError(f"{path}: question {qid}: expected a {value_type.__name__}, found {value!r}")
    return obj


def score_files(gold: str, predictions: str, metric: str = "auto", null_odds: str | None = None,
                fmt: str = "auto") -> tuple[dict, list[str]]:
    """(the official scores, warnings about the gold file such as duplicate question ids)."""
    _, report, golds = load_examples(gold, "score", fmt)
    preds = read_json_map(predictions, str, "predictions")
    odds = read_json_map(null_odds, float, "null odds") if null_odds else None
    return score(golds, preds, metric=metric, null_odds=odds), report.warnings
