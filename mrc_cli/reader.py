"""Trained models at work: `mrc eval`, `mrc predict`, `mrc ensemble` and the Python `Reader`, all through one
inference path.

Transformers 5 removed the question-answering pipeline, so extractive QA has no inference API there any more:
`Reader.load(path)` takes an `mrc export` folder, a checkpoint, a run directory or a saved ensemble and answers
questions with the same features and decoder as `mrc predict`.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Iterable, Mapping
from pathlib import Path

from accelerate import PartialState

from mrc_cli import calibration, thresholds
from mrc_cli.config import DataConfig, RunConfig, set_value
from mrc_cli.data import is_blank, to_dataset
from mrc_cli.decoding import Prediction
from mrc_cli.ensemble import (Ensemble, build_ensemble, calibration_left_out, check_save_folder, ensemble_inference,
                              load_ensemble, null_rules_differ, save_ensemble, store_settings)
from mrc_cli.features import build_features, cache_root
from mrc_cli.inference import evaluate_split, place_for_inference, write_prediction_files
from mrc_cli.backends import check_backend, load_with_backend
from mrc_cli.errors import ConfigError
from mrc_cli.files import check_output_file, check_output_folder, write_text_atomically
from mrc_cli.loading import Loaded, is_ensemble, is_onnx_export
from mrc_cli.metrics import scored_with_nulls
from mrc_cli.splits import Split, featurize_file


def load_model(path: str | Path, backend: str = "auto") -> Loaded | Ensemble:
    """A trained model (checkpoint, run directory, export) answering with `backend` (mrc_cli.backends), or a saved
    ensemble (a folder with ensemble.yaml), whose members answer as they were saved."""
    if not is_ensemble(path):
        return load_with_backend(path, backend)
    check_backend(backend)
    if backend != "auto":
        raise ConfigError(f"{path} is an ensemble: its members answer as they were saved (an ONNX export as a member "
                          f"answers with ONNX Runtime); --backend {backend} is for one model")
    return load_ensemble(path)


def run_inference(loaded: Loaded | Ensemble, split: Split, batch_size: int | None = None):
    """(metrics, predictions) of a loaded model or ensemble on a featurized split; metrics only where the split has
    answers."""
    batch_size = None if batch_size is None else _batch_size(batch_size)
    if isinstance(loaded, Ensemble):
        return ensemble_inference(loaded, split, batch_size)
    cfg = loaded.cfg
    if batch_size is not None:
        cfg.train.eval_batch_size = batch_size
    model, state, precision = place_for_inference(loaded.model, cfg)
    return evaluate_split(model, split, cfg, state, precision)


def answer_file(loaded: Loaded | Ensemble, data: str, use: str) -> tuple[dict, dict[str, Prediction], Split]:
    """(metrics, predictions, split) of a data file featurized for `use` (eval or predict): `answer_split`'s."""
    split = featurize_file(data, loaded.tokenizer, loaded.cfg.data, use)
    return (*answer_split(loaded, split, use), split)


def answer_split(loaded: Loaded | Ensemble, split: Split, use: str) -> tuple[dict, dict[str, Prediction]]:
    """(metrics, predictions) of a featurized split. eval answers as the data is scored (metrics.scored_with_nulls): the SQuAD v2 null rule on where it has unanswerable questions (the loaded
    model keeps it on, so a threshold eval stores or an ensemble it saves has it), off for this scoring only where it
    has none (v1 rules count every "" wrong; a model that learnt the rule from a v2 dev set answered every question
    "" there); a change from the model's own rule is named under "null_rule". predict keeps the model's own."""
    decode, nulls = loaded.cfg.decode, _null_rule(loaded, split, use)
    changed = decode.allow_null != nulls
    note = {"null_rule": NULL_RULE_NOTES[nulls]} if changed else {}
    decode.allow_null = nulls
    try:
        metrics, predictions = run_inference(loaded, split)
    finally:
        if changed and not nulls:
            decode.allow_null = True
    return {**metrics, **note}, predictions


def _null_rule(loaded: Loaded | Ensemble, split: Split, use: str) -> bool:
    """Whether answer_file decodes with the null rule: as the data is scored for eval, the model's own for predict."""
    return scored_with_nulls(split.golds) if use == "eval" else loaded.cfg.decode.allow_null


