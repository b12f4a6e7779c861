"""The training options that change a run's course, each checked by what it does: checkpoint pruning (train.keep_last),
early stopping (train.patience) and gradient clipping (train.max_grad_norm). Each test fails when its option is
switched off in the trainer.

The dev scores of a tiny random model are noise, so the tests that depend on "better" or "worse" script them: the real
evaluation runs, then its EM/F1 are replaced by a falling sequence, which makes the first evaluation the best.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import mrc_cli.timing as timing
import mrc_cli.training as training
from conftest import tiny_run_config
from mrc_cli.errors import ConfigError
from mrc_cli.run_lock import in_use
from mrc_cli.tracking import read_metrics
from mrc_cli.training import train


@pytest.fixture
def falling_dev_scores(monkeypatch):
    """Evaluation n (from 0) reports EM and F1 of 50 - n: only the first one is ever an improvement."""
    evaluate = training.evaluate_split
    done = []

    def scripted(*args, **kwargs):
        metrics, predictions = evaluate(*args, **kwargs)
        score = 50.0 - len(done)
        done.append(score)
        metrics.update({"exact": score, "f1": score})  # squad_v2 names: the quickstart dev set has unanswerable ones
        return metrics, predictions

    monkeypatch.setattr(training, "evaluate_split", scripted)
    return done


def _saved_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*"))


def test_keep_last_deletes_older_checkpoints_and_keeps_the_best(tiny_bert_dir, tmp_path, falling_dev_scores):
    run_dir = tmp_path / "run"
    cfg = tiny_run_config(tiny_bert_dir, run_dir, max_steps=6, eval_steps=1, save_steps=1, keep_last=2,
                          keep_training_state="last")  # the default
    result = train(cfg)
    assert result.steps == 6 and falling_dev_scores == [50, 49, 48, 47, 46, 45]
    # steps 2-4 were written and then deleted; 1 stays as the best, 5 and 6 as the newest two
    assert _saved_steps(run_dir) == [1, 5, 6]
    assert json.loads((run_dir / "best_checkpoint.json").read_text())["checkpoint"] == "checkpoints/step-000001"
    assert result.best_checkpoint == run_dir / "checkpoints" / "step-000001"
    # finished: the optimizer state stays in the last checkpoint only, which a longer run resumes from
    assert [step for step in _saved_steps(run_dir)
            if (run_dir / "checkpoints" / f"step-{step:06d}" / "training_state.pt").is_file()] == [6]
    from mrc_cli.errors import CheckpointError

    older = tiny_run_config(tiny_bert_dir, tmp_path / "branch", max_steps=8,
                            resume=str(run_dir / "checkpoints" / "step-000005"))
    with pytest.raises(CheckpointError,
                       match=r"step-000005: weights only, no training_state.pt \(dropped when its run finished.*--init-from"):
        train(older)
    assert train(tiny_run_config(tiny_bert_dir, run_dir, max_steps=7, eval_steps=1, save_steps=1, keep_last=2,
                                 resume="auto")).steps == 7


def test_patience_stops_the_run_after_that_many_evaluations_without_improvement(tiny_bert_dir, tmp_path,
                                                                                falling_dev_scores):
    run_dir = tmp_path / "run"
    cfg = tiny_run_config(tiny_bert_dir, run_dir, max_steps=10, eval_steps=1, save_steps=100, patience=2)
    result = train(cfg)
    # evaluation 1 is the best; 2 and 3 do not improve on it: the run ends at step 3 of 10
    assert result.steps == 3 and falling_dev_scores == [50, 49, 48]
    assert max(r["step"] for r in read_metrics(run_dir / "metrics.jsonl")) == 3
    assert "early stopping: 2 evaluations without improvement of f1" in (run_dir / "train.log").read_text()
    state = json.loads((run_dir / "checkpoints" / "step-000003" / "trainer_state.json").read_text())
    assert (state["step"], state["best_step"], state["evals_without_improvement"]) == (3, 1, 2)


def _gradient_norms_at_each_step(monkeypatch) -> list[float]:
    """The norm of all gradients as the optimizer step sees them, recorded by a pre-step hook on the run's optimizer."""
    make_optimizer = training._optimizer
    norms = []

    def hooked(*args, **kwargs):
        optimizer = make_optimizer(*args, **kwargs)

        def record(opt, *_):
            grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
            norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

        optimizer.register_step_pre_hook(record)
        return optimizer

    monkeypatch.setattr(training, "_optimizer", hooked)
    return norms


