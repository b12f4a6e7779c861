"""Validation: relocation of misaligned answers, per-use decisions, and the counts on the real CMRC file."""

import json

import pytest

from conftest import shared_file, write_squad
from mrc_cli.data import read_data
from mrc_cli.scoring import score_files
from mrc_cli.validate import locate_answer, validate_file, validate_records


def test_locate_prefers_the_occurrence_nearest_the_given_start():
    context = "cat dog cat dog cat"
    assert locate_answer(context, "cat", 9) == (8, "cat")
    assert locate_answer(context, "cat", 17) == (16, "cat")
    assert locate_answer(context, "cat", -1) == (0, "cat")


def test_locate_ignores_whitespace_differences_and_returns_the_context_text():
    assert locate_answer("founded in 1998年 by", "1998 年", 3) == (11, "1998年")
    assert locate_answer("New\nYork City", "New York", 0) == (0, "New\nYork")
    assert locate_answer("abc", "xyz", 0) is None
    assert locate_answer("abc", "   ", 0) is None


def test_locate_finds_an_answer_written_in_another_unicode_form_and_returns_the_context_text():
    """Full-width digits and letters, composed against decomposed accents: the span is the context's own characters."""
    assert locate_answer("成立于1998年，总部", "１９９８年", 0) == (3, "1998年")
    assert locate_answer("球队ＮＢＡ总冠军", "NBA", 5) == (2, "ＮＢＡ")
    decomposed = "Cafe\u0301 de Flore"  # e + combining acute: NFKC makes one character of the two
    assert locate_answer(decomposed, "Café", 0) == (0, "Cafe\u0301")
    assert locate_answer("the Café closed", "Cafe\u0301", 9) == (4, "Café")
    assert locate_answer("㍻元年、平成2年", "平成", 0) == (4, "平成")  # exact wins over a nearer normalised form
    assert locate_answer("㍻元年に", "平成元年", 0) == (0, "㍻元年")
    assert locate_answer("ｶﾞｲﾄﾞ本", "ガイド", 0) == (0, "ｶﾞｲﾄﾞ")  # half-width voiced marks compose too


def test_a_normalised_relocation_is_reported_with_both_texts(tmp_path):
    path = write_squad(tmp_path / "d.json", [("成立于1998年，总部在北京。", [
        {"id": "q", "question": "哪年成立？", "answers": [{"text": "１９９８年", "answer_start": 3}]}])])
    records, report = validate_records(read_data(path), "train")
    assert records[0]["answers"] == {"text": ["1998年"], "answer_start": [3]} and report.relocated == 1
    assert report.repairs == [f'{path}: question q: answer "１９９８年" is not in its context, "1998年" is: the same '
                              'text after Unicode normalisation (NFKC; found at 3, relocated as the context writes it)']
    path = write_squad(tmp_path / "e.json", [("大家加油!明天见。", [  # a full-width final mark, found half-width
        {"id": "q", "question": "说了什么？", "answers": [{"text": "加油！", "answer_start": 2}]}])])
    records, report = validate_records(read_data(path), "train")
    assert records[0]["answers"]["text"] == ["加油!"] and "Unicode normalisation" in report.repairs[0]


def test_misaligned_answers_are_relocated_or_marked_and_counted(tmp_path):
    path = write_squad(tmp_path / "d.json", [("The cat sat on the mat.", [
        {"id": "ok", "question": "Who?", "answers": [{"text": "cat", "answer_start": 4}]},
        {"id": "moved", "question": "Where?", "answers": [{"text": "mat", "answer_start": 2}]},
        {"id": "gone", "question": "What?", "answers": [{"text": "dog", "answer_start": -1}, {"text": "sat", "answer_start": 8}]},
        {"id": "lost", "question": "Why?", "answers": [{"text": "because", "answer_start": -1}]},
    ])])
    records, report = validate_records(read_data(path), "train")
    assert (report.questions, report.answers, report.misaligned, report.relocated, report.unlocatable) == (4, 5, 3, 1, 2)
    by_id = {r["id"]: r for r in records}
    assert by_id["moved"]["answers"]["answer_start"] == [19]
    assert by_id["gone"]["answers"]["answer_start"] == [-1, 8]  # one locatable answer is enough for training
    assert "lost" not in by_id and report.left_out_of_training == 1
    assert any('question moved: answer "mat" is not at char 2 of its context (found at 19; relocated)' in m for m in report.repairs)
    # scoring needs only texts: nothing is left out for eval
    records, report = validate_records(read_data(path), "eval")
    assert len(records) == 4 and report.usable


