"""The runs of the commands that train several models and can be run again (`mrc compare`, `mrc kfold`): each
trains in a process of its own, and a run's record file marks it finished and holds the settings it ran with; a later
call skips it, and refuses it when the settings differ, rather than pass its scores off as those of the new settings."""

from __future__ import annotations

import codecs
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mrc_cli.checkpoint import latest_checkpoint
from mrc_cli.config import RunConfig, config_to_dict, save_config
from mrc_cli.errors import ConfigError, TrainingError, TrainingInterrupted
from mrc_cli.files import from_json, to_json, write_text_atomically
from mrc_cli.run_lock import in_use
from mrc_cli.tracking import read_metrics

PLAN_RECORD = "planned.json"  # in a run directory before it trains: a resumed run must be the one planned now
FOLD_RECORD = "kfold_fold.json"  # in a fold's run directory once it has finished: kfold skips it, --weights oof reads it
HELD_OUT = "held_out_ids.json"  # in a fold's run directory: the questions its process holds out
RUN_BY = "MRC_RUN_BY"  # set for a run's process: the command that started it, whose call again resumes it


@dataclass
class FinishedRun:
    """What a run trained in its own process left: its metrics.json and metrics.jsonl, and this call's share."""

    metrics: dict
    logged: list[dict]
    wall_s: float  # of every call: a resumed run's adds its earlier parts', each up to its last checkpoint
    resumed_from: Path | None
    stopped_by: signal.Signals | None = None  # a signal passed on to the run as it finished anyway

    def stop_if_signalled(self, run_dir: Path, by: str) -> None:
        """Called once the run's record is written: a Ctrl-C or SIGTERM that came as the run finished stops `by`
        here, before the next run, as it would have stopped the run."""
        if self.stopped_by:
            name = "Ctrl-C" if self.stopped_by == signal.SIGINT else self.stopped_by.name
            raise TrainingInterrupted(f"{run_dir}: finished as {name} came, and recorded as finished; run mrc {by} "
                                      "again to go on with the runs after it", self.stopped_by)

    def record(self) -> dict:
        """The fields of every run's record: scores at the last step and the official rules they are by (metric),
        steps, wall time, where it resumed."""
        from mrc_cli.inference import headline

        return {**headline(self.metrics), "metric": self.metrics.get("metric"), "steps": self.logged[-1]["step"],
                "wall_s": self.wall_s,
                "resumed_from": self.resumed_from.name if self.resumed_from else None}


def train_run(cfg: RunConfig, settings: dict, label: str, gpu: str | None, by: str, command: str = "train",
              facts: dict | None = None, before: Callable[[], None] = lambda: None) -> FinishedRun:
    """Mark a run begun with these settings and `facts` (start_run: a run begun with others is refused), announce it
    (`label`, and the checkpoint it resumes from), `before()`, then train it in a process of its own
    (train_in_own_process)."""
    run_dir = Path(cfg.train.output_dir)
    resumed_from = latest_checkpoint(run_dir)
    start_run(run_dir, settings, facts)
    print(label + (f", resuming from {resumed_from}" if resumed_from else ""), flush=True)
    before()
    started = time.perf_counter()
    stopped_by = train_in_own_process(cfg, gpu, by, command)
    metrics = from_json((run_dir / "metrics.json").read_text(encoding="utf-8"))
    # a run resumed at its last step trained nothing in this call: its time is mostly the earlier parts'
    wall_s = time.perf_counter() - started + metrics.get("earlier_parts_wall_s", 0.0)
    return FinishedRun(metrics, read_metrics(run_dir / "metrics.jsonl"), wall_s, resumed_from, stopped_by)


