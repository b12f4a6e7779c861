"""The catalogue of broken inputs, through the CLI: each gets a one-paragraph error and exit 1, or a counted repair.

No case may print a traceback; every error names the file or flag and the problem.
"""

from __future__ import annotations

import bz2
import gzip
import json
import os

import pytest
from typer.testing import CliRunner

from conftest import write_squad
from mrc_cli.cli import app

runner = CliRunner()
GOOD_QA = {"id": "ok", "question": "Where does the cat sit?", "answers": [{"text": "the mat", "answer_start": 15}]}
CONTEXT = "The cat sat on the mat."


def _invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def _fails(result, *fragments):
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def _train(minilm_path, tmp_path, train_file, *flags):
    return _invoke("train", "--model", minilm_path, "--train", train_file, "--output-dir", tmp_path / "run",
                   "--set", f"data.cache_dir={tmp_path / 'cache'}", "--max-steps", "1", *flags)


# --- files that cannot be read ----------------------------------------------------------------------------------


@pytest.mark.parametrize("content, fragments", [
    (b'{"data": [{"paragraphs": [{"context": "abc", "qas": [', ["truncated.json", "not valid JSON (line 1", "truncated"]),
    (b'{"articles": []}', ["truncated.json", "expected SQuAD-style JSON", "found top-level articles"]),
    (json.dumps({f"q{i}": "an answer" for i in range(3000)}).encode(),
     ["truncated.json", "found top-level q0, q1, q2, q3, q4 and 2995 more keys (a predictions file {question id: "
                        "answer}? a gold data file goes first: mrc score GOLD PRED)"]),
    (b'\xff\xfe{\x00}\x00', ["truncated.json", "not UTF-8 text", "iconv"]),
    ('{"data": [{"title": "北京"'.encode()[:-2], ["truncated.json", "ends inside a character (byte 24 of 26)",
                                                   "truncated?"]),
    (b'', ["truncated.json", "the file is empty"]),
    (gzip.compress(b'{"data": []}'), ["truncated.json", "gzip-compressed; decompress it first (gunzip -k FILE)"]),
    (bz2.compress(b'{"data": []}'), ["truncated.json", "bzip2-compressed; decompress it first"]),
    (b"PAR1\x15\x04", ["truncated.json", "a Parquet file; convert it with datasets"]),
    (b"\x89PNG\r\n\x1a\n\x00\x00", ["truncated.json", "truncated.json: a PNG image, not a text file"]),
    (b'{}', ["truncated.json", "expected SQuAD-style JSON", "found an empty object"]),
    (b'{"version": "1.1", "data": []}', ["truncated.json", "no questions found"]),
    (b'{"data": [{"title": "t", "paragraphs": [{"context": "abc", "qas": []}]}]}', ["truncated.json", "no questions found"]),
])
def test_unreadable_files(minilm_path, tmp_path, content, fragments):
    path = tmp_path / "truncated.json"
    path.write_bytes(content)
    _fails(_train(minilm_path, tmp_path, path), *fragments)
    report = _invoke("validate", path, "--json")
    assert report.exit_code == 1 and fragments[1] in json.loads(report.stdout)["errors"][0]


def test_missing_fields_and_wrong_types_name_each_record(minilm_path, tmp_path):
    path = write_squad(tmp_path / "d.json", [(CONTEXT, [
        GOOD_QA, {"id": "no-question", "answers": []}, {"id": "number", "question": 7, "answers": []}])])
    _fails(_train(minilm_path, tmp_path, path), "not usable for train (2 problems)",
           "question no-question: missing field(s) question", "question number: field(s) question must be text",
           "mrc validate")


