"""Calibrated confidence (`mrc eval --calibrate`): a temperature for the answer probabilities and, for SQuAD v2
models, a bias on the null candidate, fitted on a dev file and kept with the model, so that `mrc predict`, the Reader
and `mrc serve` give probabilities that mean what they say.

What a probability means. `Prediction.probability`, the n-best probability of the answer given, is to be the chance
that this answer is right, right being the official exact match (after the official normalisation the answer equals
one of the gold answers; on an unanswerable SQuAD v2 question, the answer is ""); `no_answer_probability`, the
null candidate's, the chance that the question has no answer. The expected calibration error measures exactly these:
the questions binned by the probability of their answer, each bin's mean probability against the share of its answers
that are right, weighted by the bin's size (`no_answer_ece_*`: the null probability against the share of unanswerable
questions). Exact match, not F1: "right" is then a yes or no, what a reader of the probability acts on.

The fit minimises the log loss of those claims on the dev questions: -log p where the answer is right, -log(1 - p)
where it is wrong, plus, for SQuAD v2 data, the same for the null probability and unanswerability: each a proper
score of a number we show. Not the n-best cross-entropy with the right candidate as the target (the usual temperature
scaling), by reasoning: a question whose n-best list holds no right answer has no target there, and those are
questions whose answer is wrong at any temperature, so a fit without them is not told how sure to be of such answers.
bench/bench_calibration.py puts both fits side by side on held-out articles.

A temperature T and a null bias b change probabilities only: `decoding.nbest_probabilities` softmaxes score / T over
the spans and (null score + b) / T for the null candidate, after the answers and the null decision were taken from the
raw scores; the fit goes through that same function. Fitted on the questions it is then scored on, the ECE after is
optimistic: `by_article` fits on half the articles and reports on the other half.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrc_cli.decoding import Prediction, best_span_text, nbest_probabilities
from mrc_cli.errors import DataError
from mrc_cli.metrics import detect_metric, rules
from mrc_cli.plotting import cjk_text, save_figure

NUM_BINS = 10  # equal-width confidence bins of the ECE and the reliability diagram
_EPS = 1e-12  # probabilities are clipped to [eps, 1 - eps] in the log loss
_LOG_T_RANGE = (math.log(0.05), math.log(20.0))  # the grid's temperatures
_LOG_T_BOUNDS = (math.log(0.01), math.log(100.0))  # the search's: a model whose answers are all wrong would go on
_GRID = 25  # points per parameter of the starting grid


@dataclass
class Outcomes:
    """Decoded questions as calibration sees them: their n-best scores as flat arrays, the answer given, whether it
    is right."""

    ids: list[str]  # (E,)
    span_example: np.ndarray  # (S,) the question of each n-best span
    span_scores: np.ndarray  # (S,) start + end logits
    null_scores: np.ndarray  # (E,)
    best_scores: np.ndarray  # (E,) the best span score, -inf where there is no span
    given: np.ndarray  # (E,) the row in the spans of the answer given, -1 where it is the null answer or there is none
    correct: np.ndarray  # (E,) bool: the answer given is right (official exact match)
    unanswerable: np.ndarray  # (E,) bool
    allow_null: bool  # the null candidate is in the n-best lists

    def probabilities(self, temperature: float = 1.0, null_bias: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """(E,) the probability of each answer given and (E,) of the null candidate (0 without allow_null), as
        `Prediction.probability` / `no_answer_probability` would be at this temperature and null bias."""
        spans, null = nbest_probabilities(self.span_example, self.span_scores, self.null_scores, self.best_scores,
                                          self.allow_null, temperature, null_bias)
        answer = np.where(self.given >= 0, spans[np.maximum(self.given, 0)] if len(spans) else 0.0, null)  # (E,)
        return answer, null

    @property
    def scores_null(self) -> bool:
        """Whether no_answer_probability is calibrated too: the null rule is on and the data has unanswerable
        questions (on data without any, the fit would only learn to say "never")."""
        return self.allow_null and bool(self.unanswerable.any())

    def log_loss(self, temperature: float, null_bias: float) -> float:
        """Mean log loss of the answers' probabilities against being right, plus that of the null probabilities
        against unanswerability where `scores_null`."""
        answer, null = self.probabilities(temperature, null_bias)
        loss = _binary_log_loss(answer, self.correct)
        return loss + _binary_log_loss(null, self.unanswerable) if self.scores_null else loss

    def select(self, ids: set[str]) -> Outcomes:
        """The questions whose ids are in `ids`."""
        keep = np.array([qid in ids for qid in self.ids], dtype=bool)  # (E,)
        new_index = np.cumsum(keep) - 1  # (E,) old question index -> new
        rows = keep[self.span_example]  # (S,)
        row_map = np.cumsum(rows) - 1  # (S,) old span row -> new
        given = np.where(self.given >= 0, row_map[np.maximum(self.given, 0)] if len(rows) else -1, -1)
        return Outcomes([qid for qid, k in zip(self.ids, keep) if k], new_index[self.span_example[rows]],
                        self.span_scores[rows], self.null_scores[keep], self.best_scores[keep], given[keep],
                        self.correct[keep], self.unanswerable[keep], self.allow_null)


def collect_outcomes(predictions: Mapping[str, Prediction], golds: list[dict], allow_null: bool,
                     null_threshold: float, metric: str = "auto") -> Outcomes:
    """The questions of `golds` that have a prediction, with the answer the decoder gives at `null_threshold` (the
    rule of `decoding`: the null answer where allow_null and the null odds exceed it, or where there is no span;
    else the best span) and whether it is right by the exact match of the golds' metric."""
    metric = detect_metric(golds) if metric == "auto" else metric
    golds = [gold for gold in golds if gold["id"] in predictions]
    span_example, span_scores, given, correct = [], [], [], []
    for index, gold in enumerate(golds):
        p = predictions[gold["id"]]
        spans = [c for c in p.nbest if c["start"] >= 0]
        answered = bool(spans) and not (allow_null and p.null_odds > null_threshold)
        given.append(len(span_scores) if answered else -1)
        span_example += [index] * len(spans)
        span_scores += [c["score"] for c in spans]
        correct.append(rules.score_question(gold, best_span_text(spans) if answered else "", metric)[0] == 1)
    return Outcomes(
        ids=[gold["id"] for gold in golds],
        span_example=np.array(span_example, dtype=np.int64), span_scores=np.array(span_scores, dtype=np.float64),
        null_scores=np.array([predictions[g["id"]].null_score for g in golds], dtype=np.float64),
        best_scores=np.array([predictions[g["id"]].score for g in golds], dtype=np.float64),
        given=np.array(given, dtype=np.int64), correct=np.array(correct, dtype=bool),
        unanswerable=np.array([bool(g["is_impossible"]) for g in golds], dtype=bool), allow_null=allow_null)


