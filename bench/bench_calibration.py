"""Calibrated confidence measured on questions the fit never saw (issue 23, part 3): the expected calibration error of
the answers' probabilities (and of the no-answer probability) before and after `mrc eval --calibrate`'s fit, on the
SQuAD v2 dev head split in two by article: fitted on one half, scored on the other, and the other way round.

    .venv/bin/python bench/bench_calibration.py                        # MiniLM, 1 epoch on the SQuAD v1.1 train head
    .venv/bin/python bench/bench_calibration.py --checkpoint RUN_DIR   # a trained model (checkpoint, run dir, export)
    .venv/bin/python bench/bench_calibration.py --smoke                # 20 steps: the pieces run; the figures mean little
    .venv/bin/python bench/bench_calibration.py --v2-articles 2        # trained on unanswerable questions too

The model: the offline MiniLM trained by `mrc train` (384/128 windows, batch 16, 1 epoch, bench_train_quality's
setting) on the SQuAD v1.1 train head, with the null rule on (decode.allow_null, as a SQuAD v2 model has): that head
has no unanswerable questions, so its null scores were never trained and the null bias has real work to do; a SQuAD v2
model of yours is the more usual case (--checkpoint). With --v2-articles K, MiniLM trains on the v1.1 train head plus
the first K articles of the v2 dev head, unanswerable questions included (the usual SQuAD v2 model; no v2 training
file is offline), and is measured on the dev head's other articles. Its answers on the v2 dev head (1,407 questions, 702
unanswerable, 5 articles) come from the one inference path (`reader.answer_file`) at its stored null threshold.

Rows, each fitted on one half (`calibration.halves_by_article`) and scored on the other:
  none           T = 1, b = 0: the n-best softmax as decoded
  answer loss    `calibration.fit_calibration`, what `mrc eval --calibrate` stores: the log loss of "the answer given is
                 right" and of "the question has no answer"
  n-best CE      the usual temperature scaling: the cross-entropy of the n-best softmax with the right candidate as the
                 target (the best-scored exactly matching span; the null candidate for an unanswerable question);
                 questions whose n-best list holds no right answer are left out of the fit (counted), as they must be
and, for scale, "answer loss" scored on the half it was fitted on (optimistic). Columns: T, b, ECE of the answers'
probabilities, ECE of the no-answer probability, log loss, EM of the answers, questions. Writes
outputs/bench/calibration.json (calibration_smoke.json with --smoke), a table in calibration.md and the held-out
reliability diagram of the first direction in calibration_reliability.png.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

if __name__ == "__main__":  # run as a script: the repository root, for `bench.*` and this checkout's mrc_cli
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_train_quality import minilm_config  # noqa: E402
from bench.common import (  # noqa: E402
    OUT,
    SQUAD_TRAIN_HEAD,
    SQUAD_V2_DEV_HEAD,
    command_line,
    describe_machine,
    git_revision,
    machine,
    require_shared,
    run_script,
)
from mrc_cli import calibration  # noqa: E402
from mrc_cli.decoding import nbest_probabilities  # noqa: E402
from mrc_cli.metrics.rules import score_question  # noqa: E402

SMOKE_STEPS = 20


class NbestTarget(calibration.Outcomes):
    """Outcomes whose loss is the n-best cross-entropy with the right candidate as the target; `fit_calibration`
    minimises whatever `log_loss` says."""

    target: np.ndarray  # (E,) the span row of the right candidate; -1: the null candidate; -2: none (left out)

    def log_loss(self, temperature: float, null_bias: float) -> float:
        spans, null = nbest_probabilities(self.span_example, self.span_scores, self.null_scores, self.best_scores,
                                          self.allow_null, temperature, null_bias)
        p = np.where(self.target >= 0, spans[np.maximum(self.target, 0)], null)[self.target > -2]
        return float(-np.mean(np.log(np.maximum(p, 1e-300)))) if len(p) else 0.0


def nbest_targets(outcomes: calibration.Outcomes, predictions: dict, golds: dict) -> NbestTarget:
    """`outcomes` with each question's target: the null candidate for an unanswerable question (with allow_null),
    else the best-scored span that is an exact match; none where the n-best list holds no right answer."""
    targets, first_row = [], 0
    for qid in outcomes.ids:
        spans = [c for c in predictions[qid].nbest if c["start"] >= 0]
        gold = golds[qid]
        if gold["is_impossible"]:
            targets.append(-1 if outcomes.allow_null else -2)
        else:
            right = next((i for i, c in enumerate(spans) if score_question(gold, c["text"], "squad_v2")[0]), None)
            targets.append(-2 if right is None else first_row + right)
        first_row += len(spans)
    nbest = NbestTarget(**vars(outcomes))
    nbest.target = np.array(targets, dtype=np.int64)
    return nbest


def split_v2_dev(articles: int, folder: Path) -> tuple[Path, Path]:
    """(training file, dev file): the v1.1 train head with the first `articles` articles of the v2 dev head (their
    unanswerable questions included), and the dev head's other articles."""
    dev = json.loads(SQUAD_V2_DEV_HEAD.read_text(encoding="utf-8"))
    if not 0 < articles < len(dev["data"]) - 1:
        raise SystemExit(f"--v2-articles {articles}: between 1 and {len(dev['data']) - 2} (the rest are split in two)")
    train = json.loads(SQUAD_TRAIN_HEAD.read_text(encoding="utf-8"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "train_with_v2_articles.json", folder / "dev_other_articles.json"
    for path, data in zip(paths, (train["data"] + dev["data"][:articles], dev["data"][articles:])):
        path.write_text(json.dumps({"version": "v2.0", "data": data}, ensure_ascii=False), encoding="utf-8")
    return paths


def train_minilm(out: Path, smoke: bool, seed: int, train_file: Path = SQUAD_TRAIN_HEAD) -> Path:
    """A MiniLM trained on `train_file` with the null rule on; no dev evaluation (the bench makes its own)."""
    from mrc_cli.training import train

    cfg = minilm_config(train_file, SQUAD_V2_DEV_HEAD, out, seed, SMOKE_STEPS if smoke else 0)
    cfg.data.dev_file, cfg.decode.allow_null = None, True
    return train(cfg).run_dir


def row(name: str, report: calibration.Outcomes, temperature: float, null_bias: float, **extra) -> dict:
    answer, null = report.probabilities(temperature, null_bias)
    return {"row": name, "temperature": temperature, "null_bias": null_bias,
            "ece": calibration.expected_calibration_error(answer, report.correct),
            "no_answer_ece": calibration.expected_calibration_error(null, report.unanswerable) if report.scores_null else None,
            "log_loss": report.log_loss(temperature, null_bias), "exact": 100 * float(report.correct.mean()),
            "questions": len(report.ids), **extra}


def direction(outcomes, predictions, golds, fit_ids: set[str], report_ids: set[str]) -> list[dict]:
    fit, report = outcomes.select(fit_ids), outcomes.select(report_ids)
    temperature, bias = calibration.fit_calibration(fit)
    nbest = nbest_targets(fit, predictions, golds)
    ce_temperature, ce_bias = calibration.fit_calibration(nbest)
    left_out = int((nbest.target == -2).sum())
    return [row("none", report, 1.0, 0.0),
            row("answer loss", report, temperature, bias),
            row("n-best CE", report, ce_temperature, ce_bias, fit_questions_left_out=left_out),
            row("answer loss, on its fit half", fit, temperature, bias)]


def markdown(rows: list[dict]) -> str:
    lines = ["| fit on | row | T | b | ECE | no-answer ECE | log loss | EM | questions |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        no_answer = "-" if r["no_answer_ece"] is None else f"{r['no_answer_ece']:.3f}"
        lines.append(f"| {r['fit_on']} | {r['row']} | {r['temperature']:.3f} | {r['null_bias']:.2f} | {r['ece']:.3f} | "
                     f"{no_answer} | {r['log_loss']:.3f} | {r['exact']:.1f} | {r['questions']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a trained model instead of training MiniLM")
    parser.add_argument("--smoke", action="store_true", help=f"MiniLM trained {SMOKE_STEPS} steps: checks the pieces")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="default outputs/bench/calibration[_smoke|_v2].json")
    parser.add_argument("--v2-articles", type=int, default=0,
                        help="train MiniLM also on the first K articles of the v2 dev head; measure on the others")
    args = parser.parse_args()
    if args.v2_articles and args.checkpoint:
        parser.error("--v2-articles trains MiniLM: give it or --checkpoint")
    require_shared("bench_calibration", SQUAD_V2_DEV_HEAD, *([] if args.checkpoint else [SQUAD_TRAIN_HEAD]))
    default = "calibration_smoke.json" if args.smoke else "calibration_v2.json" if args.v2_articles else "calibration.json"
    out = args.out or OUT / default
    out.parent.mkdir(parents=True, exist_ok=True)

    from mrc_cli.reader import answer_file, load_model

    run = out.parent / f"{out.stem}_run_{int(time.time())}"
    train_file, dev_file = split_v2_dev(args.v2_articles, run) if args.v2_articles else (SQUAD_TRAIN_HEAD, SQUAD_V2_DEV_HEAD)
    started = time.perf_counter()
    model = args.checkpoint or str(train_minilm(run, args.smoke, args.seed, train_file))
    trained_s = time.perf_counter() - started
    name = Path(model).name if args.checkpoint else f"MiniLM, {f'{SMOKE_STEPS} steps' if args.smoke else '1 epoch'}"
    if args.v2_articles:
        name += f", trained with {args.v2_articles} v2 dev-head articles"
    loaded = load_model(model)
    _, predictions, split = answer_file(loaded, str(dev_file), "eval")
    decode = loaded.cfg.decode
    outcomes = calibration.collect_outcomes(predictions, split.golds, decode.allow_null, decode.null_score_diff_threshold)
    golds = {gold["id"]: gold for gold in split.golds}
    halves = calibration.halves_by_article(split.examples)
    rows = []
    for k, (fit_ids, report_ids) in enumerate((halves, halves[::-1])):
        for r in direction(outcomes, predictions, golds, fit_ids, report_ids):
            rows.append({"fit_on": f"half {k + 1} ({len(fit_ids)} q)", **r})
    first = calibration.calibrate(outcomes, halves[0], halves[1])
    png = out.with_name(f"{out.stem}_reliability.png")
    calibration.plot_reliability(first, png, f"{name} on {Path(dev_file).name}, fitted on half 1 of its articles")
    table = markdown(rows)
    record = {"command": command_line(), "date": time.strftime("%Y-%m-%d"), "machine": machine(), **git_revision(),
              "model": model, "model_name": name, "smoke": args.smoke, "train_file": str(train_file),
              "dev_file": str(dev_file), "train_s": trained_s if not args.checkpoint else None,
              "null_threshold": decode.null_score_diff_threshold, "questions": len(outcomes.ids),
              "unanswerable": int(outcomes.unanswerable.sum()), "rows": rows, "reliability_png": str(png),
              "table": table}
    out.write_text(json.dumps(record, indent=2, default=float) + "\n")
    out.with_suffix(".md").write_text(f"{name} ({model}); {describe_machine(record['machine'])}\n\n{table}\n")
    print(describe_machine(record["machine"]))
    print(table)
    print(f"wrote {out}, {out.with_suffix('.md')}, {png}")
    if any(not math.isfinite(r["ece"]) for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    run_script(main)