def test_duplicate_ids_warn_for_training_and_fail_eval(tmp_path):
    qa = {"id": "dup", "question": "Who?", "answers": [{"text": "cat", "answer_start": 4}]}
    path = write_squad(tmp_path / "d.json", [("The cat sat.", [qa, qa])])
    train = validate_file(str(path), "train")
    assert train.usable and train.duplicate_ids == 1 and "question id dup occurs 2 times" in train.warnings[0]
    evaluation = validate_file(str(path), "eval")
    assert not evaluation.usable and "ambiguous" in evaluation.errors[0]


def test_empty_question_and_context_are_errors_naming_the_record(tmp_path):
    path = write_squad(tmp_path / "d.json", [
        ("The cat sat.", [{"id": "e1", "question": "  ", "answers": []}]),
        ("", [{"id": "e2", "question": "Who?", "answers": []}]),
    ])
    report = validate_file(str(path), "train")
    assert (report.empty_questions, report.empty_contexts) == (1, 1)
    assert report.errors == [f"{path}: question e1: the question is empty", f"{path}: question e2: the context is empty"]
    assert validate_file(str(path), "predict").errors == [f"{path}: question e2: the context is empty"]
    # the official scorers read ids and answers only: no error of the context's
    assert not any("the context is empty" in error for error in validate_file(str(path), "score").errors)


def test_gold_answers_that_normalise_to_nothing_are_a_warning_for_scoring(tmp_path):
    """Blank or punctuation-only gold answers, also beside a real one: the official normalisation makes them "", so an
    empty or punctuation-only prediction scores EM 100 against them (scored here as the rules score it)."""
    path = write_squad(tmp_path / "d.json", [("The cat sat.", [
        {"id": "blank", "question": "Who?", "answers": [{"text": " ", "answer_start": 3}, {"text": "", "answer_start": 0}]},
        {"id": "half", "question": "Who?", "answers": [{"text": ".", "answer_start": 11}, {"text": "cat", "answer_start": 4}]},
        {"id": "ok", "question": "What?", "answers": [{"text": "sat", "answer_start": 8}]}])])
    warning = (f"{path}: gold answers that are blank or only punctuation and articles in 2 questions (the first: "
               'blank): the SQuAD rules drop punctuation and a/an/the, so an empty or punctuation-only prediction (".") '
               "matches them (EM 100): give their real text, or remove them (a question left with no answer is "
               "unanswerable: mark it is_impossible)")
    assert validate_file(str(path), "eval").warnings == [warning] == validate_file(str(path), "score").warnings
    assert validate_file(str(path), "predict").warnings == []
    predictions = tmp_path / "p.json"
    predictions.write_text(json.dumps({"blank": "", "half": ",", "ok": "sat"}))
    assert score_files(str(path), str(predictions))[0]["exact_match"] == 100.0


def test_chinese_gold_answers_of_punctuation_only_are_to_be_removed_not_marked_unanswerable(tmp_path):
    path = write_squad(tmp_path / "d.json", [("北京是中国的首都。", [
        {"id": "stop", "question": "首都是哪里？", "answers": [{"text": "北京", "answer_start": 0},
                                                           {"text": "。", "answer_start": 8}]}])])
    warning = (f'{path}: gold answers that are blank or only punctuation in 1 question (the first: stop): the CMRC '
               '2018 rules drop punctuation, so an empty or punctuation-only prediction ("。") matches them (EM 100): '
               "remove such an answer, or the question where it has no other (not is_impossible: CMRC 2018 has no "
               "unanswerable questions, and eval and score would refuse the file)")
    assert validate_file(str(path), "eval").warnings == [warning]
    predictions = tmp_path / "p.json"
    predictions.write_text(json.dumps({"stop": "。"}, ensure_ascii=False), encoding="utf-8")
    assert score_files(str(path), str(predictions))[0]["EM"] == 100.0


