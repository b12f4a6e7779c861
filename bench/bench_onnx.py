"""CPU inference backends side by side on one checkpoint: PyTorch fp32, PyTorch bf16 (only where the CPU runs bf16
natively), ONNX Runtime fp32 and int8 (`mrc export --format onnx [--quantize int8]`), against the Hugging Face
recipe's inference:

    .venv/bin/python bench/bench_onnx.py                                  # the dev head, 3 rounds
    .venv/bin/python bench/bench_onnx.py --checkpoint outputs/run --questions 500 --rounds 2
    .venv/bin/python bench/bench_onnx.py --smoke                          # 24 questions, 1 round: checks the script

The model: --checkpoint (an mrc-cli checkpoint, run directory or export, or any Hugging Face QA folder), else the
offline MiniLM with a fresh QA head (seed 0; its answers are arbitrary, so its F1 says nothing, its agreement rates
little: logits of an untrained head are near ties). The recipe reads it as a Hugging Face folder; mrc-cli reads the
same weights through `mrc export` folders (384/128, eval batch --eval-batch-size: auto is `mrc eval`'s default, 16
features on a CPU; the recipe runs --recipe-eval-batch-size, 64 as in shared/MEASURED.md; SQuAD v2 rules where the
dev file has unanswerable questions), and the ONNX folders are `export_onnx` of that folder, with `--parity-data` the dev file.

Each side is `mrc eval` end to end (`evaluate_file`: load the model, features, logits, answers, metrics; features
not cached between runs) or the recipe's load + load_dataset + features + eval loop + post-processing + scores, each
in its own process (bench_suite's workers: bench/suite/inference.py), the clock started after the imports of torch,
transformers and datasets (onnxruntime's import, ~0.3 s, is on the ONNX sides' clock). The sides alternate, round
after round (--rounds), so a drift of a shared machine hits all of them; a side's questions/s is its median.

Writes outputs/bench/onnx.json (the runs, each side's answers identical to PyTorch fp32's and to the recipe's, EM/F1,
parity.json of the export with the largest logit differences, the machine with its CPU flags) and prints a table.
Estimated on 2 quiet CPU cores with MiniLM: --smoke 3-4 minutes (two graph exports included), the dev head's 1,407
questions about 12 minutes a round.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # run as a script: the repository root, for `bench.*` and this checkout's mrc_cli
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import (  # noqa: E402
    OUT,
    SQUAD_V2_DEV_HEAD,
    command_line,
    describe_machine,
    fresh_dir,
    git_revision,
    machine,
    require_shared,
    run_script,
    write_jsonl,
)
from bench.suite.inference import agreement, make_export  # noqa: E402
from bench.suite.sides import run_side  # noqa: E402

SIZES = {"smoke": {"questions": 24, "rounds": 1}, "full": {"questions": None, "rounds": 3}}
REFERENCE = "PyTorch fp32"  # the side every other's answers are compared with, besides the recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="24 questions, 1 round: checks that the script runs")
    parser.add_argument("--checkpoint", type=Path, help="the model (default: MiniLM with a fresh QA head)")
    parser.add_argument("--questions", type=int, help="the first N questions of the dev head (default: all)")
    parser.add_argument("--rounds", type=int, help="runs of every side, alternating (default 3; --smoke 1)")
    parser.add_argument("--eval-batch-size", type=batch_setting, default="auto",
                        help="features per inference batch of the mrc-cli sides (default auto)")
    parser.add_argument("--recipe-eval-batch-size", type=int, default=64, help="the recipe's (default 64)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    require_shared("bench_onnx", SQUAD_V2_DEV_HEAD)
    size = "smoke" if args.smoke else "full"
    questions = args.questions if args.questions is not None else SIZES[size]["questions"]
    rounds = args.rounds or SIZES[size]["rounds"]
    work = fresh_dir(args.out / "onnx")
    dev = write_jsonl(SQUAD_V2_DEV_HEAD, work / "dev.jsonl", questions)
    hf_folder, origin = hugging_face_folder(args.checkpoint, work)
    sides, export_report = prepare_sides(hf_folder, work, dev, args.eval_batch_size)
    runs = {name: [] for name in sides}
    for number in range(rounds):
        for name, side in sides.items():
            shutil.rmtree(work / "cache", ignore_errors=True)  # every side tokenizes, as the recipe does
            out = work / "eval" / name.replace(" ", "_")
            result = (run_side("infer_recipe", checkpoint=str(hf_folder), dev_file=str(dev["path"]),
                               cache_dir=str(work / "cache_recipe"), eval_batch_size=args.recipe_eval_batch_size,
                               pad_to_max_length=False)
                      if side is None else run_side("infer_ours_eval", export=str(side), dev_file=str(dev["path"]),
                                                    out=str(out)))
            result.pop("answers_masked_topk", None)
            runs[name].append(result)
            print(f"  round {number + 1}: {name} {dev['questions'] / result['seconds']:.2f} questions/s", flush=True)
    report = {"size": size, "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": command_line(),
              "machine": machine(), **git_revision(), "model": origin, "questions": dev["questions"],
              "unanswerable": dev["unanswerable"], "eval_batch_size": args.eval_batch_size,
              "recipe_eval_batch_size": args.recipe_eval_batch_size, "rounds": rounds,
              "bf16": bf16_note(), "export": export_report, "sides": summarize(runs, dev["questions"])}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "onnx.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    print(format_table(report))
    print(f"wrote {args.out / 'onnx.json'}")


def hugging_face_folder(checkpoint: Path | None, work: Path) -> tuple[Path, str]:
    """The model as a Hugging Face QA folder, which the recipe loads: --checkpoint as it is where it is one (an `mrc
    export` folder is), an mrc-cli checkpoint or run directory exported, else MiniLM with a fresh head."""
    from mrc_cli.export import export_checkpoint

    if checkpoint is None:
        folder = work / "fresh_head"
        run_side("fresh_checkpoint", save_dir=str(folder))
        return folder, "MiniLM with a fresh QA head (seed 0), untrained"
    if (checkpoint / "config.json").is_file() and (checkpoint / "model.safetensors").is_file() and \
            not (checkpoint / "config.yaml").is_file():
        return checkpoint.resolve(), f"{checkpoint} (--checkpoint)"
    return export_checkpoint(str(checkpoint), str(work / "hf")).resolve(), f"{checkpoint} (--checkpoint, exported)"


def batch_setting(text: str) -> int | str:
    """--eval-batch-size: auto or a positive number of features."""
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"auto or a number of features, at least 1 (got {text!r})")
    return int(text)


def prepare_sides(hf_folder: Path, work: Path, dev: dict, eval_batch_size: int | str) -> tuple[dict, dict]:
    """{side: the folder `mrc eval` loads, None for the recipe} and what the ONNX export reported (its time, the
    parity.json it wrote on the dev file)."""
    from mrc_cli.export import export_onnx

    cache = work / "cache"
    allow_null = dev["unanswerable"] > 0
    sides = {"recipe": None,
             REFERENCE: make_export(hf_folder, work / "torch_fp32", "no", eval_batch_size, cache, allow_null)}
    if bf16_note() is None:
        sides["PyTorch bf16"] = make_export(hf_folder, work / "torch_bf16", "bf16", eval_batch_size, cache, allow_null)
    print("  exporting the ONNX graphs ...", end="", flush=True)
    started = time.perf_counter()
    result = export_onnx(str(sides[REFERENCE]), str(work / "onnx_int8"), "int8", str(dev["path"]))
    seconds = time.perf_counter() - started
    print(f" {seconds:.0f}s", flush=True)
    sides["ONNX fp32"] = graph_folder(result.folder, "fp32", work / "onnx_fp32")
    sides["ONNX int8"] = result.folder
    return sides, {"seconds": seconds, "parity": result.parity}


def graph_folder(export: Path, graph: str, folder: Path) -> Path:
    """The export with onnx.json naming `graph`: what `mrc export --format onnx` without --quantize writes, without
    exporting the graph again (links to the files)."""
    from mrc_cli.loading import ONNX_SETTINGS

    fresh_dir(folder)
    for file in export.iterdir():
        if file.is_file() and file.name != ONNX_SETTINGS:
            (folder / file.name).symlink_to(file.resolve())
    settings = json.loads((export / ONNX_SETTINGS).read_text(encoding="utf-8"))
    (folder / ONNX_SETTINGS).write_text(json.dumps({**settings, "graph": graph}, indent=2), encoding="utf-8")
    return folder


def bf16_note() -> str | None:
    """None where this CPU runs bf16 natively (mrc-cli's `auto` picks it there), else why the bf16 side is left out:
    emulated bf16 is slower than fp32 and no one would choose it."""
    flags = machine()["cpu_flags"]
    if flags["avx512_bf16"] or flags["amx_bf16"] or flags["amx_tile"]:
        return None
    return "left out: this CPU has neither AVX512-BF16 nor AMX, so bf16 is emulated (slower than fp32)"


def summarize(runs: dict[str, list[dict]], questions: int) -> dict:
    """Per side: median questions/s, every run's seconds, EM/F1 and the answers identical to PyTorch fp32's and to the
    recipe's (of the first round; every round answers alike)."""
    answers = {name: rs[0]["answers"] for name, rs in runs.items()}
    summary = {}
    for name, rs in runs.items():
        speed = statistics.median(questions / r["seconds"] for r in rs)
        summary[name] = {"questions_per_s": speed, "seconds": [r["seconds"] for r in rs],
                         "exact": rs[0].get("exact"), "f1": rs[0].get("f1"),
                         "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                         "identical_to_torch_fp32_pct": agreement(answers[name], answers[REFERENCE]),
                         "identical_to_recipe_pct": agreement(answers[name], answers["recipe"])}
    recipe = summary["recipe"]["questions_per_s"]
    for entry in summary.values():
        entry["speed_over_recipe"] = entry["questions_per_s"] / recipe
    return summary


def format_table(report: dict) -> str:
    lines = [f"{report['questions']} questions of the SQuAD v2.0 dev head, {report['model']}; median of "
             f"{report['rounds']} round(s); {describe_machine(report['machine'])}"]
    if report["bf16"]:
        lines.append(f"PyTorch bf16: {report['bf16']}")
    lines += ["", "| side | questions/s | x recipe | F1 | EM | same answers as PyTorch fp32 | as the recipe "
                  "| peak RSS MiB |", "|---|---|---|---|---|---|---|---|"]
    for name, s in report["sides"].items():
        lines.append(f"| {name} | {s['questions_per_s']:.2f} | {s['speed_over_recipe']:.2f} | {s['f1']:.2f} | "
                     f"{s['exact']:.2f} | {s['identical_to_torch_fp32_pct']:.1f} % | "
                     f"{s['identical_to_recipe_pct']:.1f} % | {s['peak_rss_mb']:.0f} |")
    parity = report["export"]["parity"]["backends"]
    lines.append("")
    lines.append(f"export {report['export']['seconds']:.0f} s; largest |logit difference| from PyTorch fp32 on the "
                 "scored positions: " + ", ".join(f"{name} {entry['max_abs_logit_diff']:.2g}"
                                                  for name, entry in parity.items() if "max_abs_logit_diff" in entry))
    return "\n".join(lines)


if __name__ == "__main__":
    run_script(main)
