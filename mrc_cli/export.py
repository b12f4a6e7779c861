"""`mrc export`: a standard Hugging Face folder that `AutoModelForQuestionAnswering` and `AutoTokenizer` load, or
(`--format onnx`) an ONNX graph of the span model that eval, predict, ensemble and the Reader load like a checkpoint.

Our model names the encoder `encoder.` and the head `qa_outputs.`; the Hugging Face QA classes name the encoder by
the model family (`bert.`, `albert.`, `roberta.`) and the head `qa_outputs.` too, so export is a rename. The run
config, decoding settings included, is saved beside it as mrc_cli.yaml, which `Reader.load` reads back.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import save_file

from mrc_cli.checkpoint import weights_fingerprint
from mrc_cli.config import SEGMENTERS, save_config
from mrc_cli.errors import CheckpointError, ConfigError
from mrc_cli.files import check_output_folder, folder_written_whole, write_text_atomically
from mrc_cli.loading import EXPORT_SETTINGS, ONNX_SETTINGS, Loaded, is_onnx_export, load_trained, read_onnx_export

PARITY_FILE = "parity.json"
QUANTIZATIONS = ("int8",)


def check_export_folder(out: str | Path) -> None:
    """An export goes into a new or empty folder, or replaces an earlier export whole (mrc_cli.files.
    folder_written_whole): written into a run directory or a checkpoint, it would take the place of the run's best
    checkpoint for eval and predict, or overwrite the checkpoint's weights (an export already there included); into
    a folder of other files, it would mix with them; replacing the folder mrc runs in would leave it nowhere."""
    check_output_folder(out)
    folder = Path(out)
    if Path.cwd().resolve().is_relative_to(folder.resolve()):
        raise ConfigError(f"--out {out}: the folder mrc runs in (or one above it); export into a folder of its own, "
                          "e.g. --out export")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    if (folder / "run_info.json").is_file() or (folder / "trainer_state.json").is_file() \
            or (folder / "checkpoints").is_dir() or (folder / "config.yaml").is_file():
        raise ConfigError(f"--out {folder}: a training run or checkpoint, which the export would take the place of; "
                          f"export into a folder of its own, e.g. --out {folder / 'export'}")
    if not (is_onnx_export(folder) or (folder / EXPORT_SETTINGS).is_file()):
        raise ConfigError(f"--out {folder}: a folder of other files (not an export); give a new or empty folder, or an "
                          "earlier export to replace")


def _check_not_inside(loaded: Loaded, out: str | Path) -> None:
    """The folder exported from stays: an export that replaced it (or a folder holding it) would delete its source."""
    if loaded.path.resolve().is_relative_to(Path(out).resolve()):
        raise ConfigError(f"--out {out}: holds {loaded.path}, which is exported from; export into a folder of its own")


def export_checkpoint(checkpoint: str, out: str) -> Path:
    """A Hugging Face folder: the weights under the names of the family's *ForQuestionAnswering class, its config,
    the tokenizer and mrc_cli.yaml."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES

    check_export_folder(out)
    loaded = _load_torch_model(checkpoint)
    _check_not_inside(loaded, out)
    if loaded.cfg.model.span_level == "word":
        raise ConfigError(f"{checkpoint} answers at model.span_level word: it pools sub-token states into words, "
                          "which AutoModelForQuestionAnswering does not, so its answers there would differ; export it "
                          "with --format onnx (the pooling is in the graph), which eval, predict and the Reader take")
    encoder = loaded.model.encoder
    architecture = MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES.get(encoder.config.model_type)
    if architecture is None:
        raise CheckpointError(f"transformers has no question-answering class for model type {encoder.config.model_type!r}")
    prefix = encoder.base_model_prefix
    state = {(f"{prefix}.{k[len('encoder.'):]}" if k.startswith("encoder.") else k): v.contiguous()
             for k, v in loaded.model.state_dict().items()}
    with folder_written_whole(out) as folder:
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        config = encoder.config
        config.architectures = [architecture]
        config.save_pretrained(folder)
        loaded.tokenizer.save_pretrained(folder)
        save_config(loaded.cfg, folder / EXPORT_SETTINGS)
    return Path(out)


@dataclass
class OnnxExport:
    folder: Path
    parity: dict | None  # what parity.json holds, when a parity file was given