CAT = "The cat sat. It was built in 1889."


def test_the_answers_decide_what_is_answerable_as_the_official_v2_script_scores(tmp_path):
    """Marked is_impossible with answers: answerable; no answers without the mark: unanswerable. Both warned where
    the file marks questions; scored so by mrc score (the official script: 3 of 5 right, HasAns 3, NoAns 2)."""
    path = write_squad(tmp_path / "d.json", [(CAT, [
        {"id": "a", "question": "Who?", "answers": [{"text": "cat", "answer_start": 4}], "is_impossible": False},
        {"id": "n1", "question": "Color?", "answers": [], "is_impossible": True},
        {"id": "n2", "question": "Shape?", "answers": []},
        {"id": "inc", "question": "When?", "answers": [{"text": "1889", "answer_start": 29}], "is_impossible": True},
        {"id": "p", "question": "Mark?", "answers": [{"text": "!", "answer_start": 0}]}])])
    records, report = validate_records(read_data(path), "train")
    assert {r["id"]: r["is_impossible"] for r in records} == {"a": False, "n1": True, "n2": True, "inc": False}
    assert (report.unanswerable, report.read_as_unanswerable, report.read_as_answerable) == (2, 1, 1)
    assert report.warnings == [
        f"{path}: 1 questions are marked is_impossible but carry answers (the first: inc); they are trained and scored "
        "as answerable, as the official SQuAD v2.0 script scores them (it reads only the answers); SQuAD v2.0 keeps "
        "the texts of unanswerable questions in plausible_answers",
        f"{path}: 1 questions have no answers and are not marked is_impossible (the first: n2); they are trained and "
        "scored as unanswerable, as the official SQuAD v2.0 script scores them"]
    predictions = tmp_path / "p.json"
    predictions.write_text(json.dumps({"a": "cat", "n1": "", "n2": "Blue", "inc": "", "p": ""}))
    scores, _ = score_files(str(path), str(predictions))
    assert (scores["metric"], scores["exact"], scores["f1"]) == ("squad_v2", 60.0, 60.0)
    assert (scores["HasAns_total"], scores["NoAns_total"]) == (3, 2)