NULL_RULE_OFF = "off for this data, which has no unanswerable questions"
NULL_RULE_NOTES = {  # eval's null rule where it is not the model's own: on, off
    True: "on for this data, which has unanswerable questions; the model's own is off, so mrc predict answers every "
          "question unless settings stored with it say otherwise (--store-threshold, a saved ensemble)",
    False: f"{NULL_RULE_OFF}; the model's own (on) stays for mrc predict",
}


def evaluate_file(checkpoint: str, data: str, out: str | None = None, store_threshold: bool = False,
                  calibrate: bool = False, calibrate_split: bool = False, backend: str = "auto",
                  metric: str | None = None) -> dict:
    """`mrc eval`: official scores (and the best SQuAD v2 null threshold) of a checkpoint or ensemble on a data file,
    with the data's validation summary under "data" (repairs, questions left out). A model whose null threshold was
    chosen out of fold (`mrc kfold`) adds `threshold_report`: the scores at 0, at it and at the best one here. With
    `calibrate`, a temperature and null bias fitted here are kept with the model (`_calibrate`), on half the articles
    and reported on the other half with `calibrate_split`. `backend`: what answers (mrc_cli.backends), named in the
    metrics. `metric`: the official rules to score by, for this call (default: the model's data.metric, auto)."""
    if calibrate_split and not calibrate:
        raise ConfigError("--calibrate-split says where --calibrate fits and reports; give --calibrate too")
    if store_threshold or calibrate:
        _check_fit_backend(checkpoint, backend)
    if metric is not None:
        set_value(RunConfig(), "data.metric", metric, "--metric")  # the name checked before any work
    if out:  # refused before any work; the default, inside the checkpoint, once the checkpoint is known to be one
        _check_answers_folder(Path(out))
    loaded = load_model(checkpoint, backend)
    out_dir = Path(out) if out else Path(checkpoint) / "eval"
    if not out:
        _check_answers_folder(out_dir)
    if metric is not None:
        loaded.cfg.data.metric = metric
    stored_allow_null = loaded.cfg.decode.allow_null  # answer_file sets the null rule as the data is scored
    split = featurize_file(data, loaded.tokenizer, loaded.cfg.data, "eval")
    # before the model answers: a file of one article cannot be split
    halves = calibration.halves_by_article(split.examples, data) if calibrate_split else (None, None)
    metrics, predictions = answer_split(loaded, split, "eval")
    decode = loaded.cfg.decode
    if "best_f1_thresh" in metrics and decode.null_threshold_from == "oof":
        metrics["threshold_report"] = thresholds.threshold_report(
            split.golds, {qid: p.nbest for qid, p in predictions.items()},
            {qid: p.null_odds for qid, p in predictions.items()}, decode.null_score_diff_threshold, decode.null_share)
    if PartialState().is_main_process:  # under accelerate launch every process has all predictions
        write_prediction_files(out_dir, predictions, metrics)
        if store_threshold and "best_f1_thresh" in metrics:
            _store_threshold(loaded, metrics["best_f1_thresh"], "dev")
    if calibrate:
        threshold_stored = store_threshold and "best_f1_thresh" in metrics
        threshold = metrics["best_f1_thresh"] if threshold_stored else loaded.cfg.decode.null_score_diff_threshold
        metrics.update(_calibrate(loaded, data, predictions, split, out_dir, stored_allow_null or threshold_stored,
                                  threshold, halves))
    return {**metrics, "backend": backend_of(loaded), "out": str(out_dir), "data": split.describe()}


def _check_fit_backend(checkpoint: str, backend: str) -> None:
    """Refuse to fit a threshold or calibration, which predict and serve then apply, on answers other than theirs:
    int8's for a checkpoint (its settings serve every backend, and torch and onnx give the same answers), or an ONNX
    export's other graph (its mrc_cli.yaml serves the graph onnx.json names, which loads by default)."""
    from mrc_cli.backends import GRAPHS

    if not is_onnx_export(checkpoint):
        if backend == "onnx-int8":
            raise ConfigError(f"--backend onnx-int8 changes some answers of {checkpoint}, whose threshold and "
                              "calibration serve every backend: fit them with --backend torch or onnx (the same "
                              "answers), or on an int8 export of its own (mrc export --format onnx --quantize int8)")
        return
    from mrc_cli.onnx_backend import read_settings

    own = read_settings(Path(checkpoint))["graph"]
    graph = GRAPHS.get(backend, own)
    if graph != own:
        fit_with = next(name for name, answers_with in GRAPHS.items() if answers_with == own)
        raise ConfigError(f"--backend {backend} answers with the {graph} graph of {checkpoint}, but predict and serve "
                          f"answer with its {own} graph (onnx.json), which the threshold and calibration kept in its "
                          f"mrc_cli.yaml serve: fit them with --backend {fit_with} (or auto)")


