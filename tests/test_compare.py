"""`mrc compare`: variants parsed and checked before anything trains, their settings reaching the runs, runs skipped
when finished and resumed when not, the paired verdict on constructed numbers, the GPU scheduling, the CLI's files;
every run a `mrc train` process of its own (in the test's process where a test is not about that)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import QUICKSTART, tiny_run_config
from mrc_cli import compare as compare_module, runs
from mrc_cli.cli import app
from mrc_cli.checkpoint import read_training_state
from mrc_cli.compare import (EQUAL_COMPUTE, INSIDE, NO_SPREAD, ONE_SEED, Variant, _plan_runs, _run_on_gpus,
                             _visible_gpus, compare, markdown_table, paired_difference, summarize)
from mrc_cli.config import load_config, save_config
from mrc_cli.errors import ConfigError, TrainingError, TrainingInterrupted
from mrc_cli.runs import train_in_own_process
from mrc_cli.tracking import read_metrics
from mrc_cli.training import train

VARIANT = "drop:model.dropout=0.3,train.warmup=0.5"


def _no_training(*args, **kwargs):
    pytest.fail("nothing should have trained")


def _train_here(cfg, gpu, by, command):
    """A run trained in the test's process instead of a child's: fast, and what a test patches is seen. The child
    process itself is tested by the tests that say so."""
    train(cfg)


# --- variants ------------------------------------------------------------------------------------------------------


def test_a_comma_starts_a_new_setting_only_before_section_key(tmp_path, monkeypatch):
    from mrc_cli import tracking

    monkeypatch.setattr(tracking, "tracker_names", lambda report_to: report_to.split(","))  # installed or not here
    variant = Variant.parse("multi:train.report_to=tensorboard,wandb, train.lr=5e-5,data.word_segmenter=my.mod:split")
    assert variant.name == "multi"
    assert variant.sets == ("train.report_to=tensorboard,wandb", "train.lr=5e-5", "data.word_segmenter=my.mod:split")
    (run,) = _plan_runs(tiny_run_config("m", tmp_path / "unused"), [variant], [3], tmp_path / "out")
    cfg = run.cfg
    assert (cfg.train.report_to, cfg.train.lr, cfg.data.word_segmenter) == ("tensorboard,wandb", 5e-5, "my.mod:split")
    assert (cfg.train.seed, cfg.train.resume, cfg.train.output_dir) == (3, "auto", str(tmp_path / "out" / "multi" / "seed-3"))


@pytest.mark.parametrize("text, problem", [
    ("train.lr=5e-5", "expected name:section.key=value"),
    ("lr:", "expected name:section.key=value"),
    ("my lr:train.lr=1e-3", "the name names its run folders"),
    ("lr:lr=1e-3", "'lr=1e-3' is not section.key=value"),
    ("s:train.seed=3", "compare sets train.seed for each run itself"),
    ("o:train.lr=1e-3,train.output_dir=x", "compare sets train.output_dir"),
    # the same weights scored by other rules, or on other questions: F1s that do not compare
    ("sq:data.metric=squad", "data.metric is the official rules its F1 is scored by, not something a run learns; a "
                             "verdict pairs the variants' F1s, so all are scored alike: set it for every run with "
                             "--set data.metric=squad"),
    ("d:train.lr=1e-3,data.dev_file=other.json", "data.dev_file is the questions it is scored on"),
    ("baseline:data.metric=squad", "data.metric is the official rules"),
])
def test_a_malformed_variant_is_refused_naming_its_text(text, problem):
    with pytest.raises(ConfigError) as err:
        Variant.parse(text)
    assert f"variant {text!r}" in str(err.value) and problem in str(err.value)


def test_every_variant_is_checked_before_anything_trains(tiny_bert_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "train_in_own_process", _no_training)
    base = tiny_run_config(tiny_bert_dir, tmp_path / "unused")
    out = tmp_path / "out"
    cases = [
        ([Variant.parse(VARIANT), Variant.parse("x:train.lrr=1e-3")], [0, 1],
         "variant 'x:train.lrr=1e-3': unknown config key 'train.lrr'; did you mean train.lr?"),
        ([Variant.parse("w:train.warmup=1.5")], [0], "train.warmup is a fraction of the steps"),
        ([Variant.parse("a:train.lr=1e-3"), Variant.parse("a:train.lr=1e-2")], [0], "a given twice"),
        ([Variant.parse(VARIANT)], [0, 0], "seeds [0, 0]: give at least one, each once"),
        # tricks that compare dropout masks, without dropout (the default): refused before the baseline trains
        ([Variant.parse("rd:train.rdrop_alpha=1.0,model.dropout=0,model.attention_dropout=0")], [0],
         "train.rdrop_alpha 1 does nothing: the encoder has no dropout"),
        ([Variant.parse("msd:model.multi_sample_dropout=4,model.dropout=0")], [0],
         "model.multi_sample_dropout 4 does nothing"),
        # a variant's own file or model folder, missing: found before the baseline's hours, not after them
        ([Variant.parse(f"tr:data.train_file={tmp_path / 'none.json'}")], [0],
         f"data.train_file {tmp_path / 'none.json'}: no such file"),
        ([Variant.parse(f"m:model.name_or_path={tmp_path / 'no-model'}")], [0], "no such model folder"),
        ([Variant.parse("d:model.dropout=2")], [0], "model.dropout is a probability"),
        # refused by the variant's run only after the baseline had trained: early stopping without evaluations, a
        # head warm-up of no step
        ([Variant.parse("p:train.patience=2,train.eval_steps=0")], [0],
         "train.patience 2 needs evaluations during the run: set train.eval_steps"),
        ([Variant.parse("hw:train.head_warmup=0.01,train.max_steps=20")], [0],
         "train.head_warmup 0.01 of 20 steps is no step"),
    ]
    for variants, seeds, problem in cases:
        with pytest.raises(ConfigError) as err:
            compare(base, variants, seeds, out)
        assert problem in str(err.value)
    base.data.dev_file = None
    with pytest.raises(ConfigError, match="baseline: no dev file"):
        compare(base, [Variant.parse(VARIANT)], [0], out)
    assert not out.exists()
    # an --out of other files (here a model folder; a run directory likewise) and no comparison
    with pytest.raises(ConfigError, match=f"--out {tiny_bert_dir} holds other files .* and no comparison"):
        compare(base, [Variant.parse(VARIANT)], [0], tiny_bert_dir)


def test_a_variant_named_baseline_is_the_reference_and_runs_first(tmp_path):
    variants = [Variant.parse("a:train.lr=1e-3"), Variant.parse("baseline:train.lr=5e-5")]
    runs = _plan_runs(tiny_run_config("m", tmp_path / "unused"), compare_module._with_reference(variants), [0, 1], tmp_path)
    assert [(r.variant.name, r.seed, r.cfg.train.lr) for r in runs] == [
        ("baseline", 0, 5e-5), ("a", 0, 1e-3), ("baseline", 1, 5e-5), ("a", 1, 1e-3)]  # seed by seed


def test_a_variant_that_trains_what_another_trains_is_refused_and_an_inert_setting_noted(tmp_path, capsys):
    base = tiny_run_config("m", tmp_path / "unused", max_steps=4)

    def plan(*texts):
        variants = compare_module._with_reference([Variant.parse(text) for text in texts])
        compare_module._refuse_idle_variants(_plan_runs(base, variants, [0, 1], tmp_path / "out"))

    cases = [
        ((f"noop:train.lr={base.train.lr}",), f"variant 'noop:train.lr={base.train.lr}' trains what baseline trains "
                                              f"(train.lr is {base.train.lr!r} there too): every seed would train "
                                              "again for a difference of 0"),
        (("logs:train.log_steps=3,decode.temperature=2",), "train.log_steps changes no answer; decode.temperature "
                                                           "changes no answer"),
        (("a:train.lr=1e-3", "b:train.lr=0.001"), "variant 'b:train.lr=0.001' trains what a trains"),
        (("ep:train.epochs=7",), "train.epochs changes nothing while train.max_steps 4 sets the runs' length"),
    ]
    for texts, problem in cases:
        with pytest.raises(ConfigError) as err:
            plan(*texts)
        assert problem in str(err.value)
    capsys.readouterr()
    plan("lr:train.lr=1e-3,train.epochs=7", "fgm:train.adversarial=fgm,train.adv_epsilon=0.5")
    assert capsys.readouterr().out == ("note: variant lr: train.epochs changes nothing while train.max_steps 4 sets "
                                       "the runs' length\n")
    plan("eps:train.lr=1e-3,train.adv_epsilon=0.5")
    noted = capsys.readouterr().out
    assert "note: variant eps: train.adv_epsilon changes nothing while train.adversarial is none" in noted


# --- the verdict ---------------------------------------------------------------------------------------------------


def test_paired_verdicts_on_constructed_differences():
    better = paired_difference([2.0, 2.1, 1.9])  # mean 2, sd 0.1: half width 4.303 * 0.1 / sqrt(3) = 0.248
    assert better["verdict"] == "better" and better["t_crit"] == 4.303
    assert (better["low"], better["high"]) == (pytest.approx(1.7516, abs=1e-4), pytest.approx(2.2484, abs=1e-4))
    worse = paired_difference([-1.0, -1.2, -0.8, -1.1])
    assert worse["verdict"] == "worse" and worse["t_crit"] == 3.182 and worse["high"] < 0
    noisy = paired_difference([3.0, -1.0, 1.0])  # mean 1, sd 2: half width 4.97
    assert noisy["verdict"] == INSIDE and noisy["low"] == pytest.approx(1 - 4.303 * 2 / 3 ** 0.5)
    one = paired_difference([5.0])
    assert one["verdict"] == ONE_SEED and one["low"] is None and one["mean"] == 5.0
    assert paired_difference([1.0, 1.5] * 20)["t_crit"] == 1.96  # beyond 30 degrees of freedom
    # the same difference at both seeds (one question of 85 flipped alike): no spread measured, so no "better"
    assert paired_difference([1.18, 1.18])["verdict"] == NO_SPREAD
    assert paired_difference([0.0, 0.0])["verdict"] == INSIDE  # the variant changed nothing


def _rows(variant: str, f1: list[float], steps: list[int], resumed: tuple[int, ...] = (), passes: int = 1,
          **facts) -> list[dict]:
    """Records of a variant's runs at seeds 0, 1, ...: `passes` feature passes per feature of 8 per step."""
    return [{"variant": variant, "seed": seed, "exact": value - 10, "f1": value, "steps": n, "wall_s": 60.0 + seed,
             "compute": {"forward_passes": 8 * n * passes, "backward_passes": 8 * n * passes,
                         "flops": 1e9 * 8 * n * passes},
             "features_per_s": 100.0, "resumed_from": "step-000004" if seed in resumed else None, **facts}
            for seed, (value, n) in enumerate(zip(f1, steps))]


