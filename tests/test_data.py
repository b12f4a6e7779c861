"""Reading: every supported format into the canonical records, and a clear DataError for every unreadable file."""

import json
import re

import pytest

from conftest import shared_file, write_squad
from mrc_cli.data import read_data, to_dataset
from mrc_cli.errors import DataError

QA = {"id": "q1", "question": "Where?", "answers": [{"text": "Paris", "answer_start": 10}]}


def test_squad_v2_real_file_reads_every_question():
    raw = read_data(shared_file("squad_v2.0_dev_head.json"))
    assert raw.format == "squad" and not raw.problems
    assert len(raw.records) == 1407
    assert sum(r["is_impossible"] for r in raw.records) == 702
    impossible = next(r for r in raw.records if r["is_impossible"])
    assert impossible["answers"] == {"text": [], "answer_start": []}  # plausible_answers are not gold
    assert raw.records[0]["title"] == "Normans"


def test_cmrc_keeps_all_three_answers():
    raw = read_data(shared_file("cmrc2018_dev.json"))
    assert len(raw.records) == 3219
    assert all(len(r["answers"]["text"]) == 3 for r in raw.records[:50])


def test_jsonl_json_array_and_hf_answer_forms(tmp_path):
    flat = {"id": "a", "context": "It is in Paris.", "question": "Where?", "answers": {"text": ["Paris"], "answer_start": [9]}}
    squad_form = {**flat, "id": "b", "answers": [{"text": "Paris", "answer_start": 9}]}
    (tmp_path / "d.jsonl").write_text(json.dumps(flat) + "\n\n" + json.dumps(squad_form) + "\n")
    (tmp_path / "d.json").write_text(json.dumps([flat, squad_form]))
    for name in ("d.jsonl", "d.json"):
        raw = read_data(tmp_path / name)
        assert [r["answers"] for r in raw.records] == [{"text": ["Paris"], "answer_start": [9]}] * 2
    forced = read_data(tmp_path / "d.jsonl", fmt="jsonl")
    assert forced.format == "jsonl" and len(forced.records) == 2


def test_saved_dataset_folder_is_read_as_hf(tmp_path):
    rec = {"id": "a", "title": "", "context": "It is in Paris.", "question": "Where?",
           "answers": {"text": ["Paris"], "answer_start": [9]}, "is_impossible": False}
    to_dataset([rec]).save_to_disk(str(tmp_path / "saved"))
    raw = read_data(tmp_path / "saved")
    assert raw.format == "hf" and raw.records == [rec]


def test_a_saved_folder_of_splits_reads_the_one_named(tmp_path):
    import datasets

    rec = {"id": "a", "title": "", "context": "It is in Paris.", "question": "Where?",
           "answers": {"text": ["Paris"], "answer_start": [9]}, "is_impossible": False}
    other = {**rec, "id": "b"}
    folder = tmp_path / "splits"
    datasets.DatasetDict({"train": to_dataset([rec]), "test": to_dataset([other])}).save_to_disk(str(folder))
    assert read_data(f"{folder}:test").records == [other]
    with pytest.raises(DataError, match=f"{folder}: a dataset of the splits train, test; name one, e.g. {folder}:train"):
        read_data(folder)  # not the first split silently
    with pytest.raises(DataError, match="has no split 'validation'; its splits: train, test"):
        read_data(f"{folder}:validation")


def test_test_file_without_answers_reads_as_unanswered(tmp_path):
    path = write_squad(tmp_path / "t.json", [("Paris is big.", [{"id": "x", "question": "What?"}])])
    assert read_data(path).records[0]["answers"] == {"text": [], "answer_start": []}


def test_record_problems_name_the_record(tmp_path):
    path = write_squad(tmp_path / "p.json", [("ctx", [
        {"id": "no-question", "answers": []},
        {"id": "bad-type", "question": 5, "answers": []},
        {"id": "bad-answers", "question": "q", "answers": [{"start": 3}]},
        {"id": "ok", "question": "q", "answers": []},
    ])])
    raw = read_data(path)
    assert [r["id"] for r in raw.records] == ["ok"]
    problems = [str(p) for p in raw.problems]
    assert problems[0] == "question no-question: missing field(s) question"
    assert "question bad-type: field(s) question must be text" in problems[1]
    assert problems[2].startswith("question bad-answers: field 'answers' must be")


def test_a_mistyped_is_impossible_or_a_lone_surrogate_is_a_problem_of_its_record(tmp_path):
    """bool("false") is True: a string would have made the question unanswerable. JSON's "\\ud83d" alone is no
    character, and every later step that writes UTF-8 failed on it with a traceback."""
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": "Paris is big.", "qas": [
        {"id": "as-text", "question": "q", "answers": [], "is_impossible": "false"},
        {"id": "as-number", "question": "q", "answers": [], "is_impossible": 2},
        {"id": "one", "question": "q", "answers": [], "is_impossible": 1},
        {"id": "half-emoji", "question": "q\ud83d?", "answers": []},
        {"id": "null", "question": "q", "answers": [{"text": "Paris", "answer_start": 0}], "is_impossible": None},
        {"id": "true", "question": "q", "answers": [], "is_impossible": True}]}]}]}), encoding="utf-8")
    raw = read_data(path)
    assert [(r["id"], r["is_impossible"]) for r in raw.records] == [("one", True), ("null", False), ("true", True)]
    assert [str(p) for p in raw.problems] == [
        "question as-text: field 'is_impossible' must be true or false, got the str \"false\"",
        "question as-number: field 'is_impossible' must be true or false, got the int 2",
        "question half-emoji: the question holds an invalid character at char 1 (a lone UTF-16 surrogate, "
        "\"\\ud83d\": half of a character such as an emoji, cut by the tool that wrote the file); fix or remove it"]


