"""Check and repair canonical records for one use: training, evaluation or prediction.

Training needs a character position for one answer per question; scoring needs only the answer texts; prediction
needs neither. So a misaligned `answer_start` is relocated to the occurrence of its text nearest the given start
(exactly, then ignoring whitespace, then after Unicode normalisation), an answer that cannot be found keeps
`answer_start = -1`, and a training question with no locatable answer is left out of training. A file whose starts
are mostly off their texts is tested for starts counted in UTF-8 bytes or UTF-16 code units (what other languages'
string positions count), and read in the unit that aligns them, before anything is relocated. A question with an
empty text stops training, but is left out of evaluation and prediction, with its gold answers kept for scoring: the
official CMRC 2018 trial file has two, and the official scorers score such a file. Every repair and every omission is counted in the report.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mrc_cli.cache import mark_used
from mrc_cli.data import RawData, is_blank, read_data, to_dataset
from mrc_cli.errors import DataError
from mrc_cli.files import check_output_file, write_text_atomically

USES = ("train", "eval", "predict", "score")  # score: gold answers for `mrc score`, which allows duplicate ids
MIXED_LANGUAGES = 0.05  # the share of a file's questions in its lesser language that _check_languages warns of
MAX_LISTED = 20  # repairs and warnings listed by message; all of them are counted
FINAL_PUNCTUATION = "。．.，,；;！!？?、"  # what may end an answer that its context goes on from with another mark
MOSTLY_MISALIGNED = 0.5  # the share of a file's starts off their found texts that has other offset units tried
NEARLY_ALL = 0.9  # the share of them another unit must align to be the file's (CMRC 2018 dev in bytes: 9,457 of 9,464)
OFFSET_UNITS = {  # a character's width where other languages count string positions otherwise than Python
    "UTF-8 byte": lambda char: len(char.encode("utf-8")),  # Go, Rust, C, byte-level tools
    "UTF-16 code unit": lambda char: 1 + (ord(char) > 0xFFFF),  # JavaScript, Java, C#: astral characters count 2
}
EXAMPLES_VERSION = 12  # bump when reading or validating changes its output, so old cached examples are not reused


@dataclass
class ValidationReport:
    source: str
    use: str
    questions: int = 0
    answers: int = 0
    unanswerable: int = 0
    misaligned: int = 0  # after reading the starts in the file's offset unit
    starts_read_as: str = "character"  # the offset unit of the file's answer_start values (OFFSET_UNITS)
    starts_converted: int = 0  # answer_start values moved from that unit to characters
    relocated: int = 0
    unlocatable: int = 0
    duplicate_ids: int = 0
    empty_questions: int = 0
    empty_contexts: int = 0
    without_answers: int = 0  # answerable questions that carry no answer at all (test files)
    read_as_unanswerable: int = 0  # no answers and no is_impossible mark (the Hub's squad_v2 has no such field)
    read_as_answerable: int = 0  # marked is_impossible, but with answers
    kept: int = 0  # questions fit for the use: the examples
    left_out_of_training: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)  # the first `listed`
    repairs_not_listed: int = 0
    listed: int | None = MAX_LISTED  # None: every repair is listed (mrc validate --all)

    @property
    def usable(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return {**asdict(self), "usable": self.usable}

    def summary(self) -> str:
        """Two lines for training/eval logs; `mrc validate` prints the details."""
        line = (
            f"{self.source}: {self.questions} questions, {self.answers} answers ({self.unanswerable} unanswerable); "
            f"{self.misaligned} misaligned answers: {self.relocated} relocated, {self.unlocatable} not in the context"
        )
        extra = []
        if self.starts_read_as != "character":
            extra.append(f"answer_start read as {self.starts_read_as} offsets: {self.starts_converted} answers")
        if self.duplicate_ids:
            extra.append(f"{self.duplicate_ids} duplicate ids")
        if self.without_answers and self.use != "predict":
            extra.append(f"{self.without_answers} questions without answers")
        if self.read_as_unanswerable:
            extra.append(f"{self.read_as_unanswerable} questions without answers or is_impossible mark read as "
                         "unanswerable (SQuAD v2.0's rule)")
        if self.use == "train":
            extra.append(f"{self.left_out_of_training} questions left out of training (no locatable answer)")
        elif self.empty_questions and self.use == "score":
            extra.append(f"{self.empty_questions} questions with an empty question text (scored as any other)")
        elif self.empty_questions:
            extra.append(f"{self.empty_questions} questions left out of {self.use} (empty question text; "
                         + ("scored as missing)" if self.use == "eval" else "not in the predictions)"))
        if self.errors:
            extra.append(f"{len(self.errors)} errors")
        return line + ("\n  " + "; ".join(extra) if extra else "")


def validate_file(source: str, use: str, fmt: str = "auto", list_all: bool = False,
                  fixed: str | Path | None = None) -> ValidationReport:
    """The report for a file; a file that cannot be read at all is a report with one error, not an exception.
    `list_all`: every repair listed, not the first MAX_LISTED. `fixed`: where to write the questions fit for `use`,
    repaired (write_squad), where the file is usable for it."""
    if fixed is not None:
        check_output_file(fixed, "--fix", "fixed.json", data=source)
    try:
        raw = read_data(source, fmt)
    except DataError as err:
        return ValidationReport(str(source), use, errors=[str(err)])
    records, report = validate_records(raw, use, None if list_all else MAX_LISTED)
    if fixed is not None and report.usable:
        if use in ("eval", "score"):  # scored by the texts the file gives, not by the context's that relocation took
            records = [{**rec, "answers": {**rec["answers"], "text": read["answers"]["text"]}}
                       for read, rec in zip(raw.records, validated_records(raw.records, records)) if rec is not None]
        write_squad(records, Path(fixed), f"{Path(source).name}, repaired by mrc validate --for {use}")
    return report


def validated_records(read: list[dict], kept: list[dict]) -> list[dict | None]:
    """Each record as read with its validated one (answers relocated where misaligned), None where validation left
    it out: matched in the file's order, so a repeated id keeps its own. `read` may be golds made of the records."""
    records, rest = [], iter(kept)
    record = next(rest, None)
    for one in read:
        if record is not None and (record["id"], record["context"]) == (one["id"], one["context"]):
            records.append(record)
            record = next(rest, None)
        else:
            records.append(None)
    return records