def train_in_own_process(cfg: RunConfig, gpu: str | None, by: str, command: str = "train") -> signal.Signals | None:
    """`mrc <command> --config <run_dir>/config.yaml` in a child process, its output in <run_dir>/<by>_output.log.
    One process per run because a process that trains again and again grew on CPU until the kernel killed it (10.5
    GB after 6 runs: docs/benchmarks.md, "Memory of a process that trains again and again"); a child gives all its
    memory back when it exits. `gpu`: the one GPU the child sees (runs side by side; output to the log only, their
    lines would interleave); None: the environment as it is (runs one after another; output also to this terminal).
    `by`: the command whose run it is ("compare", "kfold"). A failed child raises TrainingError, one a signal stopped
    TrainingInterrupted; the next call of `by` resumes the run from its newest checkpoint. Returns the signal passed
    on to a child that finished all the same (FinishedRun.stop_if_signalled), else None."""
    run_dir = Path(cfg.train.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run_dir / "config.yaml"  # train() rewrites it, resolved, when it starts
    save_config(cfg, config)
    log = run_dir / f"{by}_output.log"
    child = [sys.executable, "-m", "mrc_cli", command, "--config", str(config)]
    here = str(Path(__file__).resolve().parents[1])  # the child runs this mrc_cli, not another one installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1", RUN_BY: by}  # lines reach the log as they are printed, not at exit
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    code, stopped_by = _run_logged(child, env, log) if gpu is not None else _run_teed(child, env, log)
    if code - 128 in (signal.SIGINT, signal.SIGTERM):  # the child stopped (after a checkpoint once training began)
        stopped_by = stopped_by or signal.Signals(code - 128)
    if stopped_by and code == 0:  # it had finished (its last evaluation, its files): a finished run, to be recorded
        return stopped_by
    if stopped_by:
        name = "Ctrl-C" if stopped_by == signal.SIGINT else stopped_by.name
        then = ("resume it from its newest checkpoint" if latest_checkpoint(run_dir) else
                "start it (it had saved no checkpoint)")
        raise TrainingInterrupted(f"{run_dir}: stopped by {name}; its output is in {log}. Run mrc {by} again to "
                                  f"{then}", stopped_by)
    if code != 0:
        # killed by the kernel (out of memory) shows as SIGKILL
        ended = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        if latest_checkpoint(run_dir):
            then = f"Run mrc {by} again to resume it from its newest checkpoint"
        elif code < 0:
            then = f"It had saved no checkpoint: run mrc {by} again to start it again"
        else:  # an error it reported (a setting, a file) before any checkpoint: running it again repeats it
            then = f"It saved no checkpoint: its output says why; run mrc {by} again once that is fixed"
        raise TrainingError(f"{run_dir}: mrc {command} {ended}; its output is in {log}. {then}")
    return None


def refuse_several_processes(by: str, how: str) -> None:
    """`mrc compare` and `mrc kfold` start the process of each run themselves (`how` says how, for the message);
    under a launcher every rank would train each run once more, into the same folders. WORLD_SIZE (torchrun and
    accelerate launch set it) is read rather than accelerate's PartialState, which under a launcher would join a
    process group only to refuse."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(f"mrc {by} {how}; under a launcher every process would train each run again into the same "
                          "folders: start it without accelerate launch / torchrun")


def _run_logged(child: list[str], env: dict, log: Path) -> tuple[int, None]:
    """Runs side by side on GPUs, each from a thread: only the main thread may handle signals, so the children get
    Ctrl-C from the terminal (one process group) and a SIGTERM sent to this process alone is not passed on."""
    with open(log, "ab") as out:
        return subprocess.run(child, stdout=out, stderr=subprocess.STDOUT, env=env).returncode, None


def _run_teed(child: list[str], env: dict, log: Path) -> tuple[int, signal.Signals | None]:
    """The child's output (stdout and stderr) to this process's stdout and to `log` as it comes: chunks, not lines,
    so that a progress bar's carriage returns show; (its exit status, what stopped it or None). Ctrl-C and SIGTERM
    sent to this process are passed on (Ctrl-C at the terminal, or `kill -INT` / a scheduler's SIGTERM to this process
    alone): the child saves a checkpoint and stops while this process reads on until it has ended (a second Ctrl-C
    ends it at once). The child has a process group of its own, so a Ctrl-C at the terminal reaches it once, through
    this process, not twice (its second would abort it). Without passing them on, this process would die and the
    child with it, on its next write to the closed pipe, its last checkpoint steps back; or, a Ctrl-C caught here
    alone, the child trained to its end while this process called it stopped."""
    decode = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a chunk may end inside a character
    stopped_by = None
    main = threading.current_thread() is threading.main_thread()  # the only thread that may handle signals
    with open(log, "ab") as out, subprocess.Popen(child, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                  stderr=subprocess.STDOUT, env=env,
                                                  process_group=0 if main else None) as process:
        def pass_on(signum, frame):
            nonlocal stopped_by
            stopped_by = stopped_by or signal.Signals(signum)
            process.send_signal(signum)

        previous = {sig: signal.signal(sig, pass_on) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
        try:
            while True:
                chunk = process.stdout.read1(1 << 16)
                if not chunk:
                    break
                out.write(chunk)
                out.flush()
                sys.stdout.write(decode.decode(chunk))
                sys.stdout.flush()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return process.returncode, stopped_by


def write_record(path: Path, record: dict, settings: dict) -> None:
    """`record` with the run's planned config (`settings`, as config_to_dict gives it): the mark of a finished run."""
    write_json(path, {**record, "config": settings})


def start_run(run_dir: Path, settings: dict, facts: dict | None = None) -> None:
    """Called before a run trains. A run begun with other settings, or other `facts` (the questions a fold holds out),
    is refused: resuming it would finish the old run and record it under the new settings. A new run is marked, and
    so is one begun before that left no checkpoint (it failed or was stopped at once) and does not run now: it starts
    again as planned now."""
    facts = facts or {}
    if latest_checkpoint(run_dir) is None and not in_use(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
        write_record(run_dir / PLAN_RECORD, facts, settings)
        return
    planned = load_record(run_dir / PLAN_RECORD, settings, "was started")
    if planned is None:
        write_record(run_dir / PLAN_RECORD, facts, settings)
    else:
        check_facts(run_dir, planned, facts, "was started")


def check_facts(run_dir: Path, had: dict, facts: dict, done: str) -> None:
    """Refuse a run that `done` ("finished", "was started") with other facts than planned now (kfold's number of
    folds and held-out questions), `had` and `facts` compared key by key: its results would pass for those of the
    plan or data of now."""
    changed = [f"{key} ({had.get(key)!r} there, {facts.get(key)!r} now)"
               for key in sorted({*had, *facts}) if had.get(key) != facts.get(key)]
    if changed:
        raise ConfigError(f"{run_dir} {done} with other {', '.join(changed)} (another plan, or the data changed); "
                          "choose another --out, or delete that folder to run it again")


# the folder may have moved; the features per inference batch change no logits (padding is masked); how often a run
# logs and saves, what it keeps and reports, and where and how fast its data is tokenized change no weight
NOT_RESULTS = {("train", "output_dir"), ("train", "eval_batch_size"), ("train", "log_steps"), ("train", "save_steps"),
               ("train", "keep_last"), ("train", "keep_training_state"), ("train", "report_to"),
               ("data", "cache_dir"), ("data", "num_proc")}
FILES = {("data", "train_file"), ("data", "dev_file")}  # the same file, also given by another path


def load_record(path: Path, settings: dict, done: str = "finished") -> dict | None:
    """A finished run's record (without its config), or None when there is none. A run finished with other settings
    than `settings` is refused, except in settings that do not change what it learned (`NOT_RESULTS`)."""
    if not path.is_file():
        return None
    record = from_json(path.read_text(encoding="utf-8"))
    then, defaults = record.pop("config"), config_to_dict(RunConfig())
    # a key the record lacks (added to mrc-cli since) had its default then
    was = {section: {key: then.get(section, {}).get(key, default) for key, default in values.items()}
           for section, values in defaults.items()}
    changed = [f"{section}.{key}: {was[section][key]!r} there, {value!r} now"
               for section, values in settings.items() for key, value in values.items()
               if value != was[section][key] and (section, key) not in NOT_RESULTS
               and not ((section, key) in FILES and value and was[section][key]
                        and os.path.realpath(value) == os.path.realpath(was[section][key]))]
    if changed:
        raise ConfigError(f"{path.parent} {done} with other settings ({'; '.join(changed)}); choose another --out, "
                          "or delete that folder to run it again")
    return record


def write_json(path: Path, obj: dict) -> None:
    """Written beside `path` and renamed over it: a half-written record must not pass for a finished run."""
    write_text_atomically(path, to_json(obj, indent=2, ensure_ascii=False))