def fit_calibration(outcomes: Outcomes, null_bias: float = 0.0) -> tuple[float, float]:
    """(temperature, null_bias) of the least log loss on `outcomes`; the bias only where they score the null
    probability (`scores_null`: with allow_null, on data with unanswerable questions), else it stays `null_bias`.
    Data without unanswerable questions says nothing about them: fitted there, the bias only learnt to move the null
    candidate's mass onto the answers (a v2 model calibrated on v1 data lost its no-answer calibration).

    The loss need not be convex in (log T, b), so the search starts from the best point of a grid (25 temperatures
    from 0.05 to 20, and with allow_null 25 biases over the null odds' range), then a pattern search halves its steps
    until they are below 1e-4, within T in [0.01, 100] and twice the grid's biases (a model whose answers are all
    wrong lowers its loss for ever as T grows): deterministic, and no optimiser library is needed."""
    if not len(outcomes.ids):
        return 1.0, null_bias
    log_ts = np.linspace(*_LOG_T_RANGE, _GRID)
    if outcomes.scores_null:
        odds = outcomes.null_scores - outcomes.best_scores
        reach = 10.0 + float(np.abs(odds[np.isfinite(odds)]).max(initial=0.0))  # score units; 10 where all are close
        biases = np.linspace(-reach, reach, _GRID)
        bias_bounds = (2 * biases[0], 2 * biases[-1])
    else:
        biases, bias_bounds = np.array([null_bias]), (null_bias, null_bias)

    bounds = (_LOG_T_BOUNDS, bias_bounds)

    def loss(point: tuple[float, float]) -> float:
        if not all(low <= x <= high for x, (low, high) in zip(point, bounds)):
            return math.inf
        return outcomes.log_loss(math.exp(point[0]), point[1])

    best = min(((u, b) for u in log_ts for b in biases), key=loss)
    steps = [log_ts[1] - log_ts[0], (biases[1] - biases[0]) if len(biases) > 1 else 0.0]
    best_loss = loss(best)
    while steps[0] > 1e-4:
        moved = False
        for axis in (0, 1):
            for sign in (1.0, -1.0):
                if steps[axis] == 0:
                    continue
                trial = list(best)
                trial[axis] += sign * steps[axis]
                trial_loss = loss(tuple(trial))
                if trial_loss < best_loss:
                    best, best_loss, moved = tuple(trial), trial_loss, True
        if not moved:
            steps = [step / 2 for step in steps]
    return math.exp(best[0]), float(best[1])