def test_pairing_by_seed_calls_an_effect_the_seed_spread_would_hide_and_budgets_are_flagged():
    variants = [Variant("baseline"), Variant("plus", ("train.lr=1e-3",)), Variant("short", ("train.max_steps=8",)),
                Variant("stopped", ("train.patience=1",))]
    rows = (_rows("baseline", [50.0, 60.0, 70.0], [10, 10, 10]) + _rows("plus", [51.0, 61.0, 71.2], [10, 10, 10])
            + _rows("short", [49.0, 61.0, 69.0], [8, 8, 8]) + _rows("stopped", [50.0, 60.0, 70.0], [10, 9, 10], (1,)))
    summaries = summarize(rows, variants, [0, 1, 2])
    by_name = {s["variant"]: s for s in summaries}
    assert by_name["baseline"]["verdict"] == "reference" and by_name["baseline"]["f1"]["std"] == pytest.approx(10.0)
    # +1.07 F1 with a seed spread of 10: paired, the differences (1, 1, 1.2) are far from 0
    assert by_name["plus"]["verdict"] == "better" and by_name["plus"]["vs_reference"]["f1"]["mean"] == pytest.approx(1.0667, abs=1e-4)
    assert by_name["short"]["verdict"] == INSIDE
    assert [s["same_budget"] for s in summaries] == [True, True, False, False]
    assert by_name["stopped"]["steps"] == [9, 10]

    table = markdown_table({"settings": {"reference": "baseline", "seeds": [0, 1, 2]}, "runs": rows,
                            "variants": summaries})
    lines = table.splitlines()
    assert len([line for line in lines if line.startswith("| ")]) == 5  # header and four variants
    assert "| plus | train.lr=1e-3 | 51.07 ± 10.10 | 61.07 ± 10.10 | +1.07 [+0.78, +1.35] | better | 10 | 8e+10 (1.00x) |" in table
    assert "| short | train.max_steps=8 |" in table and "| 6.4e+10 (0.80x) |" in table
    assert "| 8 (differs) |" in table and "| 9/10 (differs) |" in table
    assert "Not the same budget: short, stopped ran another number of steps than baseline's 10" in table
    assert "t = 4.30 at 2 degrees of freedom" in table
    assert "Resumed: stopped seed 1; their wall time adds up their parts, each up to its last checkpoint" in table


def test_runs_scored_by_other_rules_are_not_paired():
    variants = [Variant("baseline"), Variant("plus", ("train.lr=1e-3",))]
    rows = (_rows("baseline", [3.27, 3.5], [10, 10], metric="cmrc2018")
            + _rows("plus", [0.0, 0.0], [10, 10], metric="squad"))
    with pytest.raises(ConfigError, match=r"scored by different official rules \(baseline seed 0: cmrc2018; .*plus "
                                          r"seed 1: squad\), and their F1s do not compare"):
        summarize(rows, variants, [0, 1])
    for row in rows[2:]:
        row["metric"] = "cmrc2018"
    assert summarize(rows, variants, [0, 1])[1]["verdict"] == "worse"


