"""The `mrc` command line: each command parses its flags, calls one library function and prints a summary."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from typer.core import TyperGroup

from mrc_cli.errors import ConfigError, Interrupted, MrcError
from mrc_cli.files import check_output_folder, to_json
from mrc_cli.serve_settings import ServeSettings

_debug = False


class _UserErrorsGroup(TyperGroup):
    """The one edge where our errors become `Error: ...` and exit 1 (`--debug` keeps the traceback), and a run a
    signal stopped says so and exits 128 + the signal's number. Under a launcher each is said once (`_tell`), and a
    process other than rank 0 that another's exit left in a broken collective says so in one line."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Interrupted as err:
            _tell(str(err))
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:  # before a run's own stop takes Ctrl-C (reading data, a teacher's pass), or a second one
            if _debug:
                raise
            _tell("interrupted by Ctrl-C; run the command again to start over (a training run resumes from its newest "
                  "checkpoint, if it saved one)")
            raise typer.Exit(128 + signal.SIGINT) from None
        except MrcError as err:
            if _debug:
                raise
            _tell(f"Error: {err}")
            raise typer.Exit(1) from None
        except OSError as err:  # the system refused a read or write (a full disk, a lost mount): what, not where
            if _debug:
                raise
            what = f"{err.strerror}: {err.filename}" if err.strerror and err.filename else str(err)
            # by every process: a disk or a mount may fail on one node only
            typer.echo(f"Error: {what} (mrc --debug shows where it happened)", err=True)
            raise typer.Exit(1) from None
        except RuntimeError as err:  # torch.distributed's errors are RuntimeErrors
            rank = _launched_rank()
            if _debug or rank == 0 or not _peer_gone(err):
                raise
            typer.echo(f"rank {rank}: stopped because another process failed; its error is above", err=True)
            raise typer.Exit(1) from None


# what gloo and NCCL say when the process at the other end went away (it failed, or was killed)
PEER_GONE = ("closed by peer", "reset by peer", "Broken pipe", "communicator was aborted", "remote process exit")


def _peer_gone(err: RuntimeError) -> bool:
    """Whether a collective failed because another process went away: its error, said by that process (by rank 0
    where it is a user error every process meets), is the one to read, not this process's traceback of the wait."""
    return any(words in str(err) for words in PEER_GONE)


def _tell(message: str) -> None:
    """`message` on stderr from rank 0 only: under a launcher every process reads the same config, data and
    checkpoints and stops alike (a signal reaches them all, a NaN loss is all-reduced), so each would say the same;
    the others exit with the same status in silence."""
    if _launched_rank() == 0:
        typer.echo(message, err=True)


def _launched_rank() -> int:
    """This process's rank under torchrun or accelerate launch (0 alone), read without joining a process group."""
    return int(os.environ.get("RANK", "0"))


app = typer.Typer(
    cls=_UserErrorsGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Fine-tune ALBERT/BERT encoders for extractive reading comprehension (SQuAD, CMRC 2018).",
)

Use = Literal["train", "eval", "predict"]
DataArg = Annotated[str, typer.Argument(help="A .json (SQuAD-style), .jsonl file, saved dataset folder or Hub name[:split].")]
FormatOpt = Annotated[Literal["auto", "squad", "jsonl", "hf"], typer.Option("--format", help="Input format (detected by default).")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="Run config (YAML).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override any config key: section.key=value.")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", help="Encoder: Hub id or local folder.")]
InitFromOpt = Annotated[Optional[str], typer.Option("--init-from", help="Start from these weights (strict=False; key differences are listed).")]
TrainFileOpt = Annotated[Optional[str], typer.Option("--train", help="Training data.")]
DevFileOpt = Annotated[Optional[str], typer.Option("--dev", help="Dev data, evaluated every --eval-steps and at the end.")]


# commands with no work to share between processes: under a launcher each process would run them in full, print
# everything again and write the same files at once (serve: bind the same port)
ONE_PROCESS = ("validate", "preprocess", "cache", "runs", "score", "export", "serve", "analyze")


@app.callback()
def _root(ctx: typer.Context,
          debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False) -> None:
    global _debug
    _debug = debug
    if ctx.invoked_subcommand in ONE_PROCESS:
        _refuse_launcher(ctx.invoked_subcommand)


