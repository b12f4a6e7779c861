"""`mrc distil`: the teacher's distributions land on the student's windows where the teacher put them, each a
distribution; alpha 0 is plain training to the bit; the teacher term pulls the student toward the teacher; a BERT
teacher trains an ALBERT student from the CLI into a checkpoint `mrc eval` takes; a saved ensemble teaches; resume is
exact; two processes share the teacher pass and each holds the targets one process computes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import QUICKSTART, ROOT, tiny_run_config
from mrc_cli.batching import FeatureTensors
from mrc_cli.checkpoint import read_checkpoint_config, resolve_checkpoint
from mrc_cli.cli import app
from mrc_cli.config import save_config
from mrc_cli.combining import Positions, own_log_probs, window_distributions
from mrc_cli.distillation import TARGETS, DistilTask, distil, distillation_kl, teacher_scores
from mrc_cli.ensemble import build_ensemble, save_ensemble
from mrc_cli.errors import ConfigError, DataError
from mrc_cli.features import build_features, column
from mrc_cli.inference import position_offsets
from mrc_cli.reader import load_model
from mrc_cli.tokenizer import load_tokenizer
from mrc_cli.tracking import RunLog, read_metrics
from mrc_cli.training import train
from mrc_cli.validate import load_examples

TRAIN, DEV = str(QUICKSTART / "en_train.json"), str(QUICKSTART / "en_dev.json")


@pytest.fixture(scope="module")
def teacher_run(tiny_bert_dir, tmp_path_factory):
    """Tiny BERT (WordPiece) trained a few steps: the teacher."""
    return train(tiny_run_config(tiny_bert_dir, tmp_path_factory.mktemp("teacher") / "run", max_steps=4)).run_dir


def _distil_cfg(student_dir, out, teacher, alpha=0.5, **train_overrides):
    cfg = tiny_run_config(student_dir, out, **train_overrides)
    cfg.distil.teacher, cfg.distil.alpha = str(teacher), alpha
    return cfg


def _weights(run_dir, step):
    return load_file(str(run_dir / "checkpoints" / f"step-{step:06d}" / "model.safetensors"))


def _positions(example_ids, spans_per_window, start=None, end=None):
    """Windows whose position 0 is CLS, then the given (start, end) character spans."""
    width = max(len(spans) for spans in spans_per_window) + 1
    offsets = np.full((len(spans_per_window), width, 2), -1)
    for f, spans in enumerate(spans_per_window):
        offsets[f, 1:len(spans) + 1] = spans
    logits = lambda x: None if x is None else np.asarray(x, dtype=np.float32)
    return Positions(list(example_ids), offsets, logits(start), logits(end))


# --- the teacher's distributions on the student's windows ---------------------------------------------------------


def test_teacher_mass_lands_whole_on_every_student_window_that_holds_it_and_on_cls_elsewhere():
    # teacher: one window; start on "11-20" (logit 8), end on it too; student: three windows of finer tokens
    teacher = _positions(["q"], [[(0, 5), (6, 10), (11, 20), (21, 30)]], [[0, 0, 0, 8, 0]], [[0, 0, 0, 8, 0]])
    student = _positions(["q"] * 3, [[(0, 3), (3, 5), (6, 10), (11, 15), (15, 20)],  # holds the answer
                                     [(11, 15), (15, 20), (21, 25), (25, 30)],  # holds it too (overlap)
                                     [(21, 25), (25, 30)]])  # does not hold it
    start, end = window_distributions(student, teacher)
    best = np.exp(8) / (np.exp(8) + 4)  # the teacher's probability of its best start (and end)
    for p in (start, end):
        np.testing.assert_allclose(p.sum(axis=1), 1, atol=1e-12)
    assert start[0, 4] == pytest.approx(best) and start[1, 1] == pytest.approx(best)  # not halved between windows
    assert end[0, 5] == pytest.approx(best) and end[1, 2] == pytest.approx(best)  # the end at the last character
    assert start[2, 0] == pytest.approx(1 - 1 / (np.exp(8) + 4))  # outside window 2: on its CLS, with the null mass
    assert start[0].argmax() == 4 and end[0].argmax() == 5


def test_a_lone_sentencepiece_boundary_in_the_student_window_gets_no_second_copy_of_the_mass():
    # a student window [CLS, "▁", "$", "5"] where "▁" alone shares "$"'s character; the teacher is the student
    student = _positions(["q"], [[(2, 3), (2, 3), (3, 4)]], [[0, 0, 0, 0]], [[0, 0, 0, 0]])
    start, end = window_distributions(student, student)
    np.testing.assert_allclose(start, [[0.25, 0, 0.5, 0.25]])  # "▁" and "$" start at one character: on "$"
    np.testing.assert_allclose(start.sum(axis=1), 1)


def test_on_real_windows_each_target_is_a_distribution_holding_the_teacher_best_start(teacher_run, albert_tokenizer,
                                                                                      tmp_path):
    teacher = load_model(teacher_run)
    examples, _, _ = load_examples(TRAIN, "train", "auto", tmp_path / "examples")
    scores = teacher_scores(teacher, examples)
    cfg = tiny_run_config(teacher_run, tmp_path / "unused")
    features, _ = build_features(examples, albert_tokenizer, cfg.data, labels=True, cache=False)
    student = Positions(column(features, "example_id"), position_offsets(features, 128), None, None)
    start, end = window_distributions(student, scores)
    np.testing.assert_allclose(start.sum(axis=1), 1, atol=1e-9)
    np.testing.assert_allclose(end.sum(axis=1), 1, atol=1e-9)
    candidate = student.candidates()  # CLS and the context: nothing on the question or padding
    assert (start[~candidate] == 0).all() and (end[~candidate] == 0).all() and (start >= 0).all() and (end >= 0).all()
    own_start, _ = own_log_probs(scores)
    ids = np.array(scores.example_ids)
    checked = 0
    for example in set(scores.example_ids):
        rows = np.nonzero(ids == example)[0]
        f, pos = np.unravel_index(own_start[rows].argmax(), own_start[rows].shape)
        if pos == 0:
            continue  # the null answer: on CLS
        char, mass = scores.offsets[rows[f], pos, 0], np.exp(own_start[rows[f], pos])
        for r in np.nonzero(np.array(student.example_ids) == example)[0]:
            held = np.nonzero((student.offsets[r, :, 0] <= char) & (char < student.offsets[r, :, 1]))[0]
            if len(held):  # the student token holding the teacher's best start gets at least its mass (the last
                # of those holding it: a lone "▁" shares the character of the piece after it)
                assert start[r, held[-1]] >= mass * (1 - 1e-9)
                checked += 1
    assert checked > 50


# --- the loss --------------------------------------------------------------------------------------------------


def test_alpha_zero_is_plain_training_to_the_bit(teacher_run, tiny_albert_dir, tmp_path):
    plain = train(tiny_run_config(tiny_albert_dir, tmp_path / "plain", max_steps=3)).run_dir
    distilled = distil(_distil_cfg(tiny_albert_dir, tmp_path / "distil", teacher_run, alpha=0.0, max_steps=3)).run_dir
    a, b = _weights(plain, 3), _weights(distilled, 3)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in read_metrics(plain / "metrics.jsonl") if "loss" in r] == \
           [r["loss"] for r in read_metrics(distilled / "metrics.jsonl") if "loss" in r]


def test_the_teacher_term_pulls_the_student_toward_the_teacher(teacher_run, tiny_albert_dir, tmp_path):
    cfg = _distil_cfg(tiny_albert_dir, tmp_path / "run", teacher_run, alpha=1.0)
    task, log = DistilTask(), RunLog(tmp_path / "run", True, None)
    tokenizer = load_tokenizer(tiny_albert_dir)
    rows = task.load(cfg, tokenizer, log)
    model = task.build_model(cfg, True, log)
    store = FeatureTensors(rows, torch.device("cpu"), tokenizer.pad_token_id)
    index = list(range(8))
    batch = task.batch(store, index, torch.tensor(index), 0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    kls = []
    for _ in range(10):  # after 6 steps it was at 0.76-0.79 of the start in different runs: too near the bound
        out = model(**batch)
        kl = distillation_kl(out.start_logits, out.end_logits, batch[TARGETS], cfg.distil.temperature).mean()
        assert out.loss.item() == pytest.approx(cfg.distil.temperature ** 2 * kl.item(), rel=1e-6)  # alpha 1: KL only
        kls.append(kl.item())
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert kls[-1] < 0.8 * kls[0], kls
    plain = model(**{k: v for k, v in batch.items() if k != TARGETS})  # without targets: the span loss alone
    assert plain.loss.item() != pytest.approx(out.loss.item())


# --- end to end ------------------------------------------------------------------------------------------------


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_bert_teacher_trains_an_albert_student_from_the_cli_into_a_checkpoint_mrc_eval_takes(teacher_run,
                                                                                            tiny_albert_dir, tmp_path):
    out = tmp_path / "student"
    result = _invoke("distil", "--teacher", teacher_run, "--student", tiny_albert_dir, "--train", TRAIN, "--dev", DEV,
                     "--output-dir", out, "--set", "train.max_steps=2", "--set", "data.max_seq_length=128",
                     "--set", "data.doc_stride=32", "--set", "data.max_query_length=32", "--set", "train.precision=no",
                     "--set", "train.cpu=true", "--set", "distil.temperature=3", "--set", f"data.cache_dir={tmp_path / 'c'}")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["steps"] == 2
    config = (out / "checkpoints" / "step-000002" / "config.yaml").read_text()
    pinned = resolve_checkpoint(teacher_run)  # the run's best checkpoint when the student began
    assert f"teacher: {pinned}" in config and "temperature: 3.0" in config
    assert json.loads((out / "run_info.json").read_text())["teacher"] == str(pinned)
    assert "mean start mass on CLS" in (out / "train.log").read_text()
    scored = _invoke("eval", "--checkpoint", out, "--data", DEV, "--out", tmp_path / "eval")
    assert scored.exit_code == 0, scored.output
    assert "f1" in json.loads(scored.stdout.strip().splitlines()[-1])
    # resumed as the stop message says, without --teacher and --student: the run's config.yaml has both
    longer = _invoke("distil", "--resume", "auto", "--output-dir", out, "--set", "train.max_steps=3")
    assert longer.exit_code == 0, longer.output
    assert json.loads(longer.stdout.strip().splitlines()[-1])["steps"] == 3


def test_a_saved_ensemble_teaches_as_its_combined_distribution(teacher_run, tiny_bert_dir, tmp_path):
    folder = save_ensemble(build_ensemble([str(teacher_run), str(teacher_run)], weights="2,1"), tmp_path / "ens")
    examples, _, _ = load_examples(TRAIN, "train", "auto", tmp_path / "examples")
    alone, together = teacher_scores(load_model(teacher_run), examples), teacher_scores(load_model(folder), examples)
    for a, b in zip(own_log_probs(alone), own_log_probs(together)):  # the same model twice: its own distribution
        finite = np.isfinite(a)
        np.testing.assert_allclose(np.exp(a[finite]), np.exp(b[finite]), atol=1e-6)
    result = distil(_distil_cfg(tiny_bert_dir, tmp_path / "run", folder, max_steps=1))
    assert result.steps == 1 and f"teacher {folder}" in (tmp_path / "run" / "train.log").read_text()


def test_the_teacher_is_required_and_its_settings_checked(tiny_bert_dir, tmp_path):
    result = _invoke("distil", "--teacher", tmp_path / "none", "--student", tiny_bert_dir, "--train", TRAIN,
                     "--set", "distil.alpha=1.5")
    assert result.exit_code == 1 and "distil.alpha is a weight in [0, 1]" in result.output
    result = _invoke("distil", "--teacher", tmp_path / "none", "--student", tiny_bert_dir, "--train", TRAIN,
                     "--set", "distil.temperature=.inf")  # the teacher uniform, its term inf x 0
    assert result.exit_code == 1 and "distil.temperature must be a finite number > 0, got inf" in result.output
    result = _invoke("distil", "--student", tiny_bert_dir, "--train", TRAIN)
    assert result.exit_code == 2 and "a new run needs --teacher and --student" in result.output
    # a teacher that is not a trained model: refused before the run's folder and data, not after them
    for teacher, problem in ((tmp_path / "none", "no such checkpoint folder or run directory"),
                             (tiny_bert_dir, "no config.yaml; is this an mrc-cli checkpoint?")):
        result = _invoke("distil", "--teacher", teacher, "--student", tiny_bert_dir, "--train", TRAIN,
                         "--output-dir", tmp_path / "out")
        assert result.exit_code == 1 and problem in result.stderr and "Tokeniz" not in result.output
        assert not (tmp_path / "out").exists()
    # a saved ensemble whose member is gone: refused by --dry-run too, before the run reads its data
    (tmp_path / "ens").mkdir()
    (tmp_path / "ens" / "ensemble.yaml").write_text("members: [gone]\nweights: [1]\ncombine: prob\ndecode: {}\n")
    result = _invoke("distil", "--teacher", tmp_path / "ens", "--student", tiny_bert_dir, "--train", TRAIN,
                     "--output-dir", tmp_path / "out", "--dry-run")
    assert result.exit_code == 1 and f"member 1 {tmp_path / 'ens' / 'gone'} does not exist" in result.stderr
    # --resume auto where there is no run to resume: no teacher, refused by --dry-run as by the run
    result = _invoke("distil", "--resume", "auto", "--output-dir", tmp_path / "none", "--dry-run")
    assert result.exit_code == 1 and "no teacher: pass --teacher" in result.stderr


def test_resumed_distillation_is_bitwise_the_uninterrupted_run(teacher_run, tiny_albert_dir, tmp_path):
    cfg = lambda out, **kw: _distil_cfg(tiny_albert_dir, out, teacher_run, max_steps=4, save_steps=2, keep_last=5, **kw)
    a = distil(cfg(tmp_path / "A")).run_dir
    b = tmp_path / "B"
    shutil.copytree(a / "checkpoints" / "step-000002", b / "checkpoints" / "step-000002")
    distil(cfg(b, resume="auto"))
    assert "resumed from" in (b / "train.log").read_text()
    wa, wb = _weights(a, 4), _weights(b, 4)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(_weights(a, 2)["qa_outputs.weight"], wb["qa_outputs.weight"])
    losses = lambda d: [(r["step"], r["loss"]) for r in read_metrics(d / "metrics.jsonl") if "loss" in r]
    assert losses(b) == [x for x in losses(a) if x[0] > 2]


def test_a_teacher_without_the_null_rule_on_data_with_unanswerable_questions_is_warned_of(teacher_run, tiny_albert_dir,
                                                                                             tmp_path):
    """A teacher trained on SQuAD v1-style data gives an answer's distribution where the gold label says "no answer":
    the log says so, with the teacher's mass on CLS there. A teacher that learnt the null rule is not warned of."""
    v1 = shutil.copytree(resolve_checkpoint(teacher_run), tmp_path / "v1")
    cfg = read_checkpoint_config(v1)
    cfg.decode.allow_null = False
    save_config(cfg, v1 / "config.yaml")
    for teacher, warned in ((v1, True), (teacher_run, False)):
        out = tmp_path / f"student-{teacher.name}"
        run = _distil_cfg(tiny_albert_dir, out, teacher, max_steps=1)
        run.data.train_file, run.data.dev_file = DEV, None  # 8 of its 49 questions unanswerable
        distil(run)
        log = (out / "train.log").read_text()
        assert ("was trained without unanswerable questions (its null rule is off), and 8 training questions have no "
                "answer: on their windows it puts mean start mass" in log) is warned


