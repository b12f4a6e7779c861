"""What a GPU run depends on, checked on CPU: no host sync in an ordinary step, one owner of precision (the fp32
recheck is fp32 inside a bf16 run, the Reader does not inherit a run's precision), fp16 loss scaling that checkpoints
and skips the schedule on overflow, gradient checkpointing, resume on another process count, `auto` precision."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bench.common import track_loop_phases
from conftest import ROOT, tiny_run_config
from mrc_cli.config import save_config

HOST_SYNCS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")


def _no_dev(cfg):
    cfg.data.dev_file = None
    return cfg


# --- no host sync in an ordinary step -----------------------------------------------------------------------------


@pytest.mark.parametrize("span_level, tokens_per_batch", [("token", 0), ("word", 0), ("token", 600)])
def test_an_ordinary_step_never_waits_for_the_device(tiny_bert_dir, tmp_path, monkeypatch, span_level, tokens_per_batch):
    """Tensor reads that make the host wait for the device (on CUDA), counted in each phase of the loop: building the
    batches, the step itself (forward, backward, optimizer), and the bookkeeping after it. Only log/save steps may
    read (one all-reduced tensor there)."""
    import mrc_cli.training as training

    phase, syncs = track_loop_phases(training, monkeypatch.setattr), []
    for name in HOST_SYNCS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            # the epoch's plan is drawn once per epoch from a CPU generator: host tensors on any machine
            if not any(frame.name == "epoch_plan" for frame in traceback.extract_stack(limit=4)):
                syncs.append((phase[0], _name))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)

    cfg = _no_dev(tiny_run_config(tiny_bert_dir, tmp_path / "run", max_steps=8, log_steps=4, save_steps=0, grad_accum=2,
                                  tokens_per_batch=tokens_per_batch))
    cfg.model.span_level = span_level
    training.train(cfg)
    counts = {p: sum(1 for q, _ in syncs if q == p) for p in ("batches", "step", "after step", "sync point")}
    assert counts["batches"] == 0 and counts["step"] == 0, [s for s in syncs if s[0] in ("batches", "step")][:10]
    assert counts["sync point"] == 2  # steps 4 and 8: one .tolist() of the all-reduced tensor each


# --- one owner of precision ---------------------------------------------------------------------------------------


@pytest.fixture
def autocast_seen(monkeypatch):
    """(precision asked of predict_logits, autocast on in the model's forward) for every inference forward."""
    import mrc_cli.inference as inference
    from mrc_cli.model import SpanExtractionModel

    seen, asked = [], [None]
    forward = SpanExtractionModel.forward

    def recording_forward(self, *args, **kwargs):
        if not self.training:
            seen.append((asked[0], torch.is_autocast_enabled("cpu")))
        return forward(self, *args, **kwargs)

    predict = inference.predict_logits

    def recording_predict(model, features, accelerator, batch_size, precision, *args):
        asked[0] = precision
        return predict(model, features, accelerator, batch_size, precision, *args)

    monkeypatch.setattr(SpanExtractionModel, "forward", recording_forward)
    monkeypatch.setattr(inference, "predict_logits", recording_predict)
    return seen


def test_the_recheck_of_close_calls_is_fp32_inside_a_bf16_run_and_the_reader_keeps_its_own(tiny_bert_dir, tmp_path,
                                                                                         autocast_seen):
    from mrc_cli.reader import evaluate_file
    from mrc_cli.training import train

    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "run", max_steps=2, precision="bf16")
    train(cfg)  # an untrained model: close calls everywhere, the closest 10 % rerun
    assert {p for p, _ in autocast_seen} == {"bf16", "no"}
    assert all(on for p, on in autocast_seen if p == "bf16")
    assert not any(on for p, on in autocast_seen if p == "no")  # the recheck really ran in fp32

    # the same process, after a bf16 run: a checkpoint configured for fp32 is evaluated in fp32
    checkpoint = tmp_path / "fp32"
    shutil.copytree(tmp_path / "run" / "checkpoints" / "step-000002", checkpoint)
    settings = (checkpoint / "config.yaml").read_text().replace("precision: bf16", "precision: 'no'")
    (checkpoint / "config.yaml").write_text(settings)
    autocast_seen.clear()
    evaluate_file(str(checkpoint), cfg.data.dev_file, str(tmp_path / "eval"))
    assert autocast_seen and not any(on for _, on in autocast_seen)