def _refuse_launcher(command: str) -> None:
    """WORLD_SIZE (torchrun and accelerate launch set it) is read rather than accelerate's PartialState, which would
    join a process group only to refuse."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        raise ConfigError(f"mrc {command} runs in one process, and under a launcher each of the {world} would run it "
                          "in full (its output again, its files written at once): start it without accelerate launch "
                          "/ torchrun")


@app.command()
def validate(
    data: DataArg,
    use: Annotated[Literal["train", "eval", "predict", "score"], typer.Option("--for", help="What the file is for: train needs answer positions, eval answer texts, predict neither; score: gold answers for mrc score.")] = "train",
    fmt: FormatOpt = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    list_all: Annotated[bool, typer.Option("--all", help="List every repair, not the first 20.")] = False,
    fix: Annotated[Optional[Path], typer.Option("--fix", help="Write the questions fit for --for, repaired (answers relocated; for train, those without a locatable answer left out), as SQuAD-style JSON to this file.")] = None,
) -> None:
    """Check a data file and report counts, repairs and errors. Exit 0 when it is usable for --for, 1 when not."""
    from mrc_cli.validate import validate_file

    report = validate_file(data, use, fmt, list_all, fix)
    if as_json:
        typer.echo(to_json(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        typer.echo(report.summary())
        more = [f"... and {report.repairs_not_listed} more (all counted above)"] if report.repairs_not_listed else []
        for title, lines in (("repairs", report.repairs + more), ("warnings", report.warnings), ("errors", report.errors)):
            if lines:
                typer.echo(f"{title}:\n  " + "\n  ".join(lines))
        typer.echo(f"usable for {use}: {'yes' if report.usable else 'no'}")
    if fix is not None and not as_json:
        typer.echo(f"wrote {fix}" if report.usable else f"{fix} not written: the file is not usable for {use}")
    raise typer.Exit(0 if report.usable else 1)


@app.command()
def preprocess(
    data: Annotated[str, typer.Option("--data", help="Data file, dataset folder or Hub name[:split].")],
    model: Annotated[Optional[str], typer.Option("--model", help="Model folder or Hub id whose tokenizer to use.")] = None,
    use: Annotated[Use, typer.Option("--for", help="train/eval features carry labels, eval/predict features character offsets.")] = "train",
    config: ConfigOpt = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="auto | squad | jsonl | hf")] = None,
    max_seq_length: Annotated[Optional[int], typer.Option(help="Tokens per window.")] = None,
    doc_stride: Annotated[Optional[int], typer.Option(help="Tokens shared by neighbouring windows.")] = None,
    max_query_length: Annotated[Optional[int], typer.Option(help="Questions are cut to this many tokens.")] = None,
    word_segmenter: Annotated[Optional[str], typer.Option(help="tokenizer | chars | jieba | module:function")] = None,
    num_proc: Annotated[Optional[int], typer.Option(help="Tokenizer processes.")] = None,
    sets: SetOpt = None,
) -> None:
    """Tokenize a data file into windowed features with offsets, word ids and labels, into the feature cache that
    train, eval and predict with the same tokenizer and data settings then load."""
    from mrc_cli.config import load_config
    from mrc_cli.features import cache_root
    from mrc_cli.splits import preprocess_file

    cfg = load_config(config, _flags(
        model__name_or_path=model, data__format=fmt, data__max_seq_length=max_seq_length, data__doc_stride=doc_stride,
        data__max_query_length=max_query_length, data__word_segmenter=word_segmenter, data__num_proc=num_proc,
    ), sets or [], command="preprocess")
    split = preprocess_file(data, cfg.model, cfg.data, use)
    typer.echo(split.describe())
    typer.echo(f"cached in {cache_root(cfg.data)}: train, eval and predict with the same settings load them")


@app.command()
def cache(
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="The cache folder (default: $MRC_CACHE_DIR, else ~/.cache/mrc-cli).")] = None,
    unused_days: Annotated[Optional[float], typer.Option("--unused-days", min=0, help="Remove the entries no run has loaded for this many days.")] = None,
    max_gb: Annotated[Optional[float], typer.Option("--max-gb", min=0, help="Then remove the least recently used entries until the cache holds at most this many GB.")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove every entry.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be removed; remove nothing.")] = False,
) -> None:
    """Show what the cache of validated examples and features holds, or prune it: entries are kept per data file
    content and settings and never removed by the runs themselves. A run that needs a removed entry tokenizes again."""
    from mrc_cli.cache import describe, entries, prune
    from mrc_cli.features import cache_location, unwritable

    root = cache_location(str(cache_dir) if cache_dir else None)
    if unused_days is None and max_gb is None and not clear:  # a cache of another user's may be listed
        typer.echo(f"{root}: {describe(entries(root))}")
        typer.echo("prune with --unused-days N, --max-gb G or --clear")
        return
    problem = unwritable(root) if root.exists() else None
    if problem:
        raise ConfigError(f"the cache folder {root} {problem}: nothing can be removed from it")
    removed, kept = prune(root, unused_days, max_gb, clear, dry_run)
    typer.echo(f"{root}: {'would remove' if dry_run else 'removed'} {describe(removed)}; {'would keep' if dry_run else 'kept'} "
               f"{describe(kept)}")


@app.command()
def runs(
    folders: Annotated[Optional[list[Path]], typer.Argument(help="Folders holding run directories (default: outputs).")] = None,
    sort: Annotated[str, typer.Option(help="f1 | exact | dev_loss (lowest first) | step | name")] = "f1",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON list, with every run's settings.")] = False,
) -> None:
    """The training runs in or under FOLDERS side by side: task, state (finished, running, stopped, failed), steps,
    the best checkpoint's step and dev EM/F1, minutes, and the settings in which the runs differ."""
    from dataclasses import asdict

    from mrc_cli.run_table import format_runs, run_rows

    rows = run_rows(folders or [Path("outputs")], sort)
    typer.echo(to_json([asdict(row) for row in rows], indent=1) if as_json else format_runs(rows))