def test_repeated_question_ids_are_refused_before_the_teacher_pass(teacher_run, tiny_albert_dir, tmp_path):
    """The teacher's distributions are keyed by id: two questions of one id would each learn the other's answer."""
    data = json.loads(Path(TRAIN).read_text(encoding="utf-8"))
    qas = data["data"][0]["paragraphs"][0]["qas"]
    qas[1]["id"] = qas[0]["id"]
    repeated = tmp_path / "train.json"
    repeated.write_text(json.dumps(data), encoding="utf-8")
    cfg = _distil_cfg(tiny_albert_dir, tmp_path / "student", teacher_run, max_steps=1)
    cfg.data.train_file = str(repeated)
    with pytest.raises(DataError, match=f"train.json: 1 repeated question id \\({qas[0]['id']}\\): the teacher's "
                                        "distributions are keyed by question id"):
        distil(cfg)


@pytest.mark.parametrize("kind", ["run", "ensemble"])
def test_a_resume_refuses_a_teacher_whose_files_changed(teacher_run, tiny_albert_dir, tmp_path, kind):
    """The teacher's weights were rewritten, or a saved ensemble's settings or a member's weights: the resumed student
    would learn from another teacher than its first steps did. The same teacher resumes."""
    run = shutil.copytree(teacher_run, tmp_path / "teacher")
    teacher = run if kind == "run" else save_ensemble(build_ensemble([str(run), str(run)], weights="2,1"), tmp_path / "ens")
    cfg = lambda **kw: _distil_cfg(tiny_albert_dir, tmp_path / "student", teacher, save_steps=1, keep_last=5, **kw)
    distil(cfg(max_steps=1))
    distil(cfg(max_steps=2, resume="auto"))
    weights = resolve_checkpoint(run) / "model.safetensors"
    before = weights.stat()
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))  # as rewritten in place
    with pytest.raises(ConfigError, match=re.escape(f"the teacher changed since this run began ({weights.resolve()} "
                                                    "rewritten")):
        distil(cfg(max_steps=3, resume="auto"))
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    if kind == "ensemble":
        settings_file = teacher / "ensemble.yaml"
        settings = yaml.safe_load(settings_file.read_text())
        # a threshold stored since (mrc eval --store-threshold) changes no distribution: resumed
        settings_file.write_text(yaml.safe_dump({**settings, "decode": {**settings["decode"],
                                                                         "null_score_diff_threshold": 1.5}}))
        distil(cfg(max_steps=3, resume="auto"))
        settings_file.write_text(yaml.safe_dump({**settings, "weights": [1, 1]}))
        with pytest.raises(ConfigError, match=re.escape(f"the teacher changed since this run began "
                                                        f"({settings_file.resolve()} rewritten")):
            distil(cfg(max_steps=4, resume="auto"))
    if kind == "run":  # a run begun when run_info.json held the one model's weights alone
        info_file = tmp_path / "student" / "run_info.json"
        info = json.loads(info_file.read_text())
        stat = weights.stat()
        del info["teacher_files"]
        legacy = lambda mtime: info_file.write_text(json.dumps({**info, "teacher_weights": {"bytes": stat.st_size,
                                                                                            "mtime_ns": mtime}}))
        legacy(stat.st_mtime_ns + 1)
        with pytest.raises(ConfigError, match=re.escape(f"the teacher changed since this run began ({weights.resolve()}")):
            distil(cfg(max_steps=3, resume="auto"))
        legacy(stat.st_mtime_ns)  # the same teacher: resumed
        assert distil(cfg(max_steps=3, resume="auto")).steps == 3
