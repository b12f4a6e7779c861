"""`mrc ensemble`: one model alone is that model to the bit; members with other tokenizers or span levels meet on the
context's characters without losing probability mass; a saved ensemble works wherever a model does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import QUICKSTART, tiny_run_config
from mrc_cli import Reader
from mrc_cli.cli import app
from mrc_cli.combining import LOG_FLOOR, Positions, combined_logits, on_reference, own_log_probs
from mrc_cli.errors import CheckpointError, ConfigError, DataError
from mrc_cli.training import train

DEV = str(QUICKSTART / "en_dev.json")
FILES = ("predictions.json", "nbest.json", "null_odds.json", "metrics.json")


def _train(model_dir, tmp_path_factory, name, **model_settings):
    cfg = tiny_run_config(model_dir, tmp_path_factory.mktemp(name) / "run", max_steps=4)
    for key, value in model_settings.items():
        setattr(cfg.model, key, value)
    return train(cfg).run_dir


@pytest.fixture(scope="module")
def bert_run(tiny_bert_dir, tmp_path_factory):
    """Tiny BERT (WordPiece) a few steps on the quickstart data; its stored null threshold is the median null odds of
    the dev set, so about half of the dev questions get the null answer and the null decisions are tested both ways."""
    from mrc_cli.reader import _store_threshold, answer_file, load_model

    run = _train(tiny_bert_dir, tmp_path_factory, "bert")
    loaded = load_model(run)
    _, predictions, _ = answer_file(loaded, DEV, "eval")
    _store_threshold(loaded, float(np.median([p.null_odds for p in predictions.values()])), "dev")
    return run


@pytest.fixture(scope="module")
def albert_run(tiny_albert_dir, tmp_path_factory):
    return _train(tiny_albert_dir, tmp_path_factory, "albert")


@pytest.fixture(scope="module")
def bert_word_run(tiny_bert_dir, tmp_path_factory):
    return _train(tiny_bert_dir, tmp_path_factory, "bert_word", span_level="word")


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _read(folder):
    return {name: json.loads((folder / name).read_text()) for name in FILES if (folder / name).is_file()}


def _dev_questions():
    data = json.loads((QUICKSTART / "en_dev.json").read_text(encoding="utf-8"))["data"]
    return [(qa["id"], qa["question"], p["context"]) for a in data for p in a["paragraphs"] for qa in p["qas"]]


# --- the combination on constructed examples -------------------------------------------------------------------


def _positions(example_ids, spans_per_window, start, end):
    """Positions of windows whose position 0 is CLS, then the given (start, end) character spans."""
    width = max(len(spans) for spans in spans_per_window) + 1
    offsets = np.full((len(spans_per_window), width, 2), -1)
    for f, spans in enumerate(spans_per_window):
        offsets[f, 1:len(spans) + 1] = spans
    return Positions(list(example_ids), offsets, np.asarray(start, dtype=np.float32), np.asarray(end, dtype=np.float32))


def test_another_tokenization_lands_on_the_reference_tokens_that_hold_its_characters():
    # "unbelievable cats sat": WordPiece-like reference in two windows that share "cats"; a SentencePiece-like member
    # whose pieces carry their leading space ("▁cats" starts at the space, char 12) and cut "sat" as "s" + "at"
    reference = _positions(["q", "q"], [[(0, 2), (2, 9), (9, 12), (13, 17)], [(13, 17), (18, 21)]],
                           start=[[0.5, 1, 2, 3, 4], [0, 1, 2, 0, 0]], end=[[1, 2, 3, 4, 5], [0, 1, 1, 0, 0]])
    member_start = np.log([[0.1, 0.3, 0.2, 0.05, 0.15, 0.2]])  # CLS, ▁unbelievable, ▁cats, ▁s, at, question token
    member_end = np.log([[0.2, 0.1, 0.3, 0.15, 0.25, 1e-9]])
    member = Positions(["q"], np.array([[(-1, -1), (0, 12), (12, 17), (17, 19), (19, 21), (-1, -1)]]),
                       member_start.astype(np.float32), member_end.astype(np.float32))
    start_lp, end_lp = on_reference(reference, member)
    start, end = np.exp(start_lp), np.exp(end_lp)
    candidates = reference.candidates()
    total = 0.1 + 0.3 + 0.2 + 0.05 + 0.15  # the question token's mass is no answer: the softmax leaves it out
    expected_start = {  # (window, position): mass
        (0, 0): 0.1 / 2, (1, 0): 0.1 / 2,  # the null, shared by the two windows
        (0, 1): 0.3,  # "▁unbelievable" starts in "un"
        (0, 4): 0.2 / 2, (1, 1): 0.2 / 2,  # "▁cats" starts at the space: the next token, "cats", in both windows
        (1, 2): 0.05 + 0.15,  # "▁s" at the space before "sat" and "at" inside it: both start in "sat"
    }
    for (f, t), mass in expected_start.items():
        assert start[f, t] == pytest.approx(mass / total)
    assert sum(start[f, t] > 1e-300 for f, t in zip(*np.nonzero(candidates))) == len(expected_start)
    total_end = 0.2 + 0.1 + 0.3 + 0.15 + 0.25
    expected_end = {(0, 0): 0.1, (1, 0): 0.1, (0, 3): 0.1, (0, 4): 0.15, (1, 1): 0.15, (1, 2): 0.15 + 0.25}
    for (f, t), mass in expected_end.items():
        assert end[f, t] == pytest.approx(mass / total_end)
    for probabilities in (start, end):  # nothing lost: each distribution still sums to 1 over the candidates
        assert probabilities[candidates].sum() == pytest.approx(1.0)
    assert start_lp[0, 2] == LOG_FLOOR  # no member token starts in "##believ": log(1e-308), not -inf


def test_a_lone_sentencepiece_boundary_does_not_take_half_of_the_next_piece_mass():
    # an ALBERT reference of "a $5": its "▁" alone before "$" has the offsets of "$" (2, 3), in both windows
    reference = _positions(["q", "q"], [[(0, 1), (2, 3), (2, 3), (3, 4)], [(2, 3), (2, 3), (3, 4)]],
                           start=np.zeros((2, 5)), end=np.zeros((2, 5)))
    member = Positions(["q"], np.array([[(-1, -1), (0, 1), (2, 4)]]), np.log([[0.2, 0.3, 0.5]]).astype(np.float32),
                       np.log([[0.2, 0.3, 0.5]]).astype(np.float32))
    start = np.exp(on_reference(reference, member)[0])
    # "$5" starts at char 2: all its mass on "$", shared by the two windows; none on the "▁" before it
    assert start[0, 3] == pytest.approx(0.25) and start[1, 2] == pytest.approx(0.25)
    assert start[0, 2] < 1e-300 and start[1, 1] < 1e-300
    assert start[reference.candidates()].sum() == pytest.approx(1.0)


def test_one_model_and_the_same_model_twice_are_the_model_to_the_bit():
    rng = np.random.default_rng(0)
    offsets = [[(0, 3), (4, 9), (10, 12)], [(4, 9), (10, 12), (13, 20)], [(0, 5), (6, 8), (9, 11)]]
    model = _positions(["a", "a", "b"], offsets, rng.normal(0, 5, (3, 4)), rng.normal(0, 5, (3, 4)))
    for combination in ("prob", "logprob"):
        for others, weights in (([], [1.0]), ([model], [0.5, 0.5])):
            start, end = combined_logits(model, others, weights, combination)
            assert np.array_equal(start, model.start) and np.array_equal(end, model.end)
    # a constant per example separates log-probabilities from logits: the softmax is joint over an example's windows
    start_lp, _ = own_log_probs(model)
    shift = model.start[:2] - start_lp[:2]
    candidates = model.candidates()[:2]
    assert np.allclose(shift[candidates], shift[0, 0])


def test_the_combinations_average_probabilities_or_log_probabilities():
    offsets = [[(0, 3), (4, 9)]]
    a = _positions(["q"], offsets, [[0.0, 1.0, 2.0]], [[0.0, 0.0, 0.0]])
    b = _positions(["q"], offsets, [[2.0, 1.0, 0.0]], [[0.0, 0.0, 0.0]])
    p_a, p_b = (np.exp(own_log_probs(x)[0][0]) for x in (a, b))
    for combination, expected in (("prob", np.log(0.25 * p_a + 0.75 * p_b)),
                                  ("logprob", 0.25 * np.log(p_a) + 0.75 * np.log(p_b))):
        start, _ = combined_logits(a, [b], [0.25, 0.75], combination)
        # the decoder gets the combined log-probabilities up to one constant per example
        assert np.allclose(start[0] - expected, (start[0] - expected)[0], atol=1e-5)


# --- one model, through the command line --------------------------------------------------------------------------


def test_a_one_model_ensemble_answers_exactly_as_mrc_eval(bert_run, tmp_path):
    assert _invoke("eval", "--checkpoint", bert_run, "--data", DEV, "--out", tmp_path / "eval").exit_code == 0
    result = _invoke("ensemble", "--checkpoint", bert_run, "--data", DEV, "--out", tmp_path / "one")
    assert result.exit_code == 0, result.output
    single, ensemble = _read(tmp_path / "eval"), _read(tmp_path / "one")
    for name in ("predictions.json", "nbest.json", "null_odds.json"):
        assert ensemble[name] == single[name], name
    answers = single["predictions.json"]
    assert 5 < sum(a == "" for a in answers.values()) < 45  # null decisions both ways, at the stored threshold
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["f1"] == single["metrics.json"]["f1"] and metrics["best_f1_thresh"] == single["metrics.json"]["best_f1_thresh"]


def test_the_same_model_twice_is_that_model(bert_run, tmp_path):
    from mrc_cli.reader import ensemble_predict, evaluate_file

    evaluate_file(str(bert_run), DEV, str(tmp_path / "eval"))
    single = _read(tmp_path / "eval")
    for combine in ("prob", "logprob"):
        _, predictions = ensemble_predict([str(bert_run), str(bert_run)], DEV, combine=combine)
        assert {q: p.text for q, p in predictions.items()} == single["predictions.json"]
        assert {q: p.null_odds for q, p in predictions.items()} == single["null_odds.json"]
    # a saved ensemble's folder, as eval, predict and the Reader take it; its settings are its own
    from mrc_cli.ensemble import build_ensemble, save_ensemble

    saved = save_ensemble(build_ensemble([str(bert_run), str(bert_run)]), tmp_path / "ens")
    _, predictions = ensemble_predict(str(saved), DEV)
    assert {q: p.text for q, p in predictions.items()} == single["predictions.json"]
    with pytest.raises(ConfigError, match="is a saved ensemble, which keeps its weights"):
        ensemble_predict(saved, DEV, weights="2,1")


def test_under_bf16_the_close_calls_of_a_one_model_ensemble_are_decided_as_for_the_model(bert_run, monkeypatch):
    """The fp32 recheck of close calls runs for ensembles too (every member's windows of those questions), so one
    model alone stays that model at bf16."""
    import mrc_cli.ensemble as ensemble_module
    import mrc_cli.inference as inference
    from mrc_cli.reader import answer_file, load_model

    monkeypatch.setattr(inference, "RECHECK_MAX_SHARE", 0.5)  # more close calls than the default lets through
    single = load_model(bert_run)
    ensemble = ensemble_module.build_ensemble([str(bert_run)])
    for loaded in (single, ensemble.members[0]):
        loaded.cfg.train.precision = "bf16"
        loaded.cfg.decode.recheck_margin = 0.5
    ensemble.cfg.decode.recheck_margin = 0.5
    runs = []
    original = inference.predict_logits
    monkeypatch.setattr(inference, "predict_logits", lambda *a: runs.append(a[4]) or original(*a))
    _, expected, _ = answer_file(single, DEV, "eval")
    assert runs == ["bf16", "no"]
    monkeypatch.setattr(ensemble_module, "predict_logits", inference.predict_logits)
    _, predictions, _ = answer_file(ensemble, DEV, "eval")
    assert runs == ["bf16", "no"] * 2
    assert predictions == expected


# --- several models -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cross_ensemble(bert_run, albert_run, tmp_path_factory):
    """`mrc ensemble` of tiny BERT (WordPiece) and tiny ALBERT (SentencePiece) on the dev set, saved."""
    root = tmp_path_factory.mktemp("cross")
    result = _invoke("ensemble", "--checkpoint", bert_run, "--checkpoint", albert_run, "--data", DEV,
                     "--out", root / "out", "--submission", root / "submission.json", "--save", root / "saved",
                     "--weights", "2,1")
    assert result.exit_code == 0, result.output
    return root, result


def test_a_cross_tokenizer_ensemble_writes_every_file_and_answers_every_question(cross_ensemble, bert_run, tmp_path):
    root, result = cross_ensemble
    files = _read(root / "out")
    assert set(files) == set(FILES)
    ids = [qid for qid, _, _ in _dev_questions()]
    assert sorted(files["predictions.json"]) == sorted(ids) == sorted(files["null_odds.json"])
    assert all(any(c["text"] for c in files["nbest.json"][qid]) for qid in ids)  # a span for every question
    assert json.loads((root / "submission.json").read_text()) == files["predictions.json"]
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["total"] == 49 and metrics["members"] == 2 and metrics["questions"] == 49
    assert {k: metrics[k] for k in files["metrics.json"]} == files["metrics.json"]
    # the second member counts: the null odds move away from BERT's alone
    _invoke("eval", "--checkpoint", bert_run, "--data", DEV, "--out", tmp_path / "bert")
    bert_odds = _read(tmp_path / "bert")["null_odds.json"]
    assert sum(abs(files["null_odds.json"][q] - bert_odds[q]) > 1e-3 for q in ids) > 40
    saved = yaml.safe_load((root / "saved" / "ensemble.yaml").read_text())
    assert saved["weights"] == pytest.approx([2 / 3, 1 / 3]) and saved["combine"] == "prob"
    assert saved["decode"]["allow_null"] is True  # as it ran: the dev set has unanswerable questions
    # BERT's stored threshold was tuned for BERT's null odds alone
    assert saved["decode"]["null_threshold_from"] == "reference"


def test_a_saved_ensemble_works_in_eval_predict_and_the_reader(cross_ensemble, tmp_path, capfd):
    root, _ = cross_ensemble
    expected = json.loads((root / "submission.json").read_text())
    result = _invoke("eval", "--checkpoint", root / "saved", "--data", DEV, "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    assert _read(tmp_path / "eval")["predictions.json"] == expected
    assert _read(tmp_path / "eval")["null_odds.json"] == _read(root / "out")["null_odds.json"]
    result = _invoke("predict", "--checkpoint", root / "saved", "--data", DEV, "--out", tmp_path / "sub.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "sub.json").read_text()) == expected
    questions = _dev_questions()
    reader = Reader.load(root / "saved")
    capfd.readouterr()
    answers = reader(question=[q for _, q, _ in questions], context=[c for _, _, c in questions])
    assert [a["answer"] for a in answers] == [expected[qid] for qid, _, _ in questions]
    assert "Tokenizing" not in capfd.readouterr().err  # no member's progress bar on a Reader call


def test_a_word_level_member_with_a_token_level_reference(bert_run, bert_word_run, tmp_path, monkeypatch):
    """A word model's units reach the reference's tokens through the words' characters: its start mass lands only on
    tokens that begin a word, its end mass only on tokens that end one; nothing is lost. As the reference, a word
    model alone answers as `mrc eval` of it does."""
    import mrc_cli.ensemble as ensemble_module
    from mrc_cli.reader import ensemble_predict, evaluate_file

    runs = []
    original = ensemble_module.combined_logits
    with monkeypatch.context() as watched:
        watched.setattr(ensemble_module, "combined_logits",
                        lambda reference, others, *a: runs.append((reference, others)) or original(reference, others, *a))
        metrics, predictions = ensemble_predict([str(bert_run), str(bert_word_run)], DEV)
    assert len(predictions) == 49 and 0 <= metrics["f1"] <= 100
    reference, (words,) = runs[0]
    start, end = (np.exp(lp) for lp in on_reference(reference, words))
    candidates = reference.candidates()
    for probabilities in (start, end):
        assert np.allclose(probabilities[candidates].reshape(-1).sum(), len(set(reference.example_ids)))
    word_starts = {(e, s) for e, row in zip(words.example_ids, words.offsets) for s, _ in row if s >= 0}
    word_ends = {(e, t) for e, row in zip(words.example_ids, words.offsets) for _, t in row if t >= 0}
    f, t = np.nonzero((start > 1e-300) & (reference.offsets[..., 0] >= 0))
    assert len(f) and all((reference.example_ids[i], reference.offsets[i, j, 0]) in word_starts for i, j in zip(f, t))
    f, t = np.nonzero((end > 1e-300) & (reference.offsets[..., 0] >= 0))
    assert len(f) and all((reference.example_ids[i], reference.offsets[i, j, 1]) in word_ends for i, j in zip(f, t))
    # some reference tokens are inside words (WordPiece "##" pieces): they get no start mass from the word model
    assert ((start <= 1e-300) & (reference.offsets[..., 0] >= 0)).any()

    evaluate_file(str(bert_word_run), DEV, str(tmp_path / "eval"))
    _, alone = ensemble_predict([str(bert_word_run)], DEV)
    assert {q: p.text for q, p in alone.items()} == _read(tmp_path / "eval")["predictions.json"]
    assert {q: p.null_odds for q, p in alone.items()} == _read(tmp_path / "eval")["null_odds.json"]


def test_data_without_answers_gets_answers_and_no_metrics(bert_run, albert_run, tmp_path):
    """A test file: `mrc ensemble` writes no metrics.json, and neither it nor `mrc predict` tries to score it."""
    data = json.loads((QUICKSTART / "en_dev.json").read_text(encoding="utf-8"))
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            paragraph["qas"] = [{"id": qa["id"], "question": qa["question"]} for qa in paragraph["qas"]]
    (tmp_path / "test.json").write_text(json.dumps(data), encoding="utf-8")
    result = _invoke("ensemble", "--checkpoint", bert_run, "--checkpoint", albert_run, "--data", tmp_path / "test.json",
                     "--out", tmp_path / "out", "--submission", tmp_path / "submission.json")
    assert result.exit_code == 0, result.output
    assert set(_read(tmp_path / "out")) == set(FILES) - {"metrics.json"}
    submission = json.loads((tmp_path / "submission.json").read_text())
    assert sorted(submission) == sorted(qid for qid, _, _ in _dev_questions())
    result = _invoke("predict", "--checkpoint", bert_run, "--data", tmp_path / "test.json", "--out", tmp_path / "bert.json")
    assert result.exit_code == 0, result.output
    assert sorted(json.loads((tmp_path / "bert.json").read_text())) == sorted(submission)


def test_a_threshold_on_data_without_unanswerable_questions_is_said_to_change_no_answer(bert_run, tmp_path):
    """CMRC-like data: the null rule is off, so --threshold has nothing to tune; said, not silently ignored."""
    data = json.loads((QUICKSTART / "en_dev.json").read_text(encoding="utf-8"))
    for paragraph in (p for article in data["data"] for p in article["paragraphs"]):
        paragraph["qas"] = [qa for qa in paragraph["qas"] if qa["answers"]]
    (tmp_path / "answerable.json").write_text(json.dumps(data), encoding="utf-8")
    result = _invoke("ensemble", "--checkpoint", bert_run, "--data", tmp_path / "answerable.json", "--out",
                     tmp_path / "out", "--threshold", "1.5")
    assert result.exit_code == 0, result.output
    assert ("note: --threshold 1.5 changed no answer: the null rule is off for this data, which has no unanswerable "
            "questions, so every question is answered") in result.stdout
    assert all(_read(tmp_path / "out")["predictions.json"].values())
    result = _invoke("ensemble", "--checkpoint", bert_run, "--data", DEV, "--out", tmp_path / "v2", "--threshold",
                     "1.5")
    assert result.exit_code == 0, result.output
    assert "changed no answer" not in result.stdout


# --- saving and errors --------------------------------------------------------------------------------------------


def test_threshold_and_copied_members_travel_with_the_saved_folder(bert_run, albert_run, tmp_path):
    from mrc_cli.ensemble import load_ensemble

    members = [shutil.copytree(run, tmp_path / name) for run, name in ((bert_run, "a"), (albert_run, "b"))]
    for config in Path(members[0]).rglob("config.yaml"):  # the reference calibrated by mrc eval --calibrate
        calibrated = yaml.safe_load(config.read_text())
        calibrated["decode"].update(temperature=0.8, null_bias=-1.9)
        config.write_text(yaml.safe_dump(calibrated))
    result = _invoke("ensemble", *[x for m in members for x in ("--checkpoint", m)], "--data", DEV, "--out",
                     tmp_path / "out", "--threshold", "1.5", "--combine", "logprob", "--save", tmp_path / "saved",
                     "--copy-members")
    assert result.exit_code == 0, result.output
    # its temperature fits its own probabilities, not the combined ones: left out, and said
    assert "note: member 1's calibration (temperature 0.8, null bias -1.9) fits its own probabilities, not the " \
           "ensemble's, and is left out" in result.stdout
    for member in members:
        shutil.rmtree(member)  # the copies inside the folder are what it loads now
    settings = yaml.safe_load((tmp_path / "saved" / "ensemble.yaml").read_text())
    assert settings["decode"]["null_score_diff_threshold"] == 1.5 and settings["combine"] == "logprob"
    assert settings["decode"]["null_threshold_from"] == "config"  # given, not the member's dev-tuned one
    assert (settings["decode"]["temperature"], settings["decode"]["null_bias"]) == (1.0, 0.0)
    assert all(not m.startswith("/") for m in settings["members"])
    assert not list((tmp_path / "saved").rglob("training_state.pt"))  # no optimizer state copied
    ensemble = load_ensemble(tmp_path / "saved")
    assert ensemble.cfg.decode.null_score_diff_threshold == 1.5 and ensemble.combine == "logprob"
    result = _invoke("predict", "--checkpoint", tmp_path / "saved", "--data", DEV, "--out", tmp_path / "sub.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "sub.json").read_text()) == _read(tmp_path / "out")["predictions.json"]

    # as if its threshold had been chosen out of fold on questions 30 % unanswerable: a dev threshold replaces both
    settings["decode"].update(null_threshold_from="oof", null_share=0.3)
    (tmp_path / "saved" / "ensemble.yaml").write_text(yaml.safe_dump(settings))
    result = _invoke("eval", "--checkpoint", tmp_path / "saved", "--data", DEV, "--store-threshold")
    assert result.exit_code == 0, result.output
    best = json.loads(result.stdout.strip().splitlines()[-1])["best_f1_thresh"]
    decode = load_ensemble(tmp_path / "saved").cfg.decode
    assert decode.null_score_diff_threshold == pytest.approx(best) and decode.null_threshold_from == "dev"
    assert decode.null_share is None


def test_a_missing_member_is_named(bert_run, tmp_path):
    member = shutil.copytree(bert_run, tmp_path / "member")
    result = _invoke("ensemble", "--checkpoint", member, "--data", DEV, "--out", tmp_path / "saved", "--save", tmp_path / "saved")
    assert result.exit_code == 0, result.output  # the files may go beside ensemble.yaml
    assert (tmp_path / "saved" / "predictions.json").is_file()
    shutil.rmtree(member)
    result = _invoke("predict", "--checkpoint", tmp_path / "saved", "--data", DEV, "--out", tmp_path / "sub.json")
    assert result.exit_code == 1 and result.stderr.startswith("Error:")
    assert "ensemble.yaml: member 1" in result.stderr and "does not exist" in result.stderr
    with pytest.raises(CheckpointError, match="member 1"):
        Reader.load(tmp_path / "saved")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "ensemble.yaml").write_text("members: []\n")
    with pytest.raises(ConfigError, match="expected the keys"):
        Reader.load(tmp_path / "other")
    from mrc_cli.loading import load_trained

    with pytest.raises(CheckpointError, match="is an ensemble"):
        load_trained(tmp_path / "saved")


def test_a_saved_ensemble_whose_settings_give_a_key_twice_is_refused(tmp_path):
    (tmp_path / "ensemble.yaml").write_text("members: [a]\nweights: 1\ncombine: prob\ndecode: {}\nweights: 2\n")
    with pytest.raises(ConfigError, match=f"{tmp_path / 'ensemble.yaml'}: line 5: 'weights' is given twice"):
        Reader.load(tmp_path)


def test_members_must_answer_the_same_questions(bert_run, albert_run):
    import dataclasses

    from mrc_cli.ensemble import build_ensemble, ensemble_answers
    from mrc_cli.features import build_features
    from mrc_cli.splits import featurize_file

    ensemble = build_ensemble([str(bert_run), str(albert_run)])
    reference = featurize_file(DEV, ensemble.tokenizer, ensemble.cfg.data, "predict")
    albert = ensemble.members[1]
    fewer = reference.examples.select(range(1, len(reference.examples)))
    features, summary = build_features(fewer, albert.tokenizer, albert.cfg.data, labels=False, cache=False)
    with pytest.raises(DataError, match=r"member 2 .* answers other questions than the reference .* 1 missing"):
        ensemble_answers(ensemble, [reference, dataclasses.replace(reference, features=features, summary=summary)])


@pytest.mark.parametrize("weights, message", [
    ("1,2,3", "3 weights for 2 members"),
    ("1,0", "positive numbers"),
    ("inf,1", "weights must be finite positive numbers"),
    ("1,1 --threshold nan", "--threshold nan: a number"),
    ("1,x", "expected equal, oof"),
    ("oof", "mrc kfold"),
])
def test_bad_weights_are_refused_before_any_model_loads(weights, message, tmp_path, monkeypatch):
    import mrc_cli.ensemble as ensemble_module

    monkeypatch.setattr(ensemble_module, "load_trained", lambda path: pytest.fail("a model was loaded"))
    weights, *more = weights.split()
    result = _invoke("ensemble", "--checkpoint", "a", "--checkpoint", "b", "--data", DEV, "--out", tmp_path / "out",
                     "--weights", weights, *more)
    assert result.exit_code == 1 and message in result.stderr


def test_from_python_one_member_is_a_path_and_weights_a_list(tmp_path):
    """A path given where a list of them belongs had been read letter by letter ("/: no such checkpoint")."""
    from mrc_cli.ensemble import build_ensemble, parse_weights

    assert parse_weights([2, 1], ["a", "b"]) == pytest.approx([2 / 3, 1 / 3])
    assert parse_weights("1e308,1e308", ["a", "b"]) == [0.5, 0.5]  # their sum is inf: each had weighed 0
    with pytest.raises(ConfigError, match="2 weights for 1 members"):
        parse_weights((1, 1), ["a"])
    with pytest.raises(CheckpointError, match=f"^{tmp_path / 'run'}: no such"):
        build_ensemble(str(tmp_path / "run"))


def test_flags_are_checked_before_the_work(tmp_path):
    result = _invoke("ensemble", "--checkpoint", "a", "--data", DEV, "--out", tmp_path / "out", "--copy-members")
    assert result.exit_code == 1 and "give --save DIR too" in result.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    result = _invoke("ensemble", "--checkpoint", "a", "--data", DEV, "--out", tmp_path / "out", "--save", tmp_path / "full")
    assert result.exit_code == 1 and "not an empty folder" in result.stderr
    (tmp_path / "saved").mkdir()  # another ensemble's answers beside its ensemble.yaml would pass for its own
    (tmp_path / "saved" / "ensemble.yaml").write_text("members: []\n")
    result = _invoke("ensemble", "--checkpoint", "a", "--data", DEV, "--out", tmp_path / "saved")
    assert result.exit_code == 1 and f"--out {tmp_path / 'saved'}: a saved ensemble's folder" in result.stderr