@app.command()
def score(
    gold: Annotated[str, typer.Argument(help="Gold data file (SQuAD-style JSON, JSONL, ...).")],
    predictions: Annotated[Path, typer.Argument(help="Predictions JSON {question id: answer text}, or the folder `mrc eval --out` wrote (its null_odds.json too).")],
    metric: Annotated[Literal["auto", "squad", "squad_v2", "cmrc2018"], typer.Option(help="Official metric; auto picks by the gold data.")] = "auto",
    null_odds: Annotated[Optional[Path], typer.Option("--null-odds", help="JSON {question id: null odds} for SQuAD v2 best thresholds.")] = None,
    fmt: FormatOpt = "auto",
) -> None:
    """Score predictions with the official SQuAD v1.1 / v2.0 or CMRC 2018 rules; prints one JSON object."""
    from mrc_cli.scoring import score_files

    result, warnings = score_files(gold, str(predictions), metric, str(null_odds) if null_odds else None, fmt)
    for warning in warnings:
        typer.echo(f"Warning: {warning}", err=True)
    typer.echo(to_json(result, ensure_ascii=False))


@app.command()
def train(
    config: ConfigOpt = None,
    model: ModelOpt = None,
    train_file: TrainFileOpt = None,
    dev_file: DevFileOpt = None,
    output_dir: Annotated[Optional[str], typer.Option(help="Run directory.")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Epochs (ignored when --max-steps is set).")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Optimizer steps.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size per process.")] = None,
    grad_accum: Annotated[Optional[int], typer.Option(help="Micro-batches per optimizer step.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate.")] = None,
    warmup: Annotated[Optional[float], typer.Option(help="Warm-up fraction of the steps.")] = None,
    max_seq_length: Annotated[Optional[int], typer.Option(help="Tokens per window.")] = None,
    doc_stride: Annotated[Optional[int], typer.Option(help="Tokens shared by neighbouring windows.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    eval_steps: Annotated[Optional[int], typer.Option(help="Evaluate every N steps (0: at the end).")] = None,
    save_steps: Annotated[Optional[int], typer.Option(help="Checkpoint every N steps.")] = None,
    resume: Annotated[Optional[str], typer.Option(help="auto (newest checkpoint in the run directory) or a checkpoint folder.")] = None,
    init_from: InitFromOpt = None,
    sets: SetOpt = None,
    dry_run: Annotated[bool, typer.Option(help="Print the resolved config and exit.")] = False,
) -> None:
    """Fine-tune a span-extraction model; flags override the YAML config, --set reaches any key."""
    from mrc_cli.config import check_train_config, load_run_config

    cfg = load_run_config(config, _flags(
        model__name_or_path=model, data__train_file=train_file, data__dev_file=dev_file, train__output_dir=output_dir,
        train__epochs=epochs, train__max_steps=max_steps, train__batch_size=batch_size, train__grad_accum=grad_accum,
        train__lr=lr, train__warmup=warmup, data__max_seq_length=max_seq_length, data__doc_stride=doc_stride,
        train__seed=seed, train__eval_steps=eval_steps, train__save_steps=save_steps, train__resume=resume,
        train__init_from=init_from,
    ), sets or [], "train")
    check_train_config(cfg.train)
    if dry_run:
        _dry_run(cfg, batches=True)
        return
    from mrc_cli.training import train as run_training

    _echo_result(run_training(cfg))


@app.command()
def distil(
    teacher: Annotated[Optional[str], typer.Option("--teacher", help="A trained model (checkpoint, run directory, export) or a saved ensemble; needed unless --resume.")] = None,
    student: Annotated[Optional[str], typer.Option("--student", help="The student's encoder: Hub id or local folder; any tokenizer; needed unless --resume.")] = None,
    config: ConfigOpt = None,
    train_file: TrainFileOpt = None,
    dev_file: DevFileOpt = None,
    output_dir: Annotated[Optional[str], typer.Option(help="Run directory.")] = None,
    resume: Annotated[Optional[str], typer.Option(help="auto (newest checkpoint in the run directory) or a checkpoint folder.")] = None,
    sets: SetOpt = None,
    dry_run: Annotated[bool, typer.Option(help="Print the resolved config and exit.")] = False,
) -> None:
    """Train one model (the student) on the gold answers and on the teacher's start/end distributions over the
    training data, mapped onto the student's tokens through characters: --set distil.alpha=0.5 weighs the teacher
    term, distil.temperature=2 softens both. The run directory is that of `mrc train`."""
    from mrc_cli.config import check_train_config, load_run_config

    if resume is None and (teacher is None or student is None):  # a resumed run has both in its config.yaml
        raise typer.BadParameter("a new run needs --teacher and --student (a resumed one keeps its own)",
                                 param_hint="--teacher" if teacher is None else "--student")
    cfg = load_run_config(config, _flags(
        distil__teacher=teacher, model__name_or_path=student, data__train_file=train_file, data__dev_file=dev_file,
        train__output_dir=output_dir, train__resume=resume,
    ), sets or [], "distil")
    check_train_config(cfg.train)
    from mrc_cli.distillation import check_teacher, distil as run_distil

    check_teacher(cfg)
    if dry_run:
        _dry_run(cfg, batches=True)
        return

    _echo_result(run_distil(cfg))


def _says_results(results: dict) -> bool:
    """Whether this process prints a command's results: under torchrun every process has them, the main one says
    them, with how many processes shared the work."""
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes > 1:
        results["processes"] = state.num_processes
    return state.is_main_process


def _echo_result(result) -> None:
    """A training run's directory, steps and final metrics as one JSON line, once (the main process)."""
    from accelerate import PartialState

    if PartialState().is_main_process:
        # the best checkpoint (what eval and predict of the run directory load) and its score, then the last
        # evaluation's figures, which its own "step" dates
        best = {"best_checkpoint": str(result.best_checkpoint), **result.best} if result.best_checkpoint else {}
        typer.echo(to_json({"run_dir": str(result.run_dir), "steps": result.steps, **best, **result.metrics},
                              default=float))


@app.command()
def pretrain(
    model: ModelOpt = None,
    data: Annotated[Optional[list[str]], typer.Option("--data", help="SQuAD-style file: its contexts, each distinct one once; repeat for more.")] = None,
    text: Annotated[Optional[list[str]], typer.Option("--text", help="Plain text, documents separated by blank lines; repeat for more.")] = None,
    eval_data: Annotated[Optional[list[str]], typer.Option("--eval-data", help="File you will evaluate on: its contexts are left out (default: data.dev_file); repeat for more.")] = None,
    include_eval_contexts: Annotated[bool, typer.Option("--include-eval-contexts", help="Keep the eval files' contexts (fair where the test contexts are given unlabeled).")] = False,
    out: Annotated[Optional[str], typer.Option("--out", help="Run directory; at the end also the pre-trained model folder.")] = None,
    config: ConfigOpt = None,
    epochs: Annotated[Optional[float], typer.Option(help="Epochs (ignored when --max-steps is set).")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Optimizer steps.")] = None,
    resume: Annotated[Optional[str], typer.Option(help="auto (newest checkpoint in --out) or a checkpoint folder.")] = None,
    init_from: InitFromOpt = None,
    sets: SetOpt = None,
    dry_run: Annotated[bool, typer.Option(help="Print the resolved config and exit.")] = False,
) -> None:
    """Masked-language-model training (whole-word masking) on the contexts of SQuAD-style files and on plain text;
    --out becomes a model folder that `mrc train --model` fine-tunes. --init-from RUN/checkpoints/step-N goes on from a
    pre-training checkpoint (encoder and MLM head) on any files. --set pretrain.masking=token masks tokens."""
    from mrc_cli.config import check_pretrain_config, load_run_config

    cfg = load_run_config(config, _flags(
        model__name_or_path=model, pretrain__data_files=data, pretrain__text_files=text, pretrain__eval_files=eval_data,
        pretrain__include_eval_contexts=include_eval_contexts or None, train__output_dir=out, train__epochs=epochs,
        train__max_steps=max_steps, train__resume=resume, train__init_from=init_from,
    ), sets or [], "pretrain")
    check_pretrain_config(cfg)
    if dry_run:
        _dry_run(cfg, evaluates=False, run_dir_flag="--out", packs=False)
        return
    from accelerate import PartialState

    from mrc_cli.pretraining import pretrain as run_pretraining

    result = run_pretraining(cfg)
    if PartialState().is_main_process:
        typer.echo(to_json({"model_dir": str(result.run_dir), "steps": result.steps}))


@app.command()
def compare(
    variants: Annotated[Optional[list[str]], typer.Option("--variant", help="name:section.key=value[,section.key=value...]; repeat for each variant. Without one: the baseline alone, its seed spread.")] = None,
    config: ConfigOpt = None,
    model: ModelOpt = None,
    train_file: TrainFileOpt = None,
    dev_file: DevFileOpt = None,
    sets: SetOpt = None,
    seeds: Annotated[Optional[int], typer.Option("--seeds", min=1, help="Seeds 0..N-1 for every variant (3 when neither this nor --seed-list is given).")] = None,
    seed_list: Annotated[Optional[str], typer.Option("--seed-list", help="These seeds instead, e.g. 0,5,7.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for the runs (OUT/<variant>/seed-<k>) and compare.json/.md/.png.")] = Path("outputs/compare"),
    equal_compute: Annotated[bool, typer.Option("--equal-compute", help="Then train the baseline again, longer, to the model FLOPs of the costliest variant at each seed (baseline@equal_compute), and give each variant a second verdict against it; not where no variant costs more than the baseline.")] = False,
) -> None:
    """Train each variant and the baseline (the config unchanged, unless a variant is named baseline) once per seed
    at the same budget; print a table of EM/F1 (mean +/- std), training FLOPs, wall time, features/s and a verdict per
    variant. Run it again to resume: finished runs are skipped, unfinished ones continue from their checkpoint."""
    from mrc_cli.compare import Variant, compare as run_compare, markdown_table
    from mrc_cli.config import load_config

    if seeds is not None and seed_list is not None:
        raise typer.BadParameter("give --seeds N or --seed-list, not both", param_hint="--seed-list")
    try:
        chosen = [int(seed) for seed in seed_list.split(",")] if seed_list is not None else list(range(seeds or 3))
    except ValueError:
        raise typer.BadParameter(f"{seed_list!r}: expected integers such as 0,5,7", param_hint="--seed-list") from None
    cfg = load_config(config, _flags(model__name_or_path=model, data__train_file=train_file, data__dev_file=dev_file),
                      sets or [], command="compare")
    result = run_compare(cfg, [Variant.parse(text) for text in variants or []], chosen, out, equal_compute=equal_compute)
    typer.echo(markdown_table(result))
    typer.echo(f"files in {out}: compare.json, compare.md, compare.png")


@app.command()
def kfold(
    folds: Annotated[int, typer.Option("--folds", min=2, help="K: K models, each trained on K-1 folds of the training data and evaluated on the one left.")],
    config: ConfigOpt = None,
    model: ModelOpt = None,
    train_file: TrainFileOpt = None,
    dev_file: Annotated[Optional[str], typer.Option("--dev", help="Dev data: every fold's best checkpoint is scored on it after training.")] = None,
    sets: SetOpt = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for the folds (OUT/fold-<k>), the OOF files (OUT/oof) and kfold.json.")] = Path("outputs/kfold"),
) -> None:
    """Split the training data by article into K folds, train a model on every K-1 of them and evaluate it on the one
    held out; score the out-of-fold predictions of all training questions and, for SQuAD v2 data, store the null
    threshold best on them with every fold's best checkpoint. Run it again to resume: finished folds are skipped."""
    from mrc_cli.config import load_config
    from mrc_cli.kfold import format_kfold, kfold as run_kfold

    cfg = load_config(config, _flags(model__name_or_path=model, data__train_file=train_file, data__dev_file=dev_file),
                      sets or [], command="kfold")
    result = run_kfold(cfg, folds, out)
    typer.echo(format_kfold(result))
    typer.echo(f"files in {out}: kfold.json, oof/ (predictions.json, nbest.json, null_odds.json), fold-<k>/")


@app.command("train-fold", hidden=True)
def train_fold(
    config: Annotated[Path, typer.Option("--config", "-c", exists=True, dir_okay=False, help="The fold's config.")],
) -> None:
    """One fold of `mrc kfold`, which starts this in a process of its own for each fold."""
    from mrc_cli.config import load_config
    from mrc_cli.kfold import train_fold as run_fold

    _echo_result(run_fold(load_config(config)))


CheckpointOpt = Annotated[str, typer.Option("--checkpoint", help="A checkpoint folder, a run directory (its best checkpoint) or an export.")]
BackendOpt = Annotated[Literal["auto", "torch", "onnx", "onnx-int8"], typer.Option(help="What answers. auto: PyTorch (bf16 where native, else fp32), the trained model's answers; onnx: ONNX Runtime, the same answers; onnx-int8: fastest on AVX2-only CPUs (1.35x PyTorch fp32), a sixth of the answers change. A checkpoint is exported once into its onnx/ folder.")]


@app.command("eval")
def evaluate(
    checkpoint: CheckpointOpt,
    data: Annotated[str, typer.Option("--data", help="Data with answers.")],
    out: Annotated[Optional[str], typer.Option(help="Folder for predictions.json, nbest.json, null_odds.json, metrics.json (default: CHECKPOINT/eval, its files replaced).")] = None,
    store_threshold: Annotated[bool, typer.Option(help="SQuAD v2: keep the best null threshold with the checkpoint for predict.")] = False,
    calibrate: Annotated[bool, typer.Option("--calibrate", help="Fit a temperature (SQuAD v2: and a null bias) so that answer probabilities say how often answers are right; keep it with the checkpoint; ECE before/after, reliability.png.")] = False,
    calibrate_split: Annotated[bool, typer.Option("--calibrate-split", help="With --calibrate: fit on half the articles and report ECE on the other half (keeps that fit).")] = False,
    backend: BackendOpt = "auto",
    metric: Annotated[Optional[Literal["auto", "squad", "squad_v2", "cmrc2018"]], typer.Option(help="Official rules to score by (default: the model's data.metric, auto: picked by the data).")] = None,
) -> None:
    """Score a checkpoint on a dev set; the metrics are the last line of stdout, as one JSON object. A checkpoint
    whose null threshold `mrc kfold` chose out of fold also gets it compared with 0 and the best one on this set."""
    from mrc_cli.reader import evaluate_file

    metrics = evaluate_file(checkpoint, data, out, store_threshold, calibrate, calibrate_split, backend, metric)
    if not _says_results(metrics):
        return
    typer.echo(metrics.pop("data"))
    if "null_rule" in metrics:
        typer.echo(f"null answers: {metrics['null_rule']}")
    if "threshold_report" in metrics:
        from mrc_cli.thresholds import format_threshold_report

        typer.echo(format_threshold_report(metrics["threshold_report"]))
    if "best_f1_thresh" in metrics:
        typer.echo(f"null threshold: F1 {metrics['f1']:.2f} at the checkpoint's, {metrics['best_f1']:.2f} at "
                   f"{metrics['best_f1_thresh']:.3f}" + (" (stored)" if store_threshold else " (--store-threshold keeps it)"))
    elif store_threshold:
        typer.echo(f"null threshold: not stored: {data} has no unanswerable questions to choose one on")
    if calibrate:
        where = ("held-out articles" if metrics["calibration_held_out"] else
                 "the questions it was fitted on, optimistic (--calibrate-split holds half the articles out)")
        kept = ("stored" if metrics["calibration_stored"] else
                "not stored: it would make ECE worse; the model keeps its settings (calibrate on more questions)")
        # both errors where the decision weighed both (answers and no-answer), so the line never seems to contradict it
        no_answer = (f", no-answer ECE {metrics['no_answer_ece_before']:.3f} -> {metrics['no_answer_ece_after']:.3f}"
                     if "no_answer_ece_after" in metrics else "")
        typer.echo(f"calibration: temperature {metrics['temperature']:.3f}, null bias {metrics['null_bias']:.3f} ({kept}); "
                   f"ECE {metrics['ece_before']:.3f} -> {metrics['ece_after']:.3f}{no_answer} on "
                   f"{metrics['calibration_questions']} questions, {where}; wrote {', '.join(metrics['calibration_files'])}")
        if "calibration_warning" in metrics:
            typer.echo(f"warning: {metrics['calibration_warning']}", err=True)
    typer.echo(to_json(metrics, ensure_ascii=False))


@app.command()
def predict(
    checkpoint: CheckpointOpt,
    data: Annotated[str, typer.Option("--data", help="Questions, with or without answers.")],
    out: Annotated[str, typer.Option("--out", help="Submission file {question id: answer}.")],
    backend: BackendOpt = "auto",
) -> None:
    """Write the submission file {id: answer} that SQuAD and CMRC 2018 expect."""
    from mrc_cli.reader import predict_file

    summary = predict_file(checkpoint, data, out, backend)
    if not _says_results(summary):
        return
    typer.echo(summary["data"])
    typer.echo(f"{summary['questions']} questions, {summary['answered']} answered ({summary['backend']}); "
               f"wrote {summary['out']}")


@app.command()
def ensemble(
    checkpoints: Annotated[list[str], typer.Option("--checkpoint", help="A member (checkpoint, run directory or export); repeat. The first is the reference: its windows and decoding settings are used.")],
    data: Annotated[str, typer.Option("--data", help="Questions, with or without answers.")],
    out: Annotated[str, typer.Option("--out", help="Folder for predictions.json, nbest.json, null_odds.json (metrics.json when the data has answers).")],
    weights: Annotated[str, typer.Option(help="equal; oof (each member's held-out F1 from mrc kfold); or one positive number per member such as 2,1.")] = "equal",
    combine: Annotated[Literal["prob", "logprob"], typer.Option(help="Weighted mean of the members' probabilities, or of their log-probabilities.")] = "prob",
    threshold: Annotated[Optional[float], typer.Option(help="SQuAD v2 null threshold (default: the reference's stored one).")] = None,
    submission: Annotated[Optional[str], typer.Option(help="Also write the submission file {question id: answer}.")] = None,
    save: Annotated[Optional[str], typer.Option(help="Save the ensemble as a new folder that eval, predict and Reader.load take.")] = None,
    copy_members: Annotated[bool, typer.Option(help="With --save: copy the members into the folder (weights, config, tokenizer).")] = False,
) -> None:
    """Answer with several models at once, also with different tokenizers or span levels: their start/end
    probabilities meet on the context's characters and are decoded once. Writes the files of `mrc eval`; with
    answers in the data, the metrics are the last line of stdout, as one JSON object."""
    from mrc_cli.reader import ensemble_file

    summary = ensemble_file(checkpoints, data, out, weights, combine, threshold, submission, save, copy_members)
    if not _says_results(summary):
        return
    typer.echo(summary.pop("data"))
    if "null_rule_warning" in summary:
        typer.echo(f"warning: {summary['null_rule_warning']}")
    if "calibration_note" in summary:
        typer.echo(f"note: {summary['calibration_note']}")
    if "threshold_note" in summary:
        typer.echo(f"note: {summary['threshold_note']}")
    shares = ", ".join(f"{w:.3f}" for w in summary.pop("weights"))
    typer.echo(f"{summary['members']} members (weights {shares}); {summary['questions']} questions, {summary['answered']} answered; "
               f"wrote {summary['out']}" + (f", {submission}" if submission else "") + (f"; saved to {save}" if save else ""))
    typer.echo(to_json(summary, ensure_ascii=False))


@app.command()
def export(
    checkpoint: CheckpointOpt,
    out: Annotated[str, typer.Option("--out", help="Folder for the model, tokenizer and decoding settings.")],
    fmt: Annotated[Literal["hf", "onnx"], typer.Option("--format", help="hf: a Hugging Face folder; onnx: an ONNX graph that eval, predict, ensemble and the Reader load like a checkpoint.")] = "hf",
    quantize: Annotated[Optional[Literal["int8"]], typer.Option(help="With --format onnx: also an int8 graph (ONNX Runtime dynamic quantisation), which the folder then loads.")] = None,
    parity_data: Annotated[Optional[str], typer.Option("--parity-data", help="With --format onnx: a data file with answers; parity.json compares the graphs with the checkpoint on it.")] = None,
) -> None:
    """Write a standard Hugging Face folder (AutoModelForQuestionAnswering + AutoTokenizer) with mrc_cli.yaml, or with
    --format onnx an ONNX folder (graph, tokenizer, mrc_cli.yaml) that mrc eval, predict, ensemble and Reader.load take."""
    if fmt != "onnx" and (quantize or parity_data):
        flag = "--quantize" if quantize else "--parity-data"
        raise typer.BadParameter("only with --format onnx", param_hint=flag)
    if fmt == "onnx":
        from mrc_cli.export import PARITY_FILE, export_onnx, format_parity

        result = export_onnx(checkpoint, out, quantize, parity_data)
        typer.echo(f"exported to {result.folder}" + (f" (parity: {result.folder / PARITY_FILE})" if result.parity else ""))
        if result.parity:
            typer.echo(format_parity(result.parity))
        return
    from mrc_cli.export import export_checkpoint

    typer.echo(f"exported to {export_checkpoint(checkpoint, out)}")


@app.command()
def serve(
    checkpoint: CheckpointOpt,
    host: Annotated[str, typer.Option(help="Address to listen on; 127.0.0.1 keeps the server to this machine.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port; 0 takes a free one (uvicorn prints it).")] = 8000,
    max_batch: Annotated[int, typer.Option(min=1, help="Questions per model call: concurrent requests are batched up to it (a request with more runs alone, in one call).")] = ServeSettings.max_batch,
    max_wait_ms: Annotated[float, typer.Option(min=0, help="How long a request waits for others to batch with.")] = ServeSettings.max_wait_ms,
    max_context_chars: Annotated[int, typer.Option(min=1, help="Longer contexts are refused (413).")] = ServeSettings.max_context_chars,
    max_questions: Annotated[int, typer.Option(min=1, help="Questions per request; more are refused (413).")] = ServeSettings.max_questions,
    max_question_chars: Annotated[int, typer.Option(min=1, help="Longer questions are refused (413).")] = ServeSettings.max_question_chars,
    max_body_bytes: Annotated[int, typer.Option(min=1, help="Larger request bodies are refused (413).")] = ServeSettings.max_body_bytes,
    backend: BackendOpt = "auto",
) -> None:
    """Answer questions over HTTP: POST /answer {"context": ..., "questions": [...]}; GET /health (200 once the model
    is loaded), /metrics, /docs (OpenAPI) and / (a page to try it). Runs until Ctrl-C."""
    from mrc_cli.serve import serve as serve_checkpoint

    settings = ServeSettings(max_batch, max_wait_ms, max_context_chars, max_questions, max_question_chars, max_body_bytes)
    serve_checkpoint(checkpoint, host, port, settings, backend)


@app.command()
def analyze(
    gold: Annotated[str, typer.Option("--gold", help="Gold data file with answers.")],
    pred: Annotated[list[str], typer.Option("--pred", help="Predictions {id: answer} or the folder `mrc eval --out` wrote; twice to compare A and B.")],
    nbest: Annotated[Optional[list[Path]], typer.Option("--nbest", help="n-best JSON, one per --pred (default: the folder's nbest.json).")] = None,
    null_odds: Annotated[Optional[list[Path]], typer.Option("--null-odds", help="Null odds JSON, one per --pred (default: the folder's null_odds.json).")] = None,
    threshold: Annotated[Optional[list[float]], typer.Option("--threshold", help="SQuAD v2 null threshold, once or once per --pred (default: best_f1_thresh of the folder's metrics.json, else 0).")] = None,
    checkpoint: Annotated[Optional[str], typer.Option("--checkpoint", help="Count windows per question as this trained model cuts the gold file.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Count windows with this tokenizer and the data settings of --config/--set.")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    metric: Annotated[Literal["auto", "squad", "squad_v2", "cmrc2018"], typer.Option(help="Official metric; auto picks by the gold data.")] = "auto",
    examples: Annotated[int, typer.Option("--examples", min=0, help="Worst questions listed per slice.")] = 5,
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for analysis.json and analysis.png (default: the first --pred's folder).")] = None,
    fmt: FormatOpt = "auto",
) -> None:
    """EM/F1 by slice (question type, answer length and position, windows, answerable), the worst questions of each
    slice and, with two --pred, where A beats B; prints a table, writes analysis.json and analysis.png."""
    from mrc_cli.analysis import analyze as analyze_predictions
    from mrc_cli.analysis import count_windows
    from mrc_cli.analysis_report import format_summary

    if checkpoint and model:
        raise typer.BadParameter("give --checkpoint or --model for the windows, not both")
    if (config or sets) and not model:
        raise typer.BadParameter("--config and --set give the data settings of --model")
    if out:  # refused before the windows are counted
        check_output_folder(out)
    windows = None
    if checkpoint or model:
        from mrc_cli.config import load_config

        cfg = load_config(config, _flags(model__name_or_path=model), sets or [], command="analyze") if model else None
        windows = count_windows(gold, checkpoint, cfg)
    first = Path(pred[0])
    result = analyze_predictions(gold, pred, nbest, null_odds, threshold, windows, metric, examples, fmt,
                                 out or (first if first.is_dir() else first.parent))
    for warning in result["warnings"]:
        typer.echo(f"Warning: {warning}", err=True)
    typer.echo(format_summary(result))


def _print_config(cfg) -> None:
    import yaml

    from mrc_cli.config import config_to_dict

    typer.echo(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True))


def _dry_run(cfg, batches: bool = False, evaluates: bool = True, run_dir_flag: str = "--output-dir",
             packs: bool = True) -> None:
    """The config the run would use (a resumed run's: its checkpoint's, with what differs noted) as YAML, refused
    where the real run would be; comments after it, so the output stays a config file. `evaluates`: whether the
    command evaluates on a dev set where one is given (not mrc pretrain); `run_dir_flag`: its run directory's flag;
    `batches`: describe the batches of its training file; `packs`: whether its batches may be packed rows."""
    from mrc_cli.training import check_packing, describe_batches, resolve_run, resumed_batch_notes

    asked_batch_size = cfg.train.batch_size
    cfg, resume_from, notes = resolve_run(cfg, lambda run: evaluates and bool(run.data.dev_file), run_dir_flag)
    if resume_from is not None:  # on another process count the run changes grad_accum, batch_size or its plan first
        notes += resumed_batch_notes(cfg, resume_from, asked_batch_size)
    if not batches and cfg.train.tokens_per_batch not in ("auto", 0):  # describe_batches checks it below
        check_packing(cfg, packs)
    if _launched_rank() != 0:  # refused above on every process, printed by one
        return
    _print_config(cfg)
    for line in [*([f"resumes {resume_from}"] if resume_from else []), *notes]:
        typer.echo(f"# {line}")
    if batches:
        typer.echo(f"# {describe_batches(cfg)}")


def _flags(**flags) -> dict:
    """Named flags as config overrides: `data__doc_stride=64` -> {"data.doc_stride": 64}; None means not given."""
    return {key.replace("__", "."): value for key, value in flags.items()}


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