@pytest.mark.parametrize("answers, problem", [
    ({"text": 5}, "its text is the int 5, not a list"),
    ({"text": ["a"], "answer_start": 3}, "its answer_start is the int 3, not a list as long as its text (1)"),
    ({"text": ["a", "b"], "answer_start": [1]}, "its answer_start is a list of 1, not a list as long as its text (2)"),
    ([{"answer_start": 1}], "an answer without a text"),
    ("the mat", 'found the str "the mat"'),
    ([{"text": "the mat", "answer_start": "15th"}], 'answer_start must be a whole number, got the str "15th"'),
])
def test_malformed_answers_are_a_problem_of_their_record(tmp_path, answers, problem):
    path = write_squad(tmp_path / "d.json", [(CONTEXT, [GOOD_QA, {**GOOD_QA, "id": "odd", "answers": answers}])])
    report = _invoke("validate", path, "--for", "train", "--json")
    assert report.exit_code == 1
    error = json.loads(report.stdout)["errors"][0]
    assert "question odd: field 'answers' must be" in error and error.endswith(problem)


def test_a_squad_file_read_as_json_lines_is_one_error_not_one_a_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"data": [{"paragraphs": [{"context": CONTEXT, "qas": [GOOD_QA]}]}]}, indent=2))
    errors = json.loads(_invoke("validate", path, "--format", "jsonl", "--json").stdout)["errors"]
    assert len(errors) == 1 and "one JSON document over many lines, not JSON Lines" in errors[0]


def test_no_question_left_for_the_use_is_an_error(tmp_path):
    path = write_squad(tmp_path / "d.json", [(CONTEXT, [{**GOOD_QA, "question": " "}])])
    result = _invoke("validate", path, "--for", "predict")
    assert result.exit_code == 1 and "none of its 1 questions is left for predict" in result.stdout


def test_repairs_past_the_first_twenty_are_counted_in_the_listing(tmp_path):
    qas = [{"id": f"q{i}", "question": "Where?", "answers": [{"text": "the mat", "answer_start": 0}]} for i in range(25)]
    path = write_squad(tmp_path / "d.json", [(CONTEXT, qas)])
    report = json.loads(_invoke("validate", path, "--json").stdout)
    assert report["relocated"] == 25 and len(report["repairs"]) == 20 and report["repairs_not_listed"] == 5
    assert "... and 5 more (all counted above)" in _invoke("validate", path).stdout


def test_empty_question_and_context(minilm_path, tmp_path):
    path = write_squad(tmp_path / "d.json", [(CONTEXT, [GOOD_QA, {**GOOD_QA, "id": "empty", "question": " "}]),
                                             ("  ", [{**GOOD_QA, "id": "blank"}])])
    _fails(_train(minilm_path, tmp_path, path), "question empty: the question is empty", "question blank: the context is empty")


def test_duplicate_ids_warn_in_training_and_stop_prediction(minilm_path, tmp_path, tiny_bert_dir):
    path = write_squad(tmp_path / "d.json", [(CONTEXT, [GOOD_QA, GOOD_QA])])
    report = json.loads(_invoke("validate", path, "--for", "train", "--json").stdout)
    assert report["duplicate_ids"] == 1 and report["errors"] == [] and "occurs 2 times" in report["warnings"][0]
    _fails(_invoke("predict", "--checkpoint", tmp_path / "none", "--data", path, "--out", tmp_path / "p.json"),
           "no such checkpoint")  # the checkpoint is checked first; the data check follows in test_inference's run
    from mrc_cli.errors import DataError
    from mrc_cli.validate import load_examples

    with pytest.raises(DataError, match="question id ok occurs 2 times .*ambiguous"):
        load_examples(str(path), "predict")


# --- repairs that are counted, not errors -------------------------------------------------------------------------


def test_answers_not_in_the_context_or_past_its_end_are_counted(tmp_path):
    path = write_squad(tmp_path / "d.json", [(CONTEXT, [
        GOOD_QA,
        {"id": "elsewhere", "question": "q?", "answers": [{"text": "the mat", "answer_start": 2}]},
        {"id": "past-end", "question": "q?", "answers": [{"text": "mat", "answer_start": 999}]},
        {"id": "absent", "question": "q?", "answers": [{"text": "a dog", "answer_start": 4}]},
    ])])
    result = _invoke("validate", path, "--json")
    report = json.loads(result.stdout)
    assert result.exit_code == 0
    assert (report["misaligned"], report["relocated"], report["unlocatable"], report["left_out_of_training"]) == (3, 2, 1, 1)
    assert any("question absent" in r and "not in its context" in r for r in report["repairs"])