def test_auto_precision_takes_bf16_only_where_it_is_native(monkeypatch):
    from mrc_cli.precision import resolve_precision

    for capability, expected in (((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert resolve_precision("auto", torch.device("cuda")) == expected  # V100/T4 only emulate bf16
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if native else "no")
    assert resolve_precision("fp16", torch.device("cpu")) == "fp16"


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch sees the GPUs here")
def test_gpus_that_torch_cannot_see_are_named(tmp_path, monkeypatch):
    from mrc_cli.precision import unseen_gpus_warning

    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)'\necho 'GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-2)'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    warning = unseen_gpus_warning()
    assert "nvidia-smi lists 2 GPU(s)" in warning and "trains on the CPU" in warning and "make TORCH=torch" in warning
    monkeypatch.setenv("PATH", "/nonexistent")
    assert unseen_gpus_warning() is None


def test_precision_no_from_yaml_and_set_is_the_word_not_a_boolean(tmp_path):
    from mrc_cli.config import load_config

    config = tmp_path / "run.yaml"
    config.write_text("train:\n  precision: no\n", encoding="utf-8")  # YAML 1.1 reads `no` as false
    assert load_config(config).train.precision == "no"
    assert load_config(None, sets=["train.precision=no"]).train.precision == "no"
    assert load_config(None, sets=["train.scale_lr=yes"]).train.scale_lr is True  # a real boolean stays one


# --- fp16 ---------------------------------------------------------------------------------------------------------


def test_fp16_skips_the_schedule_on_overflow_and_resumes_its_loss_scale(tiny_bert_dir, tmp_path, monkeypatch):
    import mrc_cli.model as model
    from mrc_cli.training import train

    original, calls = model.span_loss, [0]

    def inf_at_second_step(*args, **kwargs):
        calls[0] += 1
        loss = original(*args, **kwargs)
        return loss * float("inf") if calls[0] == 2 else loss

    def run(name, **settings):
        cfg = _no_dev(tiny_run_config(tiny_bert_dir, tmp_path / name, precision="fp16", save_steps=2, keep_last=5,
                                      warmup=0.0, **settings))
        train(cfg)
        return cfg

    monkeypatch.setattr(model, "span_loss", inf_at_second_step)
    run("reference", max_steps=4)
    calls[0] = 0
    stopped = run("resumed", max_steps=4)
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step-000004")  # as if killed after the step-2 checkpoint
    monkeypatch.setattr(model, "span_loss", original)
    stopped.train.resume = "auto"
    train(stopped)

    def final(name):
        folder = tmp_path / name / "checkpoints" / "step-000004"
        return load_file(str(folder / "model.safetensors")), torch.load(folder / "training_state.pt", weights_only=True)

    (ref_weights, ref_state), (new_weights, new_state) = final("reference"), final("resumed")
    rows = [json.loads(line) for line in (tmp_path / "reference" / "metrics.jsonl").read_text().splitlines()]
    skipped = [r["step"] for r in rows if r.get("skipped_steps")]
    assert 2 in skipped  # the injected overflow (fp16 on CPU also overflows at step 1 with the initial scale 2^16)
    assert ref_state["scaler"]["scale"] == 2.0 ** (16 - len(skipped))  # halved at each overflow
    assert ref_state["scheduler"]["last_epoch"] == 4 - len(skipped)  # the schedule advanced on the steps taken only
    assert all(r["loss"] is None for r in rows if r["step"] in skipped)  # a skipped step's loss is not averaged in
    lrs = {r["step"]: r["lr"] for r in rows}
    assert all(lrs[step] == lrs.get(step - 1, lrs[step]) for step in skipped)  # no decay over a skipped step
    assert new_state["scaler"] == ref_state["scaler"] and new_state["scheduler"] == ref_state["scheduler"]
    assert all(torch.equal(ref_weights[k], new_weights[k]) for k in ref_weights)


