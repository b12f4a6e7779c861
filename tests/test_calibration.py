"""Calibrated confidence: the fit on n-best lists of a model with a known miscalibration, answers untouched by it,
`mrc eval --calibrate` on a trained model, and the settings kept for predict and the Reader."""

import json
import shutil

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import tiny_run_config
from mrc_cli import Reader
from mrc_cli.calibration import (calibrate, collect_outcomes, expected_calibration_error, fit_calibration,
                                 halves_by_article, plot_reliability, reliability_bins)
from mrc_cli.cli import app
from mrc_cli.config import DecodeConfig, load_config
from mrc_cli.data import to_dataset
from mrc_cli.decoding import Prediction, decode, pad_offsets
from mrc_cli.errors import ConfigError, DataError
from mrc_cli.metrics.rules import score_question

DEV = "data/quickstart/en_dev.json"


def _synthetic(num: int, seed: int, sharpen: float, with_null: bool = False, null_shift: float = 0.0, k: int = 5):
    """Predictions and golds of a model whose scores are `sharpen` x the true logits (the null score also
    `null_shift` lower): each gold answer is drawn from the softmax of the true logits, so the model is calibrated
    at temperature `sharpen` and null bias `null_shift`."""
    rng = np.random.default_rng(seed)
    predictions, golds = {}, []
    for i in range(num):
        true = rng.normal(0.0, 1.5, size=k + with_null)  # the last is the null candidate's with_null
        drawn = rng.choice(len(true), p=np.exp(true) / np.exp(true).sum())
        span_scores = sharpen * true[:k]
        null_score = sharpen * true[-1] - null_shift if with_null else -50.0
        nbest = [{"text": f"w{j}", "start": 3 * j, "end": 3 * j + 2, "score": float(span_scores[j]), "probability": 0.0}
                 for j in np.argsort(-span_scores, kind="stable")]
        if with_null:
            nbest.insert(sum(c["score"] >= null_score for c in nbest),
                         {"text": "", "start": -1, "end": -1, "score": null_score, "probability": 0.0})
        best = max(span_scores)
        null_odds = null_score - best
        answer = next(c for c in nbest if c["start"] >= 0) if not (with_null and null_odds > 0) else nbest[0]
        qid = f"{seed}-{i}"
        predictions[qid] = Prediction(qid, answer["text"], answer["start"], answer["end"], float(best), null_score,
                                      float(null_odds), nbest)
        unanswerable = bool(with_null and drawn == k)
        golds.append({"id": qid, "answers": [] if unanswerable else [f"w{drawn}"], "is_impossible": unanswerable})
    return predictions, golds


def _fit_and_report(sharpen, with_null=False, null_shift=0.0):
    """Fitted on 2,000 questions, reported on 2,000 others of the same model."""
    fit_predictions, fit_golds = _synthetic(2000, 0, sharpen, with_null, null_shift)
    report_predictions, report_golds = _synthetic(2000, 1, sharpen, with_null, null_shift)
    outcomes = collect_outcomes({**fit_predictions, **report_predictions}, fit_golds + report_golds, with_null, 0.0)
    return calibrate(outcomes, set(fit_predictions), set(report_predictions))


def test_an_overconfident_model_gets_a_temperature_above_one_and_a_lower_ece_on_other_questions():
    result = _fit_and_report(sharpen=3.0)
    assert result["temperature"] == pytest.approx(3.0, rel=0.1) and result["null_bias"] == 0.0
    assert result["ece_before"] > 0.2 and result["ece_after"] < 0.03  # measured 0.27 -> 0.01 on 3,000 (seed 0)
    assert result["log_loss_after"] < result["log_loss_before"]
    assert (result["fit_questions"], result["report_questions"], result["held_out"]) == (2000, 2000, True)
    assert "no_answer_ece_before" not in result  # no null candidate: nothing to say about unanswerability
    assert "calibration_warning" not in result


