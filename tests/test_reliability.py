"""A killed run resumes exactly, signals save a checkpoint, a full disk and a NaN loss stop cleanly, pickles never run."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import ROOT, tiny_run_config
from mrc_cli.config import save_config
from mrc_cli.errors import CheckpointError, TrainingInterrupted

# Runs mrc_cli's training in a fresh process and SIGKILLs it at the n-th call of a chosen function:
# "step" = the n-th training forward's loss, "eval" = the n-th evaluation, "save" = the n-th checkpoint, after its
# weights file is written and before the folder is complete. No hook in the product: the driver patches functions.
DRIVER = textwrap.dedent('''
    import os, signal, sys
    kind, n, config = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    import mrc_cli.checkpoint as checkpoint, mrc_cli.inference as inference, mrc_cli.model as model, mrc_cli.training as training
    calls = [0]
    def kill_at_nth(original, after=False):
        def wrapped(*args, **kwargs):
            calls[0] += 1
            if calls[0] == n and not after:
                os.kill(os.getpid(), signal.SIGKILL)
            result = original(*args, **kwargs)
            if calls[0] == n and after:
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        return wrapped
    if kind == "step":
        model.span_loss = kill_at_nth(model.span_loss)
    elif kind == "eval":
        inference.predict_logits = kill_at_nth(inference.predict_logits)
    elif kind == "save":
        checkpoint.save_file = kill_at_nth(checkpoint.save_file, after=True)
    from mrc_cli.config import load_config
    training.train(load_config(config))
''')


def _run_driver(tmp_path: Path, cfg, kind: str = "none", n: int = 0) -> subprocess.CompletedProcess:
    config = tmp_path / f"{Path(cfg.train.output_dir).name}.yaml"
    save_config(cfg, config)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(driver), kind, str(n), str(config)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _final_state(run_dir: Path, step: int):
    weights = load_file(str(run_dir / "checkpoints" / f"step-{step:06d}" / "model.safetensors"))
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return weights, lines


@pytest.mark.slow
@pytest.mark.parametrize("kind, n", [("step", 7), ("eval", 2), ("save", 2)])
def test_sigkill_anywhere_then_resume_gives_the_uninterrupted_run(tiny_bert_dir, tmp_path, kind, n):
    settings = dict(max_steps=8, save_steps=2, eval_steps=4, keep_last=10, seed=3)
    reference = tiny_run_config(tiny_bert_dir, tmp_path / "reference", **settings)
    done = _run_driver(tmp_path, reference)
    assert done.returncode == 0, done.stderr[-2000:]

    killed = tiny_run_config(tiny_bert_dir, tmp_path / "killed", **settings)
    crash = _run_driver(tmp_path, killed, kind, n)
    assert crash.returncode == -signal.SIGKILL, crash.stderr[-2000:]
    assert not (tmp_path / "killed" / "checkpoints" / "step-000008").exists()
    if kind == "save":  # a half-written folder stays behind under its temporary name, and is never resumed from
        assert any(p.name.startswith(".tmp-") for p in (tmp_path / "killed" / "checkpoints").iterdir())

    killed.train.resume = "auto"
    resumed = _run_driver(tmp_path, killed)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in (tmp_path / "killed" / "train.log").read_text()

    ref_weights, ref_lines = _final_state(tmp_path / "reference", 8)
    new_weights, new_lines = _final_state(tmp_path / "killed", 8)
    assert ref_weights.keys() == new_weights.keys()
    assert all(torch.equal(ref_weights[k], new_weights[k]) for k in ref_weights)  # bitwise on CPU
    # same losses and dev metrics, step for step, with no duplicate lines from the killed attempt
    strip = lambda lines: [{k: v for k, v in r.items() if not k.endswith("_per_s")} for r in lines]  # timings differ
    assert strip(new_lines) == strip(ref_lines)
    ref_pred = json.loads((tmp_path / "reference" / "predictions.json").read_text())
    assert json.loads((tmp_path / "killed" / "predictions.json").read_text()) == ref_pred


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(tiny_bert_dir, tmp_path):
    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "run", max_steps=500, save_steps=0, eval_steps=0)
    cfg.data.dev_file = None
    config = tmp_path / "run.yaml"
    save_config(cfg, config)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mrc_cli", "train", "--config", str(config)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM  # as a shell reports it: stopped, not failed
    assert "stopped by SIGTERM at step" in stderr and "Error" not in stderr and "--resume auto" in stderr and "Traceback" not in stderr
    step = int(stderr.split("at step ")[1].split(";")[0])
    state = json.loads((tmp_path / "run" / "checkpoints" / f"step-{step:06d}" / "trainer_state.json").read_text())
    assert state["step"] == step >= 2
    # the hint as printed, without the run's flags: the run's own settings, not the defaults (2 epochs, no max_steps)
    hint = stderr.split("continue with ")[1].splitlines()[0].split()
    assert hint == ["mrc", "train", "--resume", "auto", "--output-dir", str(tmp_path / "run")]
    from typer.testing import CliRunner

    from mrc_cli.cli import app

    planned = yaml.safe_load(CliRunner().invoke(app, [*hint[1:], "--dry-run"]).stdout)  # as printed, after "mrc"
    assert planned["train"]["max_steps"] == 500 and planned["model"] == yaml.safe_load(config.read_text())["model"]


def test_hints_to_resume_name_the_command_that_resumes(tmp_path, monkeypatch):
    """A run of mrc compare or kfold is resumed by that command (a fold by hand would train on its held-out
    questions, and mrc train refuses one); pretrain's run directory is --out."""
    from types import SimpleNamespace

    from mrc_cli.config import RunConfig
    from mrc_cli.errors import ConfigError
    from mrc_cli.runs import HELD_OUT, RUN_BY
    from mrc_cli.training import _resume_hint, train

    run = SimpleNamespace(task=SimpleNamespace(command="pretrain", run_dir_flag="--out"), run_dir=tmp_path,
                          accelerator=SimpleNamespace(num_processes=1))
    monkeypatch.delenv(RUN_BY, raising=False)
    assert _resume_hint(run) == f"continue with mrc pretrain --resume auto --out {tmp_path}"
    monkeypatch.setenv(RUN_BY, "kfold")
    assert _resume_hint(run) == "run the same mrc kfold command again, which resumes it"
    (tmp_path / HELD_OUT).write_text('{"ids": []}')
    cfg = RunConfig()
    cfg.train.output_dir = str(tmp_path)
    with pytest.raises(ConfigError, match="is a fold of mrc kfold .*run mrc kfold again"):
        train(cfg)


