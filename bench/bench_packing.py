"""Token-budget batches (train.tokens_per_batch) against feature batches on this machine, side by side:

    .venv/bin/python bench/bench_packing.py                              # all parts: train, launches, inference
    .venv/bin/python bench/bench_packing.py --part launches inference    # no training runs
    .venv/bin/python bench/bench_packing.py --part train --steps 30 --repeats 2 --budget 6144
    .venv/bin/python bench/bench_packing.py --smoke                      # a few examples, 3 steps: checks the script

The two sides: feature batches (tokens_per_batch 0, batch_size 16 grouped by length: the default on CPU) and packed
rows of --budget tokens (default: what `token_budget("auto", ...)` gives on CUDA, 16 x the mean feature length
rounded up to 64, so about as many features per optimizer step). MiniLM (offline), SQuAD v1.1 train head, 384/128,
seed 0, precision auto (bf16 where the CPU runs it natively, else fp32).

  train      `mrc_cli.training.train` for --steps steps, no dev file, each side in its own process, alternating sides
             --repeats times: features/s and real (non-pad) tokens/s from the last line of metrics.jsonl (median of
             the repeats), the real share of computed tokens, and the mean features per optimizer step of the batch
             plan (regenerated: a pure function of seed and epoch). A packed step holds a varying number of
             features, so features/s and tokens/s compare, steps/s does not.
  launches   host dispatches per optimizer step, counted with torch.profiler (CPU) over 3 steps of each side after 2
             warm-up steps (the plan's first batches, cut by `FeatureTensors.batch` and run by `training._train_step`):
             aten ops not inside another aten op (each one a launch on a GPU), those cutting the batch among them,
             and all aten ops. On the CPU packed attention is the gathered-SDPA path (mrc_cli.attention); on CUDA in
             bf16/fp16 varlen attention replaces its gathers, so a GPU's counts differ.
  inference  one model, the train part's first feature-batch run (else MiniLM with a fresh QA head, seed 0), on the
             SQuAD v2.0 dev head through `predict_answers` (logits, decoding, fp32 rechecks) with padded batches and
             with packed rows (cfg.train.tokens_per_batch = --budget, scaled to eval_batch_size as `mrc eval` does):
             questions/s after an untimed warm-up on the first 64 features, EM/F1 (v2 rules), the share of
             identical answers and the largest logit difference.

Estimated on 2 quiet CPU cores, fp32: about 25 minutes (~3 a training run, ~3 an inference pass); --smoke 3-4.
Writes outputs/bench/packing.json (--smoke too, marked "smoke": true; the runs in outputs/bench/packing/) and prints
tables; the CPU's flags are in the JSON and the header.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # run as a script: the repository root, for `bench.*` and this checkout's mrc_cli
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import (  # noqa: E402
    OFFLINE_ENV,
    OUT,
    ROOT,
    SQUAD_TRAIN_HEAD,
    SQUAD_V2_DEV_HEAD,
    command_line,
    describe_machine,
    fresh_dir,
    git_revision,
    machine,
    minilm,
    require_shared,
    run_script,
    write_jsonl,
)

BATCH_SIZE, SEED, MAX_SEQ_LENGTH, DOC_STRIDE = 16, 0, 384, 128
WARMUP_STEPS, PROFILED_STEPS = 2, 3
SMOKE = {"train_questions": 48, "steps": 3, "dev_questions": 40}


def data_config(cache_dir: Path):
    from mrc_cli.config import DataConfig

    return DataConfig(max_seq_length=MAX_SEQ_LENGTH, doc_stride=DOC_STRIDE, cache_dir=str(cache_dir))


def train_features(train_file: Path, cache_dir: Path):
    """(features, their lengths, pad id) of the train file, into the cache the train part's processes then load."""
    from mrc_cli.features import feature_lengths
    from mrc_cli.splits import featurize_file
    from mrc_cli.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(minilm())
    features = featurize_file(str(train_file), tokenizer, data_config(cache_dir), "train").features
    return features, feature_lengths(features), tokenizer.pad_token_id or 0


def planned_batches(lengths: list[int], budget: int, steps: int) -> list[list[int]]:
    """The features of the first `steps` optimizer steps of a one-process run, epoch after epoch, as train() plans
    them."""
    from mrc_cli.batching import epoch_plan

    batches, epoch = [], 0
    while len(batches) < steps:
        batches += [step[0] for step in epoch_plan(lengths, BATCH_SIZE, 1, SEED, epoch, True, tokens_per_batch=budget)]
        epoch += 1
    return batches[:steps]


