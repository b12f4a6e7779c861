"""Trained models back into memory: a checkpoint folder, a run directory (its best checkpoint) or an export folder
(`mrc export`, or any Hugging Face *ForQuestionAnswering folder; `mrc export --format onnx`: an ONNX Runtime session
behind the same call, mrc_cli.onnx_backend), each as a model with its tokenizer and run config.
`mrc eval`, `mrc predict`, `mrc export` and the Reader all start here."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from mrc_cli.checkpoint import (pretraining_checkpoint_advice, read_checkpoint_config, read_weights, resolve_checkpoint,
                                 run_dir_of)
from mrc_cli.config import RunConfig, load_config, run_command
from mrc_cli.errors import CheckpointError, MrcError
from mrc_cli.features import CACHE_ENV, unwritable
from mrc_cli.model import build_model, load_state_dict_file, load_weights
from mrc_cli.tokenizer import load_tokenizer

EXPORT_SETTINGS = "mrc_cli.yaml"  # beside an export's config.json: the run config, decoding settings included
ENSEMBLE_SETTINGS = "ensemble.yaml"  # a saved ensemble's folder: members, weights, combination, decoding settings
ONNX_SETTINGS = "onnx.json"  # an ONNX export's folder: its graphs, the one that loads (mrc_cli.onnx_backend)


@dataclass
class Loaded:
    model: object
    tokenizer: object
    cfg: RunConfig
    path: Path  # the checkpoint or export folder
    backend: str = "torch"  # what answers: torch, onnx (an fp32 graph) or onnx-int8 (mrc_cli.backends)


def load_trained(path: str | Path) -> Loaded:
    """A model ready for inference from an export folder, a checkpoint folder or a run directory."""
    path = _answering_model(Path(path))
    if is_onnx_export(path):
        return read_onnx_export(path)
    if _is_export(path):
        return read_export(path)
    checkpoint = resolve_checkpoint(path)
    cfg = _checkpoint_config(checkpoint)
    model = build_model(cfg.model, cfg.data.max_seq_length, pretrained=False, source=str(checkpoint))
    load_weights(model, read_weights(checkpoint), strict=True)
    return Loaded(model.eval(), _tokenizer_of(checkpoint, checkpoint / "tokenizer"), cfg, checkpoint)


def load_tokenizer_and_config(path: str | Path) -> tuple[object, RunConfig]:
    """The tokenizer and run config of what load_trained would load, without the weights: enough to featurize data
    as that model sees it (`mrc analyze` counts windows so)."""
    path = _answering_model(Path(path))
    if _is_export(path):
        return load_tokenizer(str(path)), _export_config(path)
    checkpoint = resolve_checkpoint(path)
    return load_tokenizer(str(checkpoint / "tokenizer")), _checkpoint_config(checkpoint)


def run_config(path: Path) -> RunConfig:
    """The run config of a checkpoint or export folder (mrc-cli's defaults for a foreign Hugging Face folder)."""
    return _export_config(path) if _is_export(path) else _checkpoint_config(path)


def is_ensemble(path: str | Path) -> bool:
    """A folder saved by `mrc ensemble --save`: mrc_cli.reader loads it (mrc_cli.ensemble.load_ensemble)."""
    return (Path(path) / ENSEMBLE_SETTINGS).is_file()


def is_onnx_export(path: str | Path) -> bool:
    """A folder written by `mrc export --format onnx`."""
    return (Path(path) / ONNX_SETTINGS).is_file()


def _answering_model(path: Path) -> Path:
    """`path`, refused where it holds no one answering model: an ensemble, or a model folder without a span head
    (mrc pretrain's output, any encoder) or an mrc pretrain checkpoint, whose weights would not fit a QA model."""
    if is_ensemble(path):
        raise CheckpointError(f"{path} is an ensemble ({ENSEMBLE_SETTINGS}): mrc eval, mrc predict and Reader.load take "
                              "it; here give one model, e.g. one of its members")
    architecture = _architecture(path)
    if architecture and not architecture.endswith("ForQuestionAnswering") and not (path / EXPORT_SETTINGS).is_file() \
            and not (path / "trainer_state.json").is_file() and (path / "model.safetensors").is_file():
        raise CheckpointError(f"{path} is a {architecture} model folder (mrc pretrain writes one), with no span head to "
                              f"answer with: fine-tune it first, mrc train --model {path}")
    if run_command(run_dir_of(path)) == "pretrain":  # a checkpoint, or a run not finished (no model folder yet)
        raise CheckpointError(f"{path}: a checkpoint of mrc pretrain (a masked-LM), with no span head to answer with or "
                              f"export; {pretraining_checkpoint_advice(path)}")
    return path


def _architecture(path: Path) -> str | None:
    """The first architecture a Hugging Face folder's config.json names, or None."""
    architectures = _hf_config(path).get("architectures")
    return str(architectures[0]) if isinstance(architectures, list) and architectures else None


def _hf_config(path: Path) -> dict:
    """A Hugging Face folder's config.json ({} where it has none)."""
    config = path / "config.json"
    if not config.is_file():
        return {}
    try:
        settings = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config}: not a readable config.json ({type(err).__name__}: {err}); copy the model "
                              "folder again") from None
    return settings if isinstance(settings, dict) else {}