def test_equal_compute_gives_every_variant_a_second_verdict_against_the_longer_baseline():
    """rdrop wins at equal steps but loses to the baseline trained twice as long; cheap wins at both."""
    variants = [Variant("baseline"), Variant("rdrop", ("train.rdrop_alpha=1",)), Variant("cheap", ("train.lr=1e-3",)),
                Variant("weak", ("train.lr=1e-6",)), Variant(EQUAL_COMPUTE)]
    rows = (_rows("baseline", [50.0, 60.0, 70.0], [10, 10, 10]) + _rows("rdrop", [52.0, 62.1, 71.9], [10, 10, 10], passes=2)
            + _rows("cheap", [55.0, 65.0, 75.2], [10, 10, 10]) + _rows("weak", [51.0, 61.1, 70.9], [10, 10, 10])
            + _rows(EQUAL_COMPUTE, [53.0, 63.0, 73.1], [20, 20, 20], compute_scale=2.0, compute_of="rdrop"))
    summaries = {s["variant"]: s for s in summarize(rows, variants, [0, 1, 2])}
    assert summaries["baseline"]["verdict"] == "reference" and "vs_equal_compute" not in summaries["baseline"]
    rdrop, cheap, longer = summaries["rdrop"], summaries["cheap"], summaries[EQUAL_COMPUTE]
    assert (rdrop["verdict"], rdrop["verdict_equal_compute"]) == ("better", "worse")
    assert rdrop["vs_equal_compute"]["f1"] == paired_difference([52.0 - 53.0, 62.1 - 63.0, 71.9 - 73.1])
    assert (cheap["verdict"], cheap["verdict_equal_compute"]) == ("better", "better")  # better with half: a fortiori
    # worse than the baseline trained twice as long says only that it had half the compute
    assert summaries["weak"]["verdict_equal_compute"] == f"none: 0.50x the FLOPs of {EQUAL_COMPUTE}, not equal compute"
    assert (longer["verdict"], longer["verdict_equal_compute"]) == ("better", "reference")
    assert rdrop["compute"]["vs_reference"] == longer["compute"]["vs_reference"] == 2.0
    assert rdrop["compute"]["forward_passes"] == {"mean": 160, "std": 0.0}
    assert longer["compute_scale"] == [2.0] * 3 and not longer["same_budget"]

    table = markdown_table({"settings": {"reference": "baseline", "seeds": [0, 1, 2]}, "runs": rows,
                            "variants": list(summaries.values())})
    assert ("| variant | settings | EM | F1 | ΔF1 vs baseline [95 % CI] | verdict | ΔF1 vs baseline@equal_compute "
            "[95 % CI] | verdict at equal compute | steps | FLOPs (x baseline) | wall s | features/s |") in table
    assert "| rdrop | train.rdrop_alpha=1 | 52.00 ± 9.95 | 62.00 ± 9.95 | +2.00 [+1.75, +2.25] | better | -1.03 " in table
    assert "| worse | 10 | 1.6e+11 (2.00x) |" in table
    assert "| baseline@equal_compute | (the config), length x 2 | " in table and "| reference | 20 (differs) |" in table
    assert "with its length (train.epochs, or train.max_steps where set) x 2, to the FLOPs of the costliest variant at " \
           "each seed (rdrop); it spent 1.00x their FLOPs" in table
    assert "Not the same budget" not in table  # the longer baseline is longer by design


# --- several GPUs: scheduling and the subprocess (no GPU here: unit level) ----------------------------------------


def test_runs_share_the_gpus_one_run_per_gpu_at_a_time():
    lock, running, seen, peak = threading.Lock(), set(), [], [0]

    def launch(job, gpu):
        with lock:
            assert gpu not in running, f"GPU {gpu} given to two runs at once"
            running.add(gpu)
            peak[0] = max(peak[0], len(running))
        time.sleep(0.05)
        with lock:
            running.discard(gpu)
            seen.append((job, gpu))
        if job == 2:
            raise TrainingError("run 2 failed")

    with pytest.raises(TrainingError, match="run 2 failed"):
        _run_on_gpus(list(range(6)), ["3", "5"], launch)
    assert sorted(job for job, _ in seen) == list(range(6))  # the failure did not stop the other runs
    assert peak[0] == 2 and {gpu for _, gpu in seen} == {"3", "5"}


def test_several_visible_gpus_are_named_as_cuda_visible_devices_names_them(tiny_bert_dir, tmp_path, monkeypatch):
    import torch

    train_cfg = tiny_run_config(tiny_bert_dir, tmp_path).train
    train_cfg.cpu = False
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5,7")
    assert _visible_gpus(train_cfg) == ["2", "5", "7"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert _visible_gpus(train_cfg) == ["0", "1", "2"]
    train_cfg.cpu = True
    assert _visible_gpus(train_cfg) == []
    train_cfg.cpu = False
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert _visible_gpus(train_cfg) == []  # one GPU: runs go one after another in this process


def test_a_run_on_a_gpu_is_mrc_train_on_its_saved_config(tmp_path, monkeypatch):
    calls = []

    class Done:
        returncode = 0

    monkeypatch.setattr(runs.subprocess, "run", lambda command, **kw: calls.append((command, kw)) or Done())
    (run,) = _plan_runs(tiny_run_config("m", tmp_path / "unused"), [Variant.parse(VARIANT)], [4], tmp_path / "out")
    train_in_own_process(run.cfg, "5", "compare")
    ((command, kwargs),) = calls
    config = run.run_dir / "config.yaml"
    assert command[1:] == ["-m", "mrc_cli", "train", "--config", str(config)]
    assert kwargs["env"]["CUDA_VISIBLE_DEVICES"] == "5"
    assert kwargs["stdout"].name == str(run.run_dir / "compare_output.log")
    saved = load_config(config)
    assert (saved.train.seed, saved.train.resume, saved.model.dropout) == (4, "auto", 0.3)
    for code, ended, then in (
            (1, "exited with status 1", "It saved no checkpoint: its output says why; run mrc compare again once that "
                                        "is fixed"),
            (-9, "was killed by SIGKILL", "It had saved no checkpoint: run mrc compare again to start it again")):
        Done.returncode = code
        with pytest.raises(TrainingError) as err:
            train_in_own_process(run.cfg, "5", "compare")
        assert str(err.value) == (f"{run.run_dir}: mrc train {ended}; its output is in "
                                  f"{run.run_dir / 'compare_output.log'}. {then}")
    Done.returncode = 128 + signal.SIGINT  # Ctrl-C while its data was read: no checkpoint to resume from
    with pytest.raises(TrainingInterrupted, match="stopped by Ctrl-C; .* Run mrc compare again to start it \\(it had "
                                                  "saved no checkpoint\\)"):
        train_in_own_process(run.cfg, "5", "compare")
    (run.run_dir / "checkpoints" / "step-000002").mkdir(parents=True)
    (run.run_dir / "checkpoints" / "step-000002" / "trainer_state.json").write_text("{}")
    Done.returncode = -9
    with pytest.raises(TrainingError, match="Run mrc compare again to resume it from its newest checkpoint"):
        train_in_own_process(run.cfg, "5", "compare")
    Done.returncode = 128 + signal.SIGTERM  # a child that saved a checkpoint and stopped, as mrc train exits then
    with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM; .* Run mrc compare again to resume") as err:
        train_in_own_process(run.cfg, "5", "compare")
    assert err.value.exit_code == 143


def test_a_child_on_this_terminal_shows_its_output_here_and_in_the_log_as_it_comes(tmp_path, capfd):
    """Chunks as they come: a character split between two chunks arrives whole, a progress bar's \\r stays."""
    script = ("import sys, time; out = sys.stdout.buffer; word = '进度'.encode(); "
              "out.write(b'bar 1/2\\r' + word[:2]); out.flush(); time.sleep(0.2); "
              "out.write(word[2:] + b' 2/2\\n'); sys.stderr.write('a warning\\n')")
    assert runs._run_teed([sys.executable, "-c", script], dict(os.environ), tmp_path / "log") == (0, None)
    assert capfd.readouterr().out == "bar 1/2\r进度 2/2\na warning\n"
    assert (tmp_path / "log").read_bytes() == "bar 1/2\r进度 2/2\na warning\n".encode()


def test_a_sigterm_to_compare_reaches_its_child_which_stops_cleanly(tmp_path):
    """`kill <compare's pid>` (or a scheduler's SIGTERM) is passed on: the child saves and stops, the parent waits for
    it; before, the parent died at once and the child with it, on its next write to the closed pipe."""
    import threading

    script = ("import signal, sys, time\n"
              "def stop(*_): print('checkpoint saved', flush=True); sys.exit(0)\n"
              "signal.signal(signal.SIGTERM, stop)\n"
              "print('ready', flush=True)\n"
              "time.sleep(30)\n")
    threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGTERM)).start()  # the child is up and waiting by then
    before = signal.getsignal(signal.SIGTERM)
    assert runs._run_teed([sys.executable, "-c", script], dict(os.environ), tmp_path / "log") == (0, signal.SIGTERM)
    assert (tmp_path / "log").read_text() == "ready\ncheckpoint saved\n"
    assert signal.getsignal(signal.SIGTERM) is before  # this process's own handling is back


