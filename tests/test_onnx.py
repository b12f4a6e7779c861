"""`mrc export --format onnx`: the graph is the span model (checked, dynamic batch and length, token and word level,
BERT and ALBERT), and the folder answers like the checkpoint in `mrc eval`, `mrc predict`, `mrc ensemble` and the
Reader; int8 export, parity.json, refusals."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import ROOT, tiny_run_config, write_squad
from mrc_cli import Reader
from mrc_cli.cli import app
from mrc_cli.errors import CheckpointError, ConfigError
from mrc_cli.training import train

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

DEV = "data/quickstart/en_dev.json"


def _train(model_dir, folder, span_level="token"):
    cfg = tiny_run_config(model_dir, str(folder / "run"), max_steps=4, save_steps=4, eval_steps=0)
    cfg.model.span_level = span_level
    return train(cfg).run_dir


@pytest.fixture(scope="module")
def bert_run(tiny_bert_dir, tmp_path_factory):
    return _train(tiny_bert_dir, tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def bert_onnx(bert_run, tmp_path_factory):
    """The BERT run exported with an int8 graph beside the fp32 one and a parity report on the dev file."""
    out = tmp_path_factory.mktemp("bert_onnx") / "onnx"
    result = CliRunner().invoke(app, ["export", "--checkpoint", str(bert_run), "--out", str(out), "--format", "onnx",
                                      "--quantize", "int8", "--parity-data", DEV])
    assert result.exit_code == 0, result.output
    return out, result.stdout


@pytest.fixture(scope="module")
def split_of(bert_run):
    from mrc_cli.loading import load_trained
    from mrc_cli.splits import featurize_file

    loaded = load_trained(bert_run)
    return featurize_file(DEV, loaded.tokenizer, loaded.cfg.data, "eval")


def _logits(loaded, features, batch_size):
    from mrc_cli.inference import OneProcess, predict_logits

    return predict_logits(loaded.model, features, OneProcess(torch.device("cpu")), batch_size, "no",
                          loaded.cfg.data.max_seq_length)


def _same_logits(onnx, ref, atol=1e-4):
    scored = ref.start > np.finfo(np.float32).min / 2
    assert np.array_equal(scored, onnx.start > np.finfo(np.float32).min / 2)  # the same positions masked
    for side in ("start", "end"):
        np.testing.assert_allclose(getattr(onnx, side)[scored], getattr(ref, side)[scored], atol=atol, rtol=0)
    assert onnx.loss == pytest.approx(ref.loss, abs=atol) and ref.loss is not None  # mrc eval's dev_loss


def test_folder_holds_a_checked_graph_tokenizer_and_settings(bert_onnx):
    import onnx

    out, stdout = bert_onnx
    for name in ("model.onnx", "model.int8.onnx", "onnx.json", "mrc_cli.yaml", "config.json", "tokenizer.json",
                 "parity.json"):
        assert (out / name).is_file(), name
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    onnx.checker.check_model(str(out / "model.int8.onnx"), full_check=True)
    settings = json.loads((out / "onnx.json").read_text())
    assert settings["graph"] == "int8" and settings["graphs"] == {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    assert settings["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    graph = onnx.load(str(out / "model.onnx"))
    for value in graph.graph.input:  # batch and sequence are symbols, not numbers
        assert [d.dim_param for d in value.type.tensor_type.shape.dim] == ["batch", "sequence"]
    assert (out / "model.int8.onnx").stat().st_size < (out / "model.onnx").stat().st_size / 2


def _op_counts(path):
    import collections

    import onnx

    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def test_bert_attention_is_fused_in_both_graphs(bert_onnx):
    """ONNX Runtime's BERT fusions match the exported attention: one Attention a layer (QAttention once quantized),
    no Softmax left; SkipLayerNormalization and BiasGelu too."""
    out, _ = bert_onnx
    fp32, int8 = _op_counts(out / "model.onnx"), _op_counts(out / "model.int8.onnx")
    layers = 2  # tiny_bert_dir
    assert fp32["Attention"] == layers and fp32["Softmax"] == 0 and fp32["SkipLayerNormalization"] == 2 * layers
    assert fp32["BiasGelu"] == layers
    assert int8["QAttention"] == layers and int8["Attention"] == 0 and int8["Softmax"] == 0


def test_fused_graph_gives_the_model_logits_for_any_mask(bert_run, bert_onnx):
    """The fused attention takes the raw 2D mask: left padding and masks with holes too, at several shapes."""
    import onnxruntime as ort

    from mrc_cli.loading import load_trained

    model = load_trained(bert_run).model.eval()
    session = ort.InferenceSession(str(bert_onnx[0] / "model.onnx"), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    for rows, width in ((1, 1), (3, 17), (6, 128)):
        feeds = {"input_ids": torch.randint(0, model.config.vocab_size, (rows, width), generator=generator),
                 "attention_mask": torch.randint(0, 2, (rows, width), generator=generator),
                 "token_type_ids": torch.zeros(rows, width, dtype=torch.long)}
        feeds["attention_mask"][:, 0] = 1  # CLS: every row attends somewhere
        feeds["attention_mask"][0] = 1  # one row without padding
        start, end = session.run(None, {name: x.numpy() for name, x in feeds.items()})
        with torch.no_grad():
            ref = model(**feeds)
        scored = feeds["attention_mask"].bool().numpy()
        np.testing.assert_allclose(start[scored], ref.start_logits.numpy()[scored], atol=1e-4, rtol=0)
        np.testing.assert_allclose(end[scored], ref.end_logits.numpy()[scored], atol=1e-4, rtol=0)


def test_an_int8_features_logits_do_not_depend_on_its_batch_mates(bert_run, bert_onnx, split_of):
    """ONNX Runtime's dynamic quantisation scales activations per run: the session runs each feature alone, cut after
    its last real token, so a feature gets the same int8 logits in any batch (alone, or padded beside 31 others), as
    mrc serve's batches need. Runs of several padded rows gave other logits (scales over the batch and its padding)."""
    from mrc_cli.loading import load_trained

    loaded = load_trained(bert_onnx[0])
    assert loaded.model.path.name == "model.int8.onnx"
    features = split_of.features
    in_batches = _logits(loaded, features, 32)  # length-sorted batches, padded to their longest
    alone = _logits(loaded, features.select(range(6)), 1)  # no padding at all
    scored = alone.start > np.finfo(np.float32).min / 2
    for side in ("start", "end"):
        np.testing.assert_array_equal(getattr(alone, side)[scored], getattr(in_batches, side)[:6][scored])


