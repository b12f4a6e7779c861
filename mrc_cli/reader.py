"""Trained models at work: `mrc eval`, `mrc predict` and the Python `Reader`, all through one inference path.

Transformers 5 removed the question-answering pipeline, so extractive QA has no inference API there any more:
`Reader.load(path)` takes an `mrc export` folder, a checkpoint or a run directory and answers questions with the same
features and decoder as `mrc predict`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from accelerate import PartialState

from mrc_cli import thresholds
from mrc_cli.data import to_dataset
from mrc_cli.features import build_features
from mrc_cli.inference import evaluate_split, write_prediction_files
from mrc_cli.loading import Loaded, load_trained
from mrc_cli.precision import resolve_precision
from mrc_cli.splits import Split, featurize_file


def run_inference(loaded: Loaded, split: Split, batch_size: int | None = None):
    """(metrics, predictions) of a loaded model on a featurized split; metrics only where the split has answers."""
    cfg = loaded.cfg
    if batch_size:
        cfg.train.eval_batch_size = batch_size
    # a PartialState only places the model: an Accelerator would inherit this process's mixed-precision state (a
    # notebook after training) and bake its autocast into the model; precision comes from the checkpoint's config
    state = PartialState(cpu=cfg.train.cpu or not torch.cuda.is_available())
    model = loaded.model.to(state.device)
    return evaluate_split(model, split, cfg, state, resolve_precision(cfg.train.precision, state.device))


def evaluate_file(checkpoint: str, data: str, out: str | None = None, store_threshold: bool = False) -> dict:
    """`mrc eval`: official scores (and the best SQuAD v2 null threshold) of a checkpoint on a data file, with the
    data's validation summary under "data" (repairs, questions left out). A checkpoint whose null threshold was
    chosen out of fold (`mrc kfold`) adds `threshold_report`: the scores at 0, at it and at the best one here."""
    loaded = load_trained(checkpoint)
    split = featurize_file(data, loaded.tokenizer, loaded.cfg.data, "eval")
    if any(g["is_impossible"] for g in split.golds):
        loaded.cfg.decode.allow_null = True
    metrics, predictions = run_inference(loaded, split)
    decode = loaded.cfg.decode
    if "best_f1_thresh" in metrics and decode.null_threshold_from == "oof":
        metrics["threshold_report"] = thresholds.threshold_report(
            split.golds, {qid: p.nbest for qid, p in predictions.items()},
            {qid: p.null_odds for qid, p in predictions.items()}, decode.null_score_diff_threshold)
    out_dir = Path(out) if out else Path(checkpoint) / "eval"
    if PartialState().is_main_process:  # under accelerate launch every process has all predictions
        write_prediction_files(out_dir, predictions, metrics)
        if store_threshold and "best_f1_thresh" in metrics:
            thresholds.store_threshold(loaded.path, loaded.cfg, metrics["best_f1_thresh"], "dev")
    return {**metrics, "out": str(out_dir), "data": split.report.summary()}


def predict_file(checkpoint: str, data: str, out: str) -> dict:
    """`mrc predict`: the submission file {id: answer} for a data file, with or without answers."""
    loaded = load_trained(checkpoint)
    split = featurize_file(data, loaded.tokenizer, loaded.cfg.data, "predict")
    _, predictions = run_inference(loaded, split)
    out_path = Path(out)
    answers = {pid: p.text for pid, p in predictions.items()}
    if PartialState().is_main_process:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(answers, ensure_ascii=False, indent=1), encoding="utf-8")
    return {"questions": len(answers), "answered": sum(bool(a) for a in answers.values()), "out": str(out_path),
            "data": split.report.summary()}


class Reader:
    """Answers questions about contexts: `Reader.load(path)(question=..., context=...)`, or lists of both."""

    def __init__(self, loaded: Loaded, batch_size: int = 64):
        self.loaded = loaded
        self.batch_size = batch_size

    @classmethod
    def load(cls, path: str | Path, batch_size: int = 64) -> Reader:
        return cls(load_trained(path), batch_size)

    def __call__(self, question: str | list[str], context: str | list[str]) -> dict | list[dict]:
        single = isinstance(question, str)
        questions = [question] if single else list(question)
        contexts = [context] * len(questions) if isinstance(context, str) else list(context)
        if len(questions) != len(contexts):
            raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts")
        records = [{"id": str(i), "title": "", "context": c, "question": q, "answers": {"text": [], "answer_start": []},
                    "is_impossible": False} for i, (q, c) in enumerate(zip(questions, contexts))]
        examples = to_dataset(records)
        features, summary = build_features(examples, self.loaded.tokenizer, self.loaded.cfg.data, labels=False, cache=False)
        split = Split(examples, None, [], features, summary)
        _, predictions = run_inference(self.loaded, split, self.batch_size)
        answers = [_answer(predictions[str(i)]) for i in range(len(records))]
        return answers[0] if single else answers


def _answer(p) -> dict:
    return {"answer": p.text, "score": p.score, "start": p.start, "end": p.end, "null_odds": p.null_odds}