def test_a_model_that_is_never_right_is_calibrated_with_a_warning():
    """Its loss falls for ever as the temperature grows: the fit stops at the bound and says what that means."""
    predictions, golds = _synthetic(300, 0, sharpen=3.0)
    golds = [{**gold, "answers": ["nowhere in the n-best"]} for gold in golds]
    result = calibrate(collect_outcomes(predictions, golds, False, 0.0))
    assert result["temperature"] == pytest.approx(100.0, rel=0.01)
    assert "search bound" in result["calibration_warning"] and "0% of the 300" in result["calibration_warning"]


def test_an_underconfident_model_gets_a_temperature_below_one():
    assert _fit_and_report(sharpen=0.4)["temperature"] == pytest.approx(0.4, rel=0.1)


def test_a_squad_v2_model_gets_a_null_bias_and_a_calibrated_no_answer_probability():
    result = _fit_and_report(sharpen=3.0, with_null=True, null_shift=2.0)  # the null score 2 too low
    assert result["temperature"] == pytest.approx(3.0, rel=0.1)
    assert result["null_bias"] == pytest.approx(2.0, abs=0.5)
    assert result["ece_after"] < result["ece_before"] / 4
    assert result["no_answer_ece_after"] < result["no_answer_ece_before"] / 4


def test_a_squad_v2_models_null_bias_stays_where_the_data_has_no_unanswerable_questions():
    """Such data says nothing of unanswerability: fitted there, the bias moved the null mass onto the answers and a
    v2 model lost its no-answer calibration (--calibrate on v1 data after v2 data)."""
    predictions, golds = _synthetic(2000, 0, sharpen=3.0, with_null=True, null_shift=2.0)
    answerable = [gold for gold in golds if not gold["is_impossible"]]
    outcomes = collect_outcomes(predictions, answerable, True, 0.0)
    assert not outcomes.scores_null
    result = calibrate(outcomes, current=(1.0, 1.7))
    assert result["null_bias"] == 1.7 and result["temperature"] != 1.0


def test_ece_and_reliability_bins_by_hand():
    probabilities, right = np.array([0.9, 0.95, 0.2, 1.0]), np.array([1, 0, 0, 1])
    bins = reliability_bins(probabilities, right)
    assert [(b["low"], b["count"]) for b in bins] == [(0.2, 1), (0.9, 3)]  # 1.0 falls in the last bin
    assert bins[1]["confidence"] == pytest.approx(0.95) and bins[1]["accuracy"] == pytest.approx(2 / 3)
    assert expected_calibration_error(probabilities, right) == pytest.approx((0.2 + 3 * abs(0.95 - 2 / 3)) / 4)
    assert expected_calibration_error(np.array([]), np.array([])) == 0.0


def test_a_chinese_title_is_drawn_without_glyph_warnings(tmp_path, recwarn):
    predictions, golds = _synthetic(50, 0, sharpen=3.0)
    png = plot_reliability(calibrate(collect_outcomes(predictions, golds, False, 0.0)), tmp_path / "r.png", "开发集.json")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [str(w.message) for w in recwarn if "missing from font" in str(w.message)] == []


def _random_decode(cfg: DecodeConfig, seed: int = 0):
    rng = np.random.default_rng(seed)
    context = " ".join(f"{chr(97 + i % 26)}{i // 26}" for i in range(40))  # a0 b0 ... n1: word i at 3i
    windows = [[[-1, -1]] * 3 + [[3 * i, 3 * i + 2] for i in range(start, start + 20)] + [[-1, -1]]
               for start in (0, 10, 20)]
    ids = ["a", "a", "b", "c", "c", "c"][: len(windows) * 2]
    offsets = pad_offsets([windows[i % 3] for i in range(len(ids))])
    start_logits, end_logits = (rng.normal(0, 2.0, size=offsets.shape[:2]).astype(np.float32) for _ in range(2))
    return decode(ids, offsets, start_logits, end_logits, dict.fromkeys("abc", context), cfg)