def test_huge_context_and_overlong_question_are_windowed_and_truncated(minilm_path, tmp_path):
    context = " ".join(f"sentence {i} tells of the river." for i in range(3500))  # ~110k characters
    answer_at = context.index("sentence 3000")
    question = "Which sentence " + "really " * 600 + "mentions three thousand?"
    path = write_squad(tmp_path / "huge.json", [(context, [
        {"id": "huge", "question": question, "answers": [{"text": "sentence 3000", "answer_start": answer_at}]}])])
    assert len(context) > 100_000
    result = _invoke("preprocess", "--model", minilm_path, "--data", path, "--set", f"data.cache_dir={tmp_path / 'cache'}")
    assert result.exit_code == 0, result.output
    assert "1 questions truncated" in result.stdout and "0 answers in no window" in result.stdout
    from mrc_cli.config import DataConfig
    from mrc_cli.splits import featurize_file
    from mrc_cli.tokenizer import load_tokenizer

    features = featurize_file(str(path), load_tokenizer(minilm_path), DataConfig(cache_dir=str(tmp_path / "cache")),
                              "train").features  # from the cache the command filled
    assert len(features) > 100 and max(len(ids) for ids in features["input_ids"]) <= 384
    assert sum(s > 0 for s in features["start_positions"]) >= 1


# --- models, flags and run directories ----------------------------------------------------------------------------


def test_nonexistent_model_folder_and_unreachable_hub_id(tmp_path):
    data = "data/quickstart/en_train.json"
    _fails(_invoke("train", "--model", tmp_path / "nope", "--train", data, "--output-dir", tmp_path / "r"),
           f"{tmp_path / 'nope'}: no such model folder")  # at once: a folder that is not there is not looked up on the Hub
    _fails(_invoke("train", "--model", "no-such-org/no-such-model", "--train", data, "--output-dir", tmp_path / "r"),
           "no-such-org/no-such-model", "Hub is not reachable")


def test_a_tokenizer_of_another_vocabulary_is_refused_before_the_data_is_read(tiny_albert_dir, minilm_path, tmp_path):
    # what `-c configs/cmrc2018_albert_zh.yaml --model OTHER` did: the config's model.tokenizer stayed
    _fails(_invoke("train", "--model", tiny_albert_dir, "--set", f"model.tokenizer={minilm_path}", "--train",
                   "data/quickstart/en_train.json", "--output-dir", tmp_path / "r"),
           f"the tokenizer (model.tokenizer '{minilm_path}', 30,522 tokens) does not belong to the model",
           "--set model.tokenizer=null")
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_model_without_a_fast_tokenizer(tmp_path):
    from transformers import ByT5Tokenizer

    ByT5Tokenizer().save_pretrained(str(tmp_path / "byt5"))  # a byte-level tokenizer with no Rust version
    _fails(_invoke("preprocess", "--model", tmp_path / "byt5", "--data", "data/quickstart/en_dev.json"),
           "needs a fast (Rust) tokenizer")