TRAIN_SIDE = """
import json, sys
from pathlib import Path
from mrc_cli.config import RunConfig, apply_sets
from mrc_cli.tracking import read_metrics
from mrc_cli.training import train
train_file, cache_dir, output_dir, steps, model, sets = sys.argv[1:7]
cfg = RunConfig()
cfg.model.name_or_path = model
cfg.data.train_file, cfg.data.cache_dir, cfg.data.max_seq_length, cfg.data.doc_stride = train_file, cache_dir, 384, 128
t = cfg.train
t.output_dir, t.max_steps, t.batch_size, t.seed = output_dir, int(steps), 16, 0
t.group_by_length, t.log_steps, t.save_steps, t.eval_steps = True, 10**9, 0, 0  # one log line (the last), one checkpoint
apply_sets(cfg, json.loads(sets), "the side's settings")
train(cfg)
last = read_metrics(Path(output_dir) / "metrics.jsonl")[-1]
print(json.dumps({k: last[k] for k in ("features_per_s", "tokens_per_s", "real_token_share", "loss")}))
"""


def alternate_train_runs(train_file: Path, cache_dir: Path, work: Path, sides: dict[str, list[str]], steps: int,
                         repeats: int) -> dict:
    """`mrc_cli.training.train` for `steps` optimizer steps (0: as many as the side's settings give) per side, batch 16
    of 384/128 windows unless a side's `--set`s say otherwise, each run in its own process, the sides alternating
    `repeats` times (drifts of the machine hit every side): each run's figures from the last line of metrics.jsonl,
    and the sides' medians."""
    env = {**os.environ, **OFFLINE_ENV}
    runs = {side: [] for side in sides}
    for repeat in range(repeats):
        for side, sets in sides.items():
            out = work / f"{side}_{repeat}"
            done = subprocess.run([sys.executable, "-c", TRAIN_SIDE, str(train_file), str(cache_dir), str(out),
                                   str(steps), minilm(), json.dumps(sets)],
                                  cwd=ROOT, env=env, capture_output=True, text=True)  # cwd: this checkout's mrc_cli
            if done.returncode != 0:
                raise RuntimeError(f"{side} side failed:\n{done.stderr[-3000:]}")
            runs[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  train {side} #{repeat}: {runs[side][-1]['features_per_s']:.2f} features/s", flush=True)
    median = {side: {key: statistics.median(r[key] for r in rs) for key in ("features_per_s", "tokens_per_s")}
              for side, rs in runs.items()}
    return {"runs": runs, "median": median}


def part_train(train_file: Path, cache_dir: Path, work: Path, lengths: list[int], sides: dict, steps: int,
               repeats: int) -> dict:
    measured = alternate_train_runs(train_file, cache_dir, work,
                                    {side: [f"train.tokens_per_batch={budget}"] for side, budget in sides.items()},
                                    steps, repeats)
    median = measured["median"]
    per_step = {side: statistics.mean(len(b) for b in planned_batches(lengths, budget, steps))
                for side, budget in sides.items()}
    return {"steps": steps, **measured, "features_per_step": per_step,
            "packed_over_feature": {k: median["packed"][k] / median["feature"][k] for k in median["feature"]},
            "checkpoint": str(work / "feature_0")}


def part_launches(features, lengths: list[int], pad: int, sides: dict) -> dict:
    import torch
    from accelerate import Accelerator
    from torch.profiler import ProfilerActivity, profile, record_function

    from mrc_cli.batching import FeatureTensors
    from mrc_cli.config import ModelConfig, TrainConfig
    from mrc_cli.model import build_model
    from mrc_cli.precision import LossScaler, resolve_precision
    from mrc_cli.training import _train_step

    accelerator, train_cfg = Accelerator(cpu=True), TrainConfig()
    precision = resolve_precision(train_cfg.precision, accelerator.device)
    results = {}
    for side, budget in sides.items():
        store = FeatureTensors(features, accelerator.device, pad, budget)
        torch.manual_seed(SEED)
        model = build_model(ModelConfig(name_or_path=minilm()), MAX_SEQ_LENGTH).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, fused=True)  # as training._optimizer
        scaler = LossScaler(precision, accelerator.device)

        def step(index: list[int]) -> None:
            with record_function("cut batch"):
                batch = store.batch(index)
            _train_step(model, optimizer, scaler, [batch], accelerator, precision, train_cfg, None)

        batches = planned_batches(lengths, budget, WARMUP_STEPS + PROFILED_STEPS)
        for index in batches[:WARMUP_STEPS]:
            step(index)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for index in batches[WARMUP_STEPS:]:
                step(index)
        aten = [e for e in prof.events() if e.name.startswith("aten::")]
        top = [e for e in aten if not any(a.name.startswith("aten::") for a in ancestors(e))]
        cut = [e for e in top if any(a.name == "cut batch" for a in ancestors(e))]
        results[side] = {"top_level_aten_ops": len(top) / PROFILED_STEPS,
                         "of_which_cut_batch": len(cut) / PROFILED_STEPS, "all_aten_ops": len(aten) / PROFILED_STEPS}
    return {"precision": precision, "steps": PROFILED_STEPS, "per_step": results}


