"""`mrc runs`: runs under a folder side by side, from the files their training wrote."""

import json
import shutil

from typer.testing import CliRunner

from conftest import tiny_run_config
from mrc_cli.cli import app
from mrc_cli.run_table import run_rows

runner = CliRunner()


def test_runs_lists_each_run_with_its_best_scores_and_the_settings_that_differ(tiny_bert_dir, tmp_path):
    from mrc_cli.training import train

    for name, lr in (("slow", 1e-4), ("fast", 1e-3)):
        train(tiny_run_config(tiny_bert_dir, tmp_path / "runs" / name, max_steps=4, eval_steps=2, lr=lr))
    shutil.copytree(tmp_path / "runs" / "fast", tmp_path / "runs" / "cut")
    (tmp_path / "runs" / "cut" / "metrics.json").unlink()  # as a run stopped before its end leaves it
    rows = {row.run: row for row in run_rows([tmp_path / "runs"])}
    assert {name: row.state for name, row in rows.items()} == {"slow": "finished", "fast": "finished", "cut": "stopped"}
    for name in ("slow", "fast"):
        best = json.loads((tmp_path / "runs" / name / "best_checkpoint.json").read_text())["metrics"]
        assert (rows[name].step, rows[name].best_step, rows[name].f1) == (4, best["step"], best["f1"])
        logged = map(json.loads, (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines())
        evaluation = next(row for row in logged if row["step"] == best["step"] and "metric" in row)
        assert rows[name].exact == evaluation["exact"]
    result = runner.invoke(app, ["runs", str(tmp_path / "runs"), "--sort", "name"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["run", "task", "state"] and [line.split()[0] for line in lines[1:]] == [
        "cut", "fast", "slow"]
    assert lines[3].endswith("train.lr=0.0001")  # the one setting in which they differ (output_dir changes no weight)
    assert runner.invoke(app, ["runs", str(tmp_path / "none")]).stderr.startswith(f"Error: {tmp_path / 'none'}: no such")


def test_a_run_whose_files_are_cut_is_named_not_a_traceback(tmp_path):
    (tmp_path / "runs" / "cut").mkdir(parents=True)
    (tmp_path / "runs" / "cut" / "run_info.json").write_text('{"task": "tr')  # a kill mid-write, or a hand edit
    result = runner.invoke(app, ["runs", str(tmp_path / "runs")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.startswith(f"Error: {tmp_path / 'runs' / 'cut'}: its run files cannot be read (JSONDecodeError")