@pytest.mark.parametrize("batch_size", [1, 5, 32])
def test_onnx_logits_equal_the_torch_logits_at_any_batch_and_length(bert_run, bert_onnx, split_of, batch_size):
    """Length-sorted batches of 1, 5 and 32 features: every batch another width and padding (dynamic axes)."""
    from mrc_cli.loading import load_trained, read_onnx_export

    onnx = read_onnx_export(bert_onnx[0], "fp32")
    assert type(onnx.model).__name__ == "OnnxSpanModel"
    assert len({len(ids) for ids in split_of.features["input_ids"]}) > 5  # windows of many lengths
    _same_logits(_logits(onnx, split_of.features, batch_size), _logits(load_trained(bert_run), split_of.features, batch_size))


def test_eval_predict_and_reader_on_the_export_answer_as_the_checkpoint(bert_run, bert_onnx, tmp_path):
    from mrc_cli.loading import read_onnx_export

    out, _ = bert_onnx
    fp32 = tmp_path / "fp32"  # the fp32 graph as its own folder: onnx.json naming it
    fp32.mkdir()
    for file in out.iterdir():
        if file.name != "model.int8.onnx":
            (fp32 / file.name).symlink_to(file)
    (fp32 / "onnx.json").unlink()
    settings = json.loads((out / "onnx.json").read_text())
    (fp32 / "onnx.json").write_text(json.dumps({**settings, "graph": "fp32", "graphs": {"fp32": "model.onnx"}}))
    assert read_onnx_export(fp32).cfg.train.tokens_per_batch == 0

    runner = CliRunner()
    answers = {}
    for name, source in (("checkpoint", bert_run), ("onnx", fp32)):
        result = runner.invoke(app, ["eval", "--checkpoint", str(source), "--data", DEV, "--out", str(tmp_path / f"eval_{name}")])
        assert result.exit_code == 0, result.output
        metrics = json.loads(result.stdout.strip().splitlines()[-1])
        answers[name] = json.loads((tmp_path / f"eval_{name}" / "predictions.json").read_text())
        answers[name + " metrics"] = {k: metrics[k] for k in ("exact", "f1", "best_f1", "total", "dev_loss")}
        result = runner.invoke(app, ["predict", "--checkpoint", str(source), "--data", DEV, "--out", str(tmp_path / f"{name}.json")])
        assert result.exit_code == 0, result.output
        assert json.loads((tmp_path / f"{name}.json").read_text()) == answers[name]
    assert answers["onnx"] == answers["checkpoint"]
    assert answers["onnx metrics"] == pytest.approx(answers["checkpoint metrics"])
    nbest = [json.loads((tmp_path / f"eval_{name}" / "nbest.json").read_text()) for name in ("checkpoint", "onnx")]
    assert {q: [c["text"] for c in n] for q, n in nbest[0].items()} == {q: [c["text"] for c in n] for q, n in nbest[1].items()}

    questions = [(qa["id"], qa["question"], p["context"]) for a in json.load(open(DEV, encoding="utf-8"))["data"]
                 for p in a["paragraphs"] for qa in p["qas"]]
    reader = Reader.load(fp32)
    got = reader(question=[q for _, q, _ in questions], context=[c for _, _, c in questions])
    expected = Reader.load(bert_run)(question=[q for _, q, _ in questions], context=[c for _, _, c in questions])
    assert [a["answer"] for a in got] == [a["answer"] for a in expected]
    assert [a["score"] for a in got] == pytest.approx([a["score"] for a in expected], abs=1e-3)