def test_a_ctrl_c_to_compare_alone_reaches_its_child_once(tmp_path):
    """`kill -INT <compare's pid>`: passed on, as SIGTERM is; before, only the parent took it and the child trained to
    its end. The child has a process group of its own, so a Ctrl-C at the terminal also reaches it once, not twice."""
    script = ("import os, signal, sys, time\n"
              "got = []\n"
              "signal.signal(signal.SIGINT, lambda *_: got.append(1))\n"
              "print('ready', os.getpgid(0) == os.getpid(), flush=True)\n"
              "time.sleep(6)\n"
              "print('SIGINTs:', len(got), flush=True)\n")
    threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGINT)).start()  # the child is up and waiting by then
    before = signal.getsignal(signal.SIGINT)
    assert runs._run_teed([sys.executable, "-c", script], dict(os.environ), tmp_path / "log") == (0, signal.SIGINT)
    assert (tmp_path / "log").read_text() == "ready True\nSIGINTs: 1\n"
    assert signal.getsignal(signal.SIGINT) is before


def test_a_run_that_finished_as_ctrl_c_came_is_recorded_as_finished_then_compare_stops(tiny_bert_dir, tmp_path,
                                                                                      monkeypatch, capsys):
    def train_then_ctrl_c(cfg, gpu, by, command):
        train(cfg)
        return signal.SIGINT  # passed on as the child finished: it exited 0

    monkeypatch.setattr(runs, "train_in_own_process", train_then_ctrl_c)
    base = tiny_run_config(tiny_bert_dir, tmp_path / "unused", max_steps=1)
    out = tmp_path / "out"
    with pytest.raises(TrainingInterrupted, match="seed-0: finished as Ctrl-C came, and recorded as finished; run mrc "
                                                  "compare again to go on") as err:
        compare(base, [], [0, 1], out)
    assert err.value.exit_code == 130
    assert (out / "baseline" / "seed-0" / "compare_run.json").is_file()
    assert not (out / "baseline" / "seed-1").exists()  # stopped before the next run
    monkeypatch.setattr(runs, "train_in_own_process", _no_training)
    capsys.readouterr()
    compare(base, [], [0], out)
    assert "run 1/1: baseline seed 0: done, skipped" in capsys.readouterr().out


def test_compare_and_kfold_refuse_to_run_under_a_launcher(tiny_bert_dir, tmp_path, monkeypatch):
    from mrc_cli.kfold import kfold

    monkeypatch.setattr(runs, "train_in_own_process", _no_training)
    monkeypatch.setenv("WORLD_SIZE", "2")
    base = tiny_run_config(tiny_bert_dir, tmp_path / "unused")
    # kfold's folds run one after another in one process each (kfold passes no GPU), so it names no GPUs
    for says, start in (("mrc compare starts a process for each run itself (one per GPU where several are visible)",
                         lambda: compare(base, [], [0], tmp_path / "out")),
                        ("mrc kfold trains its folds one after another, each in one process it starts itself",
                         lambda: kfold(base, 2, tmp_path / "folds"))):
        with pytest.raises(ConfigError) as refused:
            start()
        assert str(refused.value) == (f"{says}; under a launcher every process would train each run again into the "
                                      "same folders: start it without accelerate launch / torchrun")


# --- end to end on the tiny BERT: 2 variants x 2 seeds, 4 steps each ------------------------------------------------


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_bert_dir):
    """`mrc compare` of the baseline and VARIANT over seeds 0 and 1: checkpoints at steps 2 and 4 of each run."""
    root = tmp_path_factory.mktemp("compare")
    config = root / "base.yaml"
    save_config(tiny_run_config(tiny_bert_dir, root / "unused", max_steps=4, save_steps=2), config)
    out = root / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runs, "train_in_own_process", _train_here)
        result = CliRunner().invoke(app, ["compare", "-c", str(config), "--variant", VARIANT, "--seeds", "2", "--out",
                                          str(out)])
    assert result.exit_code == 0, result.output
    return out, config, result.stdout