def test_the_hubs_squad_v2_layout_has_its_unanswerable_questions_by_empty_answers(tmp_path):
    """No is_impossible field anywhere: an empty answer list is the mark, counted without a warning."""
    path = tmp_path / "hub.jsonl"
    rows = [{"id": "a", "title": "T", "context": CAT, "question": "Who?", "answers": {"text": ["cat"], "answer_start": [4]}},
            {"id": "n", "title": "T", "context": CAT, "question": "Color?", "answers": {"text": [], "answer_start": []}}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    for use in ("train", "eval", "score"):
        records, report = validate_records(read_data(path), use)
        assert report.usable and report.warnings == [] and (report.unanswerable, report.read_as_unanswerable) == (1, 1)
        assert [r["id"] for r in records if r["is_impossible"]] == ["n"]  # trained as unanswerable, not left out
    assert "1 questions without answers or is_impossible mark read as unanswerable" in report.summary()
    # SQuAD v1.1 JSON, whose answers are lists, with one question without: v2.0's rules, said so
    path = write_squad(tmp_path / "v1.json", [(CAT, [{k: v for k, v in row.items() if k != "answers"} | {
        "answers": [{"text": t, "answer_start": s} for t, s in zip(row["answers"]["text"], row["answers"]["answer_start"])]}
        for row in rows])])
    report = validate_file(str(path), "eval")
    assert report.usable and report.warnings == [
        f"{path}: 1 questions have no answers and are not marked is_impossible (the first: n); they are trained and "
        "scored as unanswerable, as the official SQuAD v2.0 script scores them, so the file is scored by SQuAD v2.0's "
        "rules: give their answers, or leave them out, for v1.1's"]


def test_an_empty_question_is_left_out_of_eval_and_predict_and_counted(tmp_path):
    """The official CMRC 2018 trial file has questions with empty text; its scorers score the file."""
    path = write_squad(tmp_path / "d.json", [("The cat sat.", [
        {"id": "empty", "question": "", "answers": [{"text": "cat", "answer_start": 4}]},
        {"id": "ok", "question": "Who sat?", "answers": [{"text": "cat", "answer_start": 4}]},
    ])])
    for use in ("eval", "predict"):
        records, report = validate_records(read_data(path), use)
        assert report.usable and report.errors == []
        assert [r["id"] for r in records] == ["ok"] and report.empty_questions == 1
        assert report.repairs == [f"{path}: question empty: the question is empty (left out of {use})"]
        assert f"1 questions left out of {use} (empty question text" in report.summary()
    assert not validate_file(str(path), "train").usable


def test_eval_needs_answers_predict_does_not(tmp_path):
    path = write_squad(tmp_path / "t.json", [("The cat sat.", [{"id": "x", "question": "Who?"}])])
    assert validate_file(str(path), "predict").usable
    report = validate_file(str(path), "eval")
    assert not report.usable and "no answers and not marked is_impossible" in report.errors[0]


def test_real_cmrc_counts():
    report = validate_file(str(shared_file("cmrc2018_dev.json")), "train")
    assert (report.questions, report.answers) == (3219, 9657)
    assert (report.misaligned, report.relocated, report.unlocatable) == (200, 167, 33)  # 160 of them without a final 。
    assert report.usable and report.left_out_of_training == 0


def _with_starts_in(source, path, encoding: str):
    """`source` (SQuAD JSON) with its answer starts counted in another unit, as other languages count them."""
    squad = json.loads(source.read_text(encoding="utf-8"))
    width = 1 if encoding == "utf-8" else 2
    for article in squad["data"]:
        for paragraph in article["paragraphs"]:
            for answer in (a for qa in paragraph["qas"] for a in qa["answers"]):
                start = answer["answer_start"]  # -1 (no position) stays -1, as those tools write it
                if start >= 0:
                    answer["answer_start"] = len(paragraph["context"][:start].encode(encoding)) // width
    path.write_text(json.dumps(squad, ensure_ascii=False), encoding="utf-8")
    return path


def test_real_cmrc_with_utf8_byte_offsets_is_read_as_bytes(tmp_path):
    """Relocated to the nearest occurrence instead, 864 answers (295 questions' training answer) moved elsewhere."""
    source = shared_file("cmrc2018_dev.json")
    in_bytes = _with_starts_in(source, tmp_path / "zh_bytes.json", "utf-8")
    report = validate_file(str(in_bytes), "train", fixed=tmp_path / "from_bytes.json")
    validate_file(str(source), "train", fixed=tmp_path / "from_chars.json")
    from_bytes, from_chars = (json.loads((tmp_path / name).read_text(encoding="utf-8"))["data"]
                              for name in ("from_bytes.json", "from_chars.json"))
    assert from_bytes == from_chars
    assert (report.starts_read_as, report.starts_converted) == ("UTF-8 byte", 9419)
    assert (report.misaligned, report.relocated, report.unlocatable) == (200, 167, 33)  # as the file in characters
    assert "answer_start read as UTF-8 byte offsets: 9419 answers" in report.summary()


def test_utf16_offsets_with_astral_characters_are_read_as_code_units(tmp_path):
    """JavaScript, Java and C# count an astral character (an emoji, a CJK extension B ideograph) as 2."""
    paragraphs = [("🙂🙂🙂🙂🙂🙂 cat, cat.", "cat", 7), ("𠮷野家 𠮷𠮷𠮷𠮷 牛丼 牛丼", "牛丼", 9), ("🐶🐶🐶 the dog", "dog", 8)]
    squad = write_squad(tmp_path / "chars.json", [(context, [{"id": f"q{i}", "question": "?", "answers": [
        {"text": text, "answer_start": start}]}]) for i, (context, text, start) in enumerate(paragraphs)])
    records, report = validate_records(read_data(_with_starts_in(squad, tmp_path / "d.json", "utf-16-le")), "train")
    assert [r["answers"]["answer_start"] for r in records] == [[7], [9], [8]]
    assert (report.starts_read_as, report.starts_converted, report.misaligned, report.warnings) == (
        "UTF-16 code unit", 3, 0, [])


def test_starts_mostly_off_in_every_unit_are_warned_of(tmp_path):
    path = write_squad(tmp_path / "d.json", [("The cat sat on the mat; the cat ran.", [
        {"id": "a", "question": "Who?", "answers": [{"text": "cat", "answer_start": 30}]},
        {"id": "b", "question": "Where?", "answers": [{"text": "mat", "answer_start": 3}]},
    ])])
    records, report = validate_records(read_data(path), "train")
    assert [r["answers"]["answer_start"] for r in records] == [[28], [19]] and report.usable
    assert report.warnings == [
        f"{path}: 2 of the 2 answers found in their context are not at their answer_start, read as characters or as "
        "UTF-8 bytes or UTF-16 code units: each was relocated to the occurrence of its text nearest its start, which "
        "may be another than the one meant; write answer_start as character offsets (Python's str indices)"]
    assert report.starts_read_as == "character"


def test_an_answer_is_found_without_a_final_mark_its_context_goes_on_from(tmp_path):
    context = "他在1998年回到北京，继续工作。"
    path = write_squad(tmp_path / "d.json", [(context, [{"id": "q", "question": "何时？", "answers": [
        {"text": "1998年回到北京。", "answer_start": 2}, {"text": "工作。", "answer_start": 14},
        {"text": "上海。", "answer_start": 0}]}])])
    records, report = validate_records(read_data(path), "train")
    assert records[0]["answers"] == {"text": ["1998年回到北京", "工作。", "上海。"], "answer_start": [2, 14, -1]}
    assert (report.relocated, report.unlocatable) == (1, 1)
    assert 'answer "1998年回到北京。" is not in its context, without its final "。" it is' in report.repairs[0]


def test_an_answer_of_invisible_characters_is_not_located(tmp_path):
    """A zero-width space holds no token: as an answer it has nothing to point to (its windows were labelled "ignore"
    and counted as lost to truncation), so it is counted as not in the context, like an answer that is not there."""
    path = write_squad(tmp_path / "d.json", [("The cat\u200bsat.", [
        {"id": "q", "question": "What?", "answers": [{"text": "\u200b", "answer_start": 7}]}])])
    records, report = validate_records(read_data(path), "train")
    assert (report.unlocatable, report.left_out_of_training, records) == (1, 1, [])


def test_chinese_eval_data_with_unanswerable_questions_is_refused_before_any_run(tmp_path):
    qas = [{"id": "a", "question": "谁？", "answers": [{"text": "北京", "answer_start": 0}]},
           {"id": "none", "question": "何时？", "answers": [], "is_impossible": True}]
    path = str(write_squad(tmp_path / "d.json", [("北京是中国的首都。", qas)]))
    report = validate_file(path, "eval")  # usable: mrc analyze/score --metric squad_v2 take it; validate warns
    assert report.usable and "1 of 2 questions is unanswerable (the first: none)" in report.warnings[0]
    assert "--metric squad_v2" in report.warnings[0]
    from mrc_cli.config import DataConfig
    from mrc_cli.errors import DataError
    from mrc_cli.splits import featurize_file

    with pytest.raises(DataError, match="1 of 2 questions is unanswerable"):  # mrc eval, a training run's dev set
        featurize_file(path, None, DataConfig(cache_dir=str(tmp_path)), "eval")
    # mrc kfold scores its held-out folds and the dev file only after every fold has trained: refused first
    from conftest import QUICKSTART
    from mrc_cli.config import RunConfig
    from mrc_cli.kfold import kfold

    for train_file, dev_file in ((path, None), (str(QUICKSTART / "en_train.json"), path)):
        cfg = RunConfig()
        cfg.data.train_file, cfg.data.dev_file, cfg.data.cache_dir = train_file, dev_file, str(tmp_path)
        with pytest.raises(DataError, match=f"{path}: 1 of 2 questions is unanswerable"):
            kfold(cfg, 2, tmp_path / "kfold")
        assert not (tmp_path / "kfold").exists()


def test_real_squad_v2_counts():
    report = validate_file(str(shared_file("squad_v2.0_dev_head.json")), "eval")
    assert (report.questions, report.unanswerable, report.misaligned) == (1407, 702, 0)
    assert report.usable


def test_validated_examples_are_cached_by_path_and_content(tmp_path, monkeypatch):
    import pytest

    import mrc_cli.validate as validate

    qas = [{"id": "a", "question": "Where?", "answers": [{"text": "the mat", "answer_start": 3}]},  # misaligned: at 15
           {"id": "b", "question": "Who?", "answers": [{"text": "a dog", "answer_start": 0}]}]  # not in the context
    path = write_squad(tmp_path / "d.json", [("The cat sat on the mat.", qas)])
    cache = tmp_path / "cache"
    examples, report, golds = validate.load_examples(str(path), "train", cache_dir=cache)
    assert report.relocated == 1 and report.left_out_of_training == 1 and len(examples) == 1

    with monkeypatch.context() as patched:
        patched.setattr(validate, "validate_records", lambda *args: pytest.fail("the same file was validated again"))
        cached = validate.load_examples(str(path), "train", cache_dir=cache)
    assert cached[0].to_list() == examples.to_list() and cached[1] == report and cached[2] == golds

    qas[1]["answers"][0]["text"] = "The cat"  # new content: read and validated again
    write_squad(path, [("The cat sat on the mat.", qas)])
    examples, report, _ = validate.load_examples(str(path), "train", cache_dir=cache)
    assert report.left_out_of_training == 0 and len(examples) == 2
    assert len(list(cache.iterdir())) == 2  # one entry per content, no half-written folders left


def test_an_answer_without_a_position_is_found_and_said_so(tmp_path):
    import json

    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"id": "q", "context": "北京大学创办于1898年。", "question": "何时？",
                                "answers": {"text": ["1898年"]}}, ensure_ascii=False) + "\n", encoding="utf-8")
    report = validate_file(str(path), "train")
    assert report.usable and report.relocated == 1
    assert 'answer "1898年" has no answer_start; found at char 7 of its context' in report.repairs[0]