# --- gradient checkpointing ---------------------------------------------------------------------------------------


# counted inside each layer: transformers checkpoints a layer's forward, so hooks on the layer itself fire once
@pytest.mark.parametrize("model_dir, layer", [("tiny_bert_dir", "BertAttention"), ("tiny_albert_dir", "AlbertAttention")])
def test_gradient_checkpointing_recomputes_layers_and_keeps_the_gradients(model_dir, layer, request):
    from mrc_cli.config import ModelConfig
    from mrc_cli.model import build_model, enable_gradient_checkpointing

    folder = request.getfixturevalue(model_dir)

    def gradients(checkpointing: bool):
        torch.manual_seed(0)
        model = build_model(ModelConfig(name_or_path=folder, dropout=0.0), 64)
        if checkpointing:
            enable_gradient_checkpointing(model)
        calls = []
        for module in model.modules():
            if type(module).__name__ == layer:
                module.register_forward_hook(lambda *_: calls.append(1))
        model.train()
        ids = torch.randint(5, 100, (2, 64), generator=torch.Generator().manual_seed(1))
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), start_positions=torch.tensor([3, 0]),
                    end_positions=torch.tensor([5, 0]))
        out.loss.backward()
        return {n: p.grad for n, p in model.named_parameters()}, len(calls)

    plain, plain_calls = gradients(False)
    recomputed, recomputed_calls = gradients(True)
    assert recomputed_calls == 2 * plain_calls  # every layer ran again in the backward pass
    assert all(torch.allclose(plain[n], recomputed[n], atol=1e-6) for n in plain)


# --- resume with another process count ----------------------------------------------------------------------------


