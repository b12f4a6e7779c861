"""Benchmark: `mrc serve` on loopback against the in-process `Reader` on the same questions, and a fault run.

    .venv/bin/python bench/bench_serve.py --smoke                    # 24 questions: checks the script (~2 minutes)
    .venv/bin/python bench/bench_serve.py                            # 400 questions a level, ~15 minutes on 2 cores
    .venv/bin/python bench/bench_serve.py --checkpoint outputs/run   # a trained model (checkpoint, run dir, export)

The model is --checkpoint, else the offline MiniLM with a fresh QA head (seed 0, untrained: as fast as a trained one,
its answers arbitrary but the same on both sides), wrapped as an `mrc export` folder with max_seq_length 384, stride
128, the null rule on and precision auto. The questions are the first --questions of ../shared/data's
squad_v2.0_dev_head.json, one question per request with its context, as a client asking one thing at a time sends them.

`mrc serve` runs as its own process (`python -m mrc_cli serve --host 127.0.0.1 --port 0`, the port read from its log),
with --max-batch and --max-wait-ms as given. Measured, in this order, so that two sides never compute at once:
  Reader, all at once      one `Reader` call over every question in this process: the throughput ceiling
  Reader, one per call     one call per question, in sequence: the latency of the model without HTTP
  mrc serve, N clients     N concurrent clients (an async httpx client, one connection each), each sending its next
                           question when its answer came; questions/s over the wall time, p50/p99 latency per request,
                           the mean Reader batch during the level (from /metrics); each level stops after --questions
                           requests or --seconds, whichever comes first. The client runs on the same cores.
Every answer (text, start, end) is compared with the Reader's, and `mrc predict` (`predict_file`) runs once on the
same questions: its answers are compared too. Then the fault run: malformed JSON, wrong types, an empty question list,
a huge context, too many questions, a 2 MB body, a client that leaves mid-body and one that leaves before its answer;
after each, the server must answer a known question as the Reader does.

Writes outputs/bench/serve.json (command, machine with CPU flags, git revision, every figure, each fault's status and
message) and prints a table. Exit status 1 when an answer differs or the server did not survive a fault.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

if __name__ == "__main__":  # run as a script: the repository root, for `bench.*` and this checkout's mrc_cli
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import (  # noqa: E402
    OFFLINE_ENV,
    OUT,
    ROOT,
    SQUAD_V2_DEV_HEAD,
    command_line,
    describe_machine,
    fresh_dir,
    git_revision,
    machine,
    require_shared,
    run_script,
    write_jsonl,
)

SIZES = {"smoke": {"questions": 24, "seconds": 60}, "full": {"questions": 400, "seconds": 180}}
CLIENTS = (1, 8, 32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="24 questions a level: checks that the script runs")
    parser.add_argument("--checkpoint", type=Path, help="a trained model (default: MiniLM with a fresh QA head)")
    parser.add_argument("--questions", type=int, help="questions asked (and requests per level at most)")
    parser.add_argument("--seconds", type=float, help="time limit of each load level")
    parser.add_argument("--max-batch", type=int, default=32, help="mrc serve --max-batch")
    parser.add_argument("--max-wait-ms", type=float, default=10.0, help="mrc serve --max-wait-ms")
    parser.add_argument("--out", type=Path, default=OUT / "serve.json")
    args = parser.parse_args()
    require_shared("bench_serve", SQUAD_V2_DEV_HEAD)
    os.environ.update(OFFLINE_ENV)  # before transformers and datasets are imported
    size = SIZES["smoke" if args.smoke else "full"]
    num_questions, seconds = args.questions or size["questions"], args.seconds or size["seconds"]
    work = fresh_dir(args.out.parent / "serve")
    report = {"command": command_line(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": machine() | {"load_average_at_start": os.getloadavg()},  # other work on the cores shows here
              **git_revision(), "size": "smoke" if args.smoke else "full", "max_batch": args.max_batch,
              "max_wait_ms": args.max_wait_ms, "seconds_per_level_at_most": seconds}
    print(describe_machine(report["machine"]), flush=True)

    questions = write_jsonl(SQUAD_V2_DEV_HEAD, work / "questions.jsonl", num_questions)
    asked = [(r["id"], r["question"], r["context"]) for r in map(json.loads, questions["path"].open(encoding="utf-8"))]
    model, origin = model_folder(args.checkpoint, work)
    report |= {"questions": len(asked), "data": SQUAD_V2_DEV_HEAD.name, "model": str(model), "model_origin": origin}

    server = ServeProcess(model, args.max_batch, args.max_wait_ms, work / "server.log")
    with server as url:
        report["rows"], reference = in_process_rows(model, asked)
        report["rows"] += [load_level(url, asked, clients, seconds, reference) for clients in CLIENTS]
        report["predict"] = predict_agreement(model, questions["path"], work, reference)
        report["faults"] = fault_run(url, asked[0], reference[asked[0][0]])
        report["server_metrics"] = http_json(url, "GET", "/metrics")[1]
    report["server_exit_code"] = server.proc.returncode  # 130: SIGINT, re-raised by uvicorn after a clean shutdown
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(format_table(report))
    print(f"wrote {args.out}; server log {work / 'server.log'}")
    answers_equal = all(row.get("identical_answers_pct", 100.0) == 100.0 for row in report["rows"])
    return 0 if answers_equal and report["predict"]["identical_answers_pct"] == 100.0 and all(
        f["alive"] and f["answer_ok"] and f["as_expected"] for f in report["faults"]) else 1


def model_folder(checkpoint: Path | None, work: Path) -> tuple[Path, str]:
    """--checkpoint as given, else MiniLM with a fresh QA head as an export folder (bench_suite's inference part's)."""
    if checkpoint:
        return checkpoint.resolve(), "--checkpoint"
    from bench.suite.inference import fresh_checkpoint, make_export

    fresh_checkpoint(str(work / "fresh_head"))
    export = make_export(work / "fresh_head", work / "model", "auto", 64, work / "cache", allow_null=True)
    return export, "MiniLM with a fresh QA head (seed 0), untrained"


class ServeProcess:
    """`mrc serve` in a process of its own on 127.0.0.1 and a free port; its log in a file; stopped with SIGINT."""

    def __init__(self, model: Path, max_batch: int, max_wait_ms: float, log: Path):
        self.command = [sys.executable, "-m", "mrc_cli", "serve", "--checkpoint", str(model), "--host", "127.0.0.1",
                        "--port", "0", "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)]
        self.log = log

    def __enter__(self) -> str:
        print("starting mrc serve ...", end="", flush=True)
        started = time.perf_counter()
        self.proc = subprocess.Popen(self.command, cwd=ROOT, env={**os.environ, **OFFLINE_ENV},
                                     stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        url = None
        while time.perf_counter() - started < 600:
            if self.proc.poll() is not None:
                sys.exit(f"bench_serve: mrc serve exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            if url is None and (port := re.search(r"running on http://127\.0\.0\.1:(\d+)", self.log.read_text())):
                url = f"http://127.0.0.1:{port.group(1)}"
            if url and http_json(url, "GET", "/health")[0] == 200:
                print(f" ready in {time.perf_counter() - started:.0f}s at {url}", flush=True)
                return url
            time.sleep(0.2)
        self.proc.kill()
        sys.exit(f"bench_serve: mrc serve was not ready after 600s:\n{self.log.read_text()[-3000:]}")

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        print(f"mrc serve stopped (exit {self.proc.returncode})", flush=True)


def in_process_rows(model: Path, asked: list[tuple]) -> tuple[list[dict], dict]:
    """The Reader in this process: all questions in one call (the reference answers), then one call per question."""
    from mrc_cli import Reader

    reader = Reader.load(model)
    reader(question=asked[0][1], context=asked[0][2])  # warm-up: first-call costs stay out of the timing
    started = time.perf_counter()
    answers = reader(question=[q for _, q, _ in asked], context=[c for _, _, c in asked])
    all_at_once = time.perf_counter() - started
    reference = {qid: _key(a["answer"], a["start"], a["end"]) for (qid, _, _), a in zip(asked, answers)}
    latencies, same = [], 0
    for qid, question, context in asked:
        started = time.perf_counter()
        one = reader(question=question, context=context)
        latencies.append(time.perf_counter() - started)
        same += _key(one["answer"], one["start"], one["end"]) == reference[qid]
    print(f"  Reader: {len(asked) / all_at_once:.1f} questions/s all at once, {len(asked) / sum(latencies):.1f} "
          "one per call", flush=True)
    rows = [{"side": "Reader, all at once", "questions": len(asked), "seconds": all_at_once,
             "questions_per_s": len(asked) / all_at_once, "mean_batch": float(len(asked))},
            {"side": "Reader, one per call", "questions": len(asked), "seconds": sum(latencies),
             "questions_per_s": len(asked) / sum(latencies), **_percentiles(latencies), "mean_batch": 1.0,
             "identical_answers_pct": 100.0 * same / len(asked)}]
    return rows, reference


def _key(text: str, start: int, end: int) -> list:
    return [text, start, end]


def _percentiles(seconds: list[float]) -> dict:
    return {"p50_ms": float(np.percentile(seconds, 50) * 1000), "p99_ms": float(np.percentile(seconds, 99) * 1000)}


def load_level(url: str, asked: list[tuple], clients: int, seconds: float, reference: dict) -> dict:
    """`clients` concurrent clients, one question per request, until every question was asked or `seconds` passed."""
    import httpx

    async def level():
        pending = iter(asked)  # shared: each question asked once, by whichever client is free
        latencies, answers, failures = [], {}, []
        deadline = time.perf_counter() + seconds

        async def client(http):
            for qid, question, context in pending:
                if time.perf_counter() > deadline:
                    return
                started = time.perf_counter()
                response = await http.post("/answer", json={"context": context, "questions": [question]})
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    failures.append(f"{qid}: {response.status_code} {response.text[:200]}")
                    continue
                answer = response.json()["answers"][0]
                answers[qid] = _key(answer["text"], answer["start"], answer["end"])

        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
            before = (await http.get("/metrics")).json()["batch_size"]["histogram"]
            started = time.perf_counter()
            await asyncio.gather(*(client(http) for _ in range(clients)))
            wall = time.perf_counter() - started
            after = (await http.get("/metrics")).json()["batch_size"]["histogram"]
        return latencies, answers, failures, wall, {int(s): n - before.get(s, 0) for s, n in after.items()}

    latencies, answers, failures, wall, batches = asyncio.run(level())
    num_batches = sum(batches.values())
    row = {"side": f"mrc serve, {clients} client{'s' if clients > 1 else ''}", "clients": clients,
           "questions": len(answers), "seconds": wall, "questions_per_s": len(answers) / wall,
           **_percentiles(latencies), "mean_batch": sum(s * n for s, n in batches.items()) / max(num_batches, 1),
           "batch_histogram": {str(s): n for s, n in sorted(batches.items()) if n},
           "identical_answers_pct": 100.0 * sum(a == reference[qid] for qid, a in answers.items()) / max(len(answers), 1),
           "differing": [{"id": qid, "serve": a, "reader": reference[qid]} for qid, a in answers.items()
                         if a != reference[qid]][:10], "failures": failures[:10]}
    print(f"  {row['side']}: {row['questions_per_s']:.1f} questions/s, p50 {row['p50_ms']:.0f} ms, "
          f"p99 {row['p99_ms']:.0f} ms, mean batch {row['mean_batch']:.1f}", flush=True)
    return row


def predict_agreement(model: Path, data: Path, work: Path, reference: dict) -> dict:
    """`mrc predict` (its library call) on the same questions: its answer texts against the Reader's."""
    from mrc_cli.reader import predict_file

    predict_file(str(model), str(data), str(work / "submission.json"))
    submission = json.loads((work / "submission.json").read_text(encoding="utf-8"))
    same = sum(submission.get(qid) == key[0] for qid, key in reference.items())
    return {"questions": len(reference), "identical_answers_pct": 100.0 * same / len(reference)}