def test_a_benchmark_stopped_by_sigterm_says_so_in_one_line_not_a_traceback(tmp_path):
    # bench scripts run `mrc compare` runs in child processes: a SIGTERM there reaches the script as TrainingInterrupted
    script = tmp_path / "bench_stopped.py"
    script.write_text(textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(ROOT)!r})
        from bench.common import run_script
        from mrc_cli.errors import TrainingInterrupted
        def main():
            raise TrainingInterrupted("outputs/bench/x/seed-1: stopped by SIGTERM; run it again to resume", 15)
        run_script(main)
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 143 and "Traceback" not in done.stderr
    assert done.stderr.strip() == "bench_stopped.py: outputs/bench/x/seed-1: stopped by SIGTERM; run it again to resume"


def test_full_disk_while_saving_keeps_the_previous_checkpoint(tiny_bert_dir, tmp_path, monkeypatch):
    import mrc_cli.checkpoint as checkpoint
    from mrc_cli.training import train

    calls = []
    original = checkpoint.save_file

    def fill_the_disk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", fill_the_disk)
    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "run", max_steps=4, save_steps=2, eval_steps=0)
    cfg.data.dev_file = None
    with pytest.raises(CheckpointError, match="No space left on device; the previous checkpoint .*step-000002 is intact"):
        train(cfg)
    folders = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()]
    assert folders == ["step-000002"]  # no half-written folder left behind
    load_file(str(tmp_path / "run" / "checkpoints" / "step-000002" / "model.safetensors"))