def write_squad(records: list[dict], path: Path, version: str) -> None:
    """Canonical records as SQuAD-style JSON: articles by title and paragraphs by context, in the records' order."""
    articles: dict[str, dict[str, list]] = {}
    for rec in records:
        qa = {"id": rec["id"], "question": rec["question"],
              "answers": [{"text": t, "answer_start": s} for t, s in zip(rec["answers"]["text"],
                                                                         rec["answers"]["answer_start"])],
              "is_impossible": rec["is_impossible"]}
        articles.setdefault(rec["title"], {}).setdefault(rec["context"], []).append(qa)
    data = [{"title": title, "paragraphs": [{"context": context, "qas": qas} for context, qas in paragraphs.items()]}
            for title, paragraphs in articles.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps({"version": version, "data": data}, ensure_ascii=False, indent=1))


def load_examples(source: str, use: str, fmt: str = "auto", cache_dir: str | Path | None = None):
    """Read and validate for `use`; returns (examples Dataset, report, golds for scoring with the original texts).

    Raises DataError listing the first problems when the file is not usable for `use`. With `cache_dir`, the result
    for a file is kept there under a hash of its path, bytes and `use`, and the same file is not parsed and validated
    again (0.09 s per 4,370 SQuAD questions: about 2 s for the whole SQuAD train file).
    """
    folder = _cache_folder(source, use, fmt, cache_dir)
    if folder is not None and folder.is_dir():
        try:
            return _read_cache(folder)
        except (OSError, ValueError, TypeError):  # a file of the entry cut, emptied or gone: read and validated again
            shutil.rmtree(folder, ignore_errors=True)
    raw = read_data(source, fmt)
    records, report = validate_records(raw, use)
    if not report.usable:
        shown = "\n  ".join(report.errors[:5])
        more = f"\n  ... and {len(report.errors) - 5} more" if len(report.errors) > 5 else ""
        # a warning may say why (answers under another field's name): shown with the errors it explains
        warned = "".join(f"\n  warning: {warning}" for warning in report.warnings[:3])
        raise DataError(
            f"{source} is not usable for {use} ({len(report.errors)} problems):\n  {shown}{more}{warned}\n"
            f"Run `mrc validate {source} --for {use}` for the full report."
        )
    golds = [
        {"id": r["id"], "answers": r["answers"]["text"], "is_impossible": r["is_impossible"], "context": r["context"]}
        for r in raw.records
    ]
    examples = to_dataset(records)
    if folder is None:
        return examples, report, golds
    _save_to_cache(folder, examples, report, golds)
    # the cached copy, also on this first run: the same Arrow layout every time, so the features' fingerprint matches
    return _read_cache(folder)