@pytest.mark.parametrize("allow_null", [False, True])
def test_temperature_and_null_bias_change_probabilities_only(allow_null):
    plain = _random_decode(DecodeConfig(allow_null=allow_null))
    calibrated = _random_decode(DecodeConfig(allow_null=allow_null, temperature=2.5, null_bias=1.5))
    temperature, bias = 2.5, 1.5
    for qid, p in plain.items():
        q = calibrated[qid]
        assert (q.text, q.start, q.end, q.score, q.null_score, q.null_odds) == (
            p.text, p.start, p.end, p.score, p.null_score, p.null_odds)
        assert [(c["text"], c["start"], c["score"]) for c in q.nbest] == [(c["text"], c["start"], c["score"]) for c in p.nbest]
        # the softmax of score / T, and of (null score + b) / T for the null candidate, computed here independently
        logits = np.array([(c["score"] + (bias if c["start"] == -1 else 0.0)) / temperature for c in q.nbest])
        expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert [c["probability"] for c in q.nbest] == pytest.approx(expected.tolist())
        assert q.probability != pytest.approx(p.probability)
        assert (q.no_answer_probability is None) == (not allow_null)


def test_the_fit_sees_the_probabilities_the_decoder_gives():
    """collect_outcomes' probabilities at (T, b) are Prediction.probability decoded with them, also where the null
    rule answers ""."""
    cfg = DecodeConfig(allow_null=True, null_score_diff_threshold=-1.0)  # some nulls
    predictions = _random_decode(cfg)
    golds = [{"id": qid, "answers": ["d0"], "is_impossible": False} for qid in predictions]
    outcomes = collect_outcomes(predictions, golds, True, cfg.null_score_diff_threshold)
    decoded = _random_decode(DecodeConfig(allow_null=True, null_score_diff_threshold=-1.0, temperature=1.7, null_bias=-0.6))
    answer, null = outcomes.probabilities(1.7, -0.6)
    assert answer.tolist() == pytest.approx([decoded[qid].probability for qid in outcomes.ids])
    assert null.tolist() == pytest.approx([decoded[qid].no_answer_probability for qid in outcomes.ids])
    assert outcomes.correct.tolist() == [decoded[qid].text == "d0" for qid in outcomes.ids]


def test_halves_by_article_keep_an_article_together():
    records = [{"id": f"{title}{i}", "title": title, "context": f"context of {title}", "question": "q?", "is_impossible": True,
                "answers": {"text": [], "answer_start": []}} for title, n in (("a", 3), ("b", 2), ("c", 2), ("d", 1))
               for i in range(n)]
    first, second = halves_by_article(to_dataset(records))
    assert first | second == {r["id"] for r in records} and not first & second
    for title in "abcd":
        ids = {r["id"] for r in records if r["title"] == title}
        assert ids <= first or ids <= second
    assert sorted((len(first), len(second))) == [4, 4]
    with pytest.raises(DataError, match="dev.json: one article .* --calibrate-split fits on some articles"):
        halves_by_article(to_dataset([r for r in records if r["title"] == "a"]), "dev.json")


@pytest.fixture(scope="module")
def trained_run(tiny_bert_dir, tmp_path_factory):
    from mrc_cli.training import train

    cfg = tiny_run_config(tiny_bert_dir, str(tmp_path_factory.mktemp("run") / "run"), max_steps=4, save_steps=4)
    return train(cfg).run_dir