def _launch(cfg, tmp_path: Path, processes: int) -> subprocess.CompletedProcess:
    from test_training import _free_port

    config = tmp_path / f"{Path(cfg.train.output_dir).name}.yaml"
    save_config(cfg, config)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": ""}
    launcher = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", str(processes), "--master_addr",
                "127.0.0.1", "--master_port", str(_free_port())] if processes > 1 else [sys.executable]
    return subprocess.run([*launcher, "-m", "mrc_cli", "train", "--config", str(config)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _resume_elsewhere(tiny_bert_dir, tmp_path, before: int, after: int, tokens_per_batch: int = 0):
    """A 6-step run on `before` processes, then its step-3 checkpoint resumed on `after` processes (no dropout: its
    noise depends on the process count)."""
    reference = _no_dev(tiny_run_config(tiny_bert_dir, tmp_path / "reference", max_steps=6, save_steps=3, keep_last=5,
                                        tokens_per_batch=tokens_per_batch))
    reference.model.dropout = 0.0
    done = _launch(reference, tmp_path, before)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = _no_dev(tiny_run_config(tiny_bert_dir, tmp_path / "resumed", max_steps=6, save_steps=3, keep_last=5,
                                      resume=str(tmp_path / "reference" / "checkpoints" / "step-000003")))
    done = _launch(resumed, tmp_path, after)
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((tmp_path / "resumed" / "checkpoints" / "step-000006" / "trainer_state.json").read_text())
    log = (tmp_path / "resumed" / "train.log").read_text()
    return state, log


def _weights(tmp_path, name):
    return load_file(str(tmp_path / name / "checkpoints" / "step-000006" / "model.safetensors"))


@pytest.mark.slow
def test_resume_on_fewer_processes_keeps_the_effective_batch_and_continues(tiny_bert_dir, tmp_path):
    state, log = _resume_elsewhere(tiny_bert_dir, tmp_path, before=2, after=1)
    assert "1 process(es) instead of 2: train.grad_accum 1 -> 2 keeps the effective batch of 16" in log
    assert "RNG states of 2 processes, this run has 1" in log
    assert state["epoch_segments"] == [[2, 6]] and state["samples"] == 6 * 16
    reference, resumed = _weights(tmp_path, "reference"), _weights(tmp_path, "resumed")
    # the same features in every step; only the order of float sums differs (DDP's mean against accumulation)
    assert all(torch.allclose(reference[k], resumed[k], atol=1e-5) for k in reference)


@pytest.mark.slow
def test_a_packed_run_on_two_processes_resumes_on_one_with_the_same_rows(tiny_bert_dir, tmp_path):
    state, log = _resume_elsewhere(tiny_bert_dir, tmp_path, before=2, after=1, tokens_per_batch=600)
    assert "token-budget batches: rows of 600 tokens" in log
    assert "1 process(es) instead of 2: train.grad_accum 1 -> 2" in log
    reference = json.loads((tmp_path / "reference" / "checkpoints" / "step-000006" / "trainer_state.json").read_text())
    assert reference["processes"] == 2  # two ranks really ran
    assert state["epoch_segments"] == [[2, 6]] and state["samples"] == reference["samples"]  # the same rows in each step
    reference, resumed = _weights(tmp_path, "reference"), _weights(tmp_path, "resumed")
    assert all(torch.allclose(reference[k], resumed[k], atol=1e-5) for k in reference)


@pytest.mark.slow
def test_resume_on_more_processes_keeps_the_effective_batch_by_a_smaller_batch_size(tiny_bert_dir, tmp_path):
    """1 process x 8 features resumed on 2: grad_accum cannot go below 1, so each process takes 4 of the 8 features
    the step was planned with, and the run ends with the weights of the uninterrupted one."""
    state, log = _resume_elsewhere(tiny_bert_dir, tmp_path, before=1, after=2)
    assert ("2 process(es) instead of 1: train.batch_size 8 -> 4 (2 does not divide 1 = processes x grad_accum) keeps "
            "the effective batch of 8 and the batch plan") in log
    assert "resume: train.batch_size is" not in log  # not the checkpoint's 8
    assert state["epoch_segments"] == [[1, 3, 8], [2, 3]] and state["samples"] == 6 * 8
    assert state["processes"] == 2 and state["plan_batch_size"] == 8  # two ranks really ran
    reference, resumed = _weights(tmp_path, "reference"), _weights(tmp_path, "resumed")
    assert all(torch.allclose(reference[k], resumed[k], atol=1e-5) for k in reference)


def test_a_resume_on_another_process_count_keeps_the_effective_batch_by_grad_accum_or_batch_size(tmp_path):
    """1 process x grad_accum 3 x 8 features (24 a step) resumed on 2: 2 x grad_accum 2 x 6; a --batch-size given anew
    is taken where it keeps the 24 (2 x grad_accum 3 x 4), refused where it does not or the process count is the
    same. Where the new count divides no such step, the nearest effective batch."""
    from conftest import tiny_run_config
    from mrc_cli.training import TrainerState, _keep_effective_batch

    def resumed(world: int, asked: int, grad_accum: int = 3) -> tuple[list[str], tuple[int, int], TrainerState]:
        cfg = tiny_run_config("unused", tmp_path / "run", grad_accum=grad_accum, batch_size=8)
        state = TrainerState(processes=1, plan_group=grad_accum, epoch_segments=[[grad_accum, 2]])
        return _keep_effective_batch(cfg, state, world, asked), (cfg.train.batch_size, cfg.train.grad_accum), state

    notes, kept, state = resumed(2, 8)
    assert kept == (6, 2) and notes == [
        "resume: 2 process(es) instead of 1: train.batch_size 8 -> 6 (2 does not divide 3 = processes x grad_accum), "
        "train.grad_accum 3 -> 2 keeps the effective batch of 24 and the batch plan, so the same features make each "
        "step; dropout noise and the order of float sums differ"]
    assert state.epoch_segments == [[3, 2, 8]] and state.plan_batch_size == 8  # the epoch so far, as planned
    notes, kept, _ = resumed(2, 4)
    assert kept == (4, 3) and notes[0].startswith("resume: 2 process(es) instead of 1: train.batch_size 8 -> 4 (as "
                                                  "given) keeps the effective batch of 24")
    notes, kept, _ = resumed(2, 5)
    assert kept == (6, 2) and notes[0] == ("resume: train.batch_size is 8 in the checkpoint and 5 now; using the "
                                           "checkpoint (a new one is taken where it keeps the effective batch of 24 "
                                           "on another process count)")
    notes, kept, _ = resumed(1, 4)
    assert kept == (8, 3) and len(notes) == 1 and "using the checkpoint" in notes[0]
    notes, kept, _ = resumed(5, 8, grad_accum=1)
    assert kept == (8, 1) and notes[0].startswith("resume: 5 process(es) instead of 1: the effective batch changes "
                                                  "from 8 to 40 (5 does not divide 8 = processes x grad_accum x "
                                                  "batch_size)")


def test_the_dry_run_of_a_resume_on_another_process_count_describes_the_batches_it_will_make(tiny_bert_dir, tmp_path,
                                                                                             monkeypatch):
    """A run of 1 process resumed under a launch of 2: --dry-run says what changes and plans for 2 processes."""
    from typer.testing import CliRunner

    from conftest import tiny_run_config
    from mrc_cli.cli import app
    from mrc_cli.training import train

    train(tiny_run_config(tiny_bert_dir, tmp_path / "run", max_steps=2, save_steps=1, eval_steps=0, grad_accum=2))
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(app, ["train", "--resume", "auto", "--output-dir", str(tmp_path / "run"),
                                      "--max-steps", "4", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "# resume: 2 process(es) instead of 1: train.grad_accum 2 -> 1 keeps the effective batch of 16" in result.stdout
    assert "features per optimizer step on average, 22 steps per epoch" in result.stdout  # 344 features, 16 a step
    # a run of 1 x 8 features: 2 x 4 keeps its step, as does a --batch-size 2 given anew (2 x grad_accum 2 x 2)
    monkeypatch.delenv("WORLD_SIZE")
    train(tiny_run_config(tiny_bert_dir, tmp_path / "one", max_steps=2, save_steps=1, eval_steps=0))
    monkeypatch.setenv("WORLD_SIZE", "2")
    for given, says in (([], "train.batch_size 8 -> 4 (2 does not divide 1 = processes x grad_accum) keeps"),
                        (["--batch-size", "2"], "train.batch_size 8 -> 2 (as given), train.grad_accum 1 -> 2 keeps")):
        result = CliRunner().invoke(app, ["train", "--resume", "auto", "--output-dir", str(tmp_path / "one"),
                                          "--max-steps", "4", "--dry-run", *given])
        assert result.exit_code == 0, result.output
        assert f"# resume: 2 process(es) instead of 1: {says} the effective batch of 8" in result.stdout
        assert "resume: train.batch_size is" not in result.stdout
        assert "features per optimizer step on average, 43 steps per epoch" in result.stdout  # 344 features, 8 a step


def test_the_lr_line_of_a_run_resumed_on_another_process_count_names_the_lr_it_trains_with(tmp_path):
    """train.scale_lr scales by the processes a run started with; resumed on more, the schedule keeps that lr."""
    from types import SimpleNamespace

    from conftest import tiny_run_config
    from mrc_cli.training import _describe_run

    cfg = tiny_run_config("unused", tmp_path / "run", lr=1e-4, scale_lr=True)
    lines = []
    log = SimpleNamespace(info=lines.append)
    for lr in (2e-4, 1e-4):  # started on 2 processes; started on 1
        _describe_run(cfg, 2, 10, 1, "no", SimpleNamespace(device="cpu"), "8 features", lr, log)
    assert [line for line in lines if line.startswith("lr ")] == [
        "lr 0.0002 = 0.0001 x 2 processes (train.scale_lr)",
        "lr 0.0001 = 0.0001 x 1 process (train.scale_lr, as the run started; it keeps its effective batch)"]
