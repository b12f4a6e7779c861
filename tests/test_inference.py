"""Train -> eval -> predict -> export -> Reader: the same answers everywhere, from the CLI and from Python."""

import dataclasses
import json
import re
import sys

import pytest
from typer.testing import CliRunner

from conftest import tiny_run_config
from mrc_cli import Reader
from mrc_cli.cli import app
from mrc_cli.errors import CheckpointError, ConfigError
from mrc_cli.scoring import score_files
from mrc_cli.training import train

DEV = "data/quickstart/en_dev.json"


@pytest.fixture(scope="module")
def trained_run(tiny_bert_dir, tmp_path_factory):
    cfg = tiny_run_config(tiny_bert_dir, str(tmp_path_factory.mktemp("run") / "run"), max_steps=4, save_steps=2, eval_steps=2)
    return train(cfg).run_dir


def _dev_questions():
    data = json.load(open(DEV, encoding="utf-8"))["data"]
    return [(qa["id"], qa["question"], p["context"]) for a in data for p in a["paragraphs"] for qa in p["qas"]]


def test_eval_predict_export_and_reader_agree(trained_run, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "--checkpoint", str(trained_run), "--data", DEV, "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["total"] == 49 and 0 <= metrics["f1"] <= 100 and metrics["dev_loss"] > 0
    assert "best_f1_thresh" in metrics  # the dev set has unanswerable questions: SQuAD v2 rules
    assert re.search(r"Answering: .* 0/\d+ \[", result.stderr)  # a file's inference shows its progress bar
    # what became of the data: its validation and its windows, truncations counted (as preprocess prints them)
    assert re.search(r"\n49 examples -> \d+ features \(.*\); 0 questions truncated, 0 answers in no window\n",
                     result.stdout), result.stdout
    for name in ("predictions.json", "nbest.json", "null_odds.json", "metrics.json"):
        assert (tmp_path / "eval" / name).is_file()
    eval_answers = json.loads((tmp_path / "eval" / "predictions.json").read_text())

    result = runner.invoke(app, ["predict", "--checkpoint", str(trained_run), "--data", DEV, "--out", str(tmp_path / "sub.json")])
    assert result.exit_code == 0, result.output
    submission = json.loads((tmp_path / "sub.json").read_text())
    assert submission == eval_answers

    result = runner.invoke(app, ["export", "--checkpoint", str(trained_run), "--out", str(tmp_path / "export")])
    assert result.exit_code == 0, result.output
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    hf_model = AutoModelForQuestionAnswering.from_pretrained(str(tmp_path / "export"))
    assert type(hf_model).__name__ == "BertForQuestionAnswering"
    AutoTokenizer.from_pretrained(str(tmp_path / "export"))

    questions = _dev_questions()
    for source in (trained_run, tmp_path / "export"):
        reader = Reader.load(source)
        answers = reader(question=[q for _, q, _ in questions], context=[c for _, _, c in questions])
        assert [a["answer"] for a in answers] == [submission[qid] for qid, _, _ in questions]
    one = Reader.load(tmp_path / "export")(question=questions[0][1], context=questions[0][2])
    assert one["answer"] == submission[questions[0][0]]
    assert set(one) == {"answer", "score", "start", "end", "null_odds", "probability", "no_answer_probability"}
    if one["answer"]:
        assert questions[0][2][one["start"]:one["end"]] == one["answer"]
    # probabilities from the n-best list: of the answer given and of the null candidate (a SQuAD v2 model)
    nbest = json.loads((tmp_path / "eval" / "nbest.json").read_text())
    for (qid, _, _), answer in zip(questions, answers):
        given = next(c for c in nbest[qid] if c["text"] == answer["answer"])
        null = next(c for c in nbest[qid] if c["start"] == -1)
        assert answer["probability"] == pytest.approx(given["probability"]) and 0 < answer["probability"] <= 1
        assert answer["no_answer_probability"] == pytest.approx(null["probability"])


def test_eval_and_predict_leave_out_an_empty_question_and_say_so(trained_run, tmp_path):
    data = json.load(open(DEV, encoding="utf-8"))
    emptied = data["data"][0]["paragraphs"][0]["qas"][0]
    emptied["question"] = " "
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    runner = CliRunner()

    result = runner.invoke(app, ["eval", "--checkpoint", str(trained_run), "--data", str(path), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert "1 questions left out of eval (empty question text; scored as missing)" in result.stdout
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert (metrics["total"], metrics["missing"]) == (49, 1)  # its gold answers still count, as in the official scorer
    assert emptied["id"] not in json.loads((tmp_path / "eval" / "predictions.json").read_text())

    result = runner.invoke(app, ["predict", "--checkpoint", str(trained_run), "--data", str(path), "--out", str(tmp_path / "sub.json")])
    assert result.exit_code == 0, result.output
    assert "1 questions left out of predict (empty question text; not in the predictions)" in result.stdout
    submission = json.loads((tmp_path / "sub.json").read_text())
    assert len(submission) == 48 and emptied["id"] not in submission


def test_a_submission_answers_an_id_with_spaces_around_it_also_under_the_stripped_id(trained_run, tmp_path):
    """The official CMRC 2018 script looks answers up by the stripped id, SQuAD's by the id as given: both find it,
    and mrc score counts the copy as no unknown id."""
    data = json.load(open(DEV, encoding="utf-8"))
    spaced = data["data"][0]["paragraphs"][0]["qas"][0]
    spaced["id"] = f" {spaced['id']} "
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    result = CliRunner().invoke(app, ["predict", "--checkpoint", str(trained_run), "--data", str(path),
                                      "--out", str(tmp_path / "sub.json")])
    assert result.exit_code == 0, result.output
    submission = json.loads((tmp_path / "sub.json").read_text())
    assert len(submission) == 50 and submission[spaced["id"]] == submission[spaced["id"].strip()]
    scores, _ = score_files(str(path), str(tmp_path / "sub.json"))
    assert (scores["missing"], scores["unknown_ids"]) == (0, 0)


def test_a_question_without_any_span_writes_json_that_strict_parsers_read(trained_run, tmp_path):
    """A context the tokenizer drops entirely (a lone accent, uncased) leaves no span: its null odds are infinite,
    which Python's json writes as Infinity, a token jq and JavaScript refuse. Written as the largest float, the
    order against any threshold holds, and `mrc score` on the folder agrees with eval."""
    data = json.load(open(DEV, encoding="utf-8"))
    data["data"][0]["paragraphs"].append({"context": "\u0301", "qas": [
        {"id": "accent", "question": "What is it?", "is_impossible": True, "answers": []}]})
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "--checkpoint", str(trained_run), "--data", str(path), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output

    def strict(text):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))

    metrics = strict(result.stdout.strip().splitlines()[-1])
    files = {name: strict((tmp_path / "eval" / name).read_text()) for name in
             ("predictions.json", "nbest.json", "null_odds.json", "metrics.json")}
    assert files["predictions.json"]["accent"] == "" and files["null_odds.json"]["accent"] == sys.float_info.max
    assert max(files["null_odds.json"].values()) == sys.float_info.max
    scored = runner.invoke(app, ["score", str(path), str(tmp_path / "eval")])
    assert scored.exit_code == 0, scored.output
    rescored = strict(scored.stdout.strip().splitlines()[-1])
    assert (rescored["exact"], rescored["f1"]) == (metrics["exact"], metrics["f1"])
    from mrc_cli.scoring import read_json_map  # read back (k-fold's OOF threshold) as infinite odds again
    assert read_json_map(tmp_path / "eval" / "null_odds.json", float, "null odds")["accent"] == float("inf")


def test_eval_on_data_without_unanswerable_questions_answers_every_question(trained_run, tmp_path):
    """The run learnt the null rule from its v2 dev set; v1 data, where "" is always wrong, is scored answering every
    question, and the line says so; predict keeps the model's rule."""
    data = json.load(open(DEV, encoding="utf-8"))
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            paragraph["qas"] = [qa for qa in paragraph["qas"] if not qa.get("is_impossible")]
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    assert "allow_null: true" in (trained_run / "config.yaml").read_text()
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(trained_run), "--data", str(path), "--out",
                                      str(tmp_path / "eval"), "--store-threshold"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["metric"] == "squad" and "best_f1_thresh" not in metrics
    assert f"null threshold: not stored: {path} has no unanswerable questions to choose one on" in result.stdout
    assert ("null answers: off for this data, which has no unanswerable questions; the model's own (on) stays for mrc "
            "predict") in result.stdout
    answers = json.loads((tmp_path / "eval" / "predictions.json").read_text())
    assert len(answers) == metrics["total"] and all(answers.values())
    # only for the scoring: an ensemble saved after it keeps its reference's rule, as the line says
    saved = CliRunner().invoke(app, ["ensemble", "--checkpoint", str(trained_run), "--data", str(path), "--out",
                                     str(tmp_path / "ens"), "--save", str(tmp_path / "saved")])
    assert saved.exit_code == 0, saved.output
    import yaml

    assert yaml.safe_load((tmp_path / "saved" / "ensemble.yaml").read_text())["decode"]["allow_null"] is True

    # the other way round: a model without the rule, on v2 data, is scored with it and told what predict will do
    import shutil

    from mrc_cli.checkpoint import resolve_checkpoint
    from mrc_cli.config import load_config, save_config

    run = shutil.copytree(trained_run, tmp_path / "run", symlinks=True)
    config = resolve_checkpoint(run) / "config.yaml"
    cfg = load_config(config)
    cfg.decode.allow_null = False
    save_config(cfg, config)
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(run), "--data", DEV, "--out", str(tmp_path / "v2")])
    assert result.exit_code == 0, result.output
    assert "null answers: on for this data, which has unanswerable questions; the model's own is off" in result.stdout
    # the two together: the reference's rule decides, on null scores the rule-less member never trained
    both = CliRunner().invoke(app, ["ensemble", "--checkpoint", str(trained_run), "--checkpoint", str(run), "--data",
                                    DEV, "--out", str(tmp_path / "both")])
    assert both.exit_code == 0, both.output
    assert "warning: member(s) 2 answer every question (trained without unanswerable questions)" in both.stdout
    assert "best_f1_thresh" in json.loads(result.stdout.strip().splitlines()[-1])