def _tokenizer_of(model_folder: Path, tokenizer_folder: Path | None = None):
    """The tokenizer of a trained model (in `tokenizer_folder`, by default the model's folder), refused where it has
    ids the model has no embeddings for: another model's files, which would fail in the first forward pass."""
    tokenizer = load_tokenizer(str(tokenizer_folder or model_folder))
    rows = _hf_config(model_folder).get("vocab_size")
    if isinstance(rows, int) and len(tokenizer) > rows:
        raise CheckpointError(f"{tokenizer_folder or model_folder}: its tokenizer has {len(tokenizer):,} tokens, but "
                              f"the model has embeddings for {rows:,}: these tokenizer files are another model's; put "
                              "back those of the model it was trained from")
    return tokenizer


def _is_export(path: Path) -> bool:
    return (path / EXPORT_SETTINGS).is_file() or _is_hf_qa_folder(path)


def _is_hf_qa_folder(path: Path) -> bool:
    """A Hugging Face *ForQuestionAnswering folder (not made by mrc-cli): it loads with default settings."""
    return (path / "model.safetensors").is_file() and (_architecture(path) or "").endswith("ForQuestionAnswering")


def read_export(path: Path) -> Loaded:
    """An `mrc export` folder, or any Hugging Face QA folder (then with mrc-cli's default settings)."""
    cfg = _export_config(path)
    model = build_model(cfg.model, cfg.data.max_seq_length, pretrained=False, source=str(path))
    prefix = model.encoder.base_model_prefix + "."
    state = {(f"encoder.{k[len(prefix):]}" if k.startswith(prefix) else k): v
             for k, v in load_state_dict_file(path / "model.safetensors").items()}
    load_weights(model, state, strict=True)
    return Loaded(model.eval(), _tokenizer_of(path), cfg, path)


def read_onnx_export(path: Path, graph: str | None = None, settings_from: Path | None = None) -> Loaded:
    """An `mrc export --format onnx` folder: its graph (`graph` fp32 or int8; by default the one onnx.json names) in
    an ONNX Runtime session, run on the CPU in feature batches (packed rows are the torch model's) at the graph's own
    precision (fp32 or int8 weights: autocast would change nothing, a bf16 recheck would rerun the same logits).
    `settings_from`: the checkpoint (or export) whose run config to answer with and to store thresholds and
    calibration in, for a checkpoint's own cached export (mrc_cli.backends), so they stay the checkpoint's."""
    from mrc_cli.onnx_backend import check_export_files, load_onnx_model, read_settings

    path = Path(path)
    graph = graph or read_settings(path)["graph"]
    check_export_files(path, graph, own_settings=settings_from is None)
    home = path if settings_from is None else settings_from
    cfg = run_config(home)
    cfg.train.tokens_per_batch, cfg.train.precision, cfg.train.cpu = 0, "no", True
    if settings_from is None:
        _note_settings_stored_since(path, read_settings(path).get("exported_from"), cfg)
    return Loaded(load_onnx_model(path, cfg.model.span_level, graph), _tokenizer_of(path), cfg, home,
                  "onnx-int8" if graph == "int8" else "onnx")


def _note_settings_stored_since(export: Path, source: str | None, cfg: RunConfig) -> None:
    """An export's mrc_cli.yaml is a copy made when it was exported: say so where the checkpoint (or export) it came
    from, still there, has stored other decoding settings since (a null threshold, a calibration), which it does not
    see. Settings stored in the export later than that are its own, and left unremarked."""
    settings = next((Path(source) / name for name in ("config.yaml", EXPORT_SETTINGS)
                     if source and (Path(source) / name).is_file()), None)
    if settings is None or settings.stat().st_mtime_ns <= (export / EXPORT_SETTINGS).stat().st_mtime_ns:
        return
    try:
        stored = load_config(settings).decode
    except MrcError:  # not readable now: nothing to compare, and loading the export does not need it
        return
    if stored != cfg.decode:
        print(f"note: {source}, which {export} was exported from, has stored other decoding settings since (a null "
              f"threshold or calibration); the export answers with its own: to carry them over, export again (mrc "
              f"export --checkpoint {source} --format onnx --out {export})", file=sys.stderr, flush=True)


def _export_config(path: Path) -> RunConfig:
    """An export's run config, from mrc_cli.yaml (mrc-cli's defaults for a foreign Hugging Face folder)."""
    settings = path / EXPORT_SETTINGS
    cfg = load_config(settings if settings.is_file() else None)
    cfg.model.name_or_path = str(path)
    return _cache_of_this_machine(cfg, path)


def _checkpoint_config(checkpoint: Path) -> RunConfig:
    return _cache_of_this_machine(read_checkpoint_config(checkpoint), checkpoint)


def _cache_of_this_machine(cfg: RunConfig, source: Path) -> RunConfig:
    """The feature cache of the machine that answers: $MRC_CACHE_DIR where set; else the one the model was trained
    with where it can be written here; else the default. A model copied from another machine names that one's."""
    named = cfg.data.cache_dir
    if os.environ.get(CACHE_ENV):
        cfg.data.cache_dir = os.environ[CACHE_ENV]
        return cfg
    problem = unwritable(Path(named)) if named else None
    if problem:
        print(f"note: {source} was trained with data.cache_dir {named}, which {problem} here: the cache is the "
              f"default one ({CACHE_ENV} names another)", file=sys.stderr, flush=True)
        cfg.data.cache_dir = None
    return cfg