def test_max_grad_norm_clips_the_gradients_the_optimizer_steps_with(tiny_bert_dir, tmp_path, monkeypatch):
    norms = _gradient_norms_at_each_step(monkeypatch)
    runs = {}
    for max_grad_norm in (0.0, 0.05):
        cfg = tiny_run_config(tiny_bert_dir, tmp_path / str(max_grad_norm), max_steps=3, max_grad_norm=max_grad_norm)
        cfg.data.dev_file = None
        norms.clear()
        train(cfg)
        runs[max_grad_norm] = list(norms)
    assert len(runs[0.0]) == len(runs[0.05]) == 3
    # unclipped, a random span head's gradients are far above 0.05 (measured: about 5); clipped, none is
    assert min(runs[0.0]) > 0.5, runs
    assert max(runs[0.05]) <= 0.05 * (1 + 1e-4), runs


# --- what long experiments hit: a run directory is one run ------------------------------------------------------------


def test_a_stopped_early_run_is_finished_and_resumes_only_with_more_patience(tiny_bert_dir, tmp_path,
                                                                                falling_dev_scores):
    from mrc_cli.errors import ConfigError

    run_dir = tmp_path / "run"
    train(tiny_run_config(tiny_bert_dir, run_dir, max_steps=10, eval_steps=1, save_steps=100, patience=2))
    again = tiny_run_config(tiny_bert_dir, run_dir, max_steps=10, eval_steps=1, save_steps=100, patience=2,
                            resume="auto")
    with pytest.raises(ConfigError, match="ran out of patience at step 3 .*the run is finished"):
        train(again)  # a requeue script's call: not one more evaluation and stop
    again.train.patience = 3
    assert train(again).steps == 4  # one more evaluation without improvement allowed


def test_patience_without_evaluations_during_the_run_is_refused(tiny_bert_dir, tmp_path):
    from mrc_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="train.patience 2 needs evaluations during the run: set train.eval_steps"):
        train(tiny_run_config(tiny_bert_dir, tmp_path / "a", max_steps=4, patience=2))
    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "b", max_steps=4, eval_steps=1, patience=2)
    cfg.data.dev_file = None
    with pytest.raises(ConfigError, match="give a dev set"):
        train(cfg)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before anything was written
    from typer.testing import CliRunner

    from mrc_cli.cli import app
    # --dry-run refuses it too (pretrain evaluates nothing: it refuses train.eval_steps itself)
    for command in (["train", "--set", "train.eval_steps=1"], ["pretrain", "--data", "data/quickstart/en_train.json"]):
        dry = CliRunner().invoke(app, [*command, "--dry-run", "--set", "train.patience=2", "--set", "data.dev_file=null"])
        assert dry.exit_code == 1 and "train.patience 2 needs evaluations during the run: give a dev set" in dry.stderr