def test_an_export_is_an_ensemble_member_like_its_checkpoint(bert_run, bert_onnx, tmp_path):
    runner = CliRunner()
    answers = []
    for members in ([bert_run, bert_run], [bert_run, bert_onnx[0]]):
        out = tmp_path / f"ens{len(answers)}"
        args = ["ensemble", "--data", DEV, "--out", str(out)] + [a for m in members for a in ("--checkpoint", str(m))]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        answers.append(json.loads((out / "predictions.json").read_text()))
    same = sum(answers[0][q] == answers[1][q] for q in answers[0])
    assert same >= 0.8 * len(answers[0])  # the int8 member moves close calls (alone: ~82 % of answers kept, measured)


def test_int8_graph_loads_by_default_and_mostly_agrees(bert_run, bert_onnx):
    from mrc_cli.loading import load_trained

    out, stdout = bert_onnx
    parity = json.loads((out / "parity.json").read_text())
    assert parity["questions"] == 49 and set(parity["backends"]) == {"torch_fp32", "onnx_fp32", "onnx_int8"}
    for name, entry in parity["backends"].items():
        assert {"exact", "f1", "questions_per_s", "seconds"} <= set(entry), name
        # why int8 may lose F1 on SQuAD v2 data: how many it answers, HasAns/NoAns, and the best threshold for it
        assert {"answered", "HasAns_f1", "NoAns_f1", "best_f1", "best_f1_thresh", "null_threshold"} <= set(entry), name
    assert parity["backends"]["onnx_fp32"]["answered"] == parity["backends"]["torch_fp32"]["answered"]
    fp32, int8 = parity["backends"]["onnx_fp32"], parity["backends"]["onnx_int8"]
    assert fp32["answers_identical_pct"] == 100.0 and fp32["max_abs_logit_diff"] < 1e-4 and fp32["differing_answers"] == 0
    assert int8["differing_answers"] == round(49 * (1 - int8["answers_identical_pct"] / 100))
    assert fp32["f1"] == pytest.approx(parity["backends"]["torch_fp32"]["f1"])
    assert int8["answers_identical_pct"] >= 80 and 0 < int8["max_abs_logit_diff"] < 1.0
    assert abs(int8["f1"] - fp32["f1"]) <= 5
    summary = stdout.strip().splitlines()[-1]
    assert summary.startswith("parity on 49 questions: answers identical to torch_fp32: onnx_fp32 100.0 %")
    assert "questions/s" in summary and "max |logit diff|" in summary
    assert f"answered torch_fp32 {parity['backends']['torch_fp32']['answered']} / " in summary
    if int8["answers_moved_at_best_threshold"]:  # the stored threshold is torch's: int8's null odds are shifted
        assert f"Warning: onnx_int8 answers {int8['answered']} questions" in summary
        assert f"mrc eval --checkpoint {out} --data {DEV} --store-threshold" in parity["threshold_warning"]
    else:
        assert "threshold_warning" not in parity and "Warning" not in summary
    # the folder itself loads its int8 graph; eval on it runs
    loaded = load_trained(out)
    assert loaded.cfg.train.precision == "no" and loaded.cfg.train.tokens_per_batch == 0
    assert loaded.model.path == out / "model.int8.onnx"
    result = CliRunner().invoke(app, ["predict", "--checkpoint", str(out), "--data", DEV, "--out", str(out.parent / "int8.json")])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("span_level", ["token", "word"])