def test_a_negative_start_and_whitespace_around_a_well_placed_answer_are_reported_as_what_they_are(tmp_path):
    context = "总部位于日本埼玉县埼玉市中央区新都心11番地2号，另设东京本部。"
    path = write_squad(tmp_path / "d.json", [(context, [
        {"id": "neg", "question": "总部在哪？", "answers": [{"text": "埼玉县埼玉市", "answer_start": -5}]},
        {"id": "pad", "question": "总部在哪？", "answers": [{"text": "  埼玉县埼玉市中央区新都心11番地2号\n", "answer_start": 6}]},
        {"id": "gone", "question": "总部在哪？", "answers": [{"text": "东京本部", "answer_start": 3}]}])])
    records, report = validate_records(read_data(path), "train")
    assert [r["answers"] for r in records] == [{"text": ["埼玉县埼玉市"], "answer_start": [6]},
                                               {"text": ["埼玉县埼玉市中央区新都心11番地2号"], "answer_start": [6]},
                                               {"text": ["东京本部"], "answer_start": [27]}]
    assert report.repairs == [
        f'{path}: question neg: answer "埼玉县埼玉市" has negative answer_start -5; found at char 6 of its context',
        f'{path}: question pad: answer "埼玉县埼玉市中央区新都心11番地2号" is at char 6 of its context as given, but with '
        'whitespace around it (stripped, not moved)',
        f'{path}: question gone: answer "东京本部" is not at char 3 of its context (found at 27; relocated)']