def test_eval_scores_by_the_rules_asked_for(trained_run, tmp_path):
    """Chinese data with unanswerable questions: CMRC rules have none, so eval refuses it before any work, naming the
    way out; --metric squad_v2 scores it (as `mrc score --metric` does a predictions file)."""
    from conftest import write_squad

    path = write_squad(tmp_path / "zh.json", [("北京是中国的首都，上海是最大的城市。", [
        {"id": "a", "question": "首都是哪里？", "answers": [{"text": "北京", "answer_start": 0}]},
        {"id": "none", "question": "人口多少？", "answers": [], "is_impossible": True}])])
    runner = CliRunner()
    refused = runner.invoke(app, ["eval", "--checkpoint", str(trained_run), "--data", str(path), "--out",
                                  str(tmp_path / "a")])
    assert refused.exit_code == 1 and "mrc eval --metric squad_v2" in refused.stderr
    scored = runner.invoke(app, ["eval", "--checkpoint", str(trained_run), "--data", str(path), "--out",
                                 str(tmp_path / "b"), "--metric", "squad_v2"])
    assert scored.exit_code == 0, scored.output
    metrics = json.loads(scored.stdout.strip().splitlines()[-1])
    assert metrics["metric"] == "squad_v2" and metrics["total"] == 2 and "best_f1_thresh" in metrics
    english = runner.invoke(app, ["eval", "--checkpoint", str(trained_run), "--data", DEV, "--out", str(tmp_path / "c"),
                                  "--metric", "squad"])
    assert english.exit_code == 1 and "the squad rules asked for have no unanswerable questions" in english.stderr