def test_albert_and_word_level_graphs_give_the_model_logits(tiny_albert_dir, tiny_bert_dir, tmp_path, span_level,
                                                            caplog):
    """ALBERT at token level, BERT at word level (the pooling of sub-tokens into words is part of the graph); the
    export logs none of the libraries' warnings the user cannot act on (onnx_ir's on an empty attribute list, ONNX
    Runtime's fusion on its failed shape inference: both at word level)."""
    from mrc_cli.export import export_onnx
    from mrc_cli.loading import load_trained
    from mrc_cli.splits import featurize_file

    run = _train(tiny_albert_dir if span_level == "token" else tiny_bert_dir, tmp_path, span_level)
    caplog.clear()
    export_onnx(str(run), str(tmp_path / "onnx"))
    assert "ambiguous" not in caplog.text and "shape inference" not in caplog.text, caplog.text
    torch_model, onnx_model = load_trained(run), load_trained(tmp_path / "onnx")
    split = featurize_file(DEV, torch_model.tokenizer, torch_model.cfg.data, "eval")
    for batch_size in (3, 32):
        _same_logits(_logits(onnx_model, split.features, batch_size), _logits(torch_model, split.features, batch_size))
    questions = [(qa["question"], p["context"]) for a in json.load(open(DEV, encoding="utf-8"))["data"]
                 for p in a["paragraphs"] for qa in p["qas"]][:12]
    answers = [Reader.load(source)([q for q, _ in questions], [c for _, c in questions]) for source in (run, tmp_path / "onnx")]
    assert [a["answer"] for a in answers[0]] == [a["answer"] for a in answers[1]]
    if span_level == "word":  # AutoModelForQuestionAnswering would answer without the pooling
        from mrc_cli.export import export_checkpoint

        with pytest.raises(ConfigError, match="answers at model.span_level word.*export it with --format onnx"):
            export_checkpoint(str(run), str(tmp_path / "hf"))


