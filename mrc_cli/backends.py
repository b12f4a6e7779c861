"""Which forward pass answers (`--backend` of eval, predict, serve and `Reader.load`): PyTorch, or ONNX Runtime on an
ONNX export of the same weights, fp32 or int8.

auto is PyTorch: it gives the answers of the model that was trained, at the precision `train.precision: auto` picks
per machine (bf16 where the CPU or GPU runs it natively, close calls rechecked in fp32) in batches of
`train.eval_batch_size: auto` (16 features on a CPU). It never trades answers for speed, as `mrc eval` must score
the model that was trained. On an AVX2-only CPU (docs/benchmarks.md, "CPU inference backends"), against the Hugging
Face recipe's inference: PyTorch fp32 2.24x, `onnx` (the same answers) 2.08x, `onnx-int8` 3.03x with a sixth of the
answers changed and F1 within 1.

`onnx` and `onnx-int8` on a checkpoint export it once (both graphs, `mrc export --format onnx --quantize int8`) into
the folder `onnx/` inside the checkpoint and load it from there while the checkpoint's weights and the graph format
are unchanged; an ONNX export folder loads its own graphs.
"""

from __future__ import annotations

import errno
import json
import sys
import time
from pathlib import Path

from accelerate import PartialState

from mrc_cli.checkpoint import resolve_checkpoint, weights_fingerprint
from mrc_cli.errors import CheckpointError, ConfigError
from mrc_cli.files import folder_written_whole
from mrc_cli.loading import ONNX_SETTINGS, Loaded, is_onnx_export, load_trained, read_onnx_export
from mrc_cli.processes import first_then_others

BACKENDS = ("auto", "torch", "onnx", "onnx-int8")
GRAPHS = {"onnx": "fp32", "onnx-int8": "int8"}  # backend -> the graph of an ONNX export it loads
CACHED_EXPORT = "onnx"  # the folder inside a checkpoint where `onnx` and `onnx-int8` keep its export


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r}: choose {', '.join(BACKENDS)}")


def check_loadable(path: str | Path, backend: str) -> None:
    """Refuse a backend `path` cannot answer with: an unknown one, or torch for an ONNX export (no PyTorch weights)."""
    check_backend(backend)
    if backend == "torch" and is_onnx_export(path):
        raise CheckpointError(f"{path} is an ONNX export, without PyTorch weights: for --backend torch give the "
                              f"checkpoint it was exported from (exported_from in its {ONNX_SETTINGS})")


def load_with_backend(path: str | Path, backend: str = "auto") -> Loaded:
    """A trained model (checkpoint, run directory, export) ready to answer with `backend`."""
    check_loadable(path, backend)
    path = Path(path)
    if is_onnx_export(path):
        return read_onnx_export(path, GRAPHS.get(backend))
    if backend in ("auto", "torch"):
        return load_trained(path)
    return read_onnx_export(cached_export(path), GRAPHS[backend], settings_from=resolve_checkpoint(path))


def cached_export(path: str | Path) -> Path:
    """The ONNX export (fp32 and int8 graphs) of a checkpoint, run directory or `mrc export` folder, kept in its
    folder `onnx/`: written on first use and again when the weights it came from changed. Under `accelerate launch`
    the first process of each machine writes it while the others wait (its failure stops them all); independent processes (two `mrc predict`
    at once) each write their own copy and move it into place whole, so no reader meets a half-written one."""
    source = resolve_checkpoint(path)
    folder = source / CACHED_EXPORT

    def export() -> None:
        if not _is_current(folder, source):
            _export(source, folder)

    # ONNX Runtime runs on the CPU, in every process
    first_then_others(PartialState(cpu=True), export, f"exporting {source} to ONNX", local=True)
    return folder


def _is_current(folder: Path, source: Path) -> bool:
    """An export in `folder` with both graphs and the files they load with, made by this graph format from the
    weights `source` holds now."""
    from mrc_cli.onnx_backend import OPSET, missing_export_files

    try:
        settings = json.loads((folder / ONNX_SETTINGS).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return (set(GRAPHS.values()) <= set(settings.get("graphs", {})) and settings.get("opset") == OPSET
            and settings.get("source_weights") == weights_fingerprint(source)
            and not any(missing_export_files(folder, graph, own_settings=False) for graph in GRAPHS.values()))


def _export(source: Path, folder: Path) -> None:
    """Export into `folder`, written whole (mrc_cli.files.folder_written_whole): a stale export goes with it, and
    one another process wrote meanwhile stays."""
    from transformers import AutoConfig

    from mrc_cli.export import write_onnx_export
    from mrc_cli.onnx_backend import check_exportable

    check_exportable(AutoConfig.from_pretrained(source), str(source))  # before a word about exporting
    print(f"exporting {source} to ONNX once (fp32 and int8 graphs) into {folder} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        with folder_written_whole(folder, keep=lambda written: _is_current(written, source)) as mine:
            write_onnx_export(load_trained(source), mine, "int8")
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise CheckpointError(f"{source}: cannot write its ONNX export there ({err.strerror}); export it elsewhere "
                              f"with mrc export --checkpoint {source} --format onnx --quantize int8 --out DIR and "
                              "give DIR as the checkpoint") from None
    print(f"exported in {time.perf_counter() - started:.0f} s; later runs load it", file=sys.stderr, flush=True)
