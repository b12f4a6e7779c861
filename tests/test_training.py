"""Training on tiny BERT/ALBERT models and the quickstart data: the loss goes down, a run leaves its files, a resumed
run is bitwise the uninterrupted one, --init-from reports key differences, the CLI refuses bad flags, two processes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import QUICKSTART, ROOT, losses_on_a_fixed_batch, tiny_run_config
from mrc_cli.batching import FeatureTensors
from mrc_cli.cli import app
from mrc_cli.config import DataConfig, DecodeConfig, ModelConfig, duration_seconds, load_config, save_config
from mrc_cli.errors import ConfigError
from mrc_cli.splits import featurize_file
from mrc_cli.tokenizer import load_tokenizer
from mrc_cli.model import build_model, describe_keys
from mrc_cli.tracking import read_metrics
from mrc_cli.training import train
from mrc_cli.validate import load_examples

def _log_lines(run_dir: Path, needle: str) -> list[str]:
    return [line for line in (run_dir / "train.log").read_text(encoding="utf-8").splitlines() if needle in line]


def _loss_rows(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}


# --- 1. the model learns -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_dir", ["tiny_bert_dir", "tiny_albert_dir"])
def test_optimizer_steps_lower_the_loss_on_a_fixed_batch(model_dir, request, tmp_path):
    folder = request.getfixturevalue(model_dir)
    tokenizer = load_tokenizer(folder)
    data = DataConfig(max_seq_length=128, doc_stride=32, max_query_length=32, cache_dir=str(tmp_path))
    split = featurize_file(str(QUICKSTART / "en_train.json"), tokenizer, data, "train")
    rows = split.features.select(range(8))
    assert any(s > 0 for s in rows["start_positions"])  # some windows hold their answer, the others point at CLS
    store = FeatureTensors(rows, torch.device("cpu"), tokenizer.pad_token_id or 0)
    batch = store.batch(list(range(8)))

    torch.manual_seed(0)
    model = build_model(ModelConfig(name_or_path=folder, dropout=0.0), max_seq_length=128)
    # the encoder came from the folder's weights, not a fresh init (the pooler is dropped: span extraction needs none)
    saved = load_file(str(Path(folder) / "model.safetensors"))
    encoder = model.encoder.state_dict()
    assert set(encoder) == {k for k in saved if "pooler" not in k}
    assert all(torch.equal(encoder[k], saved[k]) for k in encoder)

    model.train()
    losses = losses_on_a_fixed_batch(model, batch, lr=1e-3)
    # measured: BERT 4.37 -> 3.04 (0.70 of the first), ALBERT 4.83 -> 3.30 (0.68); ln(128 positions) = 4.85 is chance
    assert losses[0] > 3.5
    assert losses[-1] < 0.8 * losses[0], losses
    assert losses[-1] < min(losses[:10])


# --- a reference run shared by the end-to-end, resume and --init-from tests ----------------------------------------


@pytest.fixture(scope="module")
def run_a(tmp_path_factory, tiny_bert_dir) -> tuple[Path, object]:
    """6 uninterrupted steps at the model's default dropout, evaluated at 3 and 6, checkpoints at 3 and 6."""
    run_dir = tmp_path_factory.mktemp("runs") / "A"
    cfg = tiny_run_config(tiny_bert_dir, run_dir, max_steps=6, eval_steps=3, save_steps=3, keep_last=5)
    result = train(cfg)
    return run_dir, result


# --- 2. end to end -----------------------------------------------------------------------------------------------