def test_an_export_replaces_an_earlier_one_whole_and_takes_no_runs_place(bert_run, bert_onnx, tmp_path, monkeypatch):
    """Written over an earlier export, none of its files stay (an int8 graph and parity.json of other weights, the
    onnx.json that made a Hugging Face export load as ONNX); a run, a checkpoint or a folder of other files is
    refused (an export in a run directory answered for it in place of its best checkpoint)."""
    import shutil

    from mrc_cli.checkpoint import resolve_checkpoint
    from mrc_cli.export import export_checkpoint, export_onnx
    from mrc_cli.loading import is_onnx_export

    earlier = tmp_path / "earlier"
    shutil.copytree(bert_onnx[0], earlier)
    assert {"model.int8.onnx", "parity.json"} <= {p.name for p in earlier.iterdir()}
    export_onnx(str(bert_run), str(earlier))
    assert not (earlier / "model.int8.onnx").exists() and not (earlier / "parity.json").exists()
    assert json.loads((earlier / "onnx.json").read_text())["graphs"] == {"fp32": "model.onnx"}
    export_checkpoint(str(bert_run), str(earlier))
    assert not is_onnx_export(earlier) and not (earlier / "model.onnx").exists()
    assert Reader.load(earlier).backend == "torch"
    with pytest.raises(ConfigError, match="holds .*earlier, which is exported from"):  # it would delete its source
        export_onnx(str(earlier), str(earlier))
    run = shutil.copytree(bert_run, tmp_path / "run")
    (run / "onnx.json").write_text("{}")  # a run that an earlier mrc-cli let an export into is still a run
    for out in (run, resolve_checkpoint(run)):
        with pytest.raises(ConfigError, match="a training run or checkpoint, which the export would take the place of"):
            export_checkpoint(str(run), str(out))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")
    with pytest.raises(ConfigError, match="a folder of other files"):
        export_onnx(str(bert_run), str(tmp_path / "notes"))
    monkeypatch.chdir(earlier)
    with pytest.raises(ConfigError, match="--out .: the folder mrc runs in"):
        export_checkpoint(str(bert_run), ".")
    (tmp_path / "mount").mkdir()  # an empty folder is written in place: a mount point cannot be renamed
    inode = (tmp_path / "mount").stat().st_ino
    export_checkpoint(str(bert_run), str(tmp_path / "mount"))
    assert (tmp_path / "mount").stat().st_ino == inode and (tmp_path / "mount" / "mrc_cli.yaml").is_file()
    from mrc_cli.files import folder_written_whole

    (tmp_path / "failed").mkdir()  # written in place and failed: emptied, so the next export is not refused
    with pytest.raises(RuntimeError), folder_written_whole(tmp_path / "failed") as folder:
        (folder / "model.onnx").write_text("half")
        raise RuntimeError("quantising failed")
    assert not any((tmp_path / "failed").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier", "failed", "mount", "notes", "run"]  # none left


# Runs `mrc export --format onnx` in a fresh process that gets SIGTERM halfway through writing the graph (a
# scheduler's time limit); no hook in the product: the driver patches the exporter.
SIGTERM_WHILE_EXPORTING = textwrap.dedent('''
    import os, signal, sys
    from pathlib import Path
    import mrc_cli.onnx_backend as onnx_backend
    from mrc_cli.cli import app
    def half_a_graph_then_sigterm(model, path):
        Path(path).write_bytes(b"half a graph")
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the export")
    onnx_backend.export_graph = half_a_graph_then_sigterm
    app(sys.argv[1:], prog_name="mrc")
''')


def test_an_export_stopped_by_sigterm_leaves_no_temporary_folder_and_clears_a_dead_ones(bert_run, tmp_path):
    """The temporary folder beside --out (.NAME.PID) goes with the SIGTERM, and the earlier export stays; one that a
    process killed outright left an hour ago goes at the next export there."""
    out, earlier = tmp_path / "model.onnx", tmp_path / "model.onnx" / "onnx.json"
    out.mkdir()
    earlier.write_text("{}")
    dead = tmp_path / ".model.onnx.999999999"  # above any pid_max: no such process
    dead.mkdir()
    os.utime(dead, (time.time() - 7200, time.time() - 7200))
    driver = tmp_path / "driver.py"
    driver.write_text(SIGTERM_WHILE_EXPORTING)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(driver), "export", "--checkpoint", str(bert_run), "--out", str(out),
                           "--format", "onnx"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr[-2000:]
    assert "stopped by SIGTERM before its output was complete" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["driver.py", "model.onnx"]
    assert [p.name for p in out.iterdir()] == ["onnx.json"]


def test_only_dead_processes_old_folders_beside_one_written_whole_are_removed(tmp_path):
    from mrc_cli.files import folder_written_whole

    old = time.time() - 7200
    names = {".export.999999999": old, ".export.stale.999999998": old, ".export.999999997": None,  # dead, fresh
             f".export.{os.getppid()}": old, ".exports.999999996": old, ".export.999999995.tmp": old}
    for name, mtime in names.items():
        (tmp_path / name).mkdir()
        if mtime:
            os.utime(tmp_path / name, (mtime, mtime))
    with folder_written_whole(tmp_path / "export") as folder:
        (folder / "model.onnx").write_text("graph")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".export.999999997", f".export.{os.getppid()}", ".exports.999999996", ".export.999999995.tmp", "export"])