def test_resuming_on_other_training_data_is_refused(tiny_bert_dir, tmp_path):
    import shutil

    from conftest import QUICKSTART
    from mrc_cli.errors import ConfigError

    data = tmp_path / "train.json"
    shutil.copy(QUICKSTART / "en_train.json", data)
    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "run", max_steps=2, save_steps=2)
    cfg.data.train_file, cfg.data.dev_file = str(data), None
    train(cfg)
    articles = json.loads(data.read_text())
    articles["data"] = articles["data"][: len(articles["data"]) // 2]
    data.write_text(json.dumps(articles))
    cfg.train.resume, cfg.train.max_steps = "auto", 4
    with pytest.raises(ConfigError, match="the training file is not what the run trained on .*--init-from"):
        train(cfg)
    data.unlink()  # moved away, or a relative path from another folder: not found, not "changed"
    from mrc_cli.errors import DataError
    with pytest.raises(DataError, match=f"{data}: no such file"):
        train(cfg)


def test_a_second_run_into_a_directory_in_use_is_refused_until_the_first_ends_however_it_ends(tiny_bert_dir,
                                                                                               tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from mrc_cli.errors import ConfigError

    run_dir = tmp_path / "run"
    # another run holding the lock as train() does, then killed outright: its lock goes with it
    holder = ("import fcntl, json, os, sys, time\n"
              f"f = open({str(run_dir / '.lock')!r}, 'a+')\n"
              "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
              "f.write(json.dumps({'host': 'node-7', 'pid': os.getpid(), 'since': 'then'})); f.flush()\n"
              "print('held', flush=True); time.sleep(60)\n")
    run_dir.mkdir()
    other = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline() == "held\n"
        with pytest.raises(ConfigError, match=f"{run_dir} is in use by another run \\(process {other.pid} on node-7, "
                                              "since then\\); wait for it or choose another --output-dir"):
            train(tiny_run_config(tiny_bert_dir, run_dir, max_steps=1))
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
    assert train(tiny_run_config(tiny_bert_dir, run_dir, max_steps=1)).steps == 1
    assert json.loads((run_dir / ".lock").read_text())["pid"] == os.getpid()  # named for the next one's message


def test_a_file_system_without_locks_runs_unguarded_and_says_so(tiny_bert_dir, tmp_path, monkeypatch, capsys):
    import errno
    import fcntl

    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)  # an NFS mount without a lock service
    assert train(tiny_run_config(tiny_bert_dir, tmp_path / "run", max_steps=1)).steps == 1
    assert "cannot lock it on this file system (No locks available); a second run" in capsys.readouterr().out
    assert not in_use(tmp_path / "run")  # compare and kfold ask before they replace a run: no traceback either


def test_a_directory_with_the_records_of_a_run_without_checkpoints_starts_clean(tiny_bert_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 5, "loss": 9.0}) + "\n")
    train(tiny_run_config(tiny_bert_dir, run_dir, max_steps=2, eval_steps=0))
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r][:2] == [1, 2]
    assert "holds the records of a run that left no checkpoint" in (run_dir / "train.log").read_text()


def test_the_logged_lr_is_the_one_each_step_used(tiny_bert_dir, tmp_path):
    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "run", max_steps=4, warmup=0.5, lr=1e-4)
    cfg.data.dev_file = None
    train(cfg)
    lrs = [r["lr"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "lr" in r]
    assert lrs == pytest.approx([5e-5, 1e-4, 1e-4, 5e-5])  # warm-up over 2 steps, then decay; not the next step's


@pytest.mark.parametrize("writer", ["torch.save", "safetensors"])
def test_a_checkpoint_that_cannot_be_written_is_one_error_and_leaves_no_partial_folder(tiny_bert_dir, tmp_path,
                                                                                         monkeypatch, writer):
    """A full disk as torch and safetensors report it (their own errors, not OSError), the weights written first."""
    import mrc_cli.checkpoint as checkpoint
    from mrc_cli.errors import CheckpointError

    failure = {"torch.save": RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 156724544 vs "
                                          "156724436"),
               "safetensors": checkpoint.SafetensorError("Error while serializing: I/O error: File too large (os "
                                                         "error 27)")}[writer]

    def full_disk(*args, **kwargs):
        raise failure

    if writer == "torch.save":
        monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    else:
        monkeypatch.setattr(checkpoint, "save_file", full_disk)
    with pytest.raises(CheckpointError, match=f"could not write checkpoint .*step-000001: .*{re.escape(str(failure))}.*"
                                              "no earlier checkpoint exists: free some space and run it again$"):
        train(tiny_run_config(tiny_bert_dir, tmp_path / "run", max_steps=1))
    assert list((tmp_path / "run" / "checkpoints").iterdir()) == []
    assert "Error: could not write checkpoint" in (tmp_path / "run" / "train.log").read_text().splitlines()[-1]