@pytest.mark.parametrize("flags, fragment", [
    (["--doc-stride", "400"], "doc_stride 400 must be below the 317 tokens left for context"),
    (["--batch-size", "0"], "train.batch_size must be at least 1"),
    (["--batch-size", "-3"], "train.batch_size must be at least 1"),
    (["--lr", "0"], "train.lr must be > 0"),
    (["--lr", "-1"], "train.lr must be > 0"),
    (["--max-steps", "-5"], "train.max_steps is a number of steps, or 0 for train.epochs (got -5)"),
    (["--max-steps", "0", "--epochs", "0"], "train.epochs must be > 0 or train.max_steps > 0"),
    # numpy's refusal, after the data had loaded
    (["--seed", "-1"], "train.seed must be from 0 to 2**32 - 1 = 4294967295 (got -1)"),
    (["--seed", "99999999999"], "train.seed must be from 0 to 2**32 - 1 = 4294967295 (got 99999999999)"),
    # an OverflowError in training's set-up (and passed by --dry-run); NaN losses from the first step
    (["--dry-run", "--max-steps", "0", "--set", "train.epochs=inf"], "train.epochs must be a finite number (got inf)"),
    (["--set", "train.lr=.inf"], "train.lr must be > 0 and finite (got inf)"),
    (["--set", "train.lr=nan"], "train.lr must be > 0 and finite (got nan)"),
    (["--set", "train.weight_decay=.inf"], "train.weight_decay must be a finite number, 0 or more (got inf)"),
    (["--set", "train.max_grad_norm=.nan"], "train.max_grad_norm must be a finite number, 0 or more (got nan)"),
    (["--set", "data.num_proc=0"], "data.num_proc is a number of tokenizer processes, at least 1"),
    (["--set", "decode.recheck_margin=.nan"], "decode.recheck_margin must be 0 (off) or more, got nan"),
    (["--set", "train.lr=fast"], "train.lr: expected float, got 'fast'"),
    (["--set", "train.max_time=2 hours"], "train.max_time '2 hours' is not a time budget: give seconds (3600), minutes "
                                          "(90m) or hours (2h), above 0, or null for none"),
    (["--set", "train.max_time=0"], "train.max_time '0' is not a time budget"),
    (["--set", "train.max_time=1d"], "train.max_time '1d' is not a time budget"),
    (["--set", "train.learning_rate=1e-4"], "unknown config key 'train.learning_rate'; did you mean train.lr?"),
    (["--set", "train.gradient_accumulation_steps=2"], "did you mean train.grad_accum?"),
    (["--set", "train.lr_scheduler_type=cosine"], "there is no schedule setting: the lr warms up linearly"),
    (["--set", "decode.max_length=30"], "did you mean decode.max_answer_length?"),  # by spelling, in its section
    (["--set", "decode.n_best_size=0"], "decode.n_best_size must be at least 1, got 0"),
    (["--set", "decode.recheck_margin=-1"], "decode.recheck_margin must be 0 (off) or more, got -1"),
    (["--set", "decode.null_share=2"], "decode.null_share is a share of questions, from 0 to 1 (or null), got 2"),
    (["--set", "model.name_or_path=@org/model"], "the value is not YAML (found character '@'"),
    (["--set", "data.doc_stride=-5"], "doc_stride -5: the tokens neighbouring windows share, 0 or more"),
    (["--set", "decode.null_score_diff_threshold=.nan"], "decode.null_score_diff_threshold is a number"),
    (["--lr", "1e-4", "--set", "train.lr=5e-5"], "train.lr: its flag gives 0.0001, --set train.lr=5e-5 another value"),
    (["--set", "train.lr=1e-3", "--set", "train.lr=3e-5"],
     "train.lr: --set train.lr=1e-3 and --set train.lr=3e-5 give it two values; give one of them"),
])
def test_bad_flags_stop_before_any_heavy_work(minilm_path, tmp_path, flags, fragment):
    _fails(_train(minilm_path, tmp_path, "data/quickstart/en_train.json", *flags), fragment)  # later flags win


def test_a_set_given_twice_with_one_value_is_that_value():
    from mrc_cli.config import load_config

    assert load_config(sets=["train.lr=1e-3", "train.lr=0.001"]).train.lr == 1e-3