def test_a_roberta_graph_gives_the_model_logits_and_quantizes(tiny_encoder_dir, tmp_path):
    """RoBERTa's family (positions from the pad id + 1) through the same export and fusion as BERT."""
    from mrc_cli.export import export_onnx
    from mrc_cli.loading import load_trained
    from mrc_cli.splits import featurize_file

    run = _train(tiny_encoder_dir("roberta"), tmp_path)
    export_onnx(str(run), str(tmp_path / "onnx"))
    export_onnx(str(run), str(tmp_path / "int8"), "int8")
    torch_model, onnx_model = load_trained(run), load_trained(tmp_path / "onnx")
    split = featurize_file(DEV, torch_model.tokenizer, torch_model.cfg.data, "eval")
    _same_logits(_logits(onnx_model, split.features, 8), _logits(torch_model, split.features, 8))
    assert load_trained(tmp_path / "int8").model.path.name == "model.int8.onnx"


def test_an_encoder_without_a_checked_graph_is_refused_in_one_line(tiny_encoder_dir, tmp_path):
    """MPNet: its int8 quantisation fails on the graph (DeBERTa's graph gives other logits): refused before any work,
    by `mrc export` and by --backend onnx on the checkpoint, which still answers with the torch backend."""
    run = _train(tiny_encoder_dir("mpnet"), tmp_path)
    runner = CliRunner()
    for args in (["export", "--checkpoint", str(run), "--out", str(tmp_path / "onnx"), "--format", "onnx"],
                 ["eval", "--checkpoint", str(run), "--data", DEV, "--backend", "onnx"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert "a mpnet encoder has no checked ONNX graph" in result.output and "--backend torch" in result.output
        assert "exporting" not in result.output
    assert not (tmp_path / "onnx").exists() and not list(run.rglob("*onnx*"))  # nothing half-written left behind
    result = runner.invoke(app, ["eval", "--checkpoint", str(run), "--data", DEV, "--backend", "torch"])
    assert result.exit_code == 0, result.output


def test_refusals_are_one_line_errors(bert_run, bert_onnx, tmp_path):
    runner = CliRunner()
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["export", "--checkpoint", str(tmp_path / "empty"), "--out", str(tmp_path / "x"), "--format", "onnx"])
    assert result.exit_code == 1 and result.stderr.startswith("Error:") and "no model.safetensors" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "x" / "onnx.json").exists()

    result = runner.invoke(app, ["export", "--checkpoint", str(bert_run), "--out", str(tmp_path / "y"), "--quantize", "int8"])
    assert result.exit_code == 2 and "Invalid value for --quantize: only with --format onnx" in result.stderr
    result = runner.invoke(app, ["export", "--checkpoint", str(bert_run), "--out", str(tmp_path / "y"), "--parity-data", DEV])
    assert result.exit_code == 2 and "Invalid value for --parity-data: only with --format onnx" in result.stderr
    result = runner.invoke(app, ["export", "--checkpoint", str(bert_run), "--out", str(tmp_path / "y"), "--format", "onnx",
                                 "--quantize", "int4"])
    assert result.exit_code == 2 and not (tmp_path / "y").exists()

    result = runner.invoke(app, ["export", "--checkpoint", str(bert_onnx[0]), "--out", str(tmp_path / "z"), "--format", "onnx"])
    assert result.exit_code == 1 and "is an ONNX export; export from the checkpoint" in result.stderr
    chinese = write_squad(tmp_path / "zh.json", [("北京是中国的首都。", [
        {"id": "a", "question": "谁？", "answers": [{"text": "北京", "answer_start": 0}]},
        {"id": "none", "question": "何时？", "answers": [], "is_impossible": True}])])
    for parity_data, problem in ((tmp_path / "nonexistent.json", "no such file"), (str(bert_run / "config.yaml"), ""),
                                 (chinese, "1 of 2 questions is unanswerable")):  # CMRC rules cannot score it
        result = runner.invoke(app, ["export", "--checkpoint", str(bert_run), "--out", str(tmp_path / "p"), "--format",
                                     "onnx", "--parity-data", str(parity_data)])
        assert result.exit_code == 1 and str(parity_data) in result.stderr and problem in result.stderr
        assert not (tmp_path / "p").exists()  # refused before the export, not after it

    from mrc_cli.loading import read_onnx_export

    with pytest.raises(CheckpointError, match="has no bf16 graph"):
        read_onnx_export(bert_onnx[0], "bf16")
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in bert_onnx[0].iterdir():
        if file.name != "model.int8.onnx":
            (broken / file.name).symlink_to(file)
    (broken / "model.int8.onnx").write_bytes(b"not a graph")
    with pytest.raises(CheckpointError, match="ONNX Runtime cannot load it"):
        Reader.load(broken)