RUN_FILES = ("predictions.json", "nbest.json", "null_odds.json", "metrics.json")  # a run's final evaluation


def _check_answers_folder(out_dir: Path) -> None:
    """eval's and ensemble's folder, refused before any work where it is a training run's own (its predictions.json
    and metrics.json are the run's final evaluation, which mrc kfold's out-of-fold score is built from) or a saved
    ensemble's (another ensemble's answers beside its ensemble.yaml would pass for its own)."""
    check_output_folder(out_dir)
    if (out_dir / "run_info.json").is_file():
        raise ConfigError(f"--out {out_dir}: a training run's folder, whose predictions.json and metrics.json are its "
                          f"own final evaluation; write elsewhere, e.g. --out {out_dir / 'eval'}")
    if is_ensemble(out_dir):
        raise ConfigError(f"--out {out_dir}: a saved ensemble's folder; write the answers elsewhere, e.g. --out "
                          f"{out_dir / 'eval'}")


def _calibrate(loaded: Loaded | Ensemble, data: str, predictions: dict[str, Prediction], split: Split, out_dir: Path,
               allow_null: bool, threshold: float, halves: tuple[set[str] | None, set[str] | None]) -> dict:
    """Fit decode.temperature and decode.null_bias on the evaluated questions (or the first of `halves`, from
    calibration.halves_by_article, reported on the second), keep them with the model, write calibration.json and
    reliability.png; the figures for the line `mrc eval` prints. The answers are those `mrc predict` will give with the settings kept (`allow_null`,
    `threshold`): their probabilities are the ones to calibrate, also where eval turned the null rule on and
    predict will not."""
    decode = loaded.cfg.decode
    outcomes = calibration.collect_outcomes(predictions, split.golds, allow_null, threshold, loaded.cfg.data.metric)
    result = calibration.calibrate(outcomes, *halves, (decode.temperature, decode.null_bias))
    # the fit minimises log loss; on a few dozen questions ECE's bins can still come out worse, and a fit that makes
    # the reported error worse is not one to keep
    ece = [key for key in ("ece", "no_answer_ece") if f"{key}_after" in result]
    result["stored"] = sum(result[f"{k}_after"] for k in ece) <= sum(result[f"{k}_before"] for k in ece)
    files = [out_dir / "calibration.json", out_dir / "reliability.png"]
    if PartialState().is_main_process:
        write_text_atomically(files[0], json.dumps(result, indent=1))
        calibration.plot_reliability(result, files[1], Path(data).name)
        if result["stored"]:
            decode.temperature, decode.null_bias = result["temperature"], result["null_bias"]
            decode.allow_null = allow_null
            _keep_decode_settings(loaded)
    figures = {key: value for key, value in result.items()
               if "ece" in key or key in ("temperature", "null_bias", "calibration_warning")}
    figures["calibration_stored"] = result["stored"]
    return {**figures, "calibration_questions": result["report_questions"], "calibration_fit_questions":
            result["fit_questions"], "calibration_held_out": result["held_out"], "calibration_files": list(map(str, files))}


def _store_threshold(loaded: Loaded | Ensemble, threshold: float, source: str) -> None:
    """Keep a null threshold with the model or saved ensemble, so `predict` uses it."""
    thresholds.set_threshold(loaded.cfg.decode, threshold, source)
    _keep_decode_settings(loaded)


def _keep_decode_settings(loaded: Loaded | Ensemble) -> None:
    """Write the decoding settings of a loaded model or saved ensemble back where `predict` reads them."""
    if isinstance(loaded, Ensemble):
        store_settings(loaded)
    else:
        thresholds.save_decode_settings(loaded.path, loaded.cfg)