def test_json_lines_end_at_newlines_only(tmp_path):
    """U+2028 and U+0085 inside a JSON string, as json.dumps(ensure_ascii=False) writes them, end no line."""
    records = [{**QA, "id": f"q{i}", "context": f"Paris\u2028is\x85big {i}."} for i in range(3)]
    path = tmp_path / "d.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    path.write_bytes((lines[0] + "\n" + lines[1] + "\r" + lines[2] + "\r\n").encode("utf-8"))  # \n, old Mac's \r, \r\n
    raw = read_data(path)
    assert [r["id"] for r in raw.records] == ["q0", "q1", "q2"] and not raw.problems
    assert raw.records[1]["context"] == "Paris\u2028is\x85big 1."


def test_json_nested_too_deeply_is_a_data_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text('{"data": ' + "[" * 100_000 + "]" * 100_000 + "}", encoding="utf-8")
    with pytest.raises(DataError, match="deep.json: not valid data: JSON nested too deeply"):
        read_data(path)
    lines = tmp_path / "deep.jsonl"
    lines.write_text(json.dumps({**QA, "context": "Paris"}) + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    assert [str(p) for p in read_data(lines).problems] == ["line 2: JSON nested too deeply to read"]


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"data": [{"paragraphs": [', r"not valid JSON \(line 1"),
        (b'{"version": 1}', "expected SQuAD-style JSON"),
        ('{"data": []}'.encode("utf-16"), "not UTF-8 text"),
    ],
)
def test_unreadable_files_raise_a_data_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "broken.json"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        read_data(path)
    assert str(path) in str(err.value)


def test_misshapen_documents_and_encodings_are_named_for_what_they_are(tmp_path):
    document = {"version": "1", "data": [{"title": "t", "paragraphs": [{"context": "Paris", "qas": [QA]}]}]}
    cases = {"doc.jsonl": (json.dumps(document), 'line 1 is a SQuAD document ({"data": [articles]}), not a JSON Lines'),
             "articles.json": (json.dumps(document["data"]), "a list of SQuAD articles without the document around it"),
             "object.json": (json.dumps({"data": document["data"][0]}),
                             "found 'data' holding an object (title, paragraphs), not a list of articles")}
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        with pytest.raises(DataError, match=re.escape(message)):
            read_data(tmp_path / name)
    # no byte-order mark: ASCII in UTF-16 reads as UTF-8 with NULs; Latin-1 is not GB18030
    for encoding, suggested, city in (("utf-16-le", "UTF-16LE", "Pàris"), ("utf-16-be", "UTF-16BE", "Pàris"),
                                      ("latin-1", "CP1252", "Pàris"), ("gb18030", "GB18030", "巴黎是法国的首都")):
        path = tmp_path / f"{encoding}.json"
        path.write_bytes(json.dumps(document, ensure_ascii=False).replace("Paris", city).encode(encoding))
        with pytest.raises(DataError, match=f"not UTF-8 text .* `iconv -f {suggested} -t UTF-8"):
            read_data(path)


def test_answer_start_is_a_whole_number_also_when_written_as_a_float_or_text(tmp_path):
    """As tables exported to JSON write them: 4.0, "4" (a text column), null (no position, which validate finds)."""
    given = {"float": 4.0, "text": "4", "spaced": " 4 ", "null": None, "half": 4.5, "4th": "4th"}
    path = write_squad(tmp_path / "s.json", [("Big Paris is big.", [
        {"id": qid, "question": "q", "answers": [{"text": "Paris", "answer_start": start}]}
        for qid, start in given.items()])])
    raw = read_data(path)
    assert [(r["id"], r["answers"]["answer_start"]) for r in raw.records] == [
        ("float", [4]), ("text", [4]), ("spaced", [4]), ("null", [-1])]
    assert {type(r["answers"]["answer_start"][0]) for r in raw.records} == {int}
    assert [p.where for p in raw.problems] == ["question half", "question 4th"]


def test_ids_are_text_or_whole_numbers(tmp_path):
    path = write_squad(tmp_path / "ids.json", [("Paris", [{**QA, "id": qid} for qid in (7, "x", 1.0, True, [1], "")])])
    raw = read_data(path)
    assert [r["id"] for r in raw.records] == ["7", "x"]
    assert [p.problem for p in raw.problems] == [
        f"field 'id' must be text or a whole number, got {kind}" for kind in
        ("the float 1.0", "the bool true", "a list of 1", 'the str ""')]


def test_missing_file_and_unreachable_hub_name(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="no such file"):
        read_data(tmp_path / "nope.json")
    # a name that reads as a file's (a suffix, a folder here) is missing at once, without asking the Hub
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for name in ("dev.jsn", "data/dev"):
        with pytest.raises(DataError, match=f"^{name}: no such file \\(in {re.escape(str(tmp_path))}\\)$"):
            read_data(name)
    with pytest.raises(DataError, match="not a data file, a saved dataset folder or a reachable Hub dataset"):
        read_data("no_such_dataset_xyz:validation")