def test_exported_hf_model_gives_the_same_logits(trained_run, tmp_path):
    import torch
    from transformers import AutoModelForQuestionAnswering

    from mrc_cli.export import export_checkpoint
    from mrc_cli.loading import load_trained

    export_checkpoint(str(trained_run), str(tmp_path / "export"))
    ours = load_trained(trained_run)
    theirs = AutoModelForQuestionAnswering.from_pretrained(str(tmp_path / "export")).eval()
    batch = ours.tokenizer(["Who?"], ["The cat sat on the mat."], return_tensors="pt")
    with torch.no_grad():
        a = ours.model(**batch)
        b = theirs(**batch)
    assert torch.allclose(a.start_logits, b.start_logits, atol=1e-5)
    assert torch.allclose(a.end_logits, b.end_logits, atol=1e-5)


def test_store_threshold_is_used_by_predict(trained_run, tmp_path):
    run = tmp_path / "copy"
    import shutil

    shutil.copytree(trained_run, run)
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "--checkpoint", str(run), "--data", DEV, "--store-threshold"])
    assert result.exit_code == 0, result.output
    best = json.loads(result.stdout.strip().splitlines()[-1])["best_f1_thresh"]
    from mrc_cli.loading import load_trained

    decode = load_trained(run).cfg.decode
    assert decode.null_score_diff_threshold == pytest.approx(best) and decode.null_threshold_from == "dev"
    assert "threshold_report" not in json.loads(result.stdout.strip().splitlines()[-1])  # reported for oof ones only