def test_compare_cli_writes_the_table_the_json_and_the_plot(compared):
    out, _, stdout = compared
    for i, (name, seed) in enumerate([("baseline", 0), ("drop", 0), ("baseline", 1), ("drop", 1)], 1):
        assert f"run {i}/4: {name} seed {seed}\n" in stdout
    saved = json.loads((out / "compare.json").read_text())
    assert saved["settings"]["seeds"] == [0, 1] and saved["settings"]["config"]["train"]["max_steps"] == 4
    assert [(r["variant"], r["seed"], r["steps"]) for r in saved["runs"]] == [
        ("baseline", 0, 4), ("drop", 0, 4), ("baseline", 1, 4), ("drop", 1, 4)]
    for row in saved["runs"]:
        run_dir = out / row["variant"] / f"seed-{row['seed']}"
        assert row["f1"] == pytest.approx(json.loads((run_dir / "metrics.json").read_text())["f1"])
        rates = [r["features_per_s"] for r in read_metrics(run_dir / "metrics.jsonl") if "features_per_s" in r]
        assert row["features_per_s"] == rates[-1] > 0
        assert row["wall_s"] > 0 and row["resumed_from"] is None
        assert row["metric"] == json.loads((run_dir / "metrics.json").read_text())["metric"] == "squad_v2"
    baseline, drop = saved["variants"]
    assert (baseline["variant"], baseline["verdict"], drop["variant"]) == ("baseline", "reference", "drop")
    assert drop["sets"] == ["model.dropout=0.3", "train.warmup=0.5"] and drop["same_budget"]
    differences = [d["f1"] - b["f1"] for b, d in zip(saved["runs"][::2], saved["runs"][1::2])]
    assert drop["vs_reference"]["f1"] == paired_difference(differences)
    assert drop["verdict"] in ("better", "worse", INSIDE)
    assert saved["machine"]["torch"] and "avx512_bf16" in saved["machine"]

    table = (out / "compare.md").read_text()
    assert len([line for line in table.splitlines() if line.startswith("| ")]) == 3
    assert "| drop | model.dropout=0.3, train.warmup=0.5 |" in table and table.strip() in stdout
    assert "t = 12.71 at 1 degrees of freedom" in table
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_a_variants_settings_and_each_seed_reach_its_runs(compared):
    out, _, _ = compared
    for seed in (0, 1):
        drop, baseline = (load_config(out / name / f"seed-{seed}" / "config.yaml") for name in ("drop", "baseline"))
        assert (drop.model.dropout, drop.train.warmup, drop.train.seed) == (0.3, 0.5, seed)
        assert (baseline.model.dropout, baseline.train.warmup, baseline.train.seed) == (None, 0.1, seed)
        assert "4 optimizer steps, 2 of warm-up" in (out / "drop" / f"seed-{seed}" / "train.log").read_text()
        assert "4 optimizer steps, 1 of warm-up" in (out / "baseline" / f"seed-{seed}" / "train.log").read_text()
    first_losses = [read_metrics(out / "baseline" / f"seed-{seed}" / "metrics.jsonl")[0]["loss"] for seed in (0, 1)]
    assert first_losses[0] != first_losses[1]  # another seed, another first batch


def test_a_second_compare_skips_finished_runs(compared, monkeypatch, capsys):
    out, config, _ = compared
    before = json.loads((out / "compare.json").read_text())
    monkeypatch.setattr(runs, "train_in_own_process", _no_training)
    result = compare(load_config(config), [Variant.parse(VARIANT)], [0, 1], out)
    assert capsys.readouterr().out.count(": done, skipped") == 4
    assert result["runs"] == before["runs"] and result["variants"] == before["variants"]


def test_finished_runs_of_other_settings_are_refused_not_reused(compared, monkeypatch):
    out, config, _ = compared
    monkeypatch.setattr(runs, "train_in_own_process", _no_training)
    with pytest.raises(ConfigError, match="baseline/seed-0 finished with other settings \\(train.max_steps: 4 there, 5 now\\)"):
        compare(load_config(config, sets=["train.max_steps=5"]), [Variant.parse(VARIANT)], [0, 1], out)
    # the features per inference batch do not change what a run learned: its finished runs still count
    result = compare(load_config(config, sets=["train.eval_batch_size=7"]), [Variant.parse(VARIANT)], [0, 1], out)
    assert len(result["runs"]) == 4



def test_finished_runs_on_a_data_file_edited_since_are_refused_not_reused(compared, monkeypatch, tmp_path):
    """The same path, another content (its run_info.json's hash, as the file's edit in place would leave it)."""
    out, config, _ = compared
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    info = copy / "drop" / "seed-1" / "run_info.json"
    info.write_text(json.dumps({**json.loads(info.read_text()), "dev_file_sha256": "0123456789abcdef"}))
    monkeypatch.setattr(runs, "train_in_own_process", _no_training)
    with pytest.raises(ConfigError, match="drop/seed-1 finished on another dev file: .*en_dev.json changed since "
                                          "\\(SHA-256 0123456789abcdef there, [0-9a-f]{16} now\\)"):
        compare(load_config(config), [Variant.parse(VARIANT)], [0, 1], copy)


def test_a_finished_run_copied_from_another_variant_with_its_settings_counts_as_this_one(compared, tmp_path,
                                                                                        monkeypatch, capsys):
    """What `bench_tricks --baseline-from` and hand-made folders do: runs of "drop" copied as "same" (same settings)
    are skipped and summarised under "same"."""
    out = _copied(compared[0], tmp_path)
    for seed in (0, 1):
        shutil.copytree(out / "drop" / f"seed-{seed}", out / "same" / f"seed-{seed}")
    monkeypatch.setattr(runs, "train_in_own_process", _no_training)
    _, sets = VARIANT.split(":")
    result = compare(load_config(compared[1]), [Variant.parse(f"same:{sets}")], [0, 1], out)
    assert capsys.readouterr().out.count(": done, skipped") == 4
    drop = json.loads((compared[0] / "compare.json").read_text())["variants"][1]
    same = next(v for v in result["variants"] if v["variant"] == "same")
    assert same["f1"] == drop["f1"] and same["vs_reference"] == drop["vs_reference"]
    assert [r["variant"] for r in result["runs"]] == ["baseline", "same", "baseline", "same"]


def _copied(out: Path, tmp_path: Path) -> Path:
    """The compare folder of the module's runs, copied: a test that changes it leaves the others theirs."""
    shutil.copytree(out, tmp_path / "out")
    return tmp_path / "out"


def test_a_record_without_a_key_added_since_counts_it_at_its_default(compared, tmp_path, monkeypatch, capsys):
    """A config key added to mrc-cli after the runs (a new trick, off by default) leaves them valid."""
    out, config, _ = compared
    copy = _copied(out, tmp_path)
    for record_file in copy.glob("*/seed-*/compare_run.json"):
        record = json.loads(record_file.read_text())
        del record["config"]["train"]["ema_decay"]
        record_file.write_text(json.dumps(record))
    monkeypatch.setattr(runs, "train_in_own_process", _no_training)
    compare(load_config(config), [Variant.parse(VARIANT)], [0, 1], copy)
    assert capsys.readouterr().out.count(": done, skipped") == 4
    with pytest.raises(ConfigError, match="train.ema_decay: 0.0 there, 0.5 now"):
        compare(load_config(config, sets=["train.ema_decay=0.5"]), [Variant.parse(VARIANT)], [0, 1], copy)