# --- two processes ---------------------------------------------------------------------------------------------

# `mrc distil` as `python -m mrc_cli` runs it, saving on each rank the teacher scores it trains with (the gathered
# shares) and the targets made of them, in RECORD_DIR/rank-<RANK>.npz
RECORDING_DRIVER = '''
import os
import numpy as np
from mrc_cli import distillation
from mrc_cli.cli import main

shared, targets, seen = distillation.shared_teacher_scores, distillation.DistilTask._teacher_targets, {}

def recorded_scores(teacher, examples):
    seen["scores"] = shared(teacher, examples)
    return seen["scores"]

def recorded_targets(task, cfg, log):
    out, scores = targets(task, cfg, log), seen["scores"]
    np.savez(os.path.join(os.environ["RECORD_DIR"], f"rank-{os.environ['RANK']}.npz"), targets=out.numpy(),
             example_ids=np.array(scores.example_ids), offsets=scores.offsets, start=scores.start, end=scores.end)
    return out

distillation.shared_teacher_scores, distillation.DistilTask._teacher_targets = recorded_scores, recorded_targets
main()
'''


@pytest.mark.slow
def test_two_processes_share_the_teacher_pass_and_each_holds_the_targets_of_one_process(teacher_run, tiny_albert_dir,
                                                                                         tmp_path):
    from test_training import _assert_two_ranks_trained, _free_port

    run_dir, record = tmp_path / "ddp", tmp_path / "record"
    record.mkdir()
    cfg = _distil_cfg(tiny_albert_dir, run_dir, teacher_run, max_steps=2, save_steps=2)
    cfg.data.dev_file = None
    save_config(cfg, tmp_path / "run.yaml")
    (tmp_path / "driver.py").write_text(RECORDING_DRIVER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_USE_CPU": "1",
           "CUDA_VISIBLE_DEVICES": "", "RECORD_DIR": str(record)}
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(_free_port())]
    done = subprocess.run([*torchrun, str(tmp_path / "driver.py"), "distil", "--config", str(tmp_path / "run.yaml"),
                           "--teacher", str(teacher_run), "--student", tiny_albert_dir],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    _assert_two_ranks_trained(run_dir, 2)
    ranks = [np.load(record / f"rank-{rank}.npz") for rank in (0, 1)]
    assert all(np.array_equal(ranks[0][key], ranks[1][key]) for key in ranks[0].files)  # the same on both, to the bit

    # one process: all the examples in one teacher pass
    task, log = DistilTask(), RunLog(tmp_path / "one", True, None)
    task.load(cfg, load_tokenizer(tiny_albert_dir), log)
    task.build_model(cfg, True, log)
    alone = teacher_scores(load_model(teacher_run), task.train_split.examples)
    gathered = ranks[0]
    # every window of every example, in the examples' order: not one rank's share, nor the shares swapped
    assert gathered["example_ids"].tolist() == alone.example_ids
    np.testing.assert_array_equal(gathered["offsets"], alone.offsets)
    # each share is batched apart from the other: the logits may differ in the last bits
    np.testing.assert_allclose(gathered["start"], alone.start, rtol=0, atol=1e-5)
    np.testing.assert_allclose(gathered["end"], alone.end, rtol=0, atol=1e-5)
    np.testing.assert_allclose(gathered["targets"], task.targets.numpy(), rtol=0, atol=1e-6)
