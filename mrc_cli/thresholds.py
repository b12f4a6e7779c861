"""The SQuAD v2 null threshold: the official sweep for the best one, answers at a given one, a report of a threshold
chosen elsewhere (out of fold, `mrc kfold`) against 0 and the one best on the scored data, and keeping a threshold
with a trained model so that `mrc predict` applies it.

A threshold tuned on the data it is scored on is optimistic: the report puts it beside one chosen out of fold, which
is what the same model can expect on new questions. Answers at a threshold t follow the decoder's rule: "" where the
question's null odds exceed t, else the best span of its n-best list.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from mrc_cli.config import RunConfig, load_config, save_config
from mrc_cli.decoding import best_span_text
from mrc_cli.metrics import score


def null_threshold_sweep(golds: list[dict], nbest: Mapping[str, Sequence[Mapping]],
                         null_odds: Mapping[str, float]) -> dict:
    """best_exact, best_exact_thresh, best_f1, best_f1_thresh: the official find_best_thresh over each question's best
    span and its null odds, so the sweep can move answers both ways (the answers decoded at one threshold could only
    be turned into nulls), each threshold moved to where it gives its score robustly (`_robust_threshold`)."""
    best_spans = {qid: best_span_text(candidates) for qid, candidates in nbest.items()}
    best = {key: value for key, value in score(golds, best_spans, "squad_v2", null_odds=dict(null_odds)).items()
            if key.startswith("best_")}
    if null_odds:
        all_null = score(golds, dict.fromkeys(nbest, ""), "squad_v2")
        for metric in ("exact", "f1"):
            best[f"best_{metric}_thresh"] = _robust_threshold(golds, nbest, null_odds, metric, best[f"best_{metric}"],
                                                              best[f"best_{metric}_thresh"], all_null[metric])
    return best


def _robust_threshold(golds: list[dict], nbest: Mapping[str, Sequence[Mapping]], null_odds: Mapping[str, float],
                      metric: str, best: float, edge: float, all_null: float) -> float:
    """A threshold at which the answers score `best`, away from every question's null odds.

    The official threshold is a question's null odds, the edge of the range of thresholds that give the best score:
    there logits moved by 1e-6 (an ONNX graph, another batch) flip that question. Where answering every question
    null scores best, the official one is 0.0, at which answers whose null odds are below 0 are not null: then one
    below every null odds. Else the middle of the range, halfway to the next null odds above (1 above the highest;
    infinite odds, of questions without a span, left out). Kept at the edge where null odds tie and the middle does
    not give the score."""
    finite = sorted(odds for odds in null_odds.values() if math.isfinite(odds))
    if not finite:
        return edge
    if math.isclose(best, all_null, abs_tol=1e-9):
        return min(0.0, finite[0] - 1.0)
    above = [odds for odds in finite if odds > edge]
    middle = (edge + above[0]) / 2 if above else edge + 1.0
    if math.isfinite(middle) and math.isclose(
            score(golds, answers_at_threshold(nbest, null_odds, middle), "squad_v2")[metric], best, abs_tol=1e-9):
        return middle
    return edge


def answers_at_threshold(nbest: Mapping[str, Sequence[Mapping]], null_odds: Mapping[str, float],
                         threshold: float) -> dict[str, str]:
    """{id: answer} as the decoder gives them at `threshold`."""
    return {qid: "" if null_odds[qid] > threshold else best_span_text(candidates) for qid, candidates in nbest.items()}


def threshold_report(golds: list[dict], nbest: Mapping[str, Sequence[Mapping]], null_odds: Mapping[str, float],
                     oof_threshold: float, oof_null_share: float | None = None) -> dict:
    """Official EM/F1 (SQuAD v2 rules) of the same n-best lists at threshold 0, at `oof_threshold` (chosen out of
    fold, on questions `oof_null_share` unanswerable) and at the threshold best for F1 on these golds; `optimism_f1`
    is how much the last flatters the model over the out-of-fold one."""
    best = null_threshold_sweep(golds, nbest, null_odds)["best_f1_thresh"]
    report = {}
    for name, threshold in (("zero", 0.0), ("oof", float(oof_threshold)), ("best", best)):
        scores = score(golds, answers_at_threshold(nbest, null_odds, threshold), "squad_v2")
        report[name] = {"threshold": threshold, "exact": scores["exact"], "f1": scores["f1"]}
    report["optimism_f1"] = report["best"]["f1"] - report["oof"]["f1"]
    report["null_share"], report["oof_null_share"] = null_share(golds), oof_null_share
    return report


def null_share(golds: list[dict]) -> float:
    """The share of unanswerable questions."""
    return sum(bool(gold["is_impossible"]) for gold in golds) / len(golds)


def null_share_warning(report: dict) -> str | None:
    """A warning where the OOF threshold was chosen on questions unanswerable far more or less often than the scored
    ones: measured, a threshold chosen at 7 % lost 26 F1 on questions 51 % unanswerable."""
    chosen, here = report.get("oof_null_share"), report["null_share"]
    if chosen is None or abs(chosen - here) < 0.1:
        return None
    return (f"warning: the out-of-fold threshold was chosen on questions {chosen:.0%} unanswerable, these are "
            f"{here:.0%}: a threshold carries the null rate of its data, so expect it to miss here; choose it on data like these")


def format_threshold_report(report: dict) -> str:
    """The report as a few aligned lines for the terminal."""
    labels = {"zero": "zero", "oof": "out of fold", "best": "best on this data"}
    lines = [f"{'null threshold':<28} {'EM':>6} {'F1':>6}"]
    for name, label in labels.items():
        row = report[name]
        lines.append(f"{row['threshold']:>7.3f}  {label:<19} {row['exact']:6.2f} {row['f1']:6.2f}")
    lines.append(f"the best on this data is {report['optimism_f1']:+.2f} F1 over the out-of-fold one: tuned on the "
                 "questions it scores, it flatters the model")
    return "\n".join(lines + [warning for warning in [null_share_warning(report)] if warning])


def store_threshold(folder: Path, cfg: RunConfig, threshold: float, source: str, share: float | None = None) -> None:
    """Keep a null threshold in the run config of a checkpoint or export `folder` (`cfg`: that config), so `mrc predict`
    applies it (the Hugging Face scripts pass a fixed 0.0); `source` says where it came from (dev, oof), `share` the
    share of unanswerable questions it was chosen on (oof)."""
    set_threshold(cfg.decode, threshold, source, share)
    save_decode_settings(folder, cfg)


def set_threshold(decode, threshold: float, source: str, share: float | None = None) -> None:
    """Decoding settings (a DecodeConfig) that apply a null threshold chosen on `source`; the share of unanswerable
    questions it was chosen on replaces any earlier one (None where not known)."""
    decode.null_score_diff_threshold, decode.null_threshold_from, decode.null_share = float(threshold), source, share
    decode.allow_null = True


def save_decode_settings(folder: Path, cfg: RunConfig) -> None:
    """Write the decoding settings of `cfg` into the run config of a checkpoint or export `folder`: what `mrc predict`
    and the Reader read (a stored null threshold, a calibration's temperature and null bias)."""
    from mrc_cli.loading import EXPORT_SETTINGS  # here: scoring with this module needs no torch

    settings = folder / ("config.yaml" if (folder / "config.yaml").is_file() else EXPORT_SETTINGS)
    # only the decode section: the caller's train settings may be how it ran (an ONNX graph on the CPU in fp32,
    # mrc_cli.loading.read_onnx_export), not how the checkpoint trains and answers with PyTorch
    kept = load_config(settings) if settings.is_file() else cfg
    kept.decode = cfg.decode
    save_config(kept, settings)  # atomic: a training checkpoint's config.yaml is what resume reads