def test_train_end_to_end_writes_every_run_file(run_a):
    run_dir, result = run_a
    assert result.run_dir == run_dir and result.steps == 6
    for name in ("config.yaml", "train.log", "metrics.jsonl", "curves.png", "run_info.json",
                 "predictions.json", "nbest.json", "null_odds.json", "metrics.json", "best_checkpoint.json"):
        assert (run_dir / name).is_file(), name

    config = load_config(run_dir / "config.yaml")
    assert config.train.max_steps == 6 and config.train.batch_size == 8 and config.data.max_seq_length == 128
    assert config.decode.allow_null  # switched on: the dev set has unanswerable questions

    rows = read_metrics(run_dir / "metrics.jsonl")
    losses = _loss_rows(run_dir)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]  # log_steps 1
    assert all(0 < r["loss"] < 10 and r["lr"] >= 0 for r in losses.values())
    # the lr each step used: one warm-up step (0.1 of 6, at least one), then linear decay towards 0 after the last
    assert [losses[step]["lr"] for step in (1, 2, 6)] == pytest.approx([1e-4, 1e-4, 2e-5])
    evals = [r for r in rows if "dev_loss" in r]
    assert [r["step"] for r in evals] == [3, 6]
    assert all(0 < r["dev_loss"] < 10 and 0 <= r["f1"] <= 100 and r["total"] == 49 for r in evals)
    assert result.metrics["f1"] == pytest.approx(evals[-1]["f1"])
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["f1"] == pytest.approx(evals[-1]["f1"]) and saved["step"] == 6  # the last evaluation's, named

    png = (run_dir / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["torch"] == torch.__version__ and info["processes"] == 1 and info["precision"] == "fp32"
    assert len(info["commands"]) == 1  # how the run was started (here: pytest's command line); resumes add theirs
    assert info["train_examples"] == 177 and info["dev_examples"] == 49
    assert info["train_features"] >= 177 and info["dev_features"] >= 49

    _, _, golds = load_examples(str(QUICKSTART / "en_dev.json"), "eval")
    dev_ids = {g["id"] for g in golds}
    assert len(dev_ids) == 49
    predictions = json.loads((run_dir / "predictions.json").read_text())
    nbest = json.loads((run_dir / "nbest.json").read_text())
    null_odds = json.loads((run_dir / "null_odds.json").read_text())
    assert set(predictions) == set(nbest) == set(null_odds) == dev_ids
    assert all(isinstance(a, str) for a in predictions.values())
    assert all(isinstance(v, (int, float)) for v in null_odds.values())

    pointer = json.loads((run_dir / "best_checkpoint.json").read_text())
    best_f1 = max(r["f1"] for r in evals)
    best_step = next(r["step"] for r in evals if r["f1"] == best_f1)
    assert pointer["checkpoint"] == f"checkpoints/step-{best_step:06d}"
    assert pointer["metrics"] == {"step": best_step, "f1": pytest.approx(best_f1)}
    assert result.best_checkpoint == run_dir / pointer["checkpoint"]
    # beside the last evaluation's metrics, under names of their own (SQuAD v2's hold a best_f1 of the null sweep)
    assert result.best == {"best_checkpoint_step": best_step, "best_checkpoint_f1": pytest.approx(best_f1)}
    # the run directory's predictions are the last step's, and say so; the log names the best where they differ
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == result.steps
    differ = (f"predictions.json and metrics.json are of the last step, {result.steps}; eval, predict and export of "
              f"{run_dir} take its best checkpoint, step {best_step}")
    assert (differ in (run_dir / "train.log").read_text()) is (best_step != result.steps)
    for step in (3, 6):  # keep_last 5: both checkpoints stay
        checkpoint = run_dir / "checkpoints" / f"step-{step:06d}"
        for name in ("model.safetensors", "trainer_state.json", "training_state.pt", "config.yaml", "config.json"):
            assert (checkpoint / name).is_file(), (checkpoint, name)
        assert (checkpoint / "tokenizer").is_dir() and load_tokenizer(str(checkpoint / "tokenizer")).is_fast
        assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == step
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    assert len(_log_lines(run_dir, "1 process(es)")) == 1


@pytest.mark.parametrize("scores", [{"exact_match": 40.0, "f1": 50.0}, {"exact": 40.0, "f1": 50.0, "HasAns_f1": 70.0},
                                    {"EM": 40.0, "F1": 50.0}], ids=["squad", "squad_v2", "cmrc2018"])
def test_curves_show_dev_em_and_f1_under_each_metrics_names(scores, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mrc_cli.tracking import plot_curves

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # the figure plot_curves drew, kept open to look at
    rows = [{"step": 1, "loss": 3.0}, {"step": 2, "dev_loss": 2.0, **scores}, {"step": 3, "loss": 2.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    (figure,) = figures
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
             for ax in figure.axes for line in ax.get_lines()}
    assert lines == {"train loss": ([1, 3], [3.0, 2.5]), "dev loss": ([2], [2.0]), "dev EM": ([2], [40.0]),
                     "dev F1": ([2], [50.0])}
    assert [ax.get_title() for ax in figure.axes] == ["Loss", "Dev EM / F1"]


# --- 3. exact resume ---------------------------------------------------------------------------------------------


def test_resumed_run_is_bitwise_the_uninterrupted_run(run_a, tiny_bert_dir, tmp_path):
    run_dir_a, _ = run_a
    run_dir_b = tmp_path / "B"
    (run_dir_b / "checkpoints").mkdir(parents=True)
    shutil.copytree(run_dir_a / "checkpoints" / "step-000003", run_dir_b / "checkpoints" / "step-000003")
    cfg = tiny_run_config(tiny_bert_dir, run_dir_b, max_steps=6, eval_steps=3, save_steps=3, keep_last=5, resume="auto")
    assert cfg.model.dropout is None  # the model's own dropout: the restored RNG state matters
    assert json.loads((Path(tiny_bert_dir) / "config.json").read_text())["hidden_dropout_prob"] > 0
    result = train(cfg)
    assert result.steps == 6
    assert _log_lines(run_dir_b, "resumed from") and "at step 3" in _log_lines(run_dir_b, "resumed from")[0]

    final_a = load_file(str(run_dir_a / "checkpoints" / "step-000006" / "model.safetensors"))
    final_b = load_file(str(run_dir_b / "checkpoints" / "step-000006" / "model.safetensors"))
    assert final_a.keys() == final_b.keys()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a), [k for k in final_a if not torch.equal(final_a[k], final_b[k])]
    # step 3 -> 6 really trained (a resume that loaded the step-6 weights would pass the check above trivially)
    step3 = load_file(str(run_dir_a / "checkpoints" / "step-000003" / "model.safetensors"))
    assert not torch.equal(step3["qa_outputs.weight"], final_b["qa_outputs.weight"])

    losses_a, losses_b = _loss_rows(run_dir_a), _loss_rows(run_dir_b)
    assert sorted(losses_b) == [4, 5, 6]
    for step in (4, 5, 6):
        assert (losses_b[step]["loss"], losses_b[step]["lr"]) == (losses_a[step]["loss"], losses_a[step]["lr"])
    state_a = json.loads((run_dir_a / "checkpoints" / "step-000006" / "trainer_state.json").read_text())
    state_b = json.loads((run_dir_b / "checkpoints" / "step-000006" / "trainer_state.json").read_text())
    assert state_a == state_b


def test_splits_in_memory_train_exactly_as_their_files(run_a, tiny_bert_dir, tmp_path):
    """k-fold and distillation hand train() splits built in memory: the run equals run A, which read the files."""
    reference, _ = run_a
    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "in_memory", max_steps=6, eval_steps=3, save_steps=3, keep_last=5)
    tokenizer = load_tokenizer(tiny_bert_dir)
    train_split = featurize_file(cfg.data.train_file, tokenizer, cfg.data, "train")
    dev_split = featurize_file(cfg.data.dev_file, tokenizer, cfg.data, "eval")
    cfg.data.train_file = cfg.data.dev_file = None  # nothing read from disk
    result = train(cfg, train_split, dev_split)
    assert "(in memory)" in (tmp_path / "in_memory" / "train.log").read_text()
    final = "checkpoints/step-000006/model.safetensors"
    ours, theirs = load_file(str(tmp_path / "in_memory" / final)), load_file(str(reference / final))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert result.metrics == json.loads((reference / "metrics.json").read_text())
    unlabelled = featurize_file(tiny_run_config(tiny_bert_dir, tmp_path).data.dev_file, tokenizer, cfg.data, "predict")
    with pytest.raises(ConfigError, match="the train split handed to train\\(\\) has no start_positions"):
        train(tiny_run_config(tiny_bert_dir, tmp_path / "wrong"), unlabelled)


def test_metrics_and_config_reach_the_experiment_trackers(tiny_bert_dir, tmp_path, monkeypatch):
    """train.report_to goes through accelerate's trackers: a tracker of our own stands in for TensorBoard or W&B."""
    from accelerate.tracking import GeneralTracker

    from mrc_cli import tracking

    class Recorder(GeneralTracker):
        name, requires_logging_directory, main_process_only = "recorder", False, True

        def __init__(self):
            super().__init__()
            self.config, self.logged, self.finished = None, [], False

        @property
        def tracker(self):
            return self

        def store_init_configuration(self, values):
            self.config = values

        def log(self, values, step=None, **kwargs):
            self.logged.append((step, values))

        def finish(self):
            self.finished = True

    recorder = Recorder()
    asked = []
    monkeypatch.setattr(tracking, "tracker_names", lambda report_to: asked.append(report_to) or [recorder])
    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "run", max_steps=2, report_to="wandb")
    train(cfg)
    assert set(asked) == {"wandb"} and recorder.finished  # checked with the config, then handed to accelerate
    assert recorder.config["train.max_steps"] == 2 and recorder.config["model.name_or_path"] == tiny_bert_dir
    assert recorder.config["train.resume"] == "none"  # flat scalars only
    lines = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [step for step, _ in recorder.logged] == [r["step"] for r in lines]
    assert recorder.logged[0][1]["loss"] == lines[0]["loss"] and "f1" in recorder.logged[-1][1]