def test_epochs_given_where_the_config_file_sets_max_steps_is_refused(minilm_path, tmp_path):
    """max_steps wins over epochs: --epochs 3 against a config's max_steps 30 trained 30 steps without a word."""
    config = tmp_path / "steps.yaml"
    config.write_text("train:\n  max_steps: 30\n")
    _fails(_invoke("train", "--model", minilm_path, "--train", "data/quickstart/en_train.json", "--output-dir",
                   tmp_path / "run", "--config", config, "--epochs", "3"),
           f"train.epochs 3.0 given, but train.max_steps 30 from {config} sets the run's length", "--max-steps 0")
    from mrc_cli.config import load_config

    assert load_config(config, {"train.epochs": 3, "train.max_steps": 0}).train.max_steps == 0  # both given: taken


def test_config_file_in_another_encoding(minilm_path, tmp_path):
    config = tmp_path / "gb18030.yaml"
    config.write_bytes("# 中文注释\ntrain:\n  lr: 3.0e-5\n".encode("gb18030"))
    _fails(_train(minilm_path, tmp_path, "data/quickstart/en_train.json", "--config", config),
           "gb18030.yaml: not UTF-8 text", "iconv")


def test_a_config_file_that_gives_a_section_or_a_key_twice_is_refused(minilm_path, tmp_path):
    from mrc_cli.config import load_config

    # YAML keeps the last of two keys: the first train: section's lr and epochs were dropped without a word
    config = tmp_path / "twice.yaml"
    config.write_text("train:\n  lr: 3.0e-5\n  epochs: 3\ndata:\n  max_seq_length: 256\ntrain:\n  batch_size: 8\n")
    _fails(_train(minilm_path, tmp_path, "data/quickstart/en_train.json", "--config", config),
           f"{config}: line 6: 'train' is given twice (also on line 1)", "merge them into one")
    config.write_text("train:\n  lr: 3.0e-5\n  batch_size: 8\n  lr: 1.0e-4\n")
    _fails(_train(minilm_path, tmp_path, "data/quickstart/en_train.json", "--config", config),
           f"{config}: line 4: 'lr' is given twice (also on line 2)")
    # a merge key's value overridden in its mapping is no key given twice
    config.write_text("train:\n  <<: {lr: 3.0e-5, epochs: 3}\n  lr: 1.0e-4\n")
    train = load_config(config).train
    assert (train.lr, train.epochs) == (1e-4, 3)


def test_output_directory_of_another_run(tiny_bert_dir, tmp_path):
    from conftest import tiny_run_config
    from mrc_cli.training import train

    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "run", max_steps=1)
    cfg.data.dev_file = None
    train(cfg)
    result = _invoke("train", "--model", tiny_bert_dir, "--train", "data/quickstart/en_train.json",
                     "--output-dir", tmp_path / "run", "--max-steps", "2")
    _fails(result, "holds another run (checkpoints up to step-000001)", "--resume auto")


# --- --debug ------------------------------------------------------------------------------------------------------