def test_storing_the_threshold_never_leaves_half_a_config(trained_run, tmp_path, monkeypatch):
    """A checkpoint's config.yaml is what resume and eval read: a write cut short by a full disk keeps the old file."""
    import errno
    import shutil
    from pathlib import Path

    from mrc_cli.loading import load_trained
    from mrc_cli.thresholds import store_threshold

    checkpoint = tmp_path / "step"
    shutil.copytree(trained_run / "checkpoints" / "step-000004", checkpoint)
    before = (checkpoint / "config.yaml").read_text()
    loaded = load_trained(checkpoint)

    def half_then_disk_full(self, text, *args, **kwargs):
        Path.write_bytes(self, text.encode()[: len(text) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as full_disk:
        full_disk.setattr(Path, "write_text", half_then_disk_full)
        with pytest.raises(OSError, match="No space left"):
            store_threshold(loaded.path, loaded.cfg, 0.25, "dev")
    assert (checkpoint / "config.yaml").read_text() == before
    assert sorted(p.name for p in checkpoint.iterdir() if p.name.startswith(".")) == []  # no temporary file left

    store_threshold(loaded.path, loaded.cfg, 0.25, "dev")
    assert load_trained(checkpoint).cfg.decode.null_score_diff_threshold == 0.25


def test_eval_of_a_file_for_a_checkpoint_names_the_checkpoint_not_the_default_out():
    result = CliRunner().invoke(app, ["eval", "--checkpoint", DEV, "--data", DEV])
    # a data file: its folder is not a model's, so it is not offered
    assert result.exit_code == 1 and result.stderr == (f"Error: {DEV}: a file; pass a checkpoint folder, a run "
                                                       "directory or an `mrc export` folder\n")


def test_checkpoint_folder_without_weights_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no model.safetensors here"):
        Reader.load(tmp_path / "empty")
    result = CliRunner().invoke(app, ["predict", "--checkpoint", str(tmp_path / "empty"), "--data", DEV, "--out", str(tmp_path / "x.json")])
    assert result.exit_code == 1 and result.stderr.startswith("Error:") and "no model.safetensors" in result.stderr


def test_a_model_without_its_own_tokenizer_is_refused(trained_run, tmp_path):
    """A folder of config.json and weights alone gave a tokenizer of the 5 special tokens (every word unknown, every
    answer "."); another model's larger vocabulary an IndexError traceback in the first forward pass."""
    import shutil

    from mrc_cli.checkpoint import resolve_checkpoint
    from mrc_cli.export import export_checkpoint
    from mrc_cli.tokenizer import load_tokenizer

    export = export_checkpoint(str(trained_run), str(tmp_path / "export"))
    (tmp_path / "bare").mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(export / name, tmp_path / "bare" / name)
    with pytest.raises(ConfigError, match="bare'?: the folder has no tokenizer files"):
        Reader.load(tmp_path / "bare")
    checkpoint = shutil.copytree(resolve_checkpoint(trained_run), tmp_path / "checkpoint")
    tokenizer = load_tokenizer(str(checkpoint / "tokenizer"))
    tokenizer.add_tokens([f"extra{i}" for i in range(40)])
    tokenizer.save_pretrained(checkpoint / "tokenizer")
    with pytest.raises(CheckpointError, match=f"tokenizer: its tokenizer has {len(tokenizer):,} tokens, but the model "
                                              "has embeddings for"):
        Reader.load(checkpoint)


def test_a_runs_checkpoints_folder_is_refused_naming_what_to_pass(trained_run):
    with pytest.raises(CheckpointError, match=re.escape(
            f"{trained_run / 'checkpoints'}: a folder of checkpoints; pass one of them (the newest: "
            f"{trained_run / 'checkpoints' / 'step-000004'}) or the run directory ({trained_run}: its best checkpoint)")):
        Reader.load(trained_run / "checkpoints")


def test_a_plain_hugging_face_qa_folder_loads_with_default_settings(trained_run, tmp_path):
    from mrc_cli.export import export_checkpoint

    folder = export_checkpoint(str(trained_run), str(tmp_path / "hf"))
    (folder / "mrc_cli.yaml").unlink()  # now just what AutoModelForQuestionAnswering.save_pretrained would leave
    reader = Reader.load(folder)
    assert reader.loaded.cfg.decode.allow_null is False and reader.loaded.cfg.model.name_or_path == str(folder)
    answer = reader(question="Where does the cat sit?", context="The cat sat on the mat.")
    assert answer["answer"] and answer["answer"] in "The cat sat on the mat."


def test_the_reader_takes_texts_and_lists_and_says_what_is_wrong_with_the_rest(trained_run):
    reader = Reader.load(trained_run)
    context, other = "The cat sat on the mat.", "The dog lay under the table."
    one = reader(question="Where does the cat sit?", context=context)
    assert isinstance(one, dict) and one["answer"] in context
    many = reader(question="Where?", context=[context, other])  # one question about several contexts
    assert [a["answer"] in c for a, c in zip(many, (context, other))] == [True, True]
    assert many[0] == reader(question=["Where?"], context=context)[0]
    assert reader(question=[], context=context) == []
    assert reader(question=(q for q in ["Where?"]), context=context)[0] == many[0]  # any iterable of texts
    for question, context_, error, message in (
            (None, context, TypeError, "question: a string or a list of strings, not NoneType"),
            ("Where?", b"The cat.", TypeError, "context: a string or a list of strings, not bytes"),
            (["Where?", 3], context, TypeError, "question: a list of strings, but item 1 is int"),
            ("Where?", {"The cat.": 1}, TypeError, "context: a string or a list of strings, not dict"),
            ("Where?", "\u200b", ValueError, "context is empty or only whitespace (or invisible characters)"),
            ("  ", [context, other], ValueError, "question is empty"),
            (["Who?", ""], context, ValueError, "question [1] is empty"),
            (["a?", "b?"], [context] * 3, ValueError, "2 questions but 3 contexts")):
        with pytest.raises(error, match=re.escape(message)):
            reader(question=question, context=context_)
    # a batch size of 0 or less ran no batch: answers made up from logits of 0
    for size, error, message in ((-1, ValueError, "batch_size must be 1 or more, got -1"),
                                 (0, ValueError, "batch_size must be 1 or more, got 0"),
                                 ("8", TypeError, "batch_size: a whole number, not str")):
        with pytest.raises(error, match=message):
            Reader(reader.loaded, batch_size=size)
    assert Reader(reader.loaded, batch_size=1)(question="Where does the cat sit?", context=context) == one
    with pytest.raises(TypeError, match=re.escape("Reader takes a loaded model, not str: Reader.load(path)")):
        Reader(str(trained_run))


def test_evaluate_file_from_python_checks_what_the_cli_checks(trained_run, tmp_path):
    from mrc_cli.reader import ensemble_file, evaluate_file

    with pytest.raises(ConfigError, match="--metric: data.metric: expected one of auto, squad, squad_v2, cmrc2018, "
                                          "got 'squad2'"):
        evaluate_file(str(trained_run), DEV, str(tmp_path / "a"), metric="squad2")
    with pytest.raises(ConfigError, match="give --calibrate too"):
        evaluate_file(str(trained_run), DEV, str(tmp_path / "b"), calibrate_split=True)
    with pytest.raises(ConfigError, match="give --save DIR too"):
        ensemble_file([str(trained_run)], DEV, str(tmp_path / "c"), copy_members=True)


def test_bf16_close_calls_are_decided_in_fp32(trained_run, monkeypatch):
    """A question whose best answers are within decode.recheck_margin is decided again from fp32 logits: with every
    question a close call and no cap, bf16 inference answers exactly as fp32 does; the cap bounds the rerun; with the
    margin at 0 nothing is rerun."""
    from accelerate import Accelerator

    import mrc_cli.inference as inference
    from mrc_cli.splits import featurize_file
    from mrc_cli.loading import load_trained

    loaded = load_trained(trained_run)
    split = featurize_file(DEV, loaded.tokenizer, loaded.cfg.data, "eval")
    cfg, accelerator = loaded.cfg, Accelerator(cpu=True)
    cfg.decode.allow_null = True
    _, fp32 = inference.predict_answers(loaded.model, split, cfg, accelerator, "no")
    runs = []
    original = inference.predict_logits
    monkeypatch.setattr(inference, "predict_logits",
                        lambda model, features, *args: runs.append((len(features), args[2])) or original(model, features, *args))

    cfg.decode.recheck_margin = 1e9
    with monkeypatch.context() as no_cap:
        no_cap.setattr(inference, "RECHECK_MAX_SHARE", 1.0)
        _, rechecked = inference.predict_answers(loaded.model, split, cfg, accelerator, "bf16")
    assert runs == [(len(split.features), "bf16"), (len(split.features), "no")]
    assert {q: p.text for q, p in rechecked.items()} == {q: p.text for q, p in fp32.items()}
    assert all(abs(rechecked[q].score - p.score) < 1e-4 for q, p in fp32.items() if p.text)

    runs.clear()  # an undertrained model's close calls everywhere: at most RECHECK_MAX_SHARE of the windows rerun
    monkeypatch.setattr(inference, "RECHECK_MIN_WINDOWS", 1)
    inference.predict_answers(loaded.model, split, cfg, accelerator, "bf16")
    assert runs[0] == (len(split.features), "bf16") and len(runs) == 2
    assert 0 < runs[1][0] <= inference.RECHECK_MAX_SHARE * len(split.features)

    # or RECHECK_MIN_WINDOWS: one question alone (a Reader call) is rechecked as in a file, not left to bf16
    monkeypatch.setattr(inference, "RECHECK_MIN_WINDOWS", 32)
    first = split.examples[0]["id"]
    rows = [i for i, qid in enumerate(split.features["example_id"]) if qid == first]
    one = dataclasses.replace(split, examples=split.examples.select([0]), golds=split.golds[:1],
                              features=split.features.select(rows))
    runs.clear()
    _, alone = inference.predict_answers(loaded.model, one, cfg, accelerator, "bf16")
    assert runs == [(len(rows), "bf16"), (len(rows), "no")] and alone[first].text == fp32[first].text

    runs.clear()
    cfg.decode.recheck_margin = 0.0
    inference.predict_answers(loaded.model, split, cfg, accelerator, "bf16")
    assert runs == [(len(split.features), "bf16")]


def test_a_model_trained_with_a_cache_folder_of_another_machine_caches_on_this_one(trained_run, tiny_bert_dir, tmp_path,
                                                                                     monkeypatch):
    """A checkpoint copied from a machine with another data.cache_dir: eval uses this machine's cache ($MRC_CACHE_DIR,
    else the default, with a note), not a traceback; a run given a cache folder it cannot make is refused before
    any work."""
    import shutil

    import yaml

    copied = tmp_path / "copied"
    shutil.copytree(trained_run, copied)
    for config in copied.rglob("config.yaml"):
        settings = yaml.safe_load(config.read_text())
        settings["data"]["cache_dir"] = "/proc/elsewhere/cache"  # /proc: cannot be made, also by root
        config.write_text(yaml.safe_dump(settings))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MRC_CACHE_DIR", raising=False)
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "--checkpoint", str(copied), "--data", DEV, "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert "was trained with data.cache_dir /proc/elsewhere/cache, which cannot be made" in result.stderr
    assert list((tmp_path / "home" / ".cache" / "mrc-cli" / "features").glob("*.arrow"))
    monkeypatch.setenv("MRC_CACHE_DIR", str(tmp_path / "mine"))
    result = runner.invoke(app, ["predict", "--checkpoint", str(copied), "--data", DEV, "--out", str(tmp_path / "s.json")])
    assert result.exit_code == 0 and "data.cache_dir" not in result.stderr, result.output
    assert list((tmp_path / "mine" / "features").glob("*.arrow"))
    assert json.loads((tmp_path / "s.json").read_text()) == json.loads((tmp_path / "a" / "predictions.json").read_text())
    result = runner.invoke(app, ["train", "--model", tiny_bert_dir,
                                 "--train", DEV, "--output-dir", str(tmp_path / "run"),
                                 "--set", "data.cache_dir=/proc/elsewhere/cache"])
    assert result.exit_code == 1 and result.stderr.startswith(
        "Error: the cache folder /proc/elsewhere/cache cannot be made (No such file or directory): set data.cache_dir "
        "(--set data.cache_dir=DIR) to a folder you can write"), result.output
    assert not (tmp_path / "run").exists()


def test_a_full_disk_leaves_the_previous_answer_files_whole(tmp_path, monkeypatch):
    """A write cut short (a disk that filled) leaves the file as it was, not half of the new one, and no temporary."""
    from pathlib import Path

    from mrc_cli.inference import write_answer_files

    write_answer_files(tmp_path, {"q": "old"}, {"q": [{"text": "old"}]}, {"q": 0.5})
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}
    real = Path.write_text

    def half_then_full(path, text, *args, **kwargs):
        if "nbest" in path.name:
            real(path, text[:len(text) // 2], *args, **kwargs)
            raise OSError(28, "No space left on device", str(path))
        return real(path, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", half_then_full)
    with pytest.raises(OSError, match="No space left"):
        write_answer_files(tmp_path, {"q": "new"}, {"q": [{"text": "new answer " * 50}]}, {"q": 0.7})
    assert (tmp_path / "nbest.json").read_text() == before["nbest.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)  # no temporary file left
