"""Reading: every supported format into the canonical records, and a clear DataError for every unreadable file."""

import json

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


def test_missing_file_and_unreachable_hub_name(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_data(tmp_path / "nope.json")
    with pytest.raises(DataError, match="not a data file, a saved dataset folder or a reachable Hub dataset"):
        read_data("no_such_dataset_xyz:validation")