def test_nan_loss_stops_with_the_step_and_saves_nothing_after_it(tiny_bert_dir, tmp_path, monkeypatch):
    import mrc_cli.model as model
    from mrc_cli.training import TrainingError, train

    calls = []
    original = model.span_loss

    def nan_at_third(*args, **kwargs):
        calls.append(1)
        loss = original(*args, **kwargs)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(model, "span_loss", nan_at_third)
    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "run", max_steps=6, save_steps=2, eval_steps=0)
    cfg.data.dev_file = None
    with pytest.raises(TrainingError, match="became nan at step 3"):
        train(cfg)
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-000002"]


def test_nan_found_at_the_next_log_step_names_the_steps_and_saves_nothing_after_it(tiny_bert_dir, tmp_path, monkeypatch):
    """Without a per-step device sync the NaN check runs at log and save steps: the save at step 4 must not happen."""
    import mrc_cli.model as model
    from mrc_cli.training import TrainingError, train

    calls, original = [], model.span_loss

    def nan_at_third(*args, **kwargs):
        calls.append(1)
        loss = original(*args, **kwargs)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(model, "span_loss", nan_at_third)
    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "run", max_steps=8, save_steps=2, log_steps=4, eval_steps=0)
    cfg.data.dev_file = None
    with pytest.raises(TrainingError, match="became nan in steps 3-4") as err:
        train(cfg)
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-000002"]
    assert (tmp_path / "run" / "train.log").read_text().splitlines()[-1].endswith(f" Error: {err.value}")  # why it ended


NAN_ON_ONE_RANK = textwrap.dedent('''
    import os, sys
    import mrc_cli.model as model, mrc_cli.training as training
    from mrc_cli.config import load_config
    original, calls = model.span_loss, [0]
    def nan_on_rank_1(*args, **kwargs):
        calls[0] += 1
        loss = original(*args, **kwargs)
        return loss * float("nan") if os.environ["RANK"] == "1" and calls[0] == 3 else loss
    model.span_loss = nan_on_rank_1
    try:
        training.train(load_config(sys.argv[1]))
    except training.TrainingError as err:
        print(f"rank {os.environ['RANK']}: {err}", file=sys.stderr)
        sys.exit(3)
''')


def _two_ranks(driver_script: str, cfg, tmp_path: Path) -> subprocess.CompletedProcess:
    """`driver_script` training cfg (without a dev set) on two processes of torchrun."""
    from test_training import _free_port

    cfg.data.dev_file = None
    config, driver = tmp_path / "run.yaml", tmp_path / "driver.py"
    save_config(cfg, config)
    driver.write_text(driver_script)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": ""}
    torchrun = Path(sys.executable).with_name("torchrun")
    return subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
                           str(_free_port()), str(driver), str(config)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=240)


@pytest.mark.slow
def test_a_nan_on_one_rank_stops_every_rank_with_the_message(tiny_bert_dir, tmp_path):
    """The NaN of one process is in the all-reduced loss: both stop at the same step, none waits in a collective."""
    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "run", max_steps=8, save_steps=2, log_steps=2, eval_steps=0)
    done = _two_ranks(NAN_ON_ONE_RANK, cfg, tmp_path)
    assert done.returncode != 0
    for rank in (0, 1):
        assert f"rank {rank}: the training loss became nan in steps 3-4" in done.stderr, done.stderr[-3000:]
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-000002"]


SIGTERM_ON_ONE_RANK = textwrap.dedent('''
    import os, signal, sys
    import mrc_cli.model as model, mrc_cli.training as training
    from mrc_cli.config import load_config
    original, calls = model.span_loss, [0]
    def signal_on_rank_1(*args, **kwargs):
        calls[0] += 1
        if os.environ["RANK"] == "1" and calls[0] == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's signal that reached one process
        return original(*args, **kwargs)
    model.span_loss = signal_on_rank_1
    try:
        training.train(load_config(sys.argv[1]))
    except training.TrainingInterrupted as err:
        print(f"rank {os.environ['RANK']}: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
''')


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_every_rank_a_step_later_with_a_checkpoint(tiny_bert_dir, tmp_path):
    """Launchers kill their workers some seconds after the signal: the processes agree to stop the step after it
    (a vote on the host each step), not at the next log step, here the run's end."""
    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "run", max_steps=8, save_steps=0, log_steps=1000, eval_steps=0)
    done = _two_ranks(SIGTERM_ON_ONE_RANK, cfg, tmp_path)
    assert done.returncode != 0
    for rank in (0, 1):  # both stopped at step 4, the one after the signal
        assert f"rank {rank}: stopped by " in done.stderr and "at step 4; the checkpoint is saved" in done.stderr, \
            done.stderr[-3000:]
    assert "under your launcher (torchrun, accelerate launch) as before: 2 processes" in done.stderr
    assert (done.stdout + done.stderr).count("SIGTERM received: saving a checkpoint and stopping\n") <= 1  # rank 1's
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-000004" / "trainer_state.json").read_text())
    assert state["processes"] == 2  # two ranks really ran
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-000004"]


