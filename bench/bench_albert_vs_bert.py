""""ALBERT is smaller, but is it slower?" ALBERT-base and BERT-base (hidden 768, 12 layers, random weights built from
their configs: no download) with mrc-cli's span head, side by side: parameters, training-step time, tokens/s and
peak memory, in bf16 autocast and fp32. Each configuration runs in its own subprocess so peak memory does not mix.

    .venv/bin/python bench/bench_albert_vs_bert.py [--batch 8] [--seq 256] [--steps 5]

Writes outputs/bench/albert_vs_bert.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # run as a script: the repository root, for `bench.*` and this checkout's mrc_cli
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import OUT, command_line, git_revision, machine, peak_rss_mb, run_script  # noqa: E402


def measure(kind: str, precision: str, batch: int, seq: int, steps: int) -> dict:
    import torch
    from transformers import AlbertConfig, AutoModel, BertConfig

    from mrc_cli.config import ModelConfig
    from mrc_cli.precision import autocast
    from mrc_cli.model import SpanExtractionModel

    torch.manual_seed(0)
    config = AlbertConfig(hidden_size=768, num_attention_heads=12, intermediate_size=3072, embedding_size=128,
                          vocab_size=30000) if kind == "albert" else BertConfig()
    # mrc-cli's default for both (AlbertConfig has 0, BertConfig 0.1): on CPU attention dropout takes SDPA off its
    # fused kernel and would make the comparison one of dropout, not of the architectures
    config.attention_probs_dropout_prob = ModelConfig().attention_dropout
    model = SpanExtractionModel(AutoModel.from_config(config, attn_implementation="sdpa"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    ids = torch.randint(5, config.vocab_size, (batch, seq), device=device)
    mask = torch.ones_like(ids)
    labels = torch.randint(0, seq, (batch,), device=device)
    times = []
    for step in range(steps + 1):  # the first step warms up allocators and kernels
        started = time.perf_counter()
        with autocast(device, precision):
            loss = model(input_ids=ids, attention_mask=mask, start_positions=labels, end_positions=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - started)
    step_s = sorted(times)[len(times) // 2]
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else peak_rss_mb())
    return {"model": kind, "precision": precision, "parameters": sum(p.numel() for p in model.parameters()),
            "step_s": step_s, "tokens_per_s": batch * seq / step_s, "peak_memory_mib": peak, "device": str(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "PRECISION"), help=argparse.SUPPRESS)  # child process
    parser.add_argument("--out", default=str(OUT / "albert_vs_bert.json"))
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.batch, args.seq, args.steps)))
        return
    rows = []
    for precision in ("bf16", "no"):
        for kind in ("bert", "albert"):
            child = [sys.executable, __file__, "--one", kind, precision, "--batch", str(args.batch), "--seq",
                     str(args.seq), "--steps", str(args.steps)]
            rows.append(json.loads(subprocess.run(child, capture_output=True, text=True, check=True).stdout.splitlines()[-1]))
            print(json.dumps(rows[-1]))
    report = {"command": command_line(), "date": time.strftime("%Y-%m-%d"), "machine": machine(), **git_revision(),
              "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    run_script(main)