def ancestors(event):
    parent = event.cpu_parent
    while parent is not None:
        yield parent
        parent = parent.cpu_parent


def load_for_inference(checkpoint: str | None, cache_dir: Path):
    """(model, tokenizer, run config, where the model is from): the train part's checkpoint, else a fresh QA head."""
    import torch

    from mrc_cli.config import RunConfig
    from mrc_cli.loading import load_trained
    from mrc_cli.model import build_model
    from mrc_cli.tokenizer import load_tokenizer

    if checkpoint:
        loaded = load_trained(checkpoint)
        return loaded.model, loaded.tokenizer, loaded.cfg, f"{loaded.path} (the train part's feature-batch run)"
    cfg = RunConfig()
    cfg.model.name_or_path, cfg.data = minilm(), data_config(cache_dir)
    torch.manual_seed(SEED)
    return build_model(cfg.model, MAX_SEQ_LENGTH), load_tokenizer(minilm()), cfg, "MiniLM with a fresh QA head (seed 0)"


def part_inference(checkpoint: str | None, dev_file: Path, cache_dir: Path, budget: int) -> dict:
    import numpy as np

    from mrc_cli.batching import inference_batch_size
    from mrc_cli.inference import (NEG, eval_token_budget, evaluate_predictions, headline, place_for_inference,
                                   predict_answers, predict_logits)
    from mrc_cli.metrics import scored_with_nulls
    from mrc_cli.splits import featurize_file

    model, tokenizer, cfg, origin = load_for_inference(checkpoint, cache_dir)
    split = featurize_file(str(dev_file), tokenizer, cfg.data, "eval")
    cfg.decode.allow_null = scored_with_nulls(split.golds)  # as `mrc eval` scores the file (reader.answer_file)
    model, state, precision = place_for_inference(model, cfg)
    width, warmup = cfg.data.max_seq_length, split.features.select(range(min(64, len(split.features))))
    sides, out = {}, {}
    for side, setting in (("padded", 0), ("packed", budget)):
        cfg.train.tokens_per_batch = setting
        rows = eval_token_budget(cfg.train, width, state.device)
        predict_logits(model, warmup, state, cfg.train.eval_batch_size, precision, width, rows)
        started = time.perf_counter()
        logits, predictions = predict_answers(model, split, cfg, state, precision)
        seconds = time.perf_counter() - started
        out[side] = (logits, {qid: p.text for qid, p in predictions.items()})
        sides[side] = {"tokens_per_batch": rows, "seconds": seconds, "questions_per_s": len(split.golds) / seconds,
                       **headline(evaluate_predictions(split.golds, predictions, cfg.decode, cfg.data.metric))}
    (padded, padded_answers), (packed, packed_answers) = out["padded"], out["packed"]
    scored = padded.start > NEG / 2  # positions that hold a token (the rest are NEG on both sides if masks agree)
    same_masks = bool(np.array_equal(scored, packed.start > NEG / 2) and np.array_equal(scored, packed.end > NEG / 2))
    max_diff = max(float(np.abs(a[scored] - b[scored]).max()) for a, b in ((padded.start, packed.start),
                                                                           (padded.end, packed.end)))
    same = sum(packed_answers[qid] == text for qid, text in padded_answers.items())
    return {"checkpoint": origin, "questions": len(split.golds), "features": len(split.features),
            "precision": precision, "eval_batch_size": inference_batch_size(cfg.train.eval_batch_size, state.device),
            "sides": sides,
            "same_answers_pct": 100 * same / len(padded_answers), "same_scored_positions": same_masks,
            "max_abs_logit_diff": max_diff}


def print_table(title: str, columns: tuple[str, str], rows: list[tuple], ratio: bool = True) -> None:
    """Rows of (name, feature side, packed side) under a title; the packed / feature ratio where `ratio`."""
    print(f"\n{title}\n  {'':<30} | {columns[0]:>22} | {columns[1]:>22}" + (" | packed / feature" if ratio else ""))
    for name, feature, packed in rows:
        print(f"  {name:<30} | {feature:>22.2f} | {packed:>22.2f}" + (f" | {packed / feature:.3f}x" if ratio else ""))