def test_an_unfinished_run_resumes_from_its_checkpoint(compared, tmp_path, monkeypatch, capsys):
    out, config, _ = compared
    copy = _copied(out, tmp_path)
    run_dir = copy / "drop" / "seed-1"
    finished = json.loads((run_dir / "compare_run.json").read_text())
    (run_dir / "compare_run.json").unlink()  # as if killed after the checkpoint at step 2
    shutil.rmtree(run_dir / "checkpoints" / "step-000004")
    calls = []
    monkeypatch.setattr(runs, "train_in_own_process", lambda cfg, *args: calls.append(cfg) or train(cfg) and None)
    result = compare(load_config(config), [Variant.parse(VARIANT)], [0, 1], copy)
    printed = capsys.readouterr().out
    assert len(calls) == 1 and printed.count(": done, skipped") == 3
    assert f"run 4/4: drop seed 1, resuming from {run_dir / 'checkpoints' / 'step-000002'}" in printed
    assert "at step 2" in next(line for line in (run_dir / "train.log").read_text().splitlines() if "resumed from" in line)
    row = result["runs"][3]
    assert (row["variant"], row["seed"], row["steps"], row["resumed_from"]) == ("drop", 1, 4, "step-000002")
    assert (row["exact"], row["f1"]) == (finished["exact"], finished["f1"])  # a resumed run ends as the uninterrupted one
    assert "Resumed: drop seed 1" in (copy / "compare.md").read_text()
    # its wall time: this call's and the first part's up to the checkpoint it resumed from
    earlier = read_training_state(run_dir / "checkpoints" / "step-000002")["wall_clock"]["seconds"]
    assert json.loads((run_dir / "metrics.json").read_text())["earlier_parts_wall_s"] == round(earlier, 1) > 0
    assert row["wall_s"] > round(earlier, 1)


# --- equal compute, end to end: rdrop, fgm and both at seed 0, 2 steps each, then the longer baseline --------------

TRICKS = ["rdrop:train.rdrop_alpha=1", "fgm:train.adversarial=fgm", "rdrop_fgm:train.rdrop_alpha=1,train.adversarial=fgm"]


@pytest.fixture(scope="module")
def equal_compute_compared(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("equal_compute")
    base = tiny_run_config(tiny_bert_dir, root / "unused", max_steps=2)
    out = root / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runs, "train_in_own_process", _train_here)
        return out, base, compare(base, [Variant.parse(text) for text in TRICKS], [0], out, equal_compute=True)


def test_each_run_records_the_feature_passes_and_flops_of_its_steps(equal_compute_compared, tiny_bert_dir):
    from mrc_cli.batching import epoch_plan
    from mrc_cli.features import feature_lengths
    from mrc_cli.splits import featurize_file
    from mrc_cli.tokenizer import load_tokenizer

    out, base, result = equal_compute_compared
    runs = {row["variant"]: row for row in result["runs"]}
    # the features of the 2 planned steps of 8, counted here from the plan
    lengths = feature_lengths(featurize_file(base.data.train_file, load_tokenizer(tiny_bert_dir), base.data, "train").features)
    trained = [lengths[f] for step in epoch_plan(lengths, 8, 1, 0, 0, True)[:2] for batch in step for f in batch]
    # N = 16384 for this 2-layer, 32-wide BERT (test_compute.py); a backward is twice its forward
    forward = 2 * 16384 * sum(trained) + 4 * 2 * 32 * sum(n * n for n in trained)
    assert runs["baseline"]["compute"] == {"forward_passes": 16, "backward_passes": 16, "flops": 3 * forward}
    for name, passes in (("rdrop", 2), ("fgm", 2), ("rdrop_fgm", 4)):
        assert runs[name]["compute"] == {"forward_passes": 16 * passes, "backward_passes": 16 * passes,
                                         "flops": 3 * passes * forward}
    for name in ("baseline", "rdrop"):  # the record's numbers are the run's files'
        run_dir = out / name / "seed-0"
        assert json.loads((run_dir / "metrics.json").read_text())["compute"] == runs[name]["compute"]
        assert read_metrics(run_dir / "metrics.jsonl")[-1]["compute"] == runs[name]["compute"]


def test_the_equal_compute_baseline_trains_to_the_costliest_variants_compute(equal_compute_compared):
    out, _, result = equal_compute_compared
    longer = result["runs"][-1]
    assert (longer["variant"], longer["compute_scale"], longer["compute_of"]) == (EQUAL_COMPUTE, 4.0, "rdrop_fgm")
    assert (longer["steps"], longer["length"]) == (8, "train.max_steps=8")  # 2 steps x 4
    assert longer["compute"]["forward_passes"] == 64 == result["runs"][3]["compute"]["forward_passes"]
    run_dir = out / EQUAL_COMPUTE / "seed-0-max_steps=8"
    saved = load_config(run_dir / "config.yaml")
    assert (saved.train.max_steps, saved.train.warmup, saved.train.rdrop_alpha) == (8, 0.1, 0.0)  # the same schedule shape
    summaries = {s["variant"]: s for s in result["variants"]}
    assert summaries["rdrop_fgm"]["compute"]["vs_reference"] == 4.0
    assert summaries[EQUAL_COMPUTE]["flops_vs_costliest"] == longer["compute"]["flops"] / result["runs"][3]["compute"]["flops"]
    assert summaries["rdrop_fgm"]["verdict_equal_compute"] == ONE_SEED
    assert summaries["rdrop_fgm"]["vs_equal_compute"]["f1"]["mean"] == pytest.approx(
        result["runs"][3]["f1"] - longer["f1"])
    table = (out / "compare.md").read_text()
    assert "| verdict at equal compute |" in table and "| baseline@equal_compute | (the config), length x 4 |" in table
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 1600  # three panels wide


def test_a_second_equal_compute_compare_skips_every_run(equal_compute_compared, monkeypatch, capsys):
    out, base, result = equal_compute_compared
    monkeypatch.setattr(runs, "train_in_own_process", _no_training)
    again = compare(base, [Variant.parse(text) for text in TRICKS], [0], out, equal_compute=True)
    assert capsys.readouterr().out.count(": done, skipped") == 5
    assert again["runs"] == result["runs"] and again["variants"] == result["variants"]


def test_a_longer_baseline_trained_as_a_variant_counts_as_the_equal_compute_run(equal_compute_compared, tmp_path,
                                                                                monkeypatch, capsys):
    """The baseline trained longer under a name of its own (`--variant epochs4:train.max_steps=8`) and copied in as
    the equal-compute run: its record lacks the plan's facts (scale, costliest variant), which the plan supplies."""
    out, base, result = equal_compute_compared
    copy = _copied(out, tmp_path)
    record_file = copy / EQUAL_COMPUTE / "seed-0-max_steps=8" / "compare_run.json"
    record = json.loads(record_file.read_text())
    for key in ("compute_scale", "compute_of", "length"):
        del record[key]
    record_file.write_text(json.dumps({**record, "variant": "epochs4"}))
    monkeypatch.setattr(runs, "train_in_own_process", _no_training)
    again = compare(base, [Variant.parse(text) for text in TRICKS], [0], copy, equal_compute=True)
    assert capsys.readouterr().out.count(": done, skipped") == 5
    assert again["runs"] == result["runs"] and again["variants"] == result["variants"]