def _last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_eval_calibrate_stores_the_fit_and_predict_and_the_reader_use_it(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    questions = [(qa["question"], p["context"]) for a in json.load(open(DEV, encoding="utf-8"))["data"]
                 for p in a["paragraphs"] for qa in p["qas"]]
    before = Reader.load(run)(question=[q for q, _ in questions], context=[c for _, c in questions])
    runner = CliRunner()
    result = runner.invoke(app, ["predict", "--checkpoint", str(run), "--data", DEV, "--out", str(tmp_path / "before.json")])
    assert result.exit_code == 0, result.output

    result = runner.invoke(app, ["eval", "--checkpoint", str(run), "--data", DEV, "--out", str(tmp_path / "eval"), "--calibrate"])
    assert result.exit_code == 0, result.output
    metrics = _last_json(result.stdout)
    assert metrics["calibration_questions"] == metrics["calibration_fit_questions"] == 49
    assert metrics["metric"] == "squad_v2"  # the eval line names the official rules it scored by
    assert metrics["calibration_held_out"] is False and "optimistic" in result.stdout
    assert 0 <= metrics["ece_after"] <= metrics["ece_before"] <= 1 and metrics["calibration_stored"] is True
    assert 0 <= metrics["no_answer_ece_after"] <= 1  # the quickstart dev file has unanswerable questions
    png = tmp_path / "eval" / "reliability.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    report = json.loads((tmp_path / "eval" / "calibration.json").read_text())
    assert report["ece_before"] == pytest.approx(metrics["ece_before"])
    assert sum(row["count"] for row in report["reliability"]["after"]) == 49

    stored = yaml.safe_load((run / "checkpoints" / "step-000004" / "config.yaml").read_text())["decode"]
    assert stored["temperature"] == pytest.approx(metrics["temperature"]) and stored["temperature"] != 1.0
    assert stored["null_bias"] == pytest.approx(metrics["null_bias"])
    result = runner.invoke(app, ["predict", "--checkpoint", str(run), "--data", DEV, "--out", str(tmp_path / "after.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "after.json").read_text()) == json.loads((tmp_path / "before.json").read_text())
    after = Reader.load(run)(question=[q for q, _ in questions], context=[c for _, c in questions])
    assert [(a["answer"], a["start"], a["null_odds"]) for a in after] == [(a["answer"], a["start"], a["null_odds"]) for a in before]
    assert [a["probability"] for a in after] != pytest.approx([a["probability"] for a in before])
    # the ECE after, recomputed from what the Reader now says, on the same questions
    golds = [{"answers": [answer["text"] for answer in qa["answers"]], "is_impossible": qa.get("is_impossible", False)}
             for a in json.load(open(DEV, encoding="utf-8"))["data"] for p in a["paragraphs"] for qa in p["qas"]]
    right = [score_question(gold, a["answer"], "squad_v2")[0] for gold, a in zip(golds, after)]
    ece = expected_calibration_error(np.array([a["probability"] for a in after]), np.array(right))
    assert ece == pytest.approx(metrics["ece_after"])
    # an eval into the same folder without --calibrate replaces the folder's files: no calibration of another run
    result = runner.invoke(app, ["eval", "--checkpoint", str(run), "--data", DEV, "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "eval" / "calibration.json").exists() and not png.exists()


def test_eval_calibrate_split_fits_on_half_the_articles(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(run), "--data", DEV, "--out", str(tmp_path / "eval"),
                                      "--calibrate", "--calibrate-split"])
    assert result.exit_code == 0, result.output
    metrics = _last_json(result.stdout)
    assert metrics["calibration_held_out"] is True and "held-out articles" in result.stdout
    assert metrics["calibration_fit_questions"] + metrics["calibration_questions"] == 49
    assert min(metrics["calibration_fit_questions"], metrics["calibration_questions"]) >= 15


def test_a_fit_that_makes_ece_worse_is_not_kept(trained_run, tmp_path, monkeypatch):
    """The fit minimises log loss; where ECE still comes out worse (a few dozen questions), the model keeps its
    settings and the line says so."""
    from mrc_cli import calibration

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = run / "checkpoints" / "step-000004" / "config.yaml"
    before = config.read_text()
    monkeypatch.setattr(calibration, "fit_calibration", lambda outcomes, bias: (0.05, 0.0))  # far too sharp
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(run), "--data", DEV, "--out", str(tmp_path / "eval"),
                                      "--calibrate"])
    assert result.exit_code == 0, result.output
    metrics = _last_json(result.stdout)
    assert metrics["ece_after"] > metrics["ece_before"] and metrics["calibration_stored"] is False
    assert "(not stored: it would make ECE worse" in result.stdout and config.read_text() == before
    # the line shows both errors the decision weighed (the dev file has unanswerable questions)
    assert (f"ECE {metrics['ece_before']:.3f} -> {metrics['ece_after']:.3f}, no-answer ECE "
            f"{metrics['no_answer_ece_before']:.3f} -> {metrics['no_answer_ece_after']:.3f} on 49 questions") in result.stdout


def test_calibrate_split_alone_is_refused(trained_run):
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(trained_run), "--data", DEV, "--calibrate-split"])
    assert result.exit_code == 1 and "give --calibrate too" in result.stderr


def test_a_calibrate_split_refused_for_one_article_stores_no_threshold_first(trained_run, tmp_path, monkeypatch):
    import mrc_cli.reader

    # refused before the model answers: inference over a large file would be waited for in vain
    monkeypatch.setattr(mrc_cli.reader, "run_inference", lambda *args: pytest.fail("answered before the refusal"))
    run = shutil.copytree(trained_run, tmp_path / "run")
    configs = {path: path.read_text() for path in run.rglob("config.yaml")}
    one = tmp_path / "one.json"
    data = json.loads(open(DEV, encoding="utf-8").read())
    one.write_text(json.dumps({**data, "data": data["data"][:1]}), encoding="utf-8")  # 5 questions, 1 unanswerable
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(run), "--data", str(one), "--out", str(tmp_path / "e"),
                                      "--calibrate", "--calibrate-split", "--store-threshold"])
    assert result.exit_code == 1 and "one article (and context) only" in result.stderr
    assert {path: path.read_text() for path in run.rglob("config.yaml")} == configs


