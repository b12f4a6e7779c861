"""Read SQuAD-style JSON, JSON Lines and Hugging Face datasets into one canonical form.

A record is `{id, title, context, question, answers: {text: [...], answer_start: [...]}, is_impossible}`, the shape
of the Hub's `squad`/`squad_v2` datasets, so users' data and Hub data flow through the same code. Reading keeps
records as they are; `validate.py` checks and repairs them. Shape problems of single records (a missing or mistyped
field) are collected as `RecordProblem`s so that `mrc validate` can list them all; problems with the file as a whole
(unreadable, wrong encoding, wrong top-level shape) raise `DataError` at once.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from mrc_cli.errors import DataError

FORMATS = ("auto", "squad", "jsonl", "hf")
TEXT_FIELDS = ("context", "question")
BINARY_FORMATS = {  # a file's first bytes: what it is, and what to do instead of re-encoding it
    b"\x1f\x8b": "gzip-compressed; decompress it first (gunzip -k FILE)",
    b"BZh": "bzip2-compressed; decompress it first (bunzip2 -k FILE)",
    b"\xfd7zXZ\x00": "xz-compressed; decompress it first (unxz -k FILE)",
    b"PK\x03\x04": "a zip archive; unzip it first",
    b"PAR1": "a Parquet file; convert it with datasets (Dataset.from_parquet(FILE).to_json(\"data.jsonl\")) or pass a "
             "folder that Dataset.save_to_disk wrote",
    b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"%PDF": "a PDF document", b"\x7fELF": "a program",
}
LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # JSON's "\ud83d" alone: no character, and no UTF-8 for it


@dataclass
class RecordProblem:
    where: str  # "question ID" or "line N", as the user finds it in the file
    problem: str

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}"


@dataclass
class RawData:
    """What a reader found: canonical records plus the records it could not read."""

    source: str
    format: str
    records: list[dict] = field(default_factory=list)
    problems: list[RecordProblem] = field(default_factory=list)
    # ids whose is_impossible the answers overrode (_settle_unanswerable), for validate's report
    read_as_unanswerable: list[str] = field(default_factory=list)  # no answers, not marked
    read_as_answerable: list[str] = field(default_factory=list)  # marked is_impossible, with answers
    marks_unanswerable: bool = False  # some question carries an is_impossible field
    hub_layout: bool = False  # answers as the Hub's dict of lists, whose squad_v2 marks unanswerable by [] alone
    unasked_contexts: list[str] = field(default_factory=list)  # of SQuAD paragraphs without questions: pre-training's
    # fields like `answer` or `answer_text` of questions without `answers`: another tool's layout, read as no answers
    unread_answer_fields: Counter = field(default_factory=Counter)


def read_data(source: str | Path, fmt: str = "auto") -> RawData:
    """Read a data file, a saved dataset folder or a Hub dataset (`name` or `name:split`)."""
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}; choose one of {', '.join(FORMATS)}")
    path = Path(source)
    if fmt == "auto":
        fmt = _detect_format(path)
    if fmt == "hf":
        return _settle_unanswerable(_read_hf(str(source)))
    if not path.is_file():  # a config's paths are taken from where mrc runs, not from the config's folder
        raise DataError(f"{source}: no such file" + ("" if path.is_absolute() else f" (in {Path.cwd()})"))
    text = read_text(path)
    return _settle_unanswerable(_read_jsonl(path, text) if fmt == "jsonl" else _read_json(path, text))


def _settle_unanswerable(raw: RawData) -> RawData:
    """A question is unanswerable where it has no answer, as the official SQuAD v2.0 script scores it (it reads only
    the answers): the Hub's squad_v2 has no is_impossible field, and a question marked is_impossible that carries
    answers counts as answerable. Only a file where no question has an answer (a test file) keeps its marks."""
    if not any(rec["answers"]["text"] for rec in raw.records):
        for rec in raw.records:
            rec["is_impossible"] = bool(rec["is_impossible"])
        return raw
    raw.marks_unanswerable = any(rec["is_impossible"] is not None for rec in raw.records)
    for rec in raw.records:
        unanswerable = not rec["answers"]["text"]
        if bool(rec["is_impossible"]) != unanswerable:
            (raw.read_as_unanswerable if unanswerable else raw.read_as_answerable).append(rec["id"])
        rec["is_impossible"] = unanswerable
    return raw


def missing_file(source: str | Path) -> bool:
    """Whether read_data would take `source` for a local file, and find none (not a Hub or saved dataset's name)."""
    return _detect_format(Path(source)) != "hf" and not Path(source).is_file()


def _detect_format(path: Path) -> str:
    named = Path(str(path).partition(":")[0])  # without a :split
    if named.is_dir() or (not path.exists() and not _reads_as_path(named)):
        return "hf"  # a saved dataset folder, or a Hub name such as squad_v2:validation
    if path.suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    return "squad"  # .json: nested SQuAD, or a flat list of records (handled by _read_json)


def _reads_as_path(path: Path) -> bool:
    """A name that does not exist is still a file's, not a Hub dataset's, where it has a file suffix (dev.jsn), is
    absolute, or lies in a folder that exists here (data/dev): no wait on the Hub to say it is missing."""
    return (re.fullmatch(r"\.[A-Za-z]\w*", path.suffix) is not None or path.is_absolute()
            or (len(path.parts) > 1 and Path(path.parts[0]).is_dir()))


def read_text(path: Path) -> str:
    """A file's text as UTF-8 (a byte-order mark tolerated); another encoding is an error that says how to convert."""
    raw = path.read_bytes()
    kind = next((kind for magic, kind in BINARY_FORMATS.items() if raw.startswith(magic)), None)
    if kind:
        raise DataError(f"{path}: {kind}, not a text file")
    try:
        text = raw.decode("utf-8-sig")  # tolerate a byte-order mark, as editors on Windows write it
        if _utf16_without_bom(raw):  # ASCII in UTF-16 without a byte-order mark is valid UTF-8, with NULs
            raise UnicodeDecodeError("utf-8", raw, raw.index(0), raw.index(0) + 1, "NUL bytes")
        return text
    except UnicodeDecodeError as err:
        if err.reason == "unexpected end of data":  # UTF-8 up to a character cut off by the end of the file
            raise DataError(f"{path}: the file ends inside a character (byte {err.start} of {len(raw)}); is it "
                            "truncated?") from None
        encoding = _likely_encoding(raw)
        raise DataError(
            f"{path}: not UTF-8 text (byte {err.start}: {raw[err.start:err.start + 4]!r}); re-save the file as UTF-8, "
            f"e.g. `iconv -f {encoding} -t UTF-8 {path.name} > utf8-{path.name}`"
        ) from None


def _likely_encoding(raw: bytes) -> str:
    """The encoding to suggest for bytes that are not UTF-8: UTF-16 where a byte-order mark or NUL bytes (ASCII in
    UTF-16) say so, GB18030 (Chinese data's usual other encoding) where bytes >= 0x80 come in pairs, else
    Windows-1252."""
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "UTF-16"
    if order := _utf16_without_bom(raw):
        return order
    # a Chinese character is two bytes >= 0x80 in GB18030; Western text in CP1252 has a lone one between ASCII bytes
    sample = raw[:100_000]
    high = [i for i, byte in enumerate(sample) if byte >= 0x80]
    lone = sum((i == 0 or sample[i - 1] < 0x80) and (i + 1 == len(sample) or sample[i + 1] < 0x80) for i in high)
    return "CP1252" if lone > len(high) / 2 else "GB18030"


def _utf16_without_bom(raw: bytes) -> str | None:
    """UTF-16LE or UTF-16BE where the first bytes are a quarter NULs or more (ASCII in UTF-16: the NULs' side says the
    byte order), else None."""
    head = raw[:200]
    if head.count(0) <= len(head) // 4:
        return None
    return "UTF-16LE" if head[1::2].count(0) > head[::2].count(0) else "UTF-16BE"


def _read_json(path: Path, text: str) -> RawData:
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
            "is the file truncated? JSON Lines files should end in .jsonl"
        ) from None
    except RecursionError:
        raise DataError(f"{path}: not valid data: JSON nested too deeply to read (arrays or objects in each other "
                        "hundreds of levels deep)") from None
    if isinstance(obj, list):  # a flat list of records, as a JSON array
        if obj and isinstance(obj[0], dict) and "paragraphs" in obj[0]:
            raise DataError(f"{path}: a list of SQuAD articles without the document around it; SQuAD-style JSON is "
                            '{"data": [articles]}')
        raw = RawData(str(path), "jsonl")
        for i, rec in enumerate(obj):
            _add_flat(raw, rec, f"record {i}")
        return raw
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        if isinstance(obj, dict) and "data" in obj:
            found = f"'data' holding {_kind(obj['data'])}, not a list of articles"
        elif isinstance(obj, dict):
            keys = list(map(str, obj))
            found = (f"top-level {', '.join(keys[:5])}" + (f" and {len(keys) - 5} more keys" if len(keys) > 5 else "")
                     if obj else "an empty object")
            if obj and all(isinstance(value, str) for value in obj.values()):
                found += " (a predictions file {question id: answer}? a gold data file goes first: mrc score GOLD PRED)"
        else:
            found = f"top-level {type(obj).__name__}"
        raise DataError(
            f"{path}: expected SQuAD-style JSON {{\"data\": [{{\"paragraphs\": [{{\"context\", \"qas\"}}]}}]}}, "
            f"found {found}"
        )
    raw = RawData(str(path), "squad")
    for a, article in enumerate(obj["data"]):
        for p, paragraph in enumerate(_list_field(raw, article, "paragraphs", f"article {a}")):
            where = f"article {a} paragraph {p}"
            if not isinstance(paragraph, dict):
                raw.problems.append(RecordProblem(where, f"expected an object, found {type(paragraph).__name__}"))
                continue
            context = paragraph.get("context")
            if isinstance(context, str) and paragraph.get("qas") == []:
                raw.unasked_contexts.append(context)
            for q, qa in enumerate(_list_field(raw, paragraph, "qas", where)):
                flat = dict(qa) if isinstance(qa, dict) else qa
                if isinstance(flat, dict):
                    flat["context"] = context
                    flat.setdefault("title", article.get("title", "") if isinstance(article, dict) else "")
                _add_flat(raw, flat, f"{where} question {q}")
    return raw