def test_a_checkpoint_answers_with_every_backend_exporting_once(bert_run, bert_onnx, tmp_path):
    """--backend onnx / onnx-int8 on a checkpoint: exported once into its onnx/ folder (again when its weights
    change), the fp32 graph with the checkpoint's answers, the checkpoint's own settings; auto is PyTorch."""
    import os
    import shutil

    from mrc_cli.checkpoint import resolve_checkpoint
    from mrc_cli.config import load_config, save_config

    run = shutil.copytree(bert_run, tmp_path / "run", symlinks=True)
    checkpoint = resolve_checkpoint(run)
    runner = CliRunner()

    def ask(command, backend, out, *flags, code=0):
        result = runner.invoke(app, [command, "--checkpoint", str(run), "--data", DEV, "--out", str(tmp_path / out),
                                     "--backend", backend, *flags])
        assert result.exit_code == code, result.output
        return result

    torch_eval = ask("eval", "auto", "torch")
    assert json.loads(torch_eval.stdout.splitlines()[-1])["backend"] == "torch" and not (checkpoint / "onnx").exists()
    first = ask("eval", "onnx", "onnx")
    assert "exporting" in first.stderr and (checkpoint / "onnx" / "onnx.json").is_file()
    assert json.loads(first.stdout.splitlines()[-1])["backend"] == "onnx"
    predictions = [json.loads((tmp_path / name / "predictions.json").read_text()) for name in ("torch", "onnx")]
    assert predictions[0] == predictions[1]

    # a calibration fitted on the same answers is the checkpoint's: its decode settings change, nothing else (not
    # the CPU/fp32/feature-batch settings its graph ran with)
    before = load_config(checkpoint / "config.yaml")
    before.train.precision, before.train.cpu, before.train.tokens_per_batch = "auto", False, "auto"
    save_config(before, checkpoint / "config.yaml")
    ask("eval", "onnx", "calibrated", "--calibrate")
    after = load_config(checkpoint / "config.yaml")
    assert after.train == before.train and after.model == before.model and after.data == before.data
    assert after.decode.temperature != before.decode.temperature
    refused = ask("eval", "onnx-int8", "int8_eval", "--calibrate", code=1)
    assert "changes some answers" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1

    exported = (checkpoint / "onnx" / "onnx.json").stat().st_mtime_ns
    again = ask("predict", "onnx-int8", "int8.json")
    assert "exporting" not in again.stderr and "(onnx-int8)" in again.stdout
    assert (checkpoint / "onnx" / "onnx.json").stat().st_mtime_ns == exported
    reader = Reader.load(run, backend="onnx-int8")
    assert reader.backend == "onnx-int8" and reader.loaded.path == checkpoint  # thresholds are stored there

    weights = checkpoint / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # rewritten weights
    assert "exporting" in ask("predict", "onnx", "fp32.json").stderr

    # an ONNX export answers with its own graphs: int8 as written, fp32 on request, never PyTorch
    assert Reader.load(bert_onnx[0]).backend == "onnx-int8"
    assert Reader.load(bert_onnx[0], backend="onnx").backend == "onnx"
    result = runner.invoke(app, ["predict", "--checkpoint", str(bert_onnx[0]), "--data", DEV, "--out",
                                 str(tmp_path / "x.json"), "--backend", "torch"])
    assert result.exit_code == 1 and "is an ONNX export, without PyTorch weights" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = runner.invoke(app, ["predict", "--checkpoint", str(run), "--data", DEV, "--out", str(tmp_path / "x.json"),
                                 "--backend", "tensorrt"])
    assert result.exit_code == 2 and "tensorrt" in result.stderr