def _vote_for_five_steps(rank: int, stop_vote, port: int, out: Path) -> None:
    """Rank 1 alone is out of time from step 2 on (each rank measures its own clock); the votes each rank receives."""
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    no_signal = types.SimpleNamespace(signal_name=None)
    with stop_vote(2) as vote:
        agreed = [vote.after_step(no_signal, out_of_time=rank == 1 and step >= 2) for step in range(1, 6)]
    torch.distributed.destroy_process_group()
    (out / f"rank{rank}.json").write_text(json.dumps(agreed))


def test_one_rank_out_of_time_stops_every_rank_at_the_same_step(tmp_path):
    """train.max_time rides the signal's vote: the step after one rank's clock runs out, every rank is told to stop
    (with no signal), so all evaluate, save and end at one step instead of one waiting in a collective."""
    from mrc_cli.training import _StopVote
    from test_training import _free_port

    # forked: processes that start with everything imported take a second, spawned ones import it all again
    torch.multiprocessing.start_processes(_vote_for_five_steps, args=(_StopVote, _free_port(), tmp_path), nprocs=2,
                                          start_method="fork")
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == [[False, False], [False, False],
                                                                           [False, True], [False, True], [False, True]]


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path):
    import pickle

    from mrc_cli.model import load_state_dict_file

    marker = tmp_path / "pwned"
    evil = tmp_path / "pytorch_model.bin"
    evil.write_bytes(pickle.dumps({"encoder.weight": _Exploit(marker)}))
    with pytest.raises(CheckpointError, match="refused to load"):
        load_state_dict_file(evil)
    assert not marker.exists()

    from typer.testing import CliRunner

    from mrc_cli.cli import app

    result = CliRunner().invoke(app, ["train", "--init-from", str(evil), "--train", "data/quickstart/en_train.json",
                                      "--model", "/no/such/model", "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 1 and not marker.exists()


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_truncated_weights_file_is_called_damaged_not_dangerous(tmp_path, zip_format):
    """A cut-off file also trips torch's weights-only reader (an UnpicklingError on a half-read name); the message
    must say which of the two it is, and the malicious file of the test above keeps its own message."""
    from mrc_cli.model import load_state_dict_file

    whole = tmp_path / "whole.bin"
    torch.save({"qa_outputs.weight": torch.ones(8, 8)}, whole, _use_new_zipfile_serialization=zip_format)
    data = whole.read_bytes()
    for cut in range(1, len(data), max(1, len(data) // 40)):
        cut_off = tmp_path / f"cut-{cut}.bin"
        cut_off.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as refused:
            load_state_dict_file(cut_off)
        message = str(refused.value)
        assert message.startswith(f"{cut_off}: cannot be read: the file is truncated or corrupt"), message
        assert "could run code" not in message and "weights_only" not in message
    evil = tmp_path / "evil.bin"
    torch.save({"qa_outputs.weight": _Exploit(tmp_path / "pwned")}, evil, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointError, match="the file is whole, but it holds more than tensors .*could run code"):
        load_state_dict_file(evil)
    assert not (tmp_path / "pwned").exists()


def test_a_plain_tensor_pickle_still_loads(tmp_path):
    from mrc_cli.model import load_state_dict_file

    path = tmp_path / "weights.bin"
    torch.save({"qa_outputs.weight": torch.ones(2, 3)}, path)
    assert torch.equal(load_state_dict_file(path)["qa_outputs.weight"], torch.ones(2, 3))


def test_damaged_files_beside_the_weights_are_one_line_errors(tmp_path):
    """A cut safetensors file (--init-from, a checkpoint, an export), a hand-edited best_checkpoint.json, a Hugging
    Face folder with a broken config.json and an ensemble.yaml with odd members: each an MrcError, not a traceback."""
    from safetensors.torch import save_file

    from mrc_cli.checkpoint import resolve_checkpoint
    from mrc_cli.errors import ConfigError
    from mrc_cli.loading import load_trained
    from mrc_cli.model import load_state_dict_file
    from mrc_cli.reader import Reader

    whole = tmp_path / "whole.safetensors"
    save_file({"qa_outputs.weight": torch.ones(8, 8)}, str(whole))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[:20])
    with pytest.raises(CheckpointError, match=r"cut.safetensors: cannot be read: .* not a safetensors file"):
        load_state_dict_file(cut)

    run = tmp_path / "run"
    step = run / "checkpoints" / "step-000002"
    step.mkdir(parents=True)
    (step / "trainer_state.json").write_text("{}")
    save_file({"qa_outputs.weight": torch.ones(8, 8)}, str(step / "model.safetensors"))
    for pointer in ("{}", "not json", '{"checkpoint": 5}'):
        (run / "best_checkpoint.json").write_text(pointer)
        assert resolve_checkpoint(run) == step  # the newest checkpoint instead

    hf = tmp_path / "hf"
    hf.mkdir()
    save_file({"qa_outputs.weight": torch.ones(8, 8)}, str(hf / "model.safetensors"))
    (hf / "config.json").write_text('{"architectures": ["BertForQuestionAnswering"')
    with pytest.raises(CheckpointError, match="config.json: not a readable config.json"):
        load_trained(hf)

    saved = tmp_path / "ensemble"
    saved.mkdir()
    (saved / "ensemble.yaml").write_text("members: [5]\nweights: 1\ncombine: prob\ndecode: {}\n")
    with pytest.raises(ConfigError, match="members must be a list of model folders"):
        Reader.load(saved)


def test_under_a_launcher_one_process_prints_the_stop_and_the_dry_run(tiny_bert_dir, tmp_path, monkeypatch):
    """Every rank stops alike and plans alike: rank 0 says so, the others exit with the same status in silence."""
    import mrc_cli.training
    from mrc_cli.cli import app

    def stopped(cfg):
        raise TrainingInterrupted("stopped by SIGTERM at step 4; the checkpoint is saved", 15)

    monkeypatch.setattr(mrc_cli.training, "train", stopped)
    args = ["train", "--model", tiny_bert_dir, "--train", "data/quickstart/en_train.json", "--output-dir",
            str(tmp_path / "run")]
    for rank, shown in (("0", True), ("1", False)):
        monkeypatch.setenv("RANK", rank)
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 143 and ("stopped by SIGTERM at step 4" in result.stderr) is shown
        result = CliRunner().invoke(app, [*args, "--dry-run"])
        assert result.exit_code == 0 and ("train_file: data/quickstart/en_train.json" in result.stdout) is shown


def test_under_a_launcher_one_process_prints_a_config_error_every_rank_finds(tiny_bert_dir, tmp_path, monkeypatch):
    """A wrong flag is refused by every rank alike: rank 0 says what is wrong, the others exit 1 in silence."""
    from mrc_cli.cli import app

    args = ["train", "--model", tiny_bert_dir, "--train", "data/quickstart/en_train.json", "--output-dir",
            str(tmp_path / "run"), "--lr", "-1"]
    for rank, shown in (("0", True), ("1", False)):
        monkeypatch.setenv("RANK", rank)
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith("Error: train.lr must be > 0 and finite (got -1.0)") is shown
        assert (result.stderr == "") is not shown


def test_under_a_launcher_the_commands_of_one_process_are_refused_once(tiny_bert_dir, tmp_path, monkeypatch):
    """score, validate, export... have no work to share: every rank would run them in full and write the same files
    at once. Refused before they read anything, said by rank 0; train, eval, predict and the rest still run."""
    from mrc_cli.cli import ONE_PROCESS, app

    gold, out = "data/quickstart/en_train.json", tmp_path / "out"
    predictions = tmp_path / "predictions.json"
    predictions.write_text("{}")
    calls = {"validate": [gold], "preprocess": ["--data", gold, "--model", tiny_bert_dir],
             "cache": ["--cache-dir", str(out), "--clear"], "runs": [str(tmp_path)], "score": [gold, str(predictions)],
             "export": ["--checkpoint", tiny_bert_dir, "--out", str(out)], "serve": ["--checkpoint", tiny_bert_dir],
             "analyze": ["--gold", gold, "--pred", str(predictions), "--out", str(out)]}
    assert set(ONE_PROCESS) == set(calls)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for command, args in calls.items():
        for rank, shown in (("0", True), ("1", False)):
            monkeypatch.setenv("RANK", rank)
            result = CliRunner().invoke(app, [command, *args])
            assert result.exit_code == 1, result.output
            assert (result.stderr == f"Error: mrc {command} runs in one process, and under a launcher each of the 2 "
                    "would run it in full (its output again, its files written at once): start it without accelerate "
                    "launch / torchrun\n") is shown
            assert (result.stderr == "") is not shown and result.stdout == "" and not out.exists()
    monkeypatch.setenv("RANK", "0")
    result = CliRunner().invoke(app, ["train", "--model", tiny_bert_dir, "--train", gold, "--output-dir",
                                      str(tmp_path / "run"), "--dry-run"])
    assert result.exit_code == 0 and "train_file: data/quickstart/en_train.json" in result.stdout


TRAIN_ON_A_MISSING_FILE = textwrap.dedent('''
    import os, sys
    from mrc_cli.cli import app
    print(f"rank {os.environ['RANK']} started", file=sys.stderr, flush=True)
    try:
        app(["train", "--config", sys.argv[1], "--train", "nothere.json"], prog_name="mrc")
    except SystemExit as done:
        print(f"rank {os.environ['RANK']} exited {done.code}", file=sys.stderr, flush=True)
        raise
''')


@pytest.mark.slow
def test_under_a_launcher_a_missing_training_file_is_one_message_and_no_traceback(tiny_bert_dir, tmp_path):
    """Rank 0 reads the data first and fails: the others are not left at a barrier it never reaches (they waited for
    its exit and printed gloo's "Connection closed by peer" traceback) but stop with it, in silence."""
    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "run", max_steps=2, eval_steps=0)
    done = _two_ranks(TRAIN_ON_A_MISSING_FILE, cfg, tmp_path)
    assert done.returncode != 0
    for rank in (0, 1):  # two ranks really ran, and each ended through mrc's edge with status 1
        assert f"rank {rank} started" in done.stderr and f"rank {rank} exited 1" in done.stderr, done.stderr[-3000:]
    assert done.stderr.count("Error: nothere.json: no such file") == 1, done.stderr[-3000:]
    workers = done.stderr.split("torch/distributed/elastic")[0]  # torchrun's own report of failed workers follows
    assert "Traceback" not in workers and "Connection closed" not in done.stderr, done.stderr[-3000:]


def test_a_rank_that_another_process_left_in_a_broken_collective_says_so_in_one_line(tmp_path, monkeypatch):
    """The safety net where another process's exit breaks a collective: rank 1 says one line, no traceback (--debug
    keeps it); rank 0, whose own error would be lost, keeps its traceback, and so does an error of another cause."""
    import mrc_cli.training
    from mrc_cli.cli import app

    gloo = "[../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:29500"
    raised = [torch.distributed.DistBackendError(gloo)]
    monkeypatch.setattr(mrc_cli.training, "train", lambda cfg: (_ for _ in ()).throw(raised[0]))
    args = ["train", "--train", "data/quickstart/en_train.json", "--output-dir", str(tmp_path / "run")]
    monkeypatch.setenv("RANK", "1")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert result.stderr == "rank 1: stopped because another process failed; its error is above\n"
    assert isinstance(CliRunner().invoke(app, ["--debug", *args]).exception, torch.distributed.DistBackendError)
    raised[0] = RuntimeError("CUDA error: an illegal memory access was encountered")
    assert isinstance(CliRunner().invoke(app, args).exception, RuntimeError)
    raised[0] = torch.distributed.DistBackendError(gloo)
    monkeypatch.setenv("RANK", "0")
    assert isinstance(CliRunner().invoke(app, args).exception, torch.distributed.DistBackendError)