# --------------------------------------------------------------------------------------------------------- faults


def http_json(url: str, method: str, path: str, body: bytes | None = None,
              content_type: str = "application/json") -> tuple[int | None, dict | None]:
    """(status, JSON) of one request on a fresh connection; (None, None) where the server does not answer."""
    import httpx

    try:
        response = httpx.request(method, url + path, content=body, headers={"content-type": content_type}, timeout=300)
    except httpx.HTTPError:
        return None, None
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, {"text": response.text[:500]}


def _leave(url: str, request: bytes, wait: float = 0.0) -> None:
    """Send `request` on a raw socket and close it (after `wait` seconds) without reading the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        time.sleep(wait)


def fault_run(url: str, known: tuple, known_answer: list) -> list[dict]:
    """Each fault, then the known question: the server must be alive and answer it as the Reader did."""
    qid, question, context = known
    good = json.dumps({"context": context, "questions": [question]}).encode()
    many = json.dumps({"context": context, "questions": [question] * 64}).encode()
    head = "POST /answer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n"
    faults = [
        ("malformed JSON", 422, lambda: http_json(url, "POST", "/answer", b'{"context": "x", "questions": [')),
        ("wrong types", 422, lambda: http_json(url, "POST", "/answer", b'{"context": 42, "questions": "why?"}')),
        ("empty question list", 422, lambda: http_json(url, "POST", "/answer", json.dumps(
            {"context": context, "questions": []}).encode())),
        ("not JSON at all", 422, lambda: http_json(url, "POST", "/answer", b"context=x", "text/plain")),
        ("huge context (50,000 chars)", 413, lambda: http_json(url, "POST", "/answer", json.dumps(
            {"context": "word " * 10_000, "questions": [question]}).encode())),
        ("too many questions (65)", 413, lambda: http_json(url, "POST", "/answer", json.dumps(
            {"context": context, "questions": [question] * 65}).encode())),
        ("2 MB body", 413, lambda: http_json(url, "POST", "/answer", b'{"context": "' + b"x" * 2_000_000 + b'"}')),
        ("client leaves mid-body", None, lambda: _leave(url, head.format(len(good)).encode() + good[: len(good) // 2])),
        ("client leaves before its answer (64 questions)", None,
         lambda: _leave(url, head.format(len(many)).encode() + many, wait=0.05)),
    ]
    results = []
    for name, expected, send in faults:
        outcome = send()
        status, body = outcome if outcome else (None, None)
        check_status, check = http_json(url, "POST", "/answer", good)
        answer = check["answers"][0] if check_status == 200 else None
        results.append({"fault": name, "status": status, "expected": expected, "as_expected": status == expected,
                        "detail": (body or {}).get("detail"), "alive": check_status == 200,
                        "answer_ok": answer is not None and _key(answer["text"], answer["start"], answer["end"]) == known_answer})
        print(f"  fault {name}: {status or 'no answer (client gone)'}; then "
              f"{'answered correctly' if results[-1]['answer_ok'] else f'FAILED ({check_status})'}", flush=True)
    return results


def format_table(report: dict) -> str:
    lines = [f"mrc serve on loopback: {report['model_origin']}, {report['questions']} questions of {report['data']}, "
             f"--max-batch {report['max_batch']} --max-wait-ms {report['max_wait_ms']:g}",
             f"{describe_machine(report['machine'])}; load average at start "
             + " ".join(f"{x:.1f}" for x in report["machine"]["load_average_at_start"]),
             f"  {'':26}  {'questions/s':>11}  {'p50 ms':>7}  {'p99 ms':>7}  {'mean batch':>10}  {'answers = Reader':>16}"]
    for row in report["rows"]:
        p50, p99 = (f"{row[k]:7.0f}" if k in row else f"{'-':>7}" for k in ("p50_ms", "p99_ms"))
        same = f"{row['identical_answers_pct']:15.1f}%" if "identical_answers_pct" in row else f"{'(reference)':>16}"
        lines.append(f"  {row['side']:26}  {row['questions_per_s']:11.1f}  {p50}  {p99}  {row['mean_batch']:10.1f}  {same}")
    lines.append(f"  {'mrc predict':26}  {'':11}  {'':7}  {'':7}  {'':10}  {report['predict']['identical_answers_pct']:15.1f}%")
    lines.append("faults (status; alive and answering as the Reader after it):")
    for f in report["faults"]:
        verdict = "ok" if f["as_expected"] and f["alive"] and f["answer_ok"] else "FAILED"
        lines.append(f"  {f['fault']:48} {str(f['status'] or '-'):>4}  {verdict}  {f['detail'] or ''}"[:160])
    return "\n".join(lines)


if __name__ == "__main__":
    run_script(main)