def expected_calibration_error(probabilities: np.ndarray, outcomes: np.ndarray, num_bins: int = NUM_BINS) -> float:
    """Sum over equal-width probability bins of (share of questions in the bin) x |mean probability - share of
    outcomes that happened|; 0 without questions."""
    rows = reliability_bins(probabilities, outcomes, num_bins)
    total = sum(row["count"] for row in rows)
    return sum(row["count"] * abs(row["confidence"] - row["accuracy"]) for row in rows) / total if total else 0.0


def reliability_bins(probabilities: np.ndarray, outcomes: np.ndarray, num_bins: int = NUM_BINS) -> list[dict]:
    """One row per non-empty bin: its range, count, mean probability ("confidence") and share of outcomes that
    happened ("accuracy"). A probability of exactly 1 falls in the last bin."""
    probabilities, outcomes = np.asarray(probabilities, dtype=np.float64), np.asarray(outcomes, dtype=np.float64)
    which = np.minimum((probabilities * num_bins).astype(np.int64), num_bins - 1)  # (E,)
    rows = []
    for k in range(num_bins):
        members = which == k
        if members.any():
            rows.append({"low": k / num_bins, "high": (k + 1) / num_bins, "count": int(members.sum()),
                         "confidence": float(probabilities[members].mean()), "accuracy": float(outcomes[members].mean())})
    return rows


def calibrate(outcomes: Outcomes, fit_ids: set[str] | None = None, report_ids: set[str] | None = None,
              current: tuple[float, float] = (1.0, 0.0)) -> dict:
    """Fit on the questions `fit_ids` (None: all), report on `report_ids` (None: the same ones): the fitted
    temperature and null_bias, question counts, ECE before (at `current`, the model's temperature and bias so far) and
    after, and the reliability bins of both, for the answers' probabilities and, with `scores_null`, the null ones."""
    fit = outcomes if fit_ids is None else outcomes.select(fit_ids)
    report = fit if report_ids is None else outcomes.select(report_ids)
    temperature, null_bias = fit_calibration(fit, current[1])
    result = {"temperature": temperature, "null_bias": null_bias, "temperature_before": current[0],
              "null_bias_before": current[1], "fit_questions": len(fit.ids),
              "report_questions": len(report.ids), "held_out": report_ids is not None}
    before, after = report.probabilities(*current), report.probabilities(temperature, null_bias)
    claims = [("", report.correct, 0)] + ([("no_answer_", report.unanswerable, 1)] if report.scores_null else [])
    for prefix, happened, which in claims:
        result[f"{prefix}ece_before"] = expected_calibration_error(before[which], happened)
        result[f"{prefix}ece_after"] = expected_calibration_error(after[which], happened)
        result[f"{prefix}reliability"] = {"before": reliability_bins(before[which], happened),
                                         "after": reliability_bins(after[which], happened)}
    result["log_loss_before"], result["log_loss_after"] = report.log_loss(*current), report.log_loss(temperature, null_bias)
    result["accuracy"] = float(report.correct.mean()) if len(report.ids) else 0.0
    if not _LOG_T_BOUNDS[0] + 1e-3 < math.log(temperature) < _LOG_T_BOUNDS[1] - 1e-3:
        right = float(fit.correct.mean()) if len(fit.ids) else 0.0
        result["calibration_warning"] = (
            f"the temperature stopped at its search bound ({temperature:.3g}) with {right:.0%} of the {len(fit.ids)} "
            "fitted answers right: its probabilities mean little; calibrate a model that answers better, or on more "
            "questions")
    return result