def export_onnx(checkpoint: str, out: str, quantize: str | None = None, parity_data: str | None = None) -> OnnxExport:
    """An ONNX export folder (mrc_cli.onnx_backend), written whole: the fp32 graph, with `quantize` int8 also an int8
    one (which then loads), the encoder's config, the tokenizer, mrc_cli.yaml and onnx.json. With `parity_data`,
    parity.json: the graphs against the checkpoint on that file."""
    from mrc_cli import onnx_backend

    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ConfigError(f"--quantize {quantize!r}: choose {' or '.join(QUANTIZATIONS)}")
    onnx_backend.require_exporter()
    check_export_folder(out)
    loaded = _load_torch_model(checkpoint)
    _check_not_inside(loaded, out)
    if parity_data:  # a file that cannot be scored is said before the export's minute, not after it
        from mrc_cli.splits import load_scorable

        load_scorable(parity_data, loaded.cfg.data)
    onnx_backend.check_exportable(loaded.model.config, checkpoint)
    with folder_written_whole(out) as folder:
        parity = write_onnx_export(loaded, folder, quantize, parity_data, Path(out))
    return OnnxExport(Path(out), parity)


def write_onnx_export(loaded: Loaded, out_dir: Path, quantize: str | None, parity_data: str | None = None,
                      named: Path | None = None) -> dict | None:
    """Write the ONNX export of a loaded torch model into a new folder; with `parity_data`, also parity.json, which it
    returns (its advice names the export `named`, the folder's name once written whole)."""
    from mrc_cli import onnx_backend

    inputs = onnx_backend.export_graph(loaded.model, out_dir / onnx_backend.FP32_GRAPH)
    graphs = {"fp32": onnx_backend.FP32_GRAPH}
    if quantize == "int8":
        onnx_backend.quantize_graph(out_dir / onnx_backend.FP32_GRAPH, out_dir / onnx_backend.INT8_GRAPH)
        onnx_backend.check_graph(out_dir / onnx_backend.INT8_GRAPH)
        graphs["int8"] = onnx_backend.INT8_GRAPH
    loaded.model.config.save_pretrained(out_dir)  # the encoder's: pad token id, model type
    loaded.tokenizer.save_pretrained(out_dir)
    cfg = copy.deepcopy(loaded.cfg)
    cfg.train.tokens_per_batch, cfg.train.precision, cfg.train.cpu = 0, "no", True  # how the graph runs (loading.py)
    save_config(cfg, out_dir / EXPORT_SETTINGS)
    settings = {"graph": quantize or "fp32", "graphs": graphs, "inputs": inputs,
                "outputs": ["start_logits", "end_logits"], "span_level": cfg.model.span_level,
                "opset": onnx_backend.OPSET, "exported_from": str(loaded.path.resolve()),
                "source_weights": weights_fingerprint(loaded.path), "versions": _versions()}
    write_text_atomically(out_dir / ONNX_SETTINGS, json.dumps(settings, indent=2))
    if not parity_data:
        return None
    parity = onnx_parity(loaded, out_dir, parity_data, named or out_dir)
    write_text_atomically(out_dir / PARITY_FILE, json.dumps(parity, indent=2, ensure_ascii=False))
    return parity


def _load_torch_model(checkpoint: str) -> Loaded:
    if is_onnx_export(checkpoint):
        raise CheckpointError(f"{checkpoint} is an ONNX export; export from the checkpoint or run directory it came "
                              "from (onnx.json names it)")
    loaded = load_trained(checkpoint)
    _note_user_segmenter(loaded)
    return loaded


def _note_user_segmenter(loaded: Loaded) -> None:
    """An export does not carry a `module:function` word segmenter's module: loading one would put the folder on the
    import path, so that loading a model received from someone ran its Python, and a module is one per process (two
    exports with modules of one name would share the first's words). Say which module the target needs."""
    name = loaded.cfg.data.word_segmenter
    if name in SEGMENTERS:
        return
    module = name.partition(":")[0]
    print(f"note: {loaded.path} splits words with data.word_segmenter {name}, whose module the export does not "
          f"carry: where it is evaluated, predicted with or served, {module} must be importable (the working folder "
          "or PYTHONPATH), the same file it was trained with", file=sys.stderr, flush=True)


def _versions() -> dict:
    from importlib import metadata

    return {name: metadata.version(name) for name in ("torch", "transformers", "onnx", "onnxruntime", "onnxscript")}