def test_debug_shows_the_traceback_of_an_error_that_is_otherwise_one_line(tmp_path):
    """`mrc --debug COMMAND` re-raises our errors, so Python prints the traceback; without it, one `Error:` line."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    missing = tmp_path / "no-such-gold.json"
    (tmp_path / "p.json").write_text("{}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    runs = {}
    for flags in ([], ["--debug"]):
        runs[bool(flags)] = subprocess.run([sys.executable, "-m", "mrc_cli", *flags, "score", str(missing),
                                            str(tmp_path / "p.json")], cwd=ROOT, env=env, capture_output=True,
                                           text=True, timeout=120)
    plain, debug = runs[False], runs[True]
    assert plain.returncode == 1 and plain.stderr == f"Error: {missing}: no such file\n"
    assert debug.returncode == 1 and debug.stderr.startswith("Traceback (most recent call last):")
    assert debug.stderr.rstrip().endswith(f"mrc_cli.errors.DataError: {missing}: no such file")
    assert "mrc_cli/data.py" in debug.stderr  # the frames, down to where the error was raised


def test_a_resume_folder_that_is_not_there_and_a_weights_file_as_checkpoint(tiny_bert_dir, tmp_path):
    from safetensors.torch import save_file

    result = _invoke("train", "--model", tiny_bert_dir, "--train", "data/quickstart/en_train.json", "--output-dir",
                     tmp_path / "run", "--resume", tmp_path / "nope", "--max-steps", "1")
    _fails(result, f"--resume {tmp_path / 'nope'}: no such checkpoint folder")
    # mrc pretrain given no data: the missing checkpoint, not the data, and what --resume auto found
    _fails(_invoke("pretrain", "--model", tiny_bert_dir, "--out", tmp_path / "run", "--resume", tmp_path / "nope"),
           f"--resume {tmp_path / 'nope'}: no such checkpoint folder")
    _fails(_invoke("pretrain", "--model", tiny_bert_dir, "--out", tmp_path / "typo", "--resume", "auto"),
           "nothing to pre-train on", f"(--resume auto found no run in {tmp_path / 'typo'} to take them from)")
    # stopped before it saved its settings: --resume auto alone has none, and had tried the default model
    (tmp_path / "early").mkdir()
    (tmp_path / "early" / "train.log").write_text("2026-12-07 10:00:00 Tokenizing\n")
    _fails(_invoke("train", "--output-dir", tmp_path / "early", "--resume", "auto"),
           f"{tmp_path / 'early'}: the run stopped before it saved its settings (no config.yaml)")
    weights = tmp_path / "step" / "model.safetensors"
    weights.parent.mkdir()
    save_file({"qa_outputs.weight": __import__("torch").ones(2, 2)}, str(weights))
    _fails(_invoke("predict", "--checkpoint", weights, "--data", "data/quickstart/en_dev.json", "--out",
                   tmp_path / "p.json"), f"{weights}: a file; pass the folder that holds it ({weights.parent})")


def test_outputs_of_the_wrong_kind_are_refused_before_any_model_loads(tmp_path):
    folder, file = tmp_path / "folder", tmp_path / "file.json"
    folder.mkdir()
    file.write_text("{}")
    dev, none = "data/quickstart/en_dev.json", tmp_path / "no-checkpoint"
    _fails(_invoke("predict", "--checkpoint", none, "--data", dev, "--out", folder), f"--out {folder}: a folder")
    data = tmp_path / "test.json"  # predictions written over the data they answer
    data.write_text(open(dev, encoding="utf-8").read(), encoding="utf-8")
    _fails(_invoke("predict", "--checkpoint", none, "--data", data, "--out", tmp_path / "." / "test.json"),
           f"--out {tmp_path / 'test.json'}: the data file itself")
    assert data.read_text(encoding="utf-8") == open(dev, encoding="utf-8").read()
    _fails(_invoke("eval", "--checkpoint", none, "--data", dev, "--out", file), f"--out {file}: an existing file")
    for fmt in ("hf", "onnx"):
        _fails(_invoke("export", "--checkpoint", none, "--out", file, "--format", fmt), f"--out {file}: an existing file")
    _fails(_invoke("ensemble", "--checkpoint", none, "--data", dev, "--out", folder, "--submission", folder),
           f"--submission {folder}: a folder")
    inside = file / "x"  # a path through a file: NotADirectoryError / FileExistsError tracebacks before
    for args, flag in ((("predict", "--checkpoint", none, "--data", dev, "--out", inside), "--out"),
                       (("ensemble", "--checkpoint", none, "--data", dev, "--out", folder, "--save", inside), "--save"),
                       (("ensemble", "--checkpoint", none, "--data", dev, "--out", folder, "--submission", inside),
                        "--submission"),
                       (("kfold", "--folds", "2", "--train", dev, "--out", inside), "--out"),
                       (("compare", "--variant", "a:train.lr=1e-5", "--dev", dev, "--out", inside), "--out")):
        _fails(_invoke(*args), f"{flag} {inside}: {file} is a file, not a folder")
    # what the file system would refuse once the results are written: refused before the work
    long_name, dangling = tmp_path / ("答" * 100 + ".json"), tmp_path / "link"
    dangling.symlink_to(tmp_path / "gone")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    refusals = [(long_name, "is 305 bytes long, and the file system takes 255 at most"),
                (dangling / "sub.json", f"{dangling} is a link to {tmp_path / 'gone'}, which does not exist")]
    if os.geteuid() != 0:  # root writes anywhere
        refusals.append((locked / "x.json", f"{locked} is not writable by this user"))
    for out, why in refusals:
        _fails(_invoke("predict", "--checkpoint", none, "--data", dev, "--out", out), f"--out {out}: ", why)
        _fails(_invoke("analyze", "--gold", dev, "--pred", dev, "--out", out), f"--out {out}: ", why)
        _fails(_invoke("validate", dev, "--fix", out), f"--fix {out}: ", why)


def test_a_write_the_system_refuses_is_an_error_message_not_a_traceback(monkeypatch, tmp_path):
    """An OSError no check foresaw (a disk that filled, a mount that went away) is one line naming the file."""
    import mrc_cli.validate

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "fixed.json"))

    monkeypatch.setattr(mrc_cli.validate, "write_squad", full)
    result = _invoke("validate", "data/quickstart/en_dev.json", "--fix", tmp_path / "fixed.json")
    _fails(result, f"Error: No space left on device: {tmp_path / 'fixed.json'} (mrc --debug shows where it happened)")
    assert "Traceback" not in result.output


def test_score_takes_the_folder_mrc_eval_wrote(tmp_path):
    """predictions.json and, under SQuAD v2 rules, null_odds.json beside it, as `mrc analyze --pred` takes them."""
    golds = write_squad(tmp_path / "gold.json", [(CONTEXT, [GOOD_QA, {"id": "none", "question": "Who?", "answers": [],
                                                                       "is_impossible": True}])])
    out = tmp_path / "eval"
    out.mkdir()
    (out / "predictions.json").write_text(json.dumps({"ok": "the mat", "none": "the cat"}))
    # "ok" answered at the model's threshold although its odds are above the official script's 1.0
    (out / "null_odds.json").write_text(json.dumps({"ok": 2.0, "none": 5.0}))
    scores = json.loads(_invoke("score", golds, out).stdout)
    assert scores["f1"] == 50.0 and scores["HasAns_f1"] == 100.0  # the answers as mrc eval decided them
    assert scores["best_f1"] == 100.0  # the null odds were read from the folder: null above 2, "ok" kept
    _fails(_invoke("score", golds, tmp_path), f"{tmp_path}: no predictions.json in this folder")


def test_predictions_of_another_file_and_an_nbest_file_are_named(tmp_path):
    golds = write_squad(tmp_path / "gold.json", [(CONTEXT, [GOOD_QA])])
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"x1": "a", "x2": "b"}))
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    for command in (["score", golds, other], ["analyze", "--gold", golds, "--pred", other, "--out", tmp_path / "a"]):
        _fails(_invoke(*command), f"{other}: none of its 2 predictions is for a question of", "another file")
        _fails(_invoke(*[empty if part == other else part for part in command]),
               f"{empty}: no predictions (an empty JSON object), so each of the 1 questions of")
    nbest = tmp_path / "nbest.json"
    nbest.write_text(json.dumps({"ok": [{"text": "the mat " * 40, "start": 15, "end": 22, "score": 1.0}]}))
    result = _invoke("score", golds, nbest)
    _fails(result, "this is an n-best file: give predictions.json")
    assert len(result.stderr) < 400


def test_ctrl_c_before_a_run_can_stop_by_itself_says_so_in_one_line(monkeypatch):
    """Ctrl-C while data is read or a teacher runs (a training run's own stop takes it only once training began):
    one line and the status a shell gives SIGINT, not a silent exit."""
    import mrc_cli.scoring

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mrc_cli.scoring, "score_files", interrupted)
    result = _invoke("score", "gold.json", "predictions.json")
    assert result.exit_code == 130
    assert result.stderr == ("interrupted by Ctrl-C; run the command again to start over (a training run resumes from "
                             "its newest checkpoint, if it saved one)\n")