@pytest.mark.parametrize("left_out", ["config.json", "mrc_cli.yaml", "tokenizer.json", "model.int8.onnx"])
def test_an_export_missing_a_file_it_loads_from_names_it(bert_onnx, tmp_path, left_out):
    """A copy that left a file behind: one line naming the folder and the file, for predict, eval and serve alike
    (config.json gave transformers' traceback, mrc_cli.yaml "no config.yaml; is this an mrc-cli checkpoint?")."""
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in bert_onnx[0].iterdir():
        if file.name != left_out:
            (copy / file.name).symlink_to(file)
    result = CliRunner().invoke(app, ["predict", "--checkpoint", str(copy), "--data", DEV, "--out", str(tmp_path / "p.json")])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"{copy}: an ONNX export without {left_out}; export the checkpoint again" in result.stderr
    assert "--quantize int8" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(CheckpointError, match=f"without {left_out}"):
        Reader.load(copy)


def test_a_fit_on_an_exports_other_graph_is_refused(bert_onnx, tmp_path):
    """The int8 export's mrc_cli.yaml serves its int8 graph: a threshold or calibration fitted on its fp32 graph
    would be applied to int8's answers by every later predict and serve."""
    out, _ = bert_onnx
    kept = (out / "mrc_cli.yaml").read_text()
    for flag in ("--calibrate", "--store-threshold"):
        result = CliRunner().invoke(app, ["eval", "--checkpoint", str(out), "--data", DEV, "--out", str(tmp_path / "e"),
                                          "--backend", "onnx", flag])
        assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, result.output
        assert "--backend onnx answers with the fp32 graph" in result.stderr
        assert "fit them with --backend onnx-int8 (or auto)" in result.stderr
    assert (out / "mrc_cli.yaml").read_text() == kept and not (tmp_path / "e").exists()


def test_loading_an_export_notes_settings_its_checkpoint_stored_since(bert_run, bert_onnx, tmp_path, capsys):
    """A threshold stored on the checkpoint after the export does not reach it (mrc_cli.yaml is a copy): a note says
    so; none where the settings agree, where the export's own are newer, or where the checkpoint is gone."""
    import shutil

    from mrc_cli.checkpoint import resolve_checkpoint
    from mrc_cli.config import load_config, save_config

    checkpoint = shutil.copytree(resolve_checkpoint(bert_run), tmp_path / "checkpoint")
    export = shutil.copytree(bert_onnx[0], tmp_path / "export")
    settings = json.loads((export / "onnx.json").read_text())
    (export / "onnx.json").write_text(json.dumps({**settings, "exported_from": str(checkpoint)}))
    capsys.readouterr()
    Reader.load(export)
    assert "note:" not in capsys.readouterr().err  # the same settings
    cfg = load_config(checkpoint / "config.yaml")
    cfg.decode.null_score_diff_threshold += 1.5  # mrc eval --store-threshold on the checkpoint, after the export
    save_config(cfg, checkpoint / "config.yaml")
    Reader.load(export)
    err = capsys.readouterr().err
    assert f"note: {checkpoint}, which {export} was exported from, has stored other decoding settings since" in err
    assert f"export again (mrc export --checkpoint {checkpoint} --format onnx --out {export})" in err
    later = time.time() + 60  # a threshold stored in the export since: its own, for its int8 graph
    os.utime(export / "mrc_cli.yaml", (later, later))
    Reader.load(export)
    assert "note:" not in capsys.readouterr().err
    shutil.rmtree(checkpoint)
    Reader.load(export)
    assert "note:" not in capsys.readouterr().err


def test_an_export_names_the_segmenter_module_it_does_not_carry(bert_run, tmp_path):
    """A module:function segmenter is not copied into an export (loading it would run the folder's Python): the
    export says which module the machine that answers with it must have."""
    import shutil

    from mrc_cli.checkpoint import resolve_checkpoint
    from mrc_cli.config import load_config, save_config

    checkpoint = shutil.copytree(resolve_checkpoint(bert_run), tmp_path / "checkpoint")
    cfg = load_config(checkpoint / "config.yaml")
    cfg.data.word_segmenter = "my_words:split"
    save_config(cfg, checkpoint / "config.yaml")
    result = CliRunner().invoke(app, ["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    assert "data.word_segmenter my_words:split, whose module the export does not carry" in result.stderr
    assert "my_words must be importable" in result.stderr
    result = CliRunner().invoke(app, ["export", "--checkpoint", str(bert_run), "--out", str(tmp_path / "plain")])
    assert result.exit_code == 0 and "word_segmenter" not in result.stderr