def precision_name(precision: str) -> str:
    return "fp32" if precision == "no" else precision


def print_train(r: dict, budget: int) -> None:
    m, runs, per_step = r["median"], r["runs"], r["features_per_step"]
    share = {side: statistics.median(run["real_token_share"] for run in runs[side]) for side in runs}
    print_table(f"train, {r['steps']} steps, median of {len(runs['feature'])} runs per side",
                ("feature batches of 16", f"packed rows of {budget}"),
                [("features/s", m["feature"]["features_per_s"], m["packed"]["features_per_s"]),
                 ("real tokens/s", m["feature"]["tokens_per_s"], m["packed"]["tokens_per_s"]),
                 ("real share of computed tokens", share["feature"], share["packed"]),
                 ("features per optimizer step", per_step["feature"], per_step["packed"])])


def print_launches(r: dict) -> None:
    f, p = r["per_step"]["feature"], r["per_step"]["packed"]
    print_table(f"host ops per optimizer step, {precision_name(r['precision'])}, mean of {r['steps']} steps",
                ("feature batches", "packed rows"),
                [(name, f[key], p[key]) for key, name in (("top_level_aten_ops", "aten ops, top level"),
                                                          ("of_which_cut_batch", "  of which cutting the batch"),
                                                          ("all_aten_ops", "aten ops, all"))])


def print_inference(r: dict) -> None:
    s = r["sides"]
    print_table(f"inference, {r['questions']} questions ({r['features']} features), "
                f"{precision_name(r['precision'])}, {r['checkpoint']}",
                (f"padded, {r['eval_batch_size']} features", f"packed, {s['packed']['tokens_per_batch']} tokens"),
                [(name, s["padded"][key], s["packed"][key])
                 for key, name in (("questions_per_s", "questions/s"), ("exact", "EM"), ("f1", "F1"))], ratio=False)
    print(f"  packed / padded questions/s {s['packed']['questions_per_s'] / s['padded']['questions_per_s']:.3f}x; same "
          f"answers {r['same_answers_pct']:.1f}%; largest |logit difference| {r['max_abs_logit_diff']:.2e}; same "
          f"scored positions: {r['same_scored_positions']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parts = ("train", "launches", "inference")
    parser.add_argument("--part", nargs="+", choices=parts, default=list(parts))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--budget", type=int, help="packed row length (default: auto's on CUDA)")
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE}: checks that the script runs")
    args = parser.parse_args()
    require_shared("bench_packing", SQUAD_TRAIN_HEAD, SQUAD_V2_DEV_HEAD)
    import torch

    from mrc_cli.batching import token_budget

    work = fresh_dir(OUT / "packing")
    sizes = SMOKE if args.smoke else {"train_questions": None, "steps": args.steps, "dev_questions": None}
    train_file = write_jsonl(SQUAD_TRAIN_HEAD, work / "train.jsonl", sizes["train_questions"])["path"]
    dev_file = write_jsonl(SQUAD_V2_DEV_HEAD, work / "dev.jsonl", sizes["dev_questions"])["path"]
    cache_dir = work / "cache"
    features, lengths, pad = train_features(train_file, cache_dir)
    budget = args.budget or token_budget("auto", BATCH_SIZE, lengths, torch.device("cuda"))  # a descriptor only
    sides = {"feature": 0, "packed": budget}
    report = {"command": command_line(), "machine": machine(), **git_revision(), "smoke": args.smoke, "sizes": sizes,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "train_features": len(lengths),
              "mean_feature_length": statistics.mean(lengths), "budget": budget}
    print(f"{describe_machine(report['machine'])}; {len(lengths)} train features, "
          f"{report['mean_feature_length']:.0f} tokens on average; packed rows of {budget} tokens; {report['date']}")
    checkpoint = None
    if "train" in args.part:
        report["train"] = part_train(train_file, cache_dir, work, lengths, sides, sizes["steps"], args.repeats)
        checkpoint = report["train"]["checkpoint"]
        print_train(report["train"], budget)
    if "launches" in args.part:
        report["launches"] = part_launches(features, lengths, pad, sides)
        print_launches(report["launches"])
    if "inference" in args.part:
        report["inference"] = part_inference(checkpoint, dev_file, cache_dir, budget)
        print_inference(report["inference"])
    path = OUT / "packing.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    run_script(main)