@pytest.mark.parametrize(("report_to", "problem"), [("tensorboardx", "unknown tracker 'tensorboardx'"),
                                                     ("none,tensorboard", "tensorboard is not installed here")])
def test_unknown_or_missing_trackers_are_refused_before_training(report_to, problem, tiny_bert_dir, tmp_path):
    if report_to.endswith("tensorboard"):
        from accelerate.utils import is_tensorboard_available

        if is_tensorboard_available():
            pytest.skip("tensorboard is installed here")
    with pytest.raises(ConfigError, match=problem):
        train(tiny_run_config(tiny_bert_dir, tmp_path / "run", max_steps=1, report_to=report_to))
    assert not (tmp_path / "run").exists()
    dry_run = CliRunner().invoke(app, ["train", "--dry-run", "--set", f"train.report_to={report_to}"])
    assert dry_run.exit_code == 1 and problem in dry_run.output


def test_a_checkpoint_of_an_older_trainer_is_refused_with_what_to_do(run_a, tiny_bert_dir, tmp_path):
    old = tmp_path / "old" / "checkpoints" / "step-000003"
    shutil.copytree(run_a[0] / "checkpoints" / "step-000003", old)
    state = json.loads((old / "trainer_state.json").read_text())
    state["batch_in_epoch"] = state.pop("epoch_segments")  # the position as mrc-cli up to c62c0a9 kept it
    (old / "trainer_state.json").write_text(json.dumps(state))
    result = CliRunner().invoke(app, ["train", "--model", tiny_bert_dir, "--train", str(QUICKSTART / "en_train.json"),
                                      "--output-dir", str(tmp_path / "old"), "--resume", "auto", "--max-steps", "6"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "written by an older mrc-cli (trainer_state.json has batch_in_epoch)" in result.stderr
    assert f"--init-from {old}" in result.stderr


def test_fresh_run_into_an_existing_run_dir_is_refused(run_a, tiny_bert_dir):
    run_dir, _ = run_a
    before = (run_dir / "metrics.jsonl").read_text()
    cfg = tiny_run_config(tiny_bert_dir, run_dir, max_steps=6)
    with pytest.raises(ConfigError, match="--resume auto") as err:
        train(cfg)
    assert str(run_dir) in str(err.value) and "step-000006" in str(err.value)
    assert (run_dir / "metrics.jsonl").read_text() == before  # nothing written


# --- 4. --init-from ----------------------------------------------------------------------------------------------


def _init_run(model_dir: str, init_from: Path, run_dir: Path) -> dict[str, torch.Tensor]:
    """One step at a negligible lr from `init_from`, no dev set; returns the weights it saved."""
    cfg = tiny_run_config(model_dir, run_dir, max_steps=1, lr=1e-9, weight_decay=0.0, init_from=str(init_from))
    cfg.data.dev_file = None
    train(cfg)
    return load_file(str(run_dir / "checkpoints" / "step-000001" / "model.safetensors"))


def test_init_from_a_checkpoint_of_the_same_architecture_loads_every_weight(run_a, tiny_bert_dir, tmp_path):
    checkpoint = run_a[0] / "checkpoints" / "step-000006"
    weights = _init_run(tiny_bert_dir, checkpoint, tmp_path / "same")
    line = _log_lines(tmp_path / "same", "--init-from")
    assert len(line) == 1 and line[0].endswith(f"--init-from {checkpoint / 'model.safetensors'}: missing none; unexpected none")
    source = load_file(str(checkpoint / "model.safetensors"))
    assert weights.keys() == source.keys()
    assert all(torch.allclose(weights[k], source[k], atol=1e-6) for k in source)


def test_init_from_an_export_or_a_bare_encoder_folder_loads_what_it_holds(run_a, tiny_bert_dir, tmp_path):
    """An `mrc export` folder keeps transformers' names (bert.*), a bare encoder's folder none: both are the span
    model's encoder.*, which had been left as --model's while the run seemed to start from them."""
    from mrc_cli.export import export_checkpoint

    checkpoint = run_a[0] / "checkpoints" / "step-000006"
    export_checkpoint(str(checkpoint), str(tmp_path / "export"))
    weights = _init_run(tiny_bert_dir, tmp_path / "export", tmp_path / "from_export")
    source = load_file(str(checkpoint / "model.safetensors"))
    assert weights.keys() == source.keys() and all(torch.allclose(weights[k], source[k], atol=1e-6) for k in source)
    assert _log_lines(tmp_path / "from_export", "--init-from")[0].endswith("missing none; unexpected none")
    _init_run(tiny_bert_dir, Path(tiny_bert_dir), tmp_path / "from_encoder")  # the tiny BERT folder: no head
    line = _log_lines(tmp_path / "from_encoder", "--init-from")[0]
    assert "missing qa_outputs (2 keys)" in line and "encoder.embeddings" not in line


def test_init_from_another_shape_trains_and_reports_keys_by_prefix(run_a, tiny_albert_dir, tmp_path):
    checkpoint = run_a[0] / "checkpoints" / "step-000006"
    weights = _init_run(tiny_albert_dir, checkpoint, tmp_path / "albert")

    source = load_file(str(checkpoint / "model.safetensors"))
    target = build_model(ModelConfig(name_or_path=tiny_albert_dir), 128).state_dict()
    missing = sorted(k for k in target if k not in source)
    reshaped = sorted(k for k in target if k in source and source[k].shape != target[k].shape)
    unexpected = sorted(k for k in source if k not in target)
    assert any(k.startswith("encoder.encoder.albert_layer_groups") for k in missing)
    assert any(k.startswith("encoder.encoder.layer.") for k in unexpected)
    line = _log_lines(tmp_path / "albert", "--init-from")
    assert len(line) == 1
    assert f": missing {describe_keys(missing)}; unexpected {describe_keys(unexpected)}; shapes differ (left as " \
           f"--model's): {describe_keys(reshaped)}: " in line[0]
    # counted by hand: ALBERT's encoder is one shared layer group (16 tensors) and a projection from the embedding
    # width (2), where BERT has 2 layers of 16 tensors; its 5 embedding tensors differ in width (16 vs 32)
    assert ": missing encoder.encoder (2 keys), encoder.encoder.albert_layer_groups.0 (16 keys); unexpected " \
           "encoder.encoder.layer.0-1 (32 keys); shapes differ (left as --model's): encoder.embeddings (5 keys): " \
           "encoder.embeddings.LayerNorm.bias [32] in the checkpoint, [16] in the model; " in line[0]
    assert line[0].endswith("; ...")
    assert _log_lines(tmp_path / "albert", "warning: no weight of the encoder came from that checkpoint")
    # what fits was loaded: the span head has the same shape (hidden size 32) in both
    assert "qa_outputs" not in missing
    assert torch.allclose(weights["qa_outputs.weight"], source["qa_outputs.weight"], atol=1e-6)
    assert set(weights) == set(target)


# --- one process, two runs ----------------------------------------------------------------------------------------


@pytest.fixture
def fresh_accelerate_state():
    """accelerate's process-wide state as a fresh `mrc train` process has it, before and after the test (the runs
    above left it at precision "no", and an Accelerator of another precision refuses to start in the same process:
    see test_two_runs_with_different_precisions_in_one_process)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_two_runs_with_different_precisions_in_one_process(tiny_bert_dir, tmp_path, fresh_accelerate_state,
                                                           monkeypatch):
    """Each run trains at its own precision: the second is not refused (accelerate's state is per process) and its
    precision is not that of the first; seen in the autocast state of every training forward, the log and run_info."""
    from mrc_cli.model import SpanExtractionModel

    forward, seen = SpanExtractionModel.forward, []

    def recording_forward(self, *args, **kwargs):
        if self.training:
            seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(SpanExtractionModel, "forward", recording_forward)
    for precision, dtype in (("no", None), ("bf16", torch.bfloat16)):
        cfg = tiny_run_config(tiny_bert_dir, tmp_path / precision, max_steps=2, precision=precision)
        cfg.data.dev_file = None
        seen.clear()
        assert train(cfg).steps == 2
        assert seen == [dtype, dtype]  # one forward per step (batch 8, no accumulation)
        assert json.loads((tmp_path / precision / "run_info.json").read_text())["precision"] == (
            "fp32" if precision == "no" else precision)
        assert len(_log_lines(tmp_path / precision, f"on cpu, {'fp32' if precision == 'no' else precision};")) == 1


# --- 5. the CLI ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("flags", "problem"), [
    (["--lr", "-1"], "train.lr must be > 0 and finite (got -1.0)"),
    (["--batch-size", "0"], "train.batch_size must be at least 1 (got 0)"),
    (["--config", "/no/such.yaml"], "/no/such.yaml: config file not found"),
    (["--model", "/no/such/folder"], "/no/such/folder: no such model folder"),
])
def test_train_cli_refuses_bad_flags_with_one_line(flags, problem, tmp_path, fresh_accelerate_state):
    args = ["train", "--train", str(QUICKSTART / "en_train.json"), "--output-dir", str(tmp_path / "run"), *flags]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert result.stderr.startswith("Error: ") and problem in result.stderr, result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_cli_dry_run_prints_the_resolved_config(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  lr: 0.001\n  epochs: 3\ndata:\n  doc_stride: 100\n", encoding="utf-8")
    args = ["train", "--dry-run", "--config", str(config), "--model", "some/folder", "--batch-size", "4",
            "--max-steps", "7", "--doc-stride", "48", "--output-dir", str(tmp_path / "run")]
    result = CliRunner().invoke(app, [*args, "--lr", "2e-4"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.stdout)
    assert shown["train"]["lr"] == 2e-4  # the flag over the YAML file
    assert shown["train"]["epochs"] == 3.0  # the YAML file over the defaults
    assert shown["train"]["batch_size"] == 4 and shown["train"]["max_steps"] == 7
    assert shown["data"]["doc_stride"] == 48 and shown["model"]["name_or_path"] == "some/folder"
    assert shown["train"]["warmup"] == 0.1  # a default
    assert not (tmp_path / "run").exists()  # nothing ran

    result = CliRunner().invoke(app, [*args, "--set", "train.lr=3.0e-5"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["train"]["lr"] == 3e-5  # --set over the YAML file
    # a flag and a --set of one key that disagree: which was meant is not guessed
    clash = CliRunner().invoke(app, [*args, "--lr", "2e-4", "--set", "train.lr=3.0e-5"])
    assert clash.exit_code == 1 and "train.lr: its flag gives 0.0002, --set train.lr=3.0e-5 another value" in clash.stderr
    # the printed config is a valid config file
    printed = tmp_path / "printed.yaml"
    printed.write_text(result.stdout, encoding="utf-8")
    assert load_config(printed).train.lr == 3e-5


@pytest.mark.parametrize("value", ["3e-5", "1e-4"])
def test_set_accepts_floats_in_e_notation(value, tmp_path):
    result = CliRunner().invoke(app, ["train", "--dry-run", "--set", f"train.lr={value}"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["train"]["lr"] == float(value)
    config = tmp_path / "run.yaml"
    config.write_text(f"train:\n  lr: {value}\n", encoding="utf-8")
    assert load_config(config).train.lr == float(value)


@pytest.mark.parametrize(("value", "seconds"), [("90m", 5400), ("2h", 7200), ("3600", 3600), ("1.5h", 5400),
                                               ("45s", 45)])
def test_max_time_takes_seconds_minutes_or_hours(value, seconds):
    cfg = load_config(sets=[f"train.max_time={value}"])
    assert cfg.train.max_time == value  # as given (YAML's 3600 as the text), in config.yaml too
    assert duration_seconds(cfg.train.max_time) == seconds


def test_train_cli_hands_the_resolved_config_to_the_trainer(monkeypatch, tmp_path):
    from mrc_cli import training

    seen = []

    def fake_train(cfg):
        seen.append(cfg)
        return training.TrainResult(Path(cfg.train.output_dir), 5, {"f1": 12.5})

    monkeypatch.setattr(training, "train", fake_train)
    result = CliRunner().invoke(app, [
        "train", "--model", "m", "--train", "t.json", "--dev", "d.json", "--output-dir", str(tmp_path / "r"),
        "--epochs", "1.5", "--grad-accum", "2", "--warmup", "0.2", "--max-seq-length", "256", "--seed", "3",
        "--eval-steps", "10", "--save-steps", "20", "--resume", "auto", "--init-from", "w.safetensors",
        "--set", "decode.n_best_size=7",
    ])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"run_dir": str(tmp_path / "r"), "steps": 5, "f1": 12.5}
    (cfg,) = seen
    assert (cfg.model.name_or_path, cfg.data.train_file, cfg.data.dev_file) == ("m", "t.json", "d.json")
    assert (cfg.train.epochs, cfg.train.grad_accum, cfg.train.warmup, cfg.train.seed) == (1.5, 2, 0.2, 3)
    assert (cfg.train.eval_steps, cfg.train.save_steps, cfg.train.resume, cfg.train.init_from) == (10, 20, "auto", "w.safetensors")
    assert cfg.data.max_seq_length == 256 and cfg.decode.n_best_size == 7
    assert cfg.train.lr == 1e-4 and cfg.train.batch_size == 16  # defaults where no flag was given


# --- 6. two processes ----------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(cfg, tmp_path: Path, cpu: bool = True, args: list[str] | None = None) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 -m mrc_cli train --config <cfg as YAML>` (or `mrc_cli ARGS`). On a machine without
    GPUs accelerate only joins the ranks into one run when told the processes are CPU ones (ACCELERATE_USE_CPU=1,
    what `accelerate launch --cpu` sets); without it each rank trains alone (see the xfail test below)."""
    if args is None:
        save_config(cfg, tmp_path / "run.yaml")
        args = ["train", "--config", str(tmp_path / "run.yaml")]
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
               "-m", "mrc_cli", *args]
    # the ranks run on the CPU also on a GPU machine (a machine with one GPU cannot host two NCCL ranks on it)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("ACCELERATE_USE_CPU", None)
    if cpu:
        env["ACCELERATE_USE_CPU"] = "1"
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _assert_two_ranks_trained(run_dir: Path, steps: int) -> None:
    header = _log_lines(run_dir, "process(es)")
    assert len(header) == 1  # logged by the main process only
    assert "2 process(es)" in header[0] and "effective batch 16 = 8 per process x 1 accumulation x 2" in header[0]
    assert json.loads((run_dir / "run_info.json").read_text())["processes"] == 2
    losses = _loss_rows(run_dir)
    assert sorted(losses) == list(range(1, steps + 1)) and all(0 < r["loss"] < 10 for r in losses.values())
    final = run_dir / "checkpoints" / f"step-{steps:06d}"
    assert (final / "model.safetensors").is_file()
    rngs = torch.load(final / "training_state.pt", weights_only=True)["rng"]
    assert len(rngs) == 2  # one RNG state per process
    position = json.loads((final / "trainer_state.json").read_text())
    assert position["epoch_segments"] == [[2, steps]] and position["processes"] == 2
    assert position["samples"] == 16 * steps  # both ranks' features: the global position


@pytest.mark.slow
def test_two_processes_train_one_run(tiny_bert_dir, tmp_path):
    run_dir = tmp_path / "ddp"
    cfg = tiny_run_config(tiny_bert_dir, run_dir, max_steps=4, save_steps=2)
    cfg.data.dev_file = None
    done = _torchrun(cfg, tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    _assert_two_ranks_trained(run_dir, 4)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"run_dir": str(run_dir), "steps": 4}


@pytest.mark.slow
def test_two_processes_train_and_evaluate_one_run(tiny_bert_dir, tmp_path):
    run_dir = tmp_path / "ddp"
    cfg = tiny_run_config(tiny_bert_dir, run_dir, max_steps=4, eval_steps=2, save_steps=2)
    done = _torchrun(cfg, tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    _assert_two_ranks_trained(run_dir, 4)
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "dev_loss" in r] == [2, 4]
    predictions = json.loads((run_dir / "predictions.json").read_text())
    assert len(predictions) == 49  # every dev question, gathered from both ranks

    # the same checkpoint evaluated by one process: the same answers and figures, no feature lost or doubled at the
    # uneven last batch (eval batch 32 over 49 features: ranks get 32 and 17 + 15 repeated ones)
    from mrc_cli.reader import evaluate_file

    single = evaluate_file(str(run_dir / "checkpoints" / "step-000004"), cfg.data.dev_file, str(tmp_path / "single"))
    assert json.loads((tmp_path / "single" / "predictions.json").read_text()) == predictions
    final = json.loads((run_dir / "metrics.json").read_text())
    assert final.pop("compute")["forward_passes"] == 16 * 4  # the training's, both ranks' features: not a score
    assert final.pop("step") == 4  # the evaluation's step: the run's record, not a score
    assert {k: single[k] for k in final} == final
    # mrc eval on two processes: the same files, its results said once, with the number of processes
    done = _torchrun(cfg, tmp_path, args=["eval", "--checkpoint", str(run_dir / "checkpoints" / "step-000004"),
                                          "--data", cfg.data.dev_file, "--out", str(tmp_path / "two")])
    assert done.returncode == 0, done.stderr[-4000:]
    said = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(said) == 1 and said[0]["processes"] == 2 and said[0]["f1"] == single["f1"]
    assert json.loads((tmp_path / "two" / "predictions.json").read_text()) == predictions


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the ranks join without ACCELERATE_USE_CPU")
def test_two_processes_without_accelerate_use_cpu_are_one_run_or_refused(tiny_bert_dir, tmp_path):
    run_dir = tmp_path / "ddp"
    cfg = tiny_run_config(tiny_bert_dir, run_dir, max_steps=2, save_steps=2)
    cfg.data.dev_file = None
    done = _torchrun(cfg, tmp_path, cpu=False)
    if done.returncode == 0:
        _assert_two_ranks_trained(run_dir, 2)
    else:
        assert "Error: " in done.stderr and "Traceback" not in done.stderr, done.stderr[-4000:]


@pytest.mark.slow
def test_accelerate_launch_runs_two_processes_on_cpu(tiny_bert_dir, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` (without --multi_gpu accelerate starts one process on CPU)."""
    run_dir = tmp_path / "ddp"
    cfg = tiny_run_config(tiny_bert_dir, run_dir, max_steps=4, save_steps=2)
    cfg.data.dev_file = None
    config = tmp_path / "run.yaml"
    save_config(cfg, config)
    launcher = Path(sys.executable).with_name("accelerate")
    command = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", str(_free_port()),
               "-m", "mrc_cli", "train", "--config", str(config)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    _assert_two_ranks_trained(run_dir, 4)


def test_choice_keys_are_checked_when_the_config_is_read(tmp_path):
    result = CliRunner().invoke(app, ["train", "--dry-run", "--set", "model.span_level=sentence"])
    assert result.exit_code == 1 and "model.span_level: expected one of token, word, got 'sentence'" in result.stderr
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  precision: fp8\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="train.precision: expected one of auto, bf16, fp16, no, got 'fp8'"):
        load_config(config)


def test_a_config_from_python_takes_paths_and_one_setting_as_a_string_and_keeps_no_refused_value(tmp_path):
    from mrc_cli.config import apply_sets

    cfg = load_config(None, {"data.train_file": tmp_path / "train.json"}, sets="train.lr=3e-5")
    assert cfg.data.train_file == str(tmp_path / "train.json") and cfg.train.lr == 3e-5
    cfg.train.output_dir = tmp_path / "run"  # set by hand: saved as its text
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml").train.output_dir == str(tmp_path / "run")
    with pytest.raises(ConfigError, match="n_best_size"):
        apply_sets(cfg, ["decode.n_best_size=0"])
    assert cfg.decode.n_best_size == DecodeConfig().n_best_size
    with pytest.raises(ConfigError, match="model.dropout is a probability from 0 to below 1 .* got 2.0"):
        load_config(None, sets=["model.dropout=2"])  # torch's refusal was a traceback from inside the model


def test_a_setting_only_another_command_reads_is_refused_naming_that_command():
    """--set pretrain.mask_prob=0.3 on mrc train would be saved with the run and change nothing."""
    runner = CliRunner()
    for command, setting, reader in (
            (["train"], "pretrain.mask_prob=0.3", "pretrain"),
            (["distil", "--teacher", "t", "--student", "s"], "pretrain.masking=token", "pretrain"),
            (["pretrain"], "distil.alpha=0.2", "distil"),
            (["kfold", "--folds", "2"], "distil.temperature=3", "distil"),
            (["preprocess", "--data", "data/quickstart/en_train.json"], "pretrain.mask_prob=0.3", "pretrain")):
        dry_run = ["--dry-run"] if command[0] not in ("kfold", "preprocess") else []
        result = runner.invoke(app, [*command, *dry_run, "--set", setting])
        assert result.exit_code == 1, result.output
        assert result.stderr == (f"Error: --set {setting}: mrc {command[0]} does not read {reader}.* settings "
                                 f"(mrc {reader} does)\n")
    for setting in ("decode.n_best_size=3", "data.doc_stride=64", "train.eval_steps=1"):  # pre-training's no use
        result = runner.invoke(app, ["pretrain", "--dry-run", "--data", "data/quickstart/en_train.json", "--set", setting])
        assert result.exit_code == 1 and result.stderr.startswith(f"Error: --set {setting}: mrc pretrain does not read "
                                                                  "it"), result.output
    result = runner.invoke(app, ["compare", "--variant", "mask:pretrain.mask_prob=0.3"])
    assert result.exit_code == 1 and ("variant 'mask:pretrain.mask_prob=0.3': pretrain.mask_prob=0.3: mrc compare "
                                      "does not read pretrain.* settings") in result.stderr
    # a command's own section, and the sections every run reads, pass
    assert runner.invoke(app, ["pretrain", "--dry-run", "--data", "data/quickstart/en_train.json", "--set",
                              "pretrain.mask_prob=0.3"]).exit_code == 0
    assert runner.invoke(app, ["train", "--dry-run", "--set", "train.lr=1e-4"]).exit_code == 0


def test_resume_auto_of_a_run_directory_that_is_not_there_says_a_new_run_starts(tmp_path):
    """A typo in --output-dir would otherwise restart training without a word."""
    result = CliRunner().invoke(app, ["train", "--dry-run", "--resume", "auto", "--output-dir", str(tmp_path / "typo")])
    assert result.exit_code == 0 and f"# --resume auto: there is no {tmp_path / 'typo'} to resume, so a new run starts " \
                                      "there\n" in result.stdout



def test_resume_auto_into_a_folder_that_was_not_there_says_so_in_the_run_log(tiny_bert_dir, tmp_path):
    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "typo", max_steps=1)
    cfg.train.resume, cfg.data.dev_file = "auto", None
    train(cfg)
    assert f"--resume auto: there is no {tmp_path / 'typo'} to resume, so a new run starts there" in \
        (tmp_path / "typo" / "train.log").read_text()


def test_run_info_records_the_command_as_it_can_be_typed_again_with_its_launcher():
    """`python -m mrc_cli` (as launchers run it) has __main__.py's path as argv[0]: recorded as `mrc`, and under a
    launcher in that launcher's form for the same processes (torchrun sets no ACCELERATE_ variable)."""
    from mrc_cli.training import command_line

    main = str(ROOT / "mrc_cli" / "__main__.py")
    args = ["train", "--output-dir", "runs/a b"]
    one = {"WORLD_SIZE": "1"}
    torchrun = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "ACCELERATE_USE_CPU": "1"}
    accelerate = {**torchrun, "ACCELERATE_MIXED_PRECISION": "no"}
    two_nodes = {"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}
    assert command_line([main, *args], {}) == "mrc train --output-dir 'runs/a b'"
    assert command_line(["/venv/bin/mrc", *args], one) == "mrc train --output-dir 'runs/a b'"
    assert command_line([main, *args], torchrun) == "torchrun --nproc_per_node 2 -m mrc_cli train --output-dir 'runs/a b'"
    assert command_line(["/venv/bin/mrc", *args], two_nodes) == ("torchrun --nnodes 2 --nproc_per_node 4 -m mrc_cli "
                                                                 "train --output-dir 'runs/a b'")
    assert command_line([main, *args], accelerate) == ("accelerate launch --multi_gpu --num_processes 2 -m mrc_cli "
                                                       "train --output-dir 'runs/a b'")
    assert command_line(["driver.py", "run.yaml"], torchrun) == "driver.py run.yaml"  # train() from a script
