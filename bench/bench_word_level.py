"""Token-level against word-level span prediction (issue 6), same budget, on the offline MiniLM:

- SQuAD: train on squad_v1.1_train_head.json, score on the answerable questions of squad_v2.0_dev_head.json;
- CMRC 2018: cmrc2018_dev.json split by article (every third article to dev, the rest to train; CMRC's train split
  is not in ../shared), scored with the CMRC metric.

For each run: EM, F1, the share of predicted answers that begin or end inside a word (English: the tokenizer's
words; Chinese: the `chars` segmenter's words, and jieba's), and training speed. Also how many CMRC gold answers begin
or end inside a segmenter word.

    .venv/bin/python bench/bench_word_level.py [--tasks squad cmrc] [--levels token word] [--seeds 0 1] [--max-steps N]

Writes outputs/bench/word_level.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from itertools import product
from pathlib import Path

if __name__ == "__main__":  # run as a script: the repository root, for `bench.*` and this checkout's mrc_cli
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_train_quality import answerable_dev, minilm_config, run_and_measure  # noqa: E402
from bench.common import (  # noqa: E402
    CMRC_DEV,
    OUT,
    SQUAD_TRAIN_HEAD,
    SQUAD_V2_DEV_HEAD,
    command_line,
    git_revision,
    machine,
    minilm,
    require_shared,
    run_script,
)


def cmrc_split(out_dir: Path) -> tuple[Path, Path]:
    data = json.loads(CMRC_DEV.read_text(encoding="utf-8"))
    parts = {"train": [a for i, a in enumerate(data["data"]) if i % 3], "dev": [a for i, a in enumerate(data["data"]) if not i % 3]}
    paths = []
    for name, articles in parts.items():
        path = out_dir / f"cmrc2018_split_{name}.json"
        path.write_text(json.dumps({"version": "split-by-article", "data": articles}, ensure_ascii=False), encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


def word_bounds(context: str, segmenter: str, tokenizer) -> tuple[set[int], set[int]]:
    if segmenter == "jieba":
        import jieba

        jieba.setLogLevel(logging.WARNING)
        spans = [(s, e) for w, s, e in jieba.tokenize(context) if w.strip()]
    elif segmenter == "chars":
        from mrc_cli.features import _CHAR_WORDS

        spans = [(m.start(), m.end()) for m in _CHAR_WORDS.finditer(context)]
    else:
        spans = [span for _, span in tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(context)]
    return {s for s, _ in spans}, {e for _, e in spans}


def cut_share(spans: list[tuple[str, int, int]], segmenter: str, tokenizer) -> float:
    """Percent of (context, start, end) answers that begin or end inside a word."""
    cut = 0
    for context, start, end in spans:
        starts, ends = word_bounds(context, segmenter, tokenizer)
        cut += start not in starts or end not in ends
    return 100 * cut / max(1, len(spans))


def gold_spans(path: Path) -> list[tuple[str, int, int]]:
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    out = []
    for article in data:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                a = qa["answers"][0] if qa["answers"] else None
                if a and a["answer_start"] >= 0 and p["context"][a["answer_start"]:].startswith(a["text"].strip()):
                    out.append((p["context"], a["answer_start"], a["answer_start"] + len(a["text"].strip())))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["squad", "cmrc"])
    parser.add_argument("--levels", nargs="+", default=["token", "word"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--max-steps", type=int, default=0, help="0: one epoch")
    parser.add_argument("--out", default=str(OUT / "word_level.json"))
    args = parser.parse_args()
    needed = {"squad": [SQUAD_TRAIN_HEAD, SQUAD_V2_DEV_HEAD], "cmrc": [CMRC_DEV]}
    require_shared("bench_word_level", *(file for task in args.tasks for file in needed.get(task, [])))
    from mrc_cli.tokenizer import load_tokenizer

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(minilm())
    tasks = {}
    if "squad" in args.tasks:
        tasks["squad"] = (SQUAD_TRAIN_HEAD, answerable_dev(out.parent), "tokenizer", 30)
    if "cmrc" in args.tasks:
        train_file, dev_file = cmrc_split(out.parent)
        tasks["cmrc"] = (train_file, dev_file, "chars", 50)
    report = {"command": command_line(), "date": time.strftime("%Y-%m-%d"), "machine": machine(), **git_revision(),
              "runs": [], "gold": {}}
    if "cmrc" in tasks:
        gold = gold_spans(CMRC_DEV)
        report["gold"] = {"cmrc_answers": len(gold), "cut_by_jieba_pct": cut_share(gold, "jieba", tokenizer),
                          "cut_by_chars_pct": cut_share(gold, "chars", tokenizer)}
        print(json.dumps(report["gold"]))
    for (task, (train_file, dev_file, segmenter, max_answer)), seed, level in product(tasks.items(), args.seeds,
                                                                                     args.levels):
        cfg = minilm_config(train_file, dev_file, out.parent / f"word_level_{task}_{level}_{int(time.time())}",
                            seed=seed, max_steps=args.max_steps)
        cfg.model.span_level, cfg.data.word_segmenter, cfg.decode.max_answer_length = level, segmenter, max_answer
        figures, result = run_and_measure(cfg)
        contexts = dict(zip(*_contexts(dev_file)))
        nbest = json.loads((result.run_dir / "nbest.json").read_text(encoding="utf-8"))
        best = {q: next((c for c in cands if c["start"] >= 0), None) for q, cands in nbest.items()}
        answers = [(contexts[q], c["start"], c["end"]) for q, c in best.items() if c is not None]
        run = {"task": task, "level": level, "seed": seed, "segmenter": segmenter, **figures,
               "cut_word_pct": cut_share(answers, segmenter, tokenizer)}
        if task == "cmrc":
            run["cut_jieba_word_pct"] = cut_share(answers, "jieba", tokenizer)
        report["runs"].append(run)
        print(json.dumps(run))
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    print(f"wrote {out}")


def _contexts(path: Path):
    data = json.loads(Path(path).read_text(encoding="utf-8"))["data"]
    pairs = [(qa["id"], p["context"]) for a in data for p in a["paragraphs"] for qa in p["qas"]]
    return [q for q, _ in pairs], [c for _, c in pairs]


if __name__ == "__main__":
    run_script(main)