def test_an_equal_compute_run_kept_before_the_folders_per_length_is_taken_where_its_length_fits(
        equal_compute_compared, tmp_path, monkeypatch, capsys):
    out, base, result = equal_compute_compared
    copy = _copied(out, tmp_path)
    (copy / EQUAL_COMPUTE / "seed-0-max_steps=8").rename(copy / EQUAL_COMPUTE / "seed-0")
    monkeypatch.setattr(runs, "train_in_own_process", _no_training)
    again = compare(base, [Variant.parse(text) for text in TRICKS], [0], copy, equal_compute=True)
    assert capsys.readouterr().out.count(": done, skipped") == 5 and again["variants"] == result["variants"]


@pytest.mark.slow  # two more runs, 24 steps
def test_a_costlier_variant_added_later_trains_a_longer_equal_compute_run_beside_the_first(
        equal_compute_compared, tmp_path, monkeypatch, capsys):
    out, base, result = equal_compute_compared
    copy = _copied(out, tmp_path)
    first = copy / EQUAL_COMPUTE / "seed-0-max_steps=8"
    record = (first / "compare_run.json").read_text()
    monkeypatch.setattr(runs, "train_in_own_process", _train_here)
    costlier = "long:train.rdrop_alpha=1,train.adversarial=fgm,train.max_steps=4"  # twice rdrop_fgm's steps
    again = compare(base, [Variant.parse(text) for text in [*TRICKS, costlier]], [0], copy, equal_compute=True)
    longer = again["runs"][-1]
    steps = round(2 * longer["compute_scale"])
    assert longer["compute_scale"] > 4 and (longer["compute_of"], longer["steps"]) == ("long", steps)
    assert (copy / EQUAL_COMPUTE / f"seed-0-max_steps={steps}" / "compare_run.json").is_file()
    assert (first / "compare_run.json").read_text() == record  # the first one kept as it was
    assert f"not used now (another costliest variant's length): {first}" in capsys.readouterr().out
    # without the costlier variant, the first equal-compute run counts again
    monkeypatch.setattr(runs, "train_in_own_process", _no_training)
    assert compare(base, [Variant.parse(text) for text in TRICKS], [0], copy, equal_compute=True)["runs"] == result["runs"]


def test_equal_compute_refuses_records_without_compute_and_a_variant_of_its_name(equal_compute_compared, tmp_path,
                                                                                 monkeypatch):
    out, base, _ = equal_compute_compared
    copy = _copied(out, tmp_path)
    record_file = copy / "fgm" / "seed-0" / "compare_run.json"
    record = json.loads(record_file.read_text())
    del record["compute"]  # as written before compare recorded compute
    record_file.write_text(json.dumps(record))
    monkeypatch.setattr(runs, "train_in_own_process", _no_training)
    variants = [Variant.parse(text) for text in TRICKS]
    with pytest.raises(ConfigError, match="fgm/seed-0: finished before mrc-cli recorded a run's compute"):
        compare(base, variants, [0], copy, equal_compute=True)
    with pytest.raises(ConfigError, match="baseline@equal_compute names the run that --equal-compute adds"):
        compare(base, [Variant.parse("baseline@equal_compute:train.lr=1e-3")], [0], copy)
    with pytest.raises(ConfigError, match="give a --variant besides baseline"):
        compare(base, [Variant.parse("baseline:train.lr=1e-3")], [0], copy, equal_compute=True)


# --- the command line hands its flags to compare() ----------------------------------------------------------------