def test_fix_for_scoring_keeps_the_files_answer_texts_and_its_empty_questions(tmp_path):
    """CMRC 2018's exact match sees spaces and character widths: a gold file fixed for eval or score keeps the texts
    it gives (relocated), so it scores as the original does; fixed for train, the texts are the context's."""
    context = "北京 是 中国 的 首都。公司成立于２０１０年。"
    qas = [{"id": "space", "question": "首都？", "answers": [{"text": "北京是中国的首都", "answer_start": 3}]},
           {"id": "width", "question": "哪年？", "answers": [{"text": "2010年", "answer_start": 0}]},
           {"id": "empty", "question": "", "answers": [{"text": "公司", "answer_start": 13}]}]
    path = write_squad(tmp_path / "d.json", [(context, qas)])
    predictions = tmp_path / "p.json"
    predictions.write_text(json.dumps({"space": "北京 是 中国 的 首都", "width": "２０１０年", "empty": "公司"}, ensure_ascii=False))
    report = validate_file(str(path), "score", fixed=tmp_path / "score.json")
    assert report.repairs[0] == (f'{path}: question space: answer "北京是中国的首都" is not in its context, "北京 是 中国 '
                                 '的 首都" is: the same text with other whitespace (found at 0, relocated as the context '
                                 'writes it)')
    assert "1 questions with an empty question text (scored as any other)" in report.summary()
    fixed = read_data(tmp_path / "score.json").records
    assert [(r["id"], r["answers"]) for r in fixed] == [
        ("space", {"text": ["北京是中国的首都"], "answer_start": [0]}), ("width", {"text": ["2010年"], "answer_start": [18]}),
        ("empty", {"text": ["公司"], "answer_start": [13]})]
    assert score_files(str(tmp_path / "score.json"), str(predictions)) == score_files(str(path), str(predictions))
    validate_file(str(path), "eval", fixed=tmp_path / "eval.json")
    assert [r["id"] for r in read_data(tmp_path / "eval.json").records] == ["space", "width"]  # empty: not answered


