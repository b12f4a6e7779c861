"""What `mrc analyze` leaves for people: analysis.json, analysis.png (F1 per slice with counts) and the summary table
printed to stdout, all from the dict `analysis.analyze` returns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from mrc_cli.files import write_text_atomically
from mrc_cli.plotting import cjk_text, save_figure

TITLES = {  # slice family -> its title in tables and charts
    "question_type": "question type",
    "answer_length": "gold answer length",
    "answer_position": "gold answer position in the context",
    "windows": "windows per question",
    "answerable": "answerable",
}


def write_analysis(result: dict, out_dir: str | Path) -> list[str]:
    """analysis.json and analysis.png (F1 per slice with counts) in out_dir; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / "analysis.json", out_dir / "analysis.png"
    files = [str(json_path), str(png_path)]
    write_text_atomically(json_path, json.dumps({**result, "files": files}, ensure_ascii=False, indent=1))
    plot_slices(result, png_path)
    return files


@cjk_text()  # the gold file's name and the predictions' paths may be Chinese
def plot_slices(result: dict, out: Path) -> Path:
    """One horizontal bar chart of F1 per slice family; two bars per slice when two files are compared."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["predictions"])
    families = list(result["slices"].items())
    rows = (len(families) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(13, 3.2 * rows), squeeze=False)
    height = 0.8 / len(names)
    for ax, (family, slice_rows) in zip(axes.flat, families):
        positions = range(len(slice_rows))
        for k, name in enumerate(names):
            f1 = [row[name]["f1"] for row in slice_rows]
            label = f"{name}: {_short(Path(result['predictions'][name]['predictions']))}"
            bars = ax.barh([p + (k - (len(names) - 1) / 2) * height for p in positions], f1, height, label=label)
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
        ax.set_yticks(list(positions), [f"{row['slice']} (n={row['count']})" for row in slice_rows], fontsize=8)
        ax.invert_yaxis()  # first slice on top, as in the table
        ax.set(xlim=(0, 110), xlabel="F1 (%)", title=TITLES[family])
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(families):]:
        ax.axis("off")
    overall = ", ".join(f"{name} F1 {result['overall'][name]['f1']:.2f}" for name in names)
    fig.suptitle(f"{Path(result['gold']).name} ({result['metric']}, {result['questions']} questions): {overall}")
    if len(names) > 1:
        fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="upper right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.95 if len(names) > 1 else 1))
    return save_figure(fig, out)


def format_summary(result: dict) -> str:
    """A table of count, EM and F1 per slice (per file, and B - A for two), then the notes that go with it."""
    names = list(result["predictions"])
    header = f"{'slice':<34}{'count':>7}" + "".join(f"{name + ' EM':>9}{name + ' F1':>9}" for name in names)
    header += f"{'B-A F1':>9}" if len(names) == 2 else ""
    lines = [f"{result['gold']}: {result['questions']} questions, {result['metric']}"]
    for name, files in result["predictions"].items():
        lines += [f"{name}: {files['predictions']}", f"   {_notes(files)}"]
    lines += ["", header, _table_line("all", result["overall"], names)]
    for family, rows in result["slices"].items():
        lines.append(TITLES[family])
        lines += [_table_line("  " + row["slice"], row, names) for row in rows]
    lines += [f"left out: {family}: {why}" for family, why in result["left_out"].items()]
    for name, table in result.get("confusion", {}).items():
        cells = "; ".join(f"gold {side}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
                          for side, counts in table.items())
        lines.append(f"{name} answer/no-answer: {cells}")
    if "comparison" in result:
        comparison = result["comparison"]
        better = comparison["f1_better"]
        lines.append(f"per question F1: A better {better['A']}, B better {better['B']}, ties {better['tie']}; "
                     f"A right and B wrong {comparison['A_right_B_wrong']['count']}, "
                     f"B right and A wrong {comparison['B_right_A_wrong']['count']}")
    if "files" in result:
        lines.append("wrote " + ", ".join(result["files"]))
    return "\n".join(lines)


def _notes(files: dict) -> str:
    notes = [f"{files['missing']} questions without prediction (scored 0), {files['unknown_ids']} unknown ids (ignored)"]
    if files["threshold"] is None:
        notes.append(f"null threshold {files['threshold_from']}")
    else:
        notes.append(f"null threshold {files['threshold']:g}, {files['threshold_from']}; "
                     f"{files['answers_changed']} answers differ from the predictions file")
    if files.get("withheld_without_nbest"):
        notes.append(f"{files['withheld_without_nbest']} withheld answers below the threshold stay empty: no nbest.json")
    return "; ".join(notes)


def _short(path: Path) -> str:
    """A predictions file by its last two folders when it has the default name (run-dir/seed-0), else its own."""
    return "/".join(path.parts[-3:-1] if path.name == "predictions.json" else path.parts[-2:])


def _table_line(label: str, row: dict, names: Sequence[str]) -> str:
    line = f"{label:<34}{row['count']:>7}" + "".join(f"{row[n]['exact']:>9.2f}{row[n]['f1']:>9.2f}" for n in names)
    return line + (f"{row['f1_diff']:>+9.2f}" if "f1_diff" in row else "")