def test_compare_cli_hands_config_variants_and_seeds_to_the_library(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(compare_module, "compare", lambda *args, **kwargs: seen.append((*args, kwargs)) or {})
    monkeypatch.setattr(compare_module, "markdown_table", lambda result: "TABLE")
    runner = CliRunner()
    result = runner.invoke(app, ["compare", "--model", "m", "--train", "t.json", "--dev", "d.json", "--set",
                                 "train.lr=5e-5", "--variant", "a:train.warmup=0.2", "--variant",
                                 "b:model.dropout=0,train.lr=1e-3", "--seed-list", "0,5,7", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "TABLE" in result.stdout
    ((cfg, variants, seeds, out, options),) = seen
    assert (cfg.model.name_or_path, cfg.data.train_file, cfg.data.dev_file, cfg.train.lr) == ("m", "t.json", "d.json", 5e-5)
    assert variants == [Variant("a", ("train.warmup=0.2",)), Variant("b", ("model.dropout=0", "train.lr=1e-3"))]
    assert (seeds, out, options) == ([0, 5, 7], tmp_path, {"equal_compute": False})

    assert runner.invoke(app, ["compare", "--variant", "a:train.lr=1e-3", "--equal-compute"]).exit_code == 0
    assert seen[-1][2] == [0, 1, 2] and seen[-1][4] == {"equal_compute": True}  # the default: 3 seeds
    for flags, problem in ((["--seeds", "2", "--seed-list", "0,1"], "not both"), (["--seed-list", "0,x"], "0,x")):
        refused = runner.invoke(app, ["compare", "--variant", "a:train.lr=1e-3", *flags])
        assert refused.exit_code == 2 and problem in refused.output
    refused = runner.invoke(app, ["compare", "--variant", "a=1"])
    assert refused.exit_code == 1 and refused.stderr.startswith("Error: variant 'a=1': expected name:")


def test_compare_cli_without_a_variant_reaches_the_library(monkeypatch, tmp_path, tiny_bert_dir):
    seen = []
    monkeypatch.setattr(compare_module, "compare", lambda *args, **kwargs: seen.append(args) or {})
    monkeypatch.setattr(compare_module, "markdown_table", lambda result: "TABLE")
    runner = CliRunner()
    result = runner.invoke(app, ["compare", "--model", "m", "--dev", "d.json", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert seen[-1][1] == []  # the baseline alone: its seed spread
    monkeypatch.undo()
    refused = runner.invoke(app, ["compare", "--model", tiny_bert_dir, "--dev", "d.json", "--equal-compute", "--out",
                                  str(tmp_path / "out")])
    assert refused.exit_code == 1 and "give a --variant besides baseline" in refused.stderr


@pytest.mark.slow
def test_runs_on_two_gpus_go_as_two_mrc_train_processes_at_once(tiny_bert_dir, tmp_path, monkeypatch):
    """The several-GPU path for real, minus the GPUs: two `mrc train` processes side by side (CUDA_VISIBLE_DEVICES
    empty, the config on the CPU), their records and the summary as the one-at-a-time path writes them."""
    monkeypatch.setattr(compare_module, "_visible_gpus", lambda train_cfg: ["", ""])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = tiny_run_config(tiny_bert_dir, tmp_path / "unused", max_steps=2)
    result = compare(base, [Variant.parse("warm:train.warmup=0.5")], [0], tmp_path / "out")
    assert [(r["variant"], r["steps"]) for r in result["runs"]] == [("baseline", 2), ("warm", 2)]
    for name, warmup in (("baseline", 0.1), ("warm", 0.5)):
        run_dir = tmp_path / "out" / name / "seed-0"
        assert load_config(run_dir / "config.yaml").train.warmup == warmup
        assert '"steps": 2' in (run_dir / "compare_output.log").read_text()  # mrc train's last line
    assert result["variants"][1]["verdict"] == ONE_SEED


@pytest.mark.slow
def test_runs_on_the_cpu_are_mrc_train_processes_one_after_another(tiny_bert_dir, tmp_path, capfd):
    """Each run a `mrc train` process of its own (one process training run after run grew until killed), its output
    here and in the run's log. A child that fails is named with its status and log, and the next compare trains the
    run; one stopped after a checkpoint resumes from it."""
    train_file = tmp_path / "train.json"  # not JSON at first: the child fails (a missing one is refused up front)
    train_file.write_text("not json")
    base = tiny_run_config(tiny_bert_dir, tmp_path / "unused", max_steps=4, save_steps=2)
    base.data.train_file = str(train_file)
    out = tmp_path / "out"
    run_dir = out / "baseline" / "seed-0"
    log = run_dir / "compare_output.log"
    with pytest.raises(TrainingError) as err:
        compare(base, [], [0], out)
    assert str(err.value) == (f"{run_dir}: mrc train exited with status 1; its output is in {log}. It saved no "
                              "checkpoint: its output says why; run mrc compare again once that is fixed")
    assert f"Error: {train_file}" in log.read_text() and f"Error: {train_file}" in capfd.readouterr().out

    shutil.copy(QUICKSTART / "en_train.json", train_file)
    (finished,) = compare(base, [], [0], out)["runs"]
    assert (finished["steps"], finished["resumed_from"]) == (4, None)
    last_line = f'"run_dir": "{run_dir}", "steps": 4'  # the child's last line, printed by `mrc train`
    assert last_line in capfd.readouterr().out and last_line in log.read_text()

    (run_dir / "compare_run.json").unlink()  # as if stopped after the checkpoint at step 2
    shutil.rmtree(run_dir / "checkpoints" / "step-000004")
    (resumed,) = compare(base, [], [0], out)["runs"]
    assert (resumed["steps"], resumed["resumed_from"]) == (4, "step-000002")
    assert (resumed["exact"], resumed["f1"]) == (finished["exact"], finished["f1"])
    assert "resumed from" in capfd.readouterr().out and log.read_text().count(last_line) == 2


def test_a_variant_setting_twice_or_a_window_that_fits_no_question_is_refused_before_any_run(tiny_bert_dir, tmp_path,
                                                                                           monkeypatch):
    monkeypatch.setattr(runs, "train_in_own_process", _no_training)
    with pytest.raises(ConfigError, match="train.lr set twice"):
        Variant.parse("x:train.lr=5e-5,train.lr=1e-4")
    base = tiny_run_config(tiny_bert_dir, tmp_path / "unused")
    for text, problem in (("wide:data.doc_stride=5000", "doc_stride 5000 must be below"),
                          ("neg:train.lr=-1", "train.lr must be > 0")):
        with pytest.raises(ConfigError, match=f"variant '{text}': {problem}"):
            compare(base, [Variant.parse(text)], [0], tmp_path / "out")


def test_a_run_record_with_an_infinite_setting_matches_that_setting_again(tmp_path):
    """Records are strict JSON (inf written as the largest float): read back, inf is inf again, not 'another
    setting' (kfold and compare re-read every record they wrote)."""
    import math

    from mrc_cli.config import RunConfig, config_to_dict
    from mrc_cli.runs import load_record, write_record

    cfg = RunConfig()
    cfg.decode.null_score_diff_threshold = math.inf  # "inf: no null answers"
    settings = config_to_dict(cfg)
    write_record(tmp_path / "run.json", {"f1": 50.0}, settings)
    assert "Infinity" not in (tmp_path / "run.json").read_text()
    assert load_record(tmp_path / "run.json", settings)["f1"] == 50.0


def test_a_run_begun_that_left_no_checkpoint_starts_again_with_the_settings_of_now(tmp_path):
    """A run that failed at once (R-Drop without dropout, say) is run again once the settings are fixed; one with a
    checkpoint would be resumed, so other settings are refused there."""
    from mrc_cli.config import RunConfig, config_to_dict
    from mrc_cli.runs import PLAN_RECORD, load_record, start_run

    run_dir, first, fixed = tmp_path / "rd" / "seed-0", RunConfig(), RunConfig()
    fixed.model.dropout = 0.1
    start_run(run_dir, config_to_dict(first))
    import fcntl

    with open(run_dir / ".lock", "a+") as held:  # the first still running (another compare's): not replaced
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ConfigError, match="was started with other settings"):
            start_run(run_dir, config_to_dict(fixed))
    start_run(run_dir, config_to_dict(fixed))
    assert load_record(run_dir / PLAN_RECORD, config_to_dict(fixed), "was started") is not None
    (run_dir / "checkpoints" / "step-000001").mkdir(parents=True)
    (run_dir / "checkpoints" / "step-000001" / "trainer_state.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"was started with other settings \(model.dropout: 0.1 there, 0.0 now\)"):
        start_run(run_dir, config_to_dict(first))


def test_equal_compute_trains_no_longer_baseline_where_no_variant_costs_more(tiny_bert_dir, tmp_path, monkeypatch,
                                                                             capsys):
    monkeypatch.setattr(runs, "train_in_own_process", _train_here)
    base = tiny_run_config(tiny_bert_dir, tmp_path / "unused", max_steps=1)
    result = compare(base, [Variant.parse("lr:train.lr=2e-4")], [0], tmp_path / "out", equal_compute=True)
    assert [row["variant"] for row in result["runs"]] == ["baseline", "lr"]
    assert not (tmp_path / "out" / EQUAL_COMPUTE).exists()
    assert (f"no {EQUAL_COMPUTE} runs: no variant costs more than baseline (the costliest, lr, 1x its compute), so "
            "each verdict is already at equal or lower compute") in capsys.readouterr().out


def test_a_compare_of_fewer_variants_names_the_runs_it_leaves_out(compared, tmp_path, monkeypatch, capsys):
    out, config, _ = compared
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    monkeypatch.setattr(runs, "train_in_own_process", _no_training)
    result = compare(load_config(config), [], [0, 1], copy)
    name = Variant.parse(VARIANT).name
    assert [v["variant"] for v in result["variants"]] == ["baseline"]
    assert (f"{copy} also holds runs of {name}, not in this comparison: give them again as --variant to compare them "
            "too (their finished runs are skipped)") in capsys.readouterr().out
