"""The training options that change a run's course, each checked by what it does: checkpoint pruning (train.keep_last),
early stopping (train.patience) and gradient clipping (train.max_grad_norm). Each test fails when its option is
switched off in the trainer.

The dev scores of a tiny random model are noise, so the tests that depend on "better" or "worse" script them: the real
evaluation runs, then its EM/F1 are replaced by a falling sequence, which makes the first evaluation the best.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mrc_cli.training as training
from conftest import tiny_run_config
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
    cfg = tiny_run_config(tiny_bert_dir, run_dir, max_steps=6, eval_steps=1, save_steps=1, keep_last=2)
    result = train(cfg)
    assert result.steps == 6 and falling_dev_scores == [50, 49, 48, 47, 46, 45]
    # steps 2-4 were written and then deleted; 1 stays as the best, 5 and 6 as the newest two
    assert _saved_steps(run_dir) == [1, 5, 6]
    assert json.loads((run_dir / "best_checkpoint.json").read_text())["checkpoint"] == "checkpoints/step-000001"
    assert result.best_checkpoint == run_dir / "checkpoints" / "step-000001"


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