def predict_file(checkpoint: str, data: str, out: str, backend: str = "auto") -> dict:
    """`mrc predict`: the submission file {id: answer} for a data file, with or without answers."""
    check_output_file(out, data=data)
    if Path(out).name in RUN_FILES and (Path(out).parent / "run_info.json").is_file():
        raise ConfigError(f"--out {out}: a training run's own file (its final evaluation); write the submission "
                          "elsewhere")
    loaded = load_model(checkpoint, backend)
    _, predictions, split = answer_file(loaded, data, "predict")
    if PartialState().is_main_process:
        _write_submission(Path(out), predictions)
    return {**_answered(predictions), "backend": backend_of(loaded), "out": str(Path(out)),
            "data": split.describe()}


def backend_of(loaded: Loaded | Ensemble) -> str:
    """What answers for a loaded model: torch, onnx or onnx-int8; for an ensemble, its members' in parentheses."""
    if isinstance(loaded, Ensemble):
        return "ensemble (" + ", ".join(member.backend for member in loaded.members) + ")"
    return loaded.backend


def _write_submission(path: Path, predictions: dict[str, Prediction]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    answers = {pid: p.text for pid, p in predictions.items()}
    # an id with spaces around it also under the stripped id, which the official CMRC 2018 script looks answers up by
    # (SQuAD's by the id as given; every official script ignores an answer no question asks for)
    answers.update({pid.strip(): text for pid, text in list(answers.items()) if pid.strip() not in answers})
    write_text_atomically(path, json.dumps(answers, ensure_ascii=False, indent=1))


def _answered(predictions: dict[str, Prediction]) -> dict:
    return {"questions": len(predictions), "answered": sum(bool(p.text) for p in predictions.values())}


def ensemble_file(checkpoints: list[str], data: str, out: str, weights: str = "equal", combine: str = "prob",
                  threshold: float | None = None, submission: str | None = None, save: str | None = None,
                  copy_members: bool = False) -> dict:
    """`mrc ensemble`: the files of `mrc eval` (metrics.json only where the data has answers) for the members'
    combined answers; with `submission` also {id: answer}; with `save` the ensemble as a folder, with the decoding
    settings it ran with. Returns the metrics, the counts, the files written and the data's validation summary."""
    if copy_members and not save:
        raise ConfigError("--copy-members copies the members into the --save folder; give --save DIR too")
    if save:
        check_save_folder(save)
    _check_answers_folder(Path(out))
    if submission:
        check_output_file(submission, "--submission")
    ensemble = build_ensemble(checkpoints, weights, combine, threshold)
    use = _use_of(data, ensemble.cfg.data)
    metrics, predictions, split = answer_file(ensemble, data, use)
    if PartialState().is_main_process:
        if save:  # first: the files may go into the same folder
            save_ensemble(ensemble, save, copy_members)
        write_prediction_files(Path(out), predictions, metrics)  # metrics.json only where there are metrics
        if submission:
            _write_submission(Path(submission), predictions)
    rule_on = _null_rule(ensemble, split, use)
    warning = null_rules_differ(ensemble, rule_on)
    note = calibration_left_out(ensemble)
    unused = _threshold_unused(threshold, rule_on, use)
    return {**metrics, **_answered(predictions), "members": len(ensemble.members), "weights": ensemble.weights,
            "out": out, "data": split.describe(), **({"null_rule_warning": warning} if warning else {}),
            **({"calibration_note": note} if note else {}), **({"threshold_note": unused} if unused else {})}


def _threshold_unused(threshold: float | None, rule_on: bool, use: str) -> str | None:
    """A note where --threshold was given and the answers were decided without the null rule, which it tunes (CMRC
    data): it changed no answer."""
    if threshold is None or rule_on:
        return None
    why = (f"the null rule is {NULL_RULE_OFF}" if use == "eval" else
           "the reference answers every question (trained without unanswerable questions: its null rule is off)")
    return f"--threshold {threshold:g} changed no answer: {why}, so every question is answered"


def ensemble_predict(members: list[str] | Ensemble, data: str, weights: str = "equal", combine: str = "prob",
                     threshold: float | None = None) -> tuple[dict, dict[str, Prediction]]:
    """(metrics, predictions) of an ensemble, of a folder `mrc ensemble --save` wrote (with its own weights,
    combination and threshold), or of members given as model folders (the first is the reference), on a data file;
    metrics are empty where the data has no answers."""
    if isinstance(members, (str, Path)) and is_ensemble(members):
        if (weights, combine, threshold) != ("equal", "prob", None):
            raise ConfigError(f"{members} is a saved ensemble, which keeps its weights, combination and threshold; "
                              "to change them, give its members instead")
        members = load_ensemble(members)
    ensemble = members if isinstance(members, Ensemble) else build_ensemble(members, weights, combine, threshold)
    metrics, predictions, _ = answer_file(ensemble, data, _use_of(data, ensemble.cfg.data))
    return metrics, predictions


def _use_of(data: str, settings: DataConfig) -> str:
    """eval where every question has answers or is marked unanswerable (it can be scored), else predict."""
    from mrc_cli.validate import load_examples

    _, _, golds = load_examples(data, "predict", settings.format, cache_root(settings) / "examples")
    return "eval" if all(g["answers"] or g["is_impossible"] for g in golds) else "predict"


class Reader:
    """Answers questions about contexts: `Reader.load(path)(question=..., context=...)`, or lists of both."""

    def __init__(self, loaded: Loaded | Ensemble, batch_size: int | None = None):
        if not isinstance(loaded, (Loaded, Ensemble)):
            raise TypeError(f"Reader takes a loaded model, not {type(loaded).__name__}: Reader.load(path) loads one")
        self.loaded = loaded
        self.batch_size = None if batch_size is None else _batch_size(batch_size)

    @classmethod
    def load(cls, path: str | Path, batch_size: int | None = None, backend: str = "auto") -> Reader:
        """`batch_size`: features per forward pass (default: the model's train.eval_batch_size, auto: 64 on CUDA, 16
        on a CPU); `backend`: what answers (mrc_cli.backends: auto, torch, onnx, onnx-int8)."""
        return cls(load_model(path, backend), batch_size)

    @property
    def backend(self) -> str:
        return backend_of(self.loaded)

    def __call__(self, question: str | list[str], context: str | list[str]) -> dict | list[dict]:
        """One answer for a question and a context; a list of answers for a list of questions (about one context or
        a list of as many), or one question about a list of contexts."""
        questions, contexts = _texts(question, "question"), _texts(context, "context")
        single = isinstance(question, str) and isinstance(context, str)
        if isinstance(question, str):
            questions *= len(contexts)
        elif isinstance(context, str):
            contexts *= len(questions)
        if len(questions) != len(contexts):
            raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts")
        for name, given, texts in (("question", question, questions), ("context", context, contexts)):
            blank = [i for i, text in enumerate(texts) if is_blank(text)]
            if blank:  # as `mrc serve` refuses them; an empty question would be answered from the context alone
                which = name if isinstance(given, str) else f"{name} {blank}"
                raise ValueError(f"{which} is empty or only whitespace (or invisible characters)")
        if not questions:
            return []
        records = [{"id": str(i), "title": "", "context": c, "question": q, "answers": {"text": [], "answer_start": []},
                    "is_impossible": False} for i, (q, c) in enumerate(zip(questions, contexts))]
        examples = to_dataset(records)
        features, summary = build_features(examples, self.loaded.tokenizer, self.loaded.cfg.data, labels=False,
                                           cache=False, progress=False)
        split = Split(examples, None, [], features, summary)
        _, predictions = run_inference(self.loaded, split, self.batch_size)
        answers = [_answer(predictions[str(i)]) for i in range(len(records))]
        return answers[0] if single else answers


def _batch_size(value) -> int:
    """Features per forward pass, a whole number of at least 1 (0 or less would run no batch: every answer made up
    from logits of 0)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # numpy's ints too
        raise TypeError(f"batch_size: a whole number, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"batch_size must be 1 or more, got {value}")
    return int(value)


def _texts(value, name: str) -> list[str]:
    """A Reader argument as a list of texts, or a TypeError naming it (a bytes context would be iterated byte by
    byte, None would fail deep in tokenization)."""
    if isinstance(value, str):
        return [value]
    # a list, a pandas Series, ...; not a dict, whose keys would be taken for the texts
    if not isinstance(value, (bytes, bytearray, Mapping)) and isinstance(value, Iterable):
        texts = list(value)
        wrong = next((i for i, text in enumerate(texts) if not isinstance(text, str)), None)
        if wrong is None:
            return texts
        raise TypeError(f"{name}: a list of strings, but item {wrong} is {type(texts[wrong]).__name__}")
    raise TypeError(f"{name}: a string or a list of strings, not {type(value).__name__}")


def _answer(p: Prediction) -> dict:
    return {"answer": p.text, "score": p.score, "start": p.start, "end": p.end, "null_odds": p.null_odds,
            "probability": p.probability, "no_answer_probability": p.no_answer_probability}