def _read_cache(folder: Path):
    import datasets

    report = ValidationReport(**json.loads((folder / "report.json").read_text(encoding="utf-8")))
    golds = json.loads((folder / "golds.json").read_text(encoding="utf-8"))
    examples = datasets.Dataset.from_file(str(folder / "examples.arrow"))  # memory-mapped
    if len(examples) != report.kept:  # a file cut at a record batch's end reads as fewer examples
        raise ValueError(f"{len(examples)} examples of the {report.kept} written")
    mark_used(folder / "report.json")
    return examples, report, golds


def _cache_folder(source: str, use: str, fmt: str, cache_dir: str | Path | None) -> Path | None:
    """Where the validated examples of a local file are cached; None for folders and Hub datasets."""
    if cache_dir is None or not Path(source).is_file():
        return None
    h = hashlib.sha256(repr((EXAMPLES_VERSION, str(source), use, fmt)).encode())
    h.update(Path(source).read_bytes())
    return Path(cache_dir) / f"examples-{h.hexdigest()[:24]}"


def _save_to_cache(folder: Path, examples, report: ValidationReport, golds: list[dict]) -> None:
    """Written beside the final folder and renamed into place: a reader never sees half a cache entry."""
    import pyarrow as pa

    partial = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    table = examples.data.table  # its schema metadata carries the datasets features
    with pa.OSFile(str(partial / "examples.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    (partial / "report.json").write_text(json.dumps(asdict(report)), encoding="utf-8")
    (partial / "golds.json").write_text(json.dumps(golds, ensure_ascii=False), encoding="utf-8")
    try:
        partial.rename(folder)
    except OSError:  # another process cached the same file first
        shutil.rmtree(partial, ignore_errors=True)


def refuse_repeated_ids(ids: list[str], source: str, why: str) -> None:
    """A training file whose question ids repeat, refused by the commands that key its questions by id (`why`):
    training alone only warns of them."""
    repeated = sorted(qid for qid, n in Counter(ids).items() if n > 1)
    if repeated:
        extra = len(ids) - len(set(ids))
        raise DataError(f"{source}: {extra} repeated question id{'s' * (extra > 1)} ({', '.join(repeated[:5])}"
                        f"{', ...' if len(repeated) > 5 else ''}): {why}; give each question its own id (mrc validate "
                        "lists them)")


def validate_records(raw: RawData, use: str, listed: int | None = MAX_LISTED) -> tuple[list[dict], ValidationReport]:
    """Return the records fit for `use` (answers relocated where needed) and the report, which lists the first
    `listed` repairs (None: all) and counts all of them."""
    if not isinstance(raw, RawData):
        raise TypeError(f"validate_records takes what read_data(path) returns, not {type(raw).__name__}; "
                        "validate_file(path, use) reads and validates a file")
    if use not in USES:
        raise ValueError(f"use must be one of {USES}, not {use!r}")
    report = ValidationReport(raw.source, use, listed=listed)
    report.errors.extend(f"{raw.source}: {p}" for p in raw.problems)
    counts = Counter(r["id"] for r in raw.records)
    report.duplicate_ids = sum(n - 1 for n in counts.values() if n > 1)
    for qid in sorted(q for q, n in counts.items() if n > 1)[:MAX_LISTED]:
        msg = f"{raw.source}: question id {qid} occurs {counts[qid]} times"
        if use == "train":
            report.warnings.append(msg)
        elif use == "score":  # the official scripts score each question against its id's prediction
            report.warnings.append(msg + " (SQuAD v1.1's and CMRC 2018's official scripts score each against that id's "
                                         "prediction, SQuAD v2.0's the last one only)")
        else:
            report.errors.append(msg + " (a prediction file keyed by id would be ambiguous; make ids unique)")

    report.read_as_unanswerable, report.read_as_answerable = len(raw.read_as_unanswerable), len(raw.read_as_answerable)
    if raw.read_as_answerable:
        report.warnings.append(f"{raw.source}: {len(raw.read_as_answerable)} questions are marked is_impossible but "
                               f"carry answers (the first: {raw.read_as_answerable[0]}); they are trained and scored "
                               "as answerable, as the official SQuAD v2.0 script scores them (it reads only the "
                               "answers); SQuAD v2.0 keeps the texts of unanswerable questions in plausible_answers")
    if raw.read_as_unanswerable and (raw.marks_unanswerable or not raw.hub_layout):  # the Hub's squad_v2 marks none
        report.warnings.append(
            f"{raw.source}: {len(raw.read_as_unanswerable)} questions have no answers and are not marked is_impossible "
            f"(the first: {raw.read_as_unanswerable[0]}); they are trained and scored as unanswerable, as the official "
            "SQuAD v2.0 script scores them" + ("" if raw.marks_unanswerable else ", so the file is scored by SQuAD "
                                               "v2.0's rules: give their answers, or leave them out, for v1.1's"))
    if raw.unread_answer_fields:
        fields = ", ".join(f"{key!r} ({n})" for key, n in raw.unread_answer_fields.most_common())
        report.warnings.append(f"{raw.source}: questions without an 'answers' field carry {fields}, which is not read: "
                               "answers come from 'answers', as [{\"text\", \"answer_start\"}] or {\"text\": [], "
                               "\"answer_start\": []}, so these questions have no answers; convert the file")
    kept = []
    for rec, starts in zip(raw.records, _read_starts(raw, report)):
        report.questions += 1
        report.unanswerable += rec["is_impossible"]
        where = f"{raw.source}: question {rec['id']}"
        empty_question = is_blank(rec["question"])
        if empty_question:
            report.empty_questions += 1
            if use == "train":
                report.errors.append(f"{where}: the question is empty")
            elif use != "score":  # no model input, but its gold answers (golds come from raw.records) still count
                _repair(report, f"{where}: the question is empty (left out of {use})")
        if is_blank(rec["context"]):
            report.empty_contexts += 1
            if use != "score":  # the official scorers read only ids and answers
                report.errors.append(f"{where}: the context is empty")
        rec = {**rec, "answers": _locate_answers(rec, starts, where, report)}
        located = any(s >= 0 for s in rec["answers"]["answer_start"])
        if not rec["is_impossible"] and not rec["answers"]["text"]:
            report.without_answers += 1
            if use in ("eval", "score"):
                report.errors.append(f"{where}: no answers and not marked is_impossible; cannot score it")
        if use == "train" and not rec["is_impossible"] and not located:
            report.left_out_of_training += 1
            continue
        if empty_question and use != "score":
            continue
        kept.append(rec)
    if use == "eval":
        _check_scorable(raw, report)
    if use in ("eval", "score"):
        _check_empty_answers(raw, report)
        _check_languages(raw, report)
    if not raw.records and not raw.problems:
        report.errors.append(f"{raw.source}: no questions found")
    elif raw.records and not kept and not report.errors and use != "score":  # score reads every question's gold
        report.errors.append(f"{raw.source}: none of its {report.questions} questions is left for {use} (the counts "
                             "and repairs say why)")
    report.kept = len(kept)
    return kept, report


def _check_scorable(raw: RawData, report: ValidationReport) -> None:
    """What `mrc eval` and a training run's dev evaluation will refuse (mrc_cli.metrics.unscorable), as a warning:
    `mrc analyze --metric squad_v2` and `mrc score --metric squad_v2` take the file."""
    from mrc_cli.metrics import unscorable

    problem = unscorable([{**r, "answers": r["answers"]["text"]} for r in raw.records], raw.source)
    if problem:
        report.warnings.append(problem)


def _check_empty_answers(raw: RawData, report: ValidationReport) -> None:
    """Gold answers with nothing left after the official normalisation (blank, "。", "the"): an empty or
    punctuation-only prediction equals them there (EM 100), and one of invisible characters (a zero-width space)
    only, which normalisation keeps, no prediction equals."""
    from mrc_cli.metrics import detect_metric, rules

    golds = [{**r, "answers": r["answers"]["text"]} for r in raw.records]
    empty_cmrc = _empty_answer_ids(golds, rules.strip_cmrc_punctuation)
    empty_squad = _empty_answer_ids(golds, rules.normalize_squad)
    if not (empty_cmrc or empty_squad):  # only then worth finding which rules score the file (0.5 s on CMRC 2018 dev)
        return
    if detect_metric(golds) == "cmrc2018":
        empty, what = empty_cmrc, "only punctuation"
        advice = ('the CMRC 2018 rules drop punctuation, so an empty or punctuation-only prediction ("。") matches '
                  "them (EM 100): remove such an answer, or the question where it has no other (not is_impossible: "
                  "CMRC 2018 has no unanswerable questions, and eval and score would refuse the file)")
    else:
        empty, what = empty_squad, "only punctuation and articles"
        advice = ('the SQuAD rules drop punctuation and a/an/the, so an empty or punctuation-only prediction (".") '
                  "matches them (EM 100): give their real text, or remove them (a question left with no answer is "
                  "unanswerable: mark it is_impossible)")
    if empty:
        questions = f"{len(empty)} question{'s' * (len(empty) > 1)}"
        report.warnings.append(f"{raw.source}: gold answers that are blank or {what} in {questions} (the first: "
                               f"{empty[0]}): {advice}")


def _empty_answer_ids(golds: list[dict], normalise) -> list[str]:
    return [gold["id"] for gold in golds if any(is_blank(text) or not normalise(text) for text in gold["answers"])]


def _check_languages(raw: RawData, report: ValidationReport) -> None:
    """A file of Chinese and other questions alike is scored by one metric, whose rules suit one of them."""
    from mrc_cli.metrics import is_chinese

    chinese = {context: is_chinese(context) for context in {r["context"] for r in raw.records}}
    on_chinese = sum(chinese[r["context"]] for r in raw.records)
    fewer = min(on_chinese, len(raw.records) - on_chinese)
    if fewer and fewer >= MIXED_LANGUAGES * len(raw.records):  # one set of rules scores the whole file
        report.warnings.append(f"{raw.source}: {on_chinese} of its {len(raw.records)} questions are about Chinese "
                               "contexts and the others not: one metric (cmrc2018 or squad) scores them all; score "
                               "each language as a file of its own")


def _read_starts(raw: RawData, report: ValidationReport) -> list[list[int]]:
    """Each record's answer starts as characters. Where most starts of the file are off their texts, the first offset
    unit that aligns nearly all of them is the file's, and every start is converted from it: relocation alone would
    take the occurrence nearest a byte offset (in CMRC 2018 dev, another than the one meant for 864 of its 9,657
    answers)."""
    starts = [rec["answers"]["answer_start"] for rec in raw.records]
    found = [(rec["context"], text, start) for rec in raw.records
             for text, start in zip(rec["answers"]["text"], rec["answers"]["answer_start"])
             if start >= 0 and not is_blank(text) and text in rec["context"]]
    misaligned = sum(not context.startswith(text, start) for context, text, start in found)
    if misaligned <= MOSTLY_MISALIGNED * len(found):  # a file in characters: one pass of startswith, no more
        return starts
    for unit, width in OFFSET_UNITS.items():
        to_char = functools.lru_cache(maxsize=None)(functools.partial(_char_at, width=width))
        aligned = sum(context.startswith(text, to_char(context)(start)) for context, text, start in found)
        if aligned >= NEARLY_ALL * len(found):
            converted = [[to_char(rec["context"])(start) for start in rec_starts]
                         for rec, rec_starts in zip(raw.records, starts)]
            report.starts_read_as = unit
            report.starts_converted = sum(a != b for old, new in zip(starts, converted) for a, b in zip(old, new))
            return converted
    report.warnings.append(
        f"{raw.source}: {misaligned} of the {len(found)} answers found in their context are not at their answer_start, "
        f"read as characters or as {' or '.join(f'{unit}s' for unit in OFFSET_UNITS)}: each was relocated to the "
        "occurrence of its text nearest its start, which may be another than the one meant; write answer_start as "
        "character offsets (Python's str indices)")
    return starts


def _char_at(context: str, width: Callable[[str], int]) -> Callable[[int], int]:
    """A function from an offset into `context`, counted in units of `width` per character, to the index of the
    character it falls in; an offset outside the context (or negative: no position given) is kept as it is."""
    chars = [i for i, char in enumerate(context) for _ in range(width(char))] + [len(context)]
    return lambda start: chars[start] if 0 <= start < len(chars) else start


def _locate_answers(rec: dict, given: list[int], where: str, report: ValidationReport) -> dict:
    """`rec`'s answers at their `given` starts (in characters), relocated where misaligned."""
    context = rec["context"]
    texts, starts = [], []
    for text, start in zip(rec["answers"]["text"], given):
        report.answers += 1
        if not is_blank(text) and 0 <= start and context.startswith(text, start):
            texts.append(text)
            starts.append(start)
            continue
        report.misaligned += 1
        found = locate_answer(context, text, start)
        if found is None:
            report.unlocatable += 1
            texts.append(text)
            starts.append(-1)
            _repair(report, f'{where}: answer "{text}" is not in its context (kept for scoring only)')
            continue
        report.relocated += 1
        new_start, new_text = found
        texts.append(new_text)
        starts.append(new_start)
        dropped = text.strip()[len(text.strip().rstrip(FINAL_PUNCTUATION)):]
        if dropped and not _squeezed(unicodedata.normalize("NFKC", new_text)).endswith(
                unicodedata.normalize("NFKC", dropped)):
            _repair(report, f'{where}: answer "{text}" is not in its context, without its final "{dropped}" it is '
                            f'(found at {new_start}; relocated without it)')
        elif _squeezed(new_text) != _squeezed(text):
            _repair(report, f'{where}: answer "{text}" is not in its context, "{new_text}" is: the same text after '
                            f'Unicode normalisation (NFKC; found at {new_start}, relocated as the context writes it)')
        elif new_text != text.strip():
            _repair(report, f'{where}: answer "{text}" is not in its context, "{new_text}" is: the same text with other '
                            f'whitespace (found at {new_start}, relocated as the context writes it)')
        elif start == -1:  # the file gave no position (answer_start missing or null): found, not moved
            _repair(report, f'{where}: answer "{text}" has no answer_start; found at char {new_start} of its context')
        elif start < 0:
            _repair(report, f'{where}: answer "{text}" has negative answer_start {start}; found at char {new_start} of '
                            'its context')
        elif new_start == start:  # "  text\n" where the context has "text": right place, whitespace not the context's
            _repair(report, f'{where}: answer "{new_text}" is at char {start} of its context as given, but with '
                            'whitespace around it (stripped, not moved)')
        else:
            _repair(report, f'{where}: answer "{text}" is not at char {start} of its context (found at {new_start}; '
                            'relocated)')
    return {"text": texts, "answer_start": starts}


def locate_answer(context: str, text: str, start: int) -> tuple[int, str] | None:
    """The occurrence of `text` nearest `start`, as the context writes it: exact first, then ignoring whitespace, then
    after Unicode normalisation (NFKC), then each without the text's final punctuation. None if absent or blank."""
    needle = text.strip()
    normalised = None  # the context in NFKC, made only for the rare answer that needs it
    # CMRC 2018's annotators often end a sentence-long answer with "。" where the context goes on with "，": 160 of
    # the 193 answers of its dev set that are not in their context are there without it
    for candidate in dict.fromkeys((needle, needle.rstrip(FINAL_PUNCTUATION))):
        if is_blank(candidate):  # nothing a token could cover (a zero-width space): not an answer to point to
            return None
        hits = [(m.start(), candidate) for m in re.finditer(re.escape(candidate), context)]
        if not hits:
            # "1998 年" against "1998年", or a line break inside the context's copy of the answer
            hits = [(m.start(), m.group()) for m in re.finditer(_spaced(candidate), context)]
        if not hits:
            # "１９９８" against "1998", or "é" written as e + U+0301 on one side only
            normalised = normalised or _nfkc_with_offsets(context)
            text_nfkc, begins, ends = normalised
            pattern = _spaced(unicodedata.normalize("NFKC", candidate))
            hits = [(begins[m.start()], context[begins[m.start()]:ends[m.end() - 1]])
                    for m in re.finditer(pattern, text_nfkc) if m.end() > m.start()]
        if hits:
            return min(hits, key=lambda hit: abs(hit[0] - max(start, 0)))
    return None


def _spaced(text: str) -> str:
    """A pattern for `text` that allows any whitespace between its characters."""
    return r"\s*".join(re.escape(c) for c in text if not c.isspace())


def _squeezed(text: str) -> str:
    return re.sub(r"\s", "", text)


def _nfkc_with_offsets(text: str) -> tuple[str, list[int], list[int]]:
    """`text` in NFKC, and for each of its characters the start and end in `text` of the characters it came from: a
    piece of `text` grows while NFKC composes its next character with it (a combining accent, a half-width voiced
    mark, a Hangul jamo)."""
    nfkc = functools.partial(unicodedata.normalize, "NFKC")
    pieces, begins, ends = [], [], []
    i = 0
    while i < len(text):
        j = i + 1
        while j < len(text) and nfkc(text[i:j + 1]) != nfkc(text[i:j]) + nfkc(text[j]):
            j += 1
        piece = nfkc(text[i:j])
        pieces.append(piece)
        begins += [i] * len(piece)
        ends += [j] * len(piece)
        i = j
    return "".join(pieces), begins, ends


def _repair(report: ValidationReport, msg: str) -> None:
    if report.listed is None or len(report.repairs) < report.listed:
        report.repairs.append(msg)
    else:
        report.repairs_not_listed += 1