@pytest.mark.parametrize("free_mb", [3, 100_000])
def test_a_checkpoint_torch_could_not_write_on_a_nearly_full_disk_says_so(tiny_bert_dir, tmp_path, monkeypatch,
                                                                          free_mb):
    """torch.save's error for a full disk names no disk ("unexpected pos"): the message adds the room left where it
    is less than the checkpoint needs, and only there."""
    import types

    import mrc_cli.checkpoint as checkpoint
    from mrc_cli.errors import CheckpointError

    failure = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 3920320 vs 3920208")

    def full_disk(*args, **kwargs):
        raise failure

    measured = []

    def disk_usage(path):
        measured.append(path)
        return types.SimpleNamespace(total=2**40, used=2**40 - free_mb * 2**20, free=free_mb * 2**20)

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", disk_usage)
    with pytest.raises(CheckpointError) as raised:
        train(tiny_run_config(tiny_bert_dir, tmp_path / "run", max_steps=1))
    message = str(raised.value)
    assert message.startswith(f"could not write checkpoint {tmp_path / 'run' / 'checkpoints' / 'step-000001'}: "
                              f"writing the weights or the training state failed ({failure})")
    assert message.endswith("; no earlier checkpoint exists: free some space and run it again")
    note = re.search(r" \(No space left on device\? (\d+) MB free on (/\S*), about (\d+) MB needed\);", message)
    if free_mb > 100:
        assert note is None, message
        return
    assert note and int(note[1]) == 3 and int(note[3]) > 3, message  # tiny BERT, Adam: a few MB
    assert measured and Path(measured[0]).is_relative_to(Path(note[2]))


def test_a_dry_run_shows_what_the_run_would_use_and_refuses_what_it_would_refuse(tiny_bert_dir, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from mrc_cli.cli import app
    from mrc_cli.config import save_config

    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "run", max_steps=2, lr=1e-4)
    cfg.data.dev_file = None
    train(cfg)
    save_config(cfg, tmp_path / "run.yaml")
    runner = CliRunner()
    resumed = runner.invoke(app, ["train", "-c", str(tmp_path / "run.yaml"), "--resume", "auto", "--lr", "5e-5",
                                  "--max-steps", "4", "--dry-run"])
    assert resumed.exit_code == 0, resumed.output
    planned = yaml.safe_load(resumed.stdout)
    assert (planned["train"]["lr"], planned["train"]["max_steps"]) == (1e-4, 4)  # the checkpoint's lr, a new length
    assert "# resumes " in resumed.stdout and "train.lr is 0.0001 in the checkpoint and 5e-05 now; using the checkpoint" \
        in resumed.stdout
    longer = runner.invoke(app, ["train", "-c", str(tmp_path / "run.yaml"), "--resume", "auto", "--epochs", "5",
                                 "--dry-run"])  # a run of max_steps: epochs do not lengthen it
    assert "resume: train.max_steps 2 sets the run's length, not train.epochs; --max-steps 0 makes it" in longer.stdout
    shorter = runner.invoke(app, ["train", "-c", str(tmp_path / "run.yaml"), "--resume", "auto", "--max-steps", "1"])
    assert shorter.exit_code == 1 and f"Error: {tmp_path / 'run'} is at step 2, past --max-steps 1: nothing to " \
                                      "train; give a --max-steps above 2" in shorter.stderr, shorter.output
    unevaluated = runner.invoke(app, ["train", "-c", str(tmp_path / "run.yaml"), "--output-dir", str(tmp_path / "new"),
                                      "--eval-steps", "2", "--dry-run"])
    assert "train.eval_steps 2: no dev set (--dev), so nothing is evaluated" in unevaluated.stdout
    again = runner.invoke(app, ["train", "-c", str(tmp_path / "run.yaml"), "--dry-run"])
    assert again.exit_code == 1 and "holds another run (checkpoints up to step-000002); pass --resume auto" in again.stderr
    # refused by the dry run as by the run, before its data is read: tricks without dropout, a missing --init-from
    no_dropout = ["--set", "model.dropout=0", "--set", "model.attention_dropout=0"]
    for flags, problem in (([*no_dropout, "--set", "train.rdrop_alpha=1"], "train.rdrop_alpha 1 does nothing: the "
                                                                           "encoder has no dropout"),
                           ([*no_dropout, "--set", "model.multi_sample_dropout=4"],
                            "model.multi_sample_dropout 4 does nothing"),
                           (["--init-from", str(tmp_path / "gone")], f"{tmp_path / 'gone'}: no such checkpoint folder"),
                           (["--init-from", "data/quickstart/en_train.json"], "en_train.json: cannot be read: the "
                                                                              "file is truncated or corrupt, or not a torch file")):
        for dry in (["--dry-run"], []):
            result = runner.invoke(app, ["train", "-c", str(tmp_path / "run.yaml"), "--output-dir",
                                         str(tmp_path / "new"), *flags, *dry])
            assert result.exit_code == 1 and problem in result.stderr, result.output
            assert "Tokenizing" not in result.stderr and not (tmp_path / "new" / "train.log").exists()