def _binary_log_loss(probabilities: np.ndarray, happened: np.ndarray) -> float:
    """Mean of -log p where the outcome happened and -log(1 - p) where it did not (0 without questions)."""
    if not len(probabilities):
        return 0.0
    p = np.clip(probabilities, _EPS, 1 - _EPS)
    return float(-np.mean(np.where(happened, np.log(p), np.log1p(-p))))


def halves_by_article(examples, source: str = "the eval data") -> tuple[set[str], set[str]]:
    """The question ids of two halves of an examples Dataset, split by article (questions of one article or one
    context stay together: fitting on a paragraph's questions and reporting on its others would flatter the fit), of
    as near equal size as whole articles allow (`kfold.fold_rows`, seed 0)."""
    from mrc_cli.features import column
    from mrc_cli.kfold import article_groups, fold_rows

    if len(article_groups(column(examples, "title"), column(examples, "context"))) < 2:
        raise DataError(f"{source}: one article (and context) only; --calibrate-split fits on some articles and reports "
                        "on others: give a file with more, or calibrate without it")
    ids = column(examples, "id")
    first, second = fold_rows(examples, 2, seed=0, source=source)
    return {ids[row] for row in first}, {ids[row] for row in second}


@cjk_text()  # the title is the eval file's name, which may be Chinese
def plot_reliability(result: dict, out: str | Path, title: str = "") -> Path:
    """The reliability diagram of a `calibrate` result: per probability bin, the share of right answers (and, for
    SQuAD v2, of unanswerable questions) before and after calibration, against the diagonal of perfect calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    claims = [("", "answer probability", "share right")]
    if "no_answer_reliability" in result:
        claims.append(("no_answer_", "no-answer probability", "share unanswerable"))
    fig, axes = plt.subplots(len(claims), 2, figsize=(10, 4.6 * len(claims)), squeeze=False)
    for row, (prefix, what, outcome) in zip(axes, claims):
        for ax, when in zip(row, ("before", "after")):
            bins = result[f"{prefix}reliability"][when]
            centers = [(b["low"] + b["high"]) / 2 for b in bins]
            bars = ax.bar(centers, [b["accuracy"] for b in bins], width=0.09, color="tab:blue", alpha=0.7,
                          label=outcome)
            ax.bar_label(bars, labels=[f"n={b['count']}" for b in bins], fontsize=7, padding=2)
            ax.plot(centers, [b["confidence"] for b in bins], "_", markersize=26, markeredgewidth=2.5,
                    color="tab:red", label="mean probability in the bin")  # the gap to the bar's top is the error
            ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
            suffix = "_before" if when == "before" else ""
            settings = f"T={result['temperature' + suffix]:.3g}, b={result['null_bias' + suffix]:.3g}"
            ax.set(xlim=(0, 1), ylim=(0, 1.08), xlabel=what, ylabel=outcome,
                   title=f"{when} ({settings}): ECE {result[f'{prefix}ece_{when}']:.3f}")
            ax.grid(alpha=0.3)
        row[0].legend(loc="upper left", fontsize=8)
    split = "questions it was not fitted on" if result["held_out"] else "the questions it was fitted on"
    heading = f"{result['report_questions']} questions, scored on {split}"
    fig.suptitle(f"{title}\n{heading}" if title else heading)
    fig.tight_layout(rect=(0, 0, 1, 0.94 if title else 0.96))
    return save_figure(fig, out)