@pytest.mark.parametrize(("key", "value", "message"), [
    ("temperature", "0", "decode.temperature divides the answer scores: a number > 0"),
    ("temperature", "-2", "a number > 0"),
    ("temperature", ".nan", "a number > 0"),
    ("null_bias", ".inf", "decode.null_bias is added to the null score: a finite number"),
])
def test_bad_calibration_settings_are_refused(key, value, message, tmp_path):
    result = CliRunner().invoke(app, ["train", "--dry-run", "--set", f"decode.{key}={value}"])
    assert result.exit_code == 1 and message in result.output and "--set" in result.output
    config = tmp_path / "config.yaml"
    config.write_text(f"decode:\n  {key}: {value}\n")
    with pytest.raises(ConfigError, match=f"{config}: .*{message}"):
        load_config(config)
    assert DecodeConfig().temperature == 1.0 and DecodeConfig().null_bias == 0.0


def test_a_saved_ensemble_keeps_its_calibration(trained_run, tmp_path):
    runner = CliRunner()
    saved = tmp_path / "saved"
    result = runner.invoke(app, ["ensemble", "--checkpoint", str(trained_run), "--checkpoint", str(trained_run),
                                 "--data", DEV, "--out", str(tmp_path / "ens"), "--save", str(saved)])
    assert result.exit_code == 0, result.output
    question, context = "What is it?", json.load(open(DEV, encoding="utf-8"))["data"][0]["paragraphs"][0]["context"]
    before = Reader.load(saved)(question=question, context=context)
    result = runner.invoke(app, ["eval", "--checkpoint", str(saved), "--data", DEV, "--out", str(tmp_path / "eval"), "--calibrate"])
    assert result.exit_code == 0, result.output
    metrics = _last_json(result.stdout)
    stored = yaml.safe_load((saved / "ensemble.yaml").read_text())["decode"]
    assert (stored["temperature"], stored["null_bias"]) == pytest.approx((metrics["temperature"], metrics["null_bias"]))
    after = Reader.load(saved)(question=question, context=context)
    assert (after["answer"], after["start"]) == (before["answer"], before["start"])
    assert after["probability"] != pytest.approx(before["probability"])


def test_the_benchmarks_nbest_cross_entropy_fit_finds_the_known_temperature_too():
    """bench_calibration's other fit (the right candidate as the n-best target) is sound where every question has
    its right answer in the list: it finds the temperature and bias the synthetic model was built with."""
    from bench.bench_calibration import nbest_targets

    predictions, golds = _synthetic(2000, 0, 3.0, with_null=True, null_shift=2.0)
    nbest = nbest_targets(collect_outcomes(predictions, golds, True, 0.0), predictions, {g["id"]: g for g in golds})
    assert (nbest.target == -2).sum() == 0
    temperature, null_bias = fit_calibration(nbest)
    assert temperature == pytest.approx(3.0, rel=0.1) and null_bias == pytest.approx(2.0, abs=0.5)