def _list_field(raw: RawData, obj: Any, key: str, where: str) -> list:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, list):
        raw.problems.append(RecordProblem(where, f"field {key!r} missing or not a list"))
        return []
    return value


def _read_jsonl(path: Path, text: str) -> RawData:
    raw = RawData(str(path), "jsonl")
    # lines end at \n, \r\n or \r only: str.splitlines also cuts at U+2028 and U+0085, which JSON strings may hold
    for n, line in enumerate(re.split(r"\r\n?|\n", text), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except RecursionError:
            raw.problems.append(RecordProblem(f"line {n}", "JSON nested too deeply to read"))
            continue
        except json.JSONDecodeError as err:
            if not raw.records and not raw.problems and is_json(text):  # a .json saved as .jsonl
                raise DataError(f"{path}: one JSON document over many lines, not JSON Lines (a record a line); leave "
                                "out --format jsonl, or name the file .json") from None
            raw.problems.append(RecordProblem(f"line {n}", f"not valid JSON ({err.msg}, column {err.colno})"))
            continue
        if not raw.records and isinstance(rec, dict) and isinstance(rec.get("data"), list):
            raise DataError(f"{path}: line {n} is a SQuAD document ({{\"data\": [articles]}}), not a JSON Lines "
                            "record; name the file .json, or give --format squad")
        _add_flat(raw, rec, f"line {n}")
    return raw


def is_json(text: str) -> bool:
    """Whether `text` is one JSON value."""
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def _read_hf(source: str) -> RawData:
    import datasets

    name, _, split = source.partition(":")
    try:
        if Path(name).is_dir():
            ds = datasets.load_from_disk(name)
        else:
            ds = datasets.load_dataset(name, split=split or "validation")
    except Exception as err:  # the Hub and disk loaders raise many types; all mean "cannot read this source"
        raise DataError(
            f"{source}: not a data file, a saved dataset folder or a reachable Hub dataset ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); offline, pass a local .json/.jsonl file"
        ) from None
    if isinstance(ds, datasets.DatasetDict):  # a saved folder of splits: one is named, or there is only one
        if split and split not in ds:
            raise DataError(f"{source}: {name} has no split {split!r}; its splits: {', '.join(ds)}")
        if not split and len(ds) > 1:
            raise DataError(f"{source}: a dataset of the splits {', '.join(ds)}; name one, e.g. {name}:{next(iter(ds))}")
        ds = ds[split or next(iter(ds))]
    raw = RawData(source, "hf")
    for i, rec in enumerate(ds):
        _add_flat(raw, rec, f"row {i}")
    return raw


def _add_flat(raw: RawData, rec: Any, where: str) -> None:
    """Turn one flat question record into the canonical form, or note why it cannot be read."""
    if not isinstance(rec, dict):
        raw.problems.append(RecordProblem(where, f"expected an object, found {type(rec).__name__}"))
        return
    if rec.get("id") is not None:
        where = f"question {rec['id']}"
    missing = [k for k in ("id", *TEXT_FIELDS) if k not in rec or rec[k] is None]
    if missing:
        raw.problems.append(RecordProblem(where, f"missing field(s) {', '.join(missing)}"))
        return
    if isinstance(rec["id"], bool) or not isinstance(rec["id"], (str, int)) or not str(rec["id"]).strip():
        raw.problems.append(RecordProblem(where, f"field 'id' must be text or a whole number, got {_kind(rec['id'])}"))
        return
    wrong = [k for k in TEXT_FIELDS if not isinstance(rec[k], str)]
    if wrong:
        raw.problems.append(RecordProblem(where, f"field(s) {', '.join(wrong)} must be text"))
        return
    if "answers" not in rec:
        raw.unread_answer_fields.update(key for key in rec if "answer" in str(key).lower())
    answers = _canonical_answers(rec.get("answers"))
    raw.hub_layout |= isinstance(rec.get("answers"), dict)
    if isinstance(answers, str):
        raw.problems.append(RecordProblem(where, f"field 'answers' must be [{{\"text\", \"answer_start\"}}] or "
                                                 f"{{\"text\": [], \"answer_start\": []}}: {answers}"))
        return
    impossible = rec.get("is_impossible")
    if impossible is not None and impossible not in (0, 1):  # bool("false") is True; 0/1 (and true/false) are fine
        raw.problems.append(RecordProblem(where, f"field 'is_impossible' must be true or false, got {_kind(impossible)}"))
        return
    texts = {"id": str(rec["id"]), "title": str(rec.get("title") or ""), "context": rec["context"],
             "question": rec["question"], **{f"answer {i + 1}": text for i, text in enumerate(answers["text"])}}
    broken = next(((name, m.start(), m.group()) for name, text in texts.items() if (m := LONE_SURROGATE.search(text))),
                  None)
    if broken:
        name, at, char = broken
        raw.problems.append(RecordProblem(where, f"the {name} holds an invalid character at char {at} (a lone UTF-16 "
                                                 f"surrogate, {json.dumps(char)}: half of a character such as an "
                                                 "emoji, cut by the tool that wrote the file); fix or remove it"))
        return
    raw.records.append(
        {
            "id": str(rec["id"]),
            "title": str(rec.get("title") or ""),
            "context": rec["context"],
            "question": rec["question"],
            "answers": answers,
            "is_impossible": None if impossible is None else bool(impossible),  # None: unmarked, settled on reading
        }
    )


def _canonical_answers(answers: Any) -> dict | str:
    """Accept SQuAD's list of {text, answer_start} and the Hub's dict of lists; a string says what is wrong."""
    if answers is None:
        return {"text": [], "answer_start": []}  # a test file: nothing to train or score on, fine for predict
    if isinstance(answers, dict):
        texts = answers.get("text")
        if not isinstance(texts, list):
            return f"its text is {_kind(texts)}, not a list"
        starts = answers.get("answer_start", [-1] * len(texts))
        if not isinstance(starts, list) or len(texts) != len(starts):
            return f"its answer_start is {_kind(starts)}, not a list as long as its text ({len(texts)})"
        pairs = list(zip(texts, starts))
    elif isinstance(answers, list):
        if not all(isinstance(a, dict) and "text" in a for a in answers):
            return "an answer without a text"
        pairs = [(a["text"], a.get("answer_start", -1)) for a in answers]
    else:
        return f"found {_kind(answers)}"
    starts = []
    for text, start in pairs:
        if not isinstance(text, str):
            return f"an answer text is {_kind(text)}, not text"
        # as tables exported to JSON write them: 188.0 (pandas: an int column with a missing value turns float), "188"
        # (a column of text), null (no position: validate locates the text and reports it, as for a missing one)
        if isinstance(start, str) and re.fullmatch(r"\s*-?\d+\s*", start):
            start = int(start)
        if start is None:
            start = -1
        if isinstance(start, bool) or not (isinstance(start, int) or isinstance(start, float) and start.is_integer()):
            return f"answer_start must be a whole number, got {_kind(start)}"
        starts.append(int(start))
    return {"text": [t for t, _ in pairs], "answer_start": starts}


def _kind(value: Any) -> str:
    """A value as a message names it: its type and a short repr."""
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return f"an object ({', '.join(map(str, list(value)[:4]))})"
    return f"the {type(value).__name__} {json.dumps(value, ensure_ascii=False, default=str)[:40]}"


def is_blank(text: str) -> bool:
    """Nothing to read: only whitespace, control and format characters (zero-width spaces, byte-order marks), which
    tokenizers drop, so a model would see the text as empty."""
    return all(c.isspace() or unicodedata.category(c) in ("Cc", "Cf") for c in text)


def to_dataset(records: Iterable[dict]):
    """The canonical `datasets.Dataset` (explicit features, so an empty file still has the right columns)."""
    import datasets

    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "title": datasets.Value("string"),
            "context": datasets.Value("string"),
            "question": datasets.Value("string"),
            "answers": {
                "text": datasets.Sequence(datasets.Value("string")),
                "answer_start": datasets.Sequence(datasets.Value("int32")),
            },
            "is_impossible": datasets.Value("bool"),
        }
    )
    records = list(records)
    if not records:  # from_list cannot take the columns from no record
        return datasets.Dataset.from_dict({name: [] for name in features}, features=features)
    return datasets.Dataset.from_list(records, features=features)