def onnx_parity(loaded: Loaded, folder: Path, data: str, named: Path) -> dict:
    """The export's graphs against the torch model on a data file with answers: the same features and decoder for
    all, the torch model in fp32. Per backend: EM/F1, questions/s of logits and decoding (features made once, off the
    clock), the questions answered and, on data with unanswerable questions, HasAns/NoAns scores and the best
    threshold (`_null_figures`); for each graph, the answers identical to the torch model's (%, how many differ, the
    first 10 of their ids) and the largest |logit difference| at scored positions. `threshold_warning` where the int8
    graph's best threshold changes answers against the stored one, naming the export `named` in its command."""
    import numpy as np

    from mrc_cli.inference import evaluate_predictions, headline, place_for_inference, predict_answers
    from mrc_cli.metrics import scored_with_nulls
    from mrc_cli.onnx_backend import read_settings
    from mrc_cli.splits import featurize_file

    split = featurize_file(data, loaded.tokenizer, loaded.cfg.data, "eval")
    backends = {"torch_fp32": loaded}
    backends.update({f"onnx_{graph}": read_onnx_export(folder, graph) for graph in read_settings(folder)["graphs"]})
    report = {"data": str(data), "questions": len(split.golds), "features": len(split.features), "backends": {}}
    reference = None
    for name, backend in backends.items():
        cfg = backend.cfg
        cfg.train.precision = "no"
        cfg.decode.allow_null = scored_with_nulls(split.golds)  # as mrc eval scores the file
        model, state, _ = place_for_inference(backend.model, cfg)
        started = time.perf_counter()
        logits, predictions = predict_answers(model, split, cfg, state, "no")
        seconds = time.perf_counter() - started
        answers = {qid: p.text for qid, p in predictions.items()}
        metrics = evaluate_predictions(split.golds, predictions, cfg.decode, cfg.data.metric)
        entry = {**headline(metrics), **_null_figures(metrics, predictions, cfg.decode),
                 "seconds": seconds, "questions_per_s": len(answers) / seconds}
        if reference is None:
            reference = (answers, logits)
        else:
            ref_answers, ref_logits = reference
            differing = [qid for qid, text in ref_answers.items() if answers.get(qid) != text]
            scored = ref_logits.start > np.finfo(np.float32).min / 2  # padding and masked positions hold float32's min
            diff = max(float(np.abs(getattr(logits, side) - getattr(ref_logits, side))[scored].max(initial=0))
                       for side in ("start", "end"))
            entry.update(answers_identical_pct=100.0 * (1 - len(differing) / max(len(ref_answers), 1)),
                         max_abs_logit_diff=diff, differing_answers=len(differing), differing_ids=differing[:10],
                         speedup=entry["questions_per_s"] / report["backends"]["torch_fp32"]["questions_per_s"])
        report["backends"][name] = entry
    warning = _threshold_warning(report["backends"].get("onnx_int8"), named, data)
    return {**report, **({"threshold_warning": warning} if warning else {})}


NULL_FIGURES = ("HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1", "best_f1", "best_f1_thresh")  # SQuAD v2's


def _null_figures(metrics: dict, predictions: dict, decode) -> dict:
    """How a backend's answers meet the null threshold: the questions answered (not ""); where the data has
    unanswerable questions, the official script's HasAns/NoAns scores, the best F1 and its threshold, and the answers
    that threshold would change against the stored one (int8 shifts the null odds)."""
    figures = {"answered": sum(bool(p.text) for p in predictions.values())}
    figures.update({key: metrics[key] for key in NULL_FIGURES if key in metrics})
    if "best_f1_thresh" in metrics:
        low, high = sorted((decode.null_score_diff_threshold, metrics["best_f1_thresh"]))
        figures.update(null_threshold=decode.null_score_diff_threshold, answers_moved_at_best_threshold=sum(
            low < p.null_odds <= high for p in predictions.values()))  # answered iff null_odds <= threshold
    return figures


def _threshold_warning(int8: dict | None, folder: Path, data: str) -> str | None:
    """Where the int8 graph's best threshold changes answers against the stored one (fitted on the torch model's
    null odds), the command that stores int8's own in the export."""
    if not int8 or not int8.get("answers_moved_at_best_threshold"):
        return None
    return (f"onnx_int8 answers {int8['answered']} questions at the stored null threshold "
            f"{int8['null_threshold']:.3g}; at {int8['best_f1_thresh']:.3g} its F1 would be {int8['best_f1']:.2f} "
            f"({int8['answers_moved_at_best_threshold']} answers change): mrc eval --checkpoint {folder} --data {data} "
            "--store-threshold keeps that threshold with the int8 export")


def format_parity(report: dict) -> str:
    """parity.json in one line: answers identical, F1, questions answered, max |logit difference|, questions/s of
    every backend; then the threshold warning, where there is one."""
    backends = report["backends"]
    graphs = [name for name in backends if name != "torch_fp32"]
    identical = ", ".join(f"{name} {backends[name]['answers_identical_pct']:.1f} %" for name in graphs)
    f1 = " / ".join(f"{name} {entry['f1']:.2f}" for name, entry in backends.items())
    answered = " / ".join(f"{name} {entry['answered']}" for name, entry in backends.items())
    diff = ", ".join(f"{name} {backends[name]['max_abs_logit_diff']:.2g}" for name in graphs)
    speed = " / ".join(f"{name} {entry['questions_per_s']:.1f}" for name, entry in backends.items())
    warning = f". Warning: {report['threshold_warning']}" if "threshold_warning" in report else ""
    return (f"parity on {report['questions']} questions: answers identical to torch_fp32: {identical}; F1 {f1}; "
            f"answered {answered}; max |logit diff| {diff}; questions/s {speed}{warning}")