def test_a_run_stopped_between_log_steps_logs_on_as_the_uninterrupted_run(tiny_bert_dir, tmp_path, monkeypatch):
    """Ctrl-C at step 3 of log_steps 2: the stopped run writes no line for step 3 alone; the resumed run logs step 4
    over steps 3-4, so metrics.jsonl (loss, lr, counts) is the uninterrupted run's."""
    import os
    import signal

    from mrc_cli.errors import TrainingInterrupted

    def run(name: str, **overrides):
        cfg = tiny_run_config(tiny_bert_dir, tmp_path / name, max_steps=6, log_steps=2, save_steps=100, **overrides)
        cfg.data.dev_file = None
        return train(cfg)

    run("whole")
    step = training._train_step
    taken = []

    def interrupted_at_3(*args, **kwargs):
        result = step(*args, **kwargs)
        taken.append(1)
        if len(taken) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the handler asks the loop to stop after this step
        return result

    monkeypatch.setattr(training, "_train_step", interrupted_at_3)
    with pytest.raises(TrainingInterrupted, match="stopped by SIGINT at step 3"):
        run("stopped")
    monkeypatch.setattr(training, "_train_step", step)
    assert [r["step"] for r in read_metrics(tmp_path / "stopped" / "metrics.jsonl")] == [2]
    assert (tmp_path / "stopped" / "curves.png").stat().st_size > 0  # the curves so far, before a requeue
    run("stopped", resume="auto")

    def logged(name: str) -> list[tuple]:
        return [(r["step"], r["loss"], r["lr"], r["real_token_share"])
                for r in read_metrics(tmp_path / name / "metrics.jsonl")]

    assert logged("stopped") == logged("whole") and [row[0] for row in logged("whole")] == [2, 4, 6]
    assert "stopped by SIGINT at step 3" in (tmp_path / "stopped" / "train.log").read_text()


def test_an_extended_run_decays_from_where_it_is_to_its_new_end(tiny_bert_dir, tmp_path):
    """A finished 4-step run given --max-steps 6: the lr of steps 5 and 6 is the 6-step schedule's there (one
    warm-up step, then (6 - step) / 5 of the lr), not 0 (where the 4-step schedule ended) and then up again."""
    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "run", max_steps=4, lr=1e-4, keep_training_state="last")
    cfg.data.dev_file = None
    train(cfg)
    cfg.train.resume, cfg.train.max_steps = "auto", 6
    train(cfg)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["lr"] for r in rows if r["step"] > 4] == pytest.approx([1e-4 * 2 / 5, 1e-4 * 1 / 5])
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert len(info["commands"]) == 2  # the start's and the resume's
    # made 5x longer, its warm-up stays the run's 2 steps: the 20-step schedule's 10 would warm up again from 5/10
    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "long", max_steps=4, lr=1e-4, warmup=0.5, keep_training_state="last")
    cfg.data.dev_file = None
    train(cfg)
    cfg.train.resume, cfg.train.max_steps = "auto", 20
    train(cfg)
    lrs = [r["lr"] for r in read_metrics(tmp_path / "long" / "metrics.jsonl") if r["step"] > 4]
    assert lrs[:2] == pytest.approx([1e-4 * 16 / 18, 1e-4 * 15 / 18]) and len(lrs) == 16
    assert "20 optimizer steps, 2 of warm-up" in (tmp_path / "long" / "train.log").read_text()
    from mrc_cli.tricks import kept_warmup

    # made shorter (a 1,000-step run with 100 of warm-up stopped at 50, resumed for 80 in all): the 8 its new length
    # gives, so its lr still decays to 0 instead of ending at 0.8 of its peak
    assert (kept_warmup(100, 8), kept_warmup(2, 10), kept_warmup(None, 10)) == (8, 2, 10)


def test_a_run_resumed_into_another_folder_names_no_best_checkpoint_it_does_not_hold(tiny_bert_dir, tmp_path):
    first = tiny_run_config(tiny_bert_dir, tmp_path / "a", max_steps=2, eval_steps=1, save_steps=1)
    train(first)
    branch = tiny_run_config(tiny_bert_dir, tmp_path / "b", max_steps=3, eval_steps=0,
                             resume=str(tmp_path / "a" / "checkpoints" / "step-000002"))
    result = train(branch)
    assert result.best_checkpoint is None or result.best_checkpoint.is_dir()


