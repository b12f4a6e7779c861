"""How far ONNX Runtime's int8 graph moves a model's answers from its fp32 ones, and whether rerunning int8's close
calls in fp32 (what `decode.recheck_margin` does for bf16) could bring them back:

    .venv/bin/python bench/bench_int8_agreement.py --checkpoint outputs/run --questions 400
    .venv/bin/python bench/bench_int8_agreement.py --checkpoint outputs/run --answerable-only   # v1.1 rules

Both sides answer the first --questions of the SQuAD v2 dev head through `mrc eval`'s path (`answer_file`): PyTorch
fp32 on the checkpoint, and the int8 graph of its export (`mrc export --format onnx --quantize int8`, made here). For
each question, int8's decision margin (`mrc_cli.inference._decision_margin`: how far its scores must move to change
its answer) orders the questions closest call first; rerunning a prefix of them in fp32 gives fp32's answer there, so
the curve says which share of the windows must be rerun to reach a share of fp32's answers. Also: how far int8 moves
the best span's score.

Writes outputs/bench/int8_agreement.json (--out) and prints its lines. No timing: run it beside other work.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

if __name__ == "__main__":  # run as a script: the repository root, for `bench.*` and this checkout's mrc_cli
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import (OUT, SQUAD_V2_DEV_HEAD, command_line, describe_machine, fresh_dir, git_revision,  # noqa: E402
                          machine, require_shared, run_script, write_jsonl)

TARGETS = (0.9, 0.95, 0.99, 0.995, 1.0)  # shares of fp32's answers to reach


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="an mrc-cli checkpoint or run directory")
    parser.add_argument("--questions", type=int, default=400, help="the first N questions of the dev head")
    parser.add_argument("--answerable-only", action="store_true", help="only questions with an answer (v1.1 rules)")
    parser.add_argument("--out", default=str(OUT / "int8_agreement.json"))
    args = parser.parse_args()
    require_shared("bench_int8_agreement", SQUAD_V2_DEV_HEAD)

    from mrc_cli.backends import load_with_backend
    from mrc_cli.export import export_onnx
    from mrc_cli.features import column
    from mrc_cli.reader import answer_file

    work = fresh_dir(Path(args.out).with_suffix(""))
    dev = write_jsonl(SQUAD_V2_DEV_HEAD, work / "dev.jsonl", args.questions, args.answerable_only)
    export = work / "export"
    export_onnx(args.checkpoint, str(export), "int8")
    sides = {}
    for name, path, backend in (("fp32", args.checkpoint, "torch"), ("int8", export, "onnx-int8")):
        loaded = load_with_backend(path, backend)
        metrics, predictions, split = answer_file(loaded, str(dev["path"]), "eval")
        sides[name] = {"f1": metrics["f1"], "predictions": predictions}
        print(f"{name}: F1 {metrics['f1']:.2f}", flush=True)
    report = {"command": command_line(), "machine": machine(), **git_revision(), "checkpoint": args.checkpoint,
              "questions": dev["questions"], "unanswerable": dev["unanswerable"],
              **agreement_curve(sides, Counter(column(split.features, "example_id")), loaded.cfg.decode)}
    Path(args.out).write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(describe_machine(report["machine"]))
    print("\n".join(report["lines"]))
    print(f"wrote {args.out}")


def agreement_curve(sides: dict, windows_of: Counter, cfg) -> dict:
    """Shares of fp32's answers reached by rerunning int8's closest calls in fp32 (`cfg`: int8's decode settings, its
    null rule as eval set it), and how far int8 moved the best span's score where both answer alike."""
    from mrc_cli.inference import _decision_margin

    fp32, int8 = sides["fp32"]["predictions"], sides["int8"]["predictions"]
    same = {q for q in fp32 if fp32[q].text == int8[q].text}
    margins = {qid: _decision_margin(prediction, cfg) for qid, prediction in int8.items()}
    windows, reached, curve, rerun = sum(windows_of.values()), len(same), [], 0
    for qid in sorted(margins, key=margins.__getitem__):
        rerun += windows_of[qid]
        reached += qid not in same
        curve.append({"margin": margins[qid], "windows_rerun": rerun / windows, "identical": reached / len(fp32)})
    needed = {f"{t:.3f}": next((p["windows_rerun"] for p in curve if p["identical"] >= t), 1.0) for t in TARGETS}
    moves = sorted(abs(fp32[q].nbest[0]["score"] - int8[q].nbest[0]["score"]) for q in same)
    median_move, top_move = (statistics.median(moves), moves[-1]) if moves else (0.0, 0.0)
    lines = [f"{len(fp32)} questions, {windows} windows: int8 F1 {sides['int8']['f1']:.2f} (fp32 "
             f"{sides['fp32']['f1']:.2f}), answers as fp32 {len(same) / len(fp32):.1%}",
             "windows rerun in fp32 (closest calls first) to reach a share of fp32's answers: "
             + ", ".join(f"{float(t):.1%}: {share:.1%}" for t, share in needed.items()),
             f"best span's score moved by int8 on the questions answered alike: median {median_move:.3f}, "
             f"max {top_move:.3f}"]
    return {"identical": len(same) / len(fp32), "f1": {name: side["f1"] for name, side in sides.items()},
            "windows_needed": needed, "score_move": {"median": median_move, "max": top_move}, "curve": curve,
            "lines": lines}


if __name__ == "__main__":
    run_script(main)
