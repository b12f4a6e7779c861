"""Dev F1 against training compute across `mrc compare` folders (issue 24): the baseline trained longer (1, 2, 4x the
compute of one epoch) as a curve, each trick as a point at its own compute, mean ± std over its seeds. One compare
folder holds one equal-compute baseline per seed (that of its costliest variant), so the curve is read from several:

    .venv/bin/python bench/plot_f1_vs_compute.py --compare outputs/bench/equal_compute_nodrop \
        --compare outputs/bench/equal_compute_4x --out outputs/bench/f1_vs_compute \
        [--ensemble "two 2-epoch runs=ENSEMBLE_OUT:RUN_DIR,RUN_DIR" ...]

--ensemble: an `mrc ensemble --out` folder (its metrics.json) and its members' run directories, placed at the sum of
the members' training FLOPs (one measurement: no spread over seeds).

Every run is placed at its recorded model FLOPs over the mean FLOPs of the plain baseline (`baseline`, one epoch) of
the same folders; runs of the baseline's settings at another length (`baseline@equal_compute`, or a variant that only
sets train.epochs) join the curve. A run met in two folders (a copied baseline) counts once. Writes OUT.png and
OUT.json (the points, each with its runs).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

BASELINE = "baseline"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", type=Path, action="append", required=True, help="a folder with compare.json")
    parser.add_argument("--ensemble", action="append", default=[], help="LABEL=ENSEMBLE_OUT:RUN_DIR,RUN_DIR,...")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/f1_vs_compute"))
    args = parser.parse_args()
    points, one_epoch = collect(args.compare)
    points += [ensemble_point(spec, one_epoch) for spec in args.ensemble]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"compare": [str(c) for c in args.compare],
                                                         "one_epoch_flops": one_epoch, "points": points}, indent=1))
    plot(points, args.out.with_suffix(".png"))
    for p in points:
        print(f"{p['name']:>32}  {p['compute']:.2f}x  F1 {p['f1_mean']:.2f} ± {p['f1_std']:.2f}  "
              + (f"members {p['members_f1']}" if p.get("ensemble") else f"seeds {p['seeds']}"))
    print(f"wrote {args.out.with_suffix('.png')}, {args.out.with_suffix('.json')}")


def collect(folders: list[Path]) -> tuple[list[dict], float]:
    """One point per (variant, compute): the baseline's runs grouped by their length, tricks by name; and the mean
    FLOPs of the plain baseline's epoch, the unit of compute."""
    runs, sets = {}, {}
    for folder in folders:
        result = json.loads((folder / "compare.json").read_text(encoding="utf-8"))
        sets.update({v["variant"]: v["sets"] for v in result["variants"]})
        for run in result["runs"]:
            runs[(run["variant"], run["seed"], run["compute"]["flops"])] = run
    one_epoch = statistics.mean(r["compute"]["flops"] for (name, _, _), r in runs.items() if name == BASELINE)
    groups: dict[tuple[str, float], list[dict]] = {}
    for (name, _, flops), run in runs.items():
        ratio = round(flops / one_epoch, 1)
        curve = name == BASELINE or name.startswith(BASELINE + "@") or _only_epochs(sets.get(name))
        groups.setdefault(("baseline" if curve else name, ratio), []).append(run)
    points = []
    for (name, ratio), members in sorted(groups.items(), key=lambda item: (item[0][0] != "baseline", item[0][1])):
        f1 = [r["f1"] for r in members]
        points.append({"name": name if name != "baseline" else f"baseline, {ratio:g}x", "curve": name == "baseline",
                       "compute": ratio, "f1_mean": statistics.mean(f1),
                       "f1_std": statistics.stdev(f1) if len(f1) > 1 else 0.0,
                       "seeds": sorted(r["seed"] for r in members),
                       "runs": [{"variant": r["variant"], "seed": r["seed"], "f1": r["f1"]} for r in members]})
    return points, one_epoch


def ensemble_point(spec: str, one_epoch: float) -> dict:
    """A point for `LABEL=ENSEMBLE_OUT:RUN_DIR,RUN_DIR,...`: the ensemble's F1 at its members' summed training FLOPs."""
    label, _, rest = spec.partition("=")
    out, _, members = rest.partition(":")
    missing = [f for f in [Path(out) / "metrics.json", *(Path(m) / "metrics.json" for m in members.split(","))]
               if not f.is_file()]
    if not (label and out and members) or missing:
        raise SystemExit(f"plot_f1_vs_compute: --ensemble {spec!r}: give LABEL=ENSEMBLE_OUT:RUN_DIR,RUN_DIR,... with "
                         f"metrics.json in each folder" + (f" ({missing[0]} is absent)" if missing else ""))
    runs = [json.loads((Path(m) / "metrics.json").read_text(encoding="utf-8")) for m in members.split(",")]
    f1 = json.loads((Path(out) / "metrics.json").read_text(encoding="utf-8"))["f1"]
    return {"name": label, "curve": False, "ensemble": True, "compute": round(sum(r["compute"]["flops"] for r in runs)
            / one_epoch, 1), "f1_mean": f1, "f1_std": 0.0, "seeds": [], "members": members.split(","),
            "members_f1": [r["f1"] for r in runs]}


def _only_epochs(sets: list[str] | None) -> bool:
    """A variant whose only change is the training length (train.epochs=4.0): a point of the baseline's curve."""
    return bool(sets) and len(sets) == 1 and sets[0].startswith("train.epochs=")


def plot(points: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    curve = [p for p in points if p["curve"]]
    ax.errorbar([p["compute"] for p in curve], [p["f1_mean"] for p in curve], yerr=[p["f1_std"] for p in curve],
                fmt="-o", color="black", capsize=4, label="baseline trained longer")
    for p in curve:
        ax.annotate(f"n={len(p['seeds'])}", (p["compute"], p["f1_mean"]), textcoords="offset points", xytext=(6, -12),
                    fontsize=8)
    for i, p in enumerate(q for q in points if not q["curve"]):
        ax.errorbar(p["compute"], p["f1_mean"], yerr=p["f1_std"], fmt="D" if p.get("ensemble") else "s",
                    color=f"C{i}", capsize=4, label=p["name"] + (" (one ensemble)" if p.get("ensemble") else
                                                                f" (n={len(p['seeds'])})"))
    ax.set(xlabel="training compute (x one epoch of the baseline, model FLOPs)", ylabel="dev F1 (%)",
           title="dev F1 against training compute (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: no point hidden
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