def test_a_file_of_chinese_and_english_questions_is_warned_that_one_metric_scores_all(tmp_path):
    zh = [(f"北京是中国的首都，也是第{i}大城市。", [{"id": f"z{i}", "question": "首都？",
                                              "answers": [{"text": "北京", "answer_start": 0}]}]) for i in range(10)]
    en = [(CAT, [{"id": "e", "question": "Who?", "answers": [{"text": "cat", "answer_start": 4}]}])]
    path = write_squad(tmp_path / "mixed.json", zh + en)
    for use in ("eval", "score"):
        assert validate_file(str(path), use).warnings == [
            f"{path}: 10 of its 11 questions are about Chinese contexts and the others not: one metric (cmrc2018 or "
            "squad) scores them all; score each language as a file of its own"]
    assert validate_file(str(write_squad(tmp_path / "zh.json", zh)), "eval").warnings == []
    assert validate_file(str(write_squad(tmp_path / "none.json", [])), "score").warnings == []  # no questions: no mix
    assert validate_file(str(shared_file("cmrc2018_dev.json")), "score").warnings == []  # Chinese throughout


def test_validate_records_names_what_it_takes():
    with pytest.raises(TypeError, match="validate_records takes what read_data\\(path\\) returns, not str"):
        validate_records("data/quickstart/en_dev.json", "eval")


def test_answers_under_another_field_name_are_named_where_the_file_is_refused(tmp_path):
    from mrc_cli.errors import DataError
    from mrc_cli.validate import load_examples

    data = json.loads(shared_file("squad_v2.0_dev_head.json").read_text())["data"][0]["paragraphs"][0]
    path = tmp_path / "flat.jsonl"  # another tool's layout: one answer text per line under `answer`
    path.write_text("".join(json.dumps({"id": qa["id"], "context": data["context"], "question": qa["question"],
                                        "answer": qa["answers"][0]["text"] if qa["answers"] else ""}) + "\n"
                            for qa in data["qas"]))
    report = validate_file(str(path), "predict")
    assert report.usable and report.answers == 0
    assert f"carry 'answer' ({len(data['qas'])}), which is not read" in report.warnings[0]
    with pytest.raises(DataError, match=r"none of its \d+ questions is left for train(.|\n)*warning: .*carry 'answer'"):
        load_examples(str(path), "train")