def test_a_checkpoint_is_resumed_neither_into_another_run_nor_before_the_later_checkpoints_of_its_own(tiny_bert_dir,
                                                                                                      tmp_path):
    """Into another run: its metrics.jsonl, checkpoints and best pointer mixed with this one's. Before later
    checkpoints of its own run: --resume auto would one day go on from those, not from the branch."""
    from mrc_cli.training import resolve_run

    for name in ("a", "b"):
        train(tiny_run_config(tiny_bert_dir, tmp_path / name, max_steps=2, eval_steps=0, save_steps=1, keep_last=5,
                              keep_training_state="all"))
    step1 = tmp_path / "a" / "checkpoints" / "step-000001"
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'b'} holds another run (checkpoints up to "
                                                    f"step-000002): resuming {step1} there would mix the two")):
        resolve_run(tiny_run_config(tiny_bert_dir, tmp_path / "b", max_steps=3, resume=str(step1)), lambda cfg: False)
    with pytest.raises(ConfigError, match=re.escape(f"--resume {step1}: {tmp_path / 'a'} holds later checkpoints of "
                                                    "the run (step-000002), which --resume auto would go on from")):
        resolve_run(tiny_run_config(tiny_bert_dir, tmp_path / "a", max_steps=3, resume=str(step1)), lambda cfg: False)
    step2 = tmp_path / "a" / "checkpoints" / "step-000002"  # its own newest: resumed in place, also by a link
    (tmp_path / "last").symlink_to(step2)
    for given in (step2, tmp_path / "last"):
        assert resolve_run(tiny_run_config(tiny_bert_dir, tmp_path / "a", max_steps=3, resume=str(given)),
                           lambda cfg: False)[1] == given
    # a branch goes into a new folder, not into one of other files (a model folder)
    with pytest.raises(ConfigError, match="--output-dir .*tiny.* holds other files .*config.json.* and no run"):
        resolve_run(tiny_run_config(tiny_bert_dir, tiny_bert_dir, max_steps=3, resume=str(step1)), lambda cfg: False)
    # a run directory given as the checkpoint: named so, with the flags that continue it
    with pytest.raises(ConfigError, match=re.escape(f"--resume {tmp_path / 'a'}: a run directory: --resume auto "
                                                    f"--output-dir {tmp_path / 'a'} continues its newest checkpoint "
                                                    "(step-000002)")):
        resolve_run(tiny_run_config(tiny_bert_dir, tmp_path / "c", max_steps=3, resume=str(tmp_path / "a")),
                    lambda cfg: False)


def test_an_output_folder_under_a_file_is_refused_before_any_work(tiny_bert_dir, tmp_path):
    from mrc_cli.errors import ConfigError

    (tmp_path / "afile").write_text("")
    with pytest.raises(ConfigError, match=f"--output-dir {tmp_path / 'afile' / 'sub'}: {tmp_path / 'afile'} is a file"):
        train(tiny_run_config(tiny_bert_dir, tmp_path / "afile" / "sub", max_steps=1))


def test_an_interval_carried_into_more_processes_logs_its_true_mean_loss():
    """A one-process run stopped between log steps, resumed on two: the carried loss is one process's sum per step,
    the logged mean divides by steps x processes now, so the carried part is scaled to count once per process."""
    from types import SimpleNamespace

    import torch

    from mrc_cli.training import TrainerState, _Meter

    main, other = _Meter(torch.device("cpu")), _Meter(torch.device("cpu"))
    interval = [6.0, 30, 300, 400, 5000, 3, 0]  # loss 2.0 at each of 3 steps; features, tokens, ...; steps, skipped
    main.carry(interval, True, processes_then=1, processes_now=2)
    other.carry(interval, False, processes_then=1, processes_now=2)
    for meter in (main, other):  # one more step at loss 2.0 on each process
        meter.add(torch.tensor(2.0), [10, 100, 120, 1000], True)
    stopped = SimpleNamespace(signal_name=None)
    theirs = torch.cat([other.loss.double().reshape(1), torch.tensor([*other.counts, 0], dtype=torch.float64)])
    two = SimpleNamespace(num_processes=2, reduce=lambda local, op: local + theirs)
    values, _ = main.sync(stopped, two, TrainerState(step=4), None)
    assert values["loss"] == pytest.approx(2.0) and values["features"] == 50  # 30 carried + 10 on each


def test_train_leaves_the_callers_config_as_it_was_and_refuses_what_is_not_one(tiny_bert_dir, tmp_path):
    """The run resolves auto values and turns the null rule on for a dev set with unanswerable questions in its own
    copy: a config reused for a second run (on v1 data, say) would carry them over."""
    from mrc_cli.config import config_to_dict, load_config

    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "run", max_steps=1, eval_steps=0)
    cfg.train.tokens_per_batch = "auto"
    before = config_to_dict(cfg)
    train(cfg)
    assert config_to_dict(cfg) == before and not cfg.decode.allow_null  # quickstart's dev set has unanswerable ones
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.decode.allow_null and saved.train.tokens_per_batch == 0
    with pytest.raises(TypeError, match="a RunConfig, not str: mrc_cli.config.load_config"):
        train("configs/quickstart.yaml")


def test_a_loss_gone_nan_before_any_checkpoint_says_none_was_written(tiny_bert_dir, tmp_path):
    from mrc_cli.errors import TrainingError

    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "run", max_steps=4, lr=1e6, eval_steps=0, save_steps=100)
    cfg.data.dev_file = None
    with pytest.raises(TrainingError, match="nothing from there on was saved, no checkpoint was written before it"):
        train(cfg)


def test_a_model_trained_on_unanswerable_questions_keeps_the_null_rule_without_a_dev_set(tiny_bert_dir, tmp_path):
    """The null rule had been switched on by the dev set only: a SQuAD v2 model trained without one answered every
    question in predict, serve and the Reader, though it had learnt to prefer no answer."""
    from mrc_cli.checkpoint import read_checkpoint_config

    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "run", max_steps=1)
    cfg.data.train_file, cfg.data.dev_file = "data/quickstart/en_dev.json", None  # 8 of its 49 questions unanswerable
    result = train(cfg)
    assert read_checkpoint_config(result.run_dir / "checkpoints" / "step-000001").decode.allow_null
    assert "training set has unanswerable questions: decode.allow_null set to true" in \
        (tmp_path / "run" / "train.log").read_text()


def test_max_time_ends_the_run_at_the_last_step_that_fits_as_a_finished_run_ends(tiny_bert_dir, tmp_path,
                                                                                monkeypatch):
    """A scripted clock: a step takes 10 s, an evaluation 30 s (every 5 steps), a budget of 150 s. At step 9 (120 s)
    one more step and the end's evaluation would end at 160 s: the run evaluates, saves and ends there, at 150 s."""
    clock = [0.0]
    monkeypatch.setattr(timing, "now", lambda: clock[0])

    def taking(seconds: float, original):
        def timed(*args, **kwargs):
            clock[0] += seconds
            return original(*args, **kwargs)
        return timed

    monkeypatch.setattr(training, "_train_step", taking(10, training._train_step))
    monkeypatch.setattr(training, "evaluate_split", taking(30, training.evaluate_split))
    run_dir = tmp_path / "run"
    cfg = tiny_run_config(tiny_bert_dir, run_dir, max_steps=20, eval_steps=5, save_steps=100, max_time="150")
    result = train(cfg)
    assert result.steps == 9 and clock[0] == 150
    assert "stopped at the time budget (150) after step 9 of 20" in (run_dir / "train.log").read_text()
    assert _saved_steps(run_dir)[-1] == 9  # (5, written as the best then, is kept too)
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == 9
    assert (run_dir / "predictions.json").is_file()
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "dev_loss" in r] == [5, 9]
    assert "max_time: '150'" in (run_dir / "config.yaml").read_text()
    # a resume gets the budget anew: 9 more steps' worth, and the 5th of them evaluates at step 10
    clock[0] = 0.0
    resumed = train(tiny_run_config(tiny_bert_dir, run_dir, max_steps=20, eval_steps=5, save_steps=100,
                                    max_time="150", resume="auto"))
    assert 9 < resumed.steps < 20
