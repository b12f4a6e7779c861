"""Features: labels that cut exactly the gold answer, windows, whole-word ids, question truncation, the cache."""

import numpy as np
import pytest

from conftest import QUICKSTART, shared_file, write_squad
from mrc_cli.config import DataConfig
from mrc_cli.errors import ConfigError, DataError
from mrc_cli.features import _answer_chars, _label_window, build_features
from mrc_cli.splits import featurize_file
from mrc_cli.validate import load_examples


def _labelled_spans(features, examples):
    """(context, gold answer, labelled text, gold aligned to token boundaries) for every feature holding its answer."""
    by_id = {ex["id"]: ex for ex in examples}
    for f in features:
        start, end = f["start_positions"], f["end_positions"]
        if start <= 0:
            continue
        ex = by_id[f["example_id"]]
        offsets = np.array(f["offset_mapping"])
        gold = ex["answers"]["text"][0].strip()
        gold_start = ex["answers"]["answer_start"][0] + len(ex["answers"]["text"][0]) - len(ex["answers"]["text"][0].lstrip())
        on_boundaries = gold_start in offsets[:, 0] and gold_start + len(gold) in offsets[:, 1]
        yield gold, ex["context"][offsets[start][0]:offsets[end][1]].strip(), on_boundaries


@pytest.mark.parametrize("tokenizer_name", ["wordpiece_tokenizer", "albert_tokenizer"])
def test_labels_cut_exactly_the_gold_answer_on_real_squad(tokenizer_name, request, tmp_path):
    tokenizer = request.getfixturevalue(tokenizer_name)
    examples, _, _ = load_examples(str(shared_file("squad_v1.1_train_head.json")), "train")
    features, summary = build_features(examples, tokenizer, DataConfig(cache_dir=str(tmp_path)), labels=True)
    assert summary.examples == 4370 and summary.features >= 4370
    spans = list(_labelled_spans(features, examples))
    assert len(spans) >= 4300  # nearly every example has a window holding its answer
    exact = [(gold, got) for gold, got, aligned in spans if aligned]
    assert all(gold == got for gold, got in exact), [(g, t) for g, t in exact if g != t][:5]
    # answers that begin or end inside a token ("7" of "1817") can only be labelled by the whole token
    inside = [(gold, got) for gold, got, aligned in spans if not aligned]
    assert all(gold in got for gold, got in inside) and len(inside) < 0.02 * len(spans)


@pytest.mark.parametrize("tokenizer_name", ["wordpiece_tokenizer", "albert_tokenizer"])
def test_windows_are_those_of_the_tokenizer_call(tokenizer_name, request, tmp_path):
    """Features come from the Rust backend directly (rust_encoders): the same ids, token types, offsets and window
    count as transformers' tokenizer call that users know, with its stride and overflowing windows."""
    tokenizer = request.getfixturevalue(tokenizer_name)
    examples, _, _ = load_examples(str(shared_file("squad_v1.1_train_head.json")), "train")
    examples = examples.select(range(300))
    data = DataConfig(max_seq_length=128, doc_stride=48, cache_dir=str(tmp_path))
    settings = tokenizer.backend_tokenizer.truncation
    features, _ = build_features(examples, tokenizer, data, labels=True)
    assert tokenizer.backend_tokenizer.truncation == settings  # the caller's tokenizer is left as it was
    enc = tokenizer(list(examples["question"]), list(examples["context"]), truncation="only_second", max_length=128, stride=48,
                    return_overflowing_tokens=True, return_offsets_mapping=True)
    assert len(features) == len(enc["input_ids"]) > len(examples)  # contexts of 128 tokens overflow
    assert features["input_ids"] == enc["input_ids"]
    assert features["example_id"] == [examples[i]["id"] for i in enc["overflow_to_sample_mapping"]]
    if "token_type_ids" in enc:
        assert features["token_type_ids"] == enc["token_type_ids"]
    for i, offsets in enumerate(features["offset_mapping"]):
        context = [o for o, s in zip(enc["offset_mapping"][i], enc.sequence_ids(i)) if s == 1]
        assert [tuple(o) for o in offsets if o[0] >= 0] == [tuple(o) for o in context]


def test_a_context_asked_many_questions_is_tokenized_once(wordpiece_tokenizer, tmp_path, monkeypatch):
    """A SQuAD paragraph's questions (and a `mrc serve` request's) share one tokenization of the context; the windows
    are still those of the pair call, question by question (long questions cut, windows overflowing)."""
    from mrc_cli import features as features_module

    context = " ".join(f"word{i} is unbelievable" for i in range(60))
    questions = ["Which word?", "why " * 40 + "?", "Is word7 unbelievable?"]
    path = write_squad(tmp_path / "d.json", [(context, [
        {"id": str(i), "question": q, "answers": [{"text": "word50", "answer_start": context.index("word50")}]}
        for i, q in enumerate(questions)])])
    examples, _, _ = load_examples(str(path), "train")
    encoded = []  # every text the backend tokenized

    class Counting:
        def __init__(self, backend):
            self.backend = backend

        def encode_batch(self, texts, **kwargs):
            encoded.extend(texts)
            return self.backend.encode_batch(texts, **kwargs)

        def __getattr__(self, name):
            return getattr(self.backend, name)

    real = features_module.rust_encoder
    monkeypatch.setattr(features_module, "rust_encoder", lambda tokenizer: Counting(real(tokenizer)))
    data = DataConfig(max_seq_length=64, max_query_length=16, doc_stride=16, cache_dir=str(tmp_path))
    features, _ = build_features(examples, wordpiece_tokenizer, data, labels=True)
    assert encoded.count(context) == 1
    cut = [questions[0], "why " * 15 + "why", questions[2]]  # the long question at max_query_length tokens
    enc = wordpiece_tokenizer(cut, [context] * 3,
                              truncation="only_second", max_length=64, stride=16, return_overflowing_tokens=True)
    assert features["input_ids"] == enc["input_ids"] and len(features) > 3 * 3


def test_windows_overlap_by_stride_and_word_ids_agree_across_windows(wordpiece_tokenizer, tmp_path):
    context = " ".join(f"word{i} is unbelievable" for i in range(60))
    answer_start = context.index("word50")
    path = write_squad(tmp_path / "d.json", [(context, [
        {"id": "long", "question": "Which word?", "answers": [{"text": "word50", "answer_start": answer_start}]}])])
    examples, _, _ = load_examples(str(path), "train")
    data = DataConfig(max_seq_length=64, max_query_length=16, doc_stride=16, cache_dir=str(tmp_path))
    features, _ = build_features(examples, wordpiece_tokenizer, data, labels=True)
    assert len(features) > 3
    words_at = {}  # char offset -> word id, must agree in every window
    for f in features:
        assert len(f["input_ids"]) <= 64
        for (start, end), word in zip(f["offset_mapping"], f["word_ids"]):
            assert (start < 0) == (word < 0)
            if start >= 0:
                assert words_at.setdefault(start, word) == word
    # consecutive windows share doc_stride context tokens
    first, second = ([tuple(o) for o in f["offset_mapping"] if o[0] >= 0] for f in features.select([0, 1]))
    assert len(set(first) & set(second)) == 16
    # the answer is labelled in the windows that hold it, CLS elsewhere
    labelled = [f["start_positions"] for f in features]
    assert any(s > 0 for s in labelled) and any(s == 0 for s in labelled)


def test_long_questions_are_truncated_not_rejected(wordpiece_tokenizer, tmp_path):
    question = "why " * 100 + "?"
    path = write_squad(tmp_path / "d.json", [("The cat sat on the mat.", [
        {"id": "q", "question": question, "answers": [{"text": "mat", "answer_start": 19}]}])])
    examples, _, _ = load_examples(str(path), "train")
    features, summary = build_features(examples, wordpiece_tokenizer, DataConfig(max_query_length=10, cache_dir=str(tmp_path)), labels=True)
    assert summary.questions_truncated == 1
    question_tokens = sum(1 for o in features[0]["offset_mapping"] if o[0] < 0) - 3  # minus CLS and two SEPs
    assert question_tokens == 10
    assert features[0]["start_positions"] > 0


def test_unanswerable_and_unlocatable_labels(wordpiece_tokenizer, tmp_path):
    path = write_squad(tmp_path / "d.json", [("The cat sat on the mat.", [
        {"id": "no", "question": "Who?", "answers": [], "is_impossible": True},
        {"id": "lost", "question": "Why?", "answers": [{"text": "because", "answer_start": 0}, {"text": "cat", "answer_start": 4}]},
        {"id": "bad", "question": "What?", "answers": [{"text": "dog", "answer_start": 0}]},
    ])])
    examples, _, _ = load_examples(str(path), "eval")
    features, _ = build_features(examples, wordpiece_tokenizer, DataConfig(cache_dir=str(tmp_path)), labels=True)
    labels = {f["example_id"]: (f["start_positions"], f["end_positions"]) for f in features}
    assert labels["no"] == (0, 0)
    assert labels["lost"][0] > 0  # the first locatable answer is used
    assert labels["bad"] == (-100, -100)  # ignored by the loss, still decoded and scored


def test_second_run_is_served_from_the_cache(wordpiece_tokenizer, tmp_path):
    examples, _, _ = load_examples(str(shared_file("squad_v2.0_dev_head.json")), "eval")
    data = DataConfig(cache_dir=str(tmp_path))
    first, s1 = build_features(examples, wordpiece_tokenizer, data, labels=True)
    second, s2 = build_features(examples, wordpiece_tokenizer, data, labels=True)
    assert not s1.from_cache and s2.from_cache
    assert first["input_ids"] == second["input_ids"]
    _, s3 = build_features(examples, wordpiece_tokenizer, DataConfig(cache_dir=str(tmp_path), doc_stride=100), labels=True)
    assert not s3.from_cache  # other settings, other features
    import copy

    without_types = copy.deepcopy(wordpiece_tokenizer)  # the same vocabulary and backend, no token_type_ids column
    without_types.model_input_names = ["input_ids", "attention_mask"]
    third, s4 = build_features(examples, without_types, data, labels=True)
    assert not s4.from_cache and "token_type_ids" not in third.column_names and "token_type_ids" in first.column_names


def test_a_damaged_cache_entry_is_tokenized_again_and_said_so(wordpiece_tokenizer, tmp_path):
    """Cut at a record batch's end, the file had loaded as fewer features (questions missing from the scores, exit 0);
    cut inside one, or its counts file emptied, it had been a traceback."""
    import pyarrow as pa

    examples, _, _ = load_examples(str(QUICKSTART / "en_train.json"), "train")
    data = DataConfig(cache_dir=str(tmp_path))
    whole = build_features(examples, wordpiece_tokenizer, data, labels=True)[0]["input_ids"]
    (arrow,) = (tmp_path / "features").glob("*.arrow")
    (counts,) = (tmp_path / "features").glob("*.counts.json")

    def replaced(path, content: bytes) -> None:  # a new file: the old one may still be mapped into memory
        path.with_suffix(".new").write_bytes(content)
        path.with_suffix(".new").replace(path)

    def fewer_rows():  # a valid stream of half the rows: what a cut at a batch boundary reads as
        with pa.memory_map(str(arrow)) as source:
            table = pa.ipc.open_stream(source).read_all()
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table.slice(0, len(table) // 2))
        replaced(arrow, sink.getvalue().to_pybytes())

    for damage, why in ((fewer_rows, f"{len(whole) // 2} features of the {len(whole)} written"),
                        (lambda: replaced(arrow, arrow.read_bytes()[:-1000]), "OSError"),
                        (lambda: replaced(counts, b""), "JSONDecodeError")):
        damage()
        features, summary = build_features(examples, wordpiece_tokenizer, data, labels=True)
        assert not summary.from_cache and summary.damaged.startswith(why), summary.damaged
        assert f"tokenized again, the cache entry being damaged: {why}" in str(summary)
        assert features["input_ids"] == whole
        assert build_features(examples, wordpiece_tokenizer, data, labels=True)[1].from_cache  # whole again


def test_a_damaged_examples_cache_entry_is_read_and_validated_again(tmp_path):
    source = str(QUICKSTART / "en_dev.json")
    whole = load_examples(source, "eval", cache_dir=tmp_path)[0]["id"]
    (entry,) = tmp_path.glob("examples-*")
    for name, content in (("golds.json", b""), ("report.json", b"{"), ("examples.arrow", b"")):
        (entry / name).with_suffix(".new").write_bytes(content)
        (entry / name).with_suffix(".new").replace(entry / name)
        assert load_examples(source, "eval", cache_dir=tmp_path)[0]["id"] == whole, name
    (entry / "report.json").unlink()
    assert load_examples(source, "eval", cache_dir=tmp_path)[0]["id"] == whole


@pytest.mark.parametrize("segmenter", ["chars", "jieba"])
def test_chinese_word_ids_follow_the_segmenter(segmenter, wordpiece_tokenizer, tmp_path):
    context = "北京大学是中国最早的国立综合性大学，创办于1898年。"
    path = write_squad(tmp_path / "zh.json", [(context, [
        {"id": "zh", "question": "北京大学创办于哪一年？", "answers": [{"text": "1898年", "answer_start": context.index("1898")}]}])])
    examples, _, _ = load_examples(str(path), "train")
    features, _ = build_features(examples, wordpiece_tokenizer, DataConfig(word_segmenter=segmenter, cache_dir=str(tmp_path)), labels=True)
    f = features[0]
    words = {}
    for (start, end), word in zip(f["offset_mapping"], f["word_ids"]):
        if start >= 0:
            words.setdefault(word, []).append(context[start:end])
    texts = ["".join(pieces) for _, pieces in sorted(words.items())]
    if segmenter == "chars":
        assert texts[:4] == ["北", "京", "大", "学"]
    else:
        assert "北京大学" in texts and "1898" in texts
    assert sorted(words) == list(range(len(words)))  # word ids count up from 0 without gaps


def test_the_segmenter_words_a_token_crosses_are_one_word():
    """A SentencePiece token can cross a segmenter word boundary: 学的 over jieba's 大学|的确. By the word of its first
    character alone, 学的 went to 大学 and the next token 确 began the word 的确, a word boundary inside 的确."""
    from mrc_cli.features import token_words, words_with_tokens

    word_starts = [0, 2, 4]  # 大学|的确|好
    offsets = [(0, 1), (1, 3), (3, 4), (4, 5)]  # 大 学的 确 好
    starts = words_with_tokens(word_starts, offsets)
    assert starts == [0, 4]
    assert token_words(offsets, [], starts) == [0, 0, 0, 1]
    # a token over three words, the last one cut: the three and the token in the last one's rest are one word
    offsets = [(0, 2), (2, 6), (6, 7)]
    starts = words_with_tokens([0, 2, 3, 5], offsets)
    assert starts == [0, 2]
    assert token_words(offsets, [], starts) == [0, 1, 1]


def test_doc_stride_that_leaves_no_room_is_a_config_error(wordpiece_tokenizer, tmp_path):
    path = write_squad(tmp_path / "d.json", [("The cat sat.", [{"id": "q", "question": "Who?", "answers": []}])])
    examples, _, _ = load_examples(str(path), "predict")
    with pytest.raises(ConfigError, match="doc_stride 400 must be below the 317 tokens left for context"):
        build_features(examples, wordpiece_tokenizer, DataConfig(doc_stride=400), labels=False)


def test_a_misspelled_segmenter_is_refused_when_the_config_is_read():
    from mrc_cli.config import load_config

    with pytest.raises(ConfigError, match="--set: data.word_segmenter 'jeiba': choose tokenizer, chars, jieba or module:function"):
        load_config(sets=["data.word_segmenter=jeiba"])
    assert load_config(sets=["data.word_segmenter=my.segmenters:words"]).data.word_segmenter == "my.segmenters:words"


def test_training_features_leave_out_offsets(wordpiece_tokenizer, tmp_path):
    path = write_squad(tmp_path / "d.json", [("The cat sat on the mat.", [
        {"id": "q", "question": "Where did the cat sit?", "answers": [{"text": "the mat", "answer_start": 15}]}])])
    data = DataConfig(cache_dir=str(tmp_path))
    train = featurize_file(str(path), wordpiece_tokenizer, data, "train").features
    evaluation = featurize_file(str(path), wordpiece_tokenizer, data, "eval").features
    assert "offset_mapping" not in train.column_names and "offset_mapping" in evaluation.column_names
    for name in train.column_names:  # everything else is the same, labels included
        assert train[name] == evaluation[name]


def _label(offsets, text, start, first=7):
    return _label_window(offsets, first, _answer_chars(offsets, {"text": [text], "answer_start": [start]}), False)


def test_an_answer_after_a_lone_sentencepiece_boundary_ends_where_it_starts():
    # "a $5 b" as ALBERT cuts it: "▁a", "▁" alone with the offsets of "$", "$", "5", "▁b"; context tokens from 7
    offsets = [(0, 1), (2, 3), (2, 3), (3, 4), (5, 6)]
    assert _label(offsets, "$", 2) == (9, 9)  # not (9, 8)
    assert _label(offsets, "$5", 2) == (9, 10)
    assert _label(offsets, "a", 0) == (7, 7)


def test_characters_no_token_covers_do_not_pull_in_the_neighbouring_word():
    # "the \u200bmat\u200b today": the tokenizer drops the zero-width spaces
    offsets = [(0, 3), (5, 8), (10, 15)]
    for text, start in (("mat", 5), ("\u200bmat", 4), ("mat\u200b", 5), ("\u200bmat\u200b", 4), (" mat ", 4)):
        assert _label(offsets, text, start) == (8, 8), text
    assert _label(offsets, "\u200b", 4) == (-100, -100)  # no character to point to: ignored, not "no answer"
    # a window whose first token follows the dropped character still holds the whole answer
    assert _label_window(offsets[1:], 7, _answer_chars(offsets, {"text": ["\u200bmat"], "answer_start": [4]}),
                         False) == (7, 7)


def test_a_context_of_characters_the_tokenizer_drops_is_a_feature_without_context(wordpiece_tokenizer, tmp_path):
    """validate, the Reader and serve refuse blank text (mrc_cli.data.is_blank); a lone accent is text, which an
    uncased tokenizer drops, and build_features may be called on any records."""
    from mrc_cli.data import to_dataset

    contexts = ["\u0301", "\u0301 \u0308", "\u200b", "\x01\x02"]
    examples = to_dataset([{"id": f"q{i}", "title": "", "context": c, "question": "What?", "is_impossible": True,
                            "answers": {"text": [], "answer_start": []}} for i, c in enumerate(contexts)])
    features, _ = build_features(examples, wordpiece_tokenizer, DataConfig(cache_dir=str(tmp_path)), labels=True)
    assert features["example_id"] == [f"q{i}" for i in range(len(contexts))]
    for f in features:
        assert all(start == -1 for start, _ in f["offset_mapping"]) and set(f["word_ids"]) == {-1}
        assert (f["start_positions"], f["end_positions"]) == (0, 0)
        assert len(f["offset_mapping"]) == len(f["input_ids"]) == len(f["word_ids"])


def test_the_share_of_unknown_context_tokens_is_said_where_it_matters(wordpiece_tokenizer, tmp_path):
    """An English vocabulary on Chinese text (MiniLM on CMRC: 59 % [UNK]) trains a model that cannot see the text:
    the feature summary (preprocess's line, the run's log) says so; on English text it says nothing."""
    context = "臺灣的首都是臺北市，人口約兩百六十萬。"
    path = write_squad(tmp_path / "zh.json", [(context, [{"id": "zh", "question": "首都是哪裡？", "answers": []}])])
    examples, _, _ = load_examples(str(path), "predict")
    _, summary = build_features(examples, wordpiece_tokenizer, DataConfig(cache_dir=str(tmp_path)), labels=False)
    assert 0.3 < summary.unknown_context_tokens < 1
    assert f"{summary.unknown_context_tokens:.1%} of the context tokens are the tokenizer's unknown token" in str(summary)
    _, cached = build_features(examples, wordpiece_tokenizer, DataConfig(cache_dir=str(tmp_path)), labels=False)
    assert cached.from_cache and cached.unknown_context_tokens == summary.unknown_context_tokens
    english, _, _ = load_examples(str(write_squad(tmp_path / "en.json", [("The cat sat on the mat.", [
        {"id": "en", "question": "Where?", "answers": []}])])), "predict")
    _, summary = build_features(english, wordpiece_tokenizer, DataConfig(cache_dir=str(tmp_path)), labels=False)
    assert summary.unknown_context_tokens == 0 and "unknown" not in str(summary)


def test_a_question_cut_to_max_query_length_fits_it_with_byte_level_bpe(tmp_path):
    """A cut question encoded again can come out longer than it was cut (byte-level BPE gives every byte of a
    character that character's offsets); it must still fit, or the context room falls below the validated one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(["the cat sat on the mat what is it"] * 50, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>", cls_token="<s>", sep_token="</s>")
    path = write_squad(tmp_path / "d.json", [("the cat sat on the mat " * 10, [
        {"id": "q", "question": "what " + "\U0001F600" * 10, "answers": []}])])
    examples, _, _ = load_examples(str(path), "predict")
    room = 32 - 4 - 4  # max_seq_length - max_query_length - 4 special tokens
    data = DataConfig(max_seq_length=32, max_query_length=4, doc_stride=room - 1, cache_dir=str(tmp_path))
    features, summary = build_features(examples, tokenizer, data, labels=False)
    assert summary.questions_truncated == 1
    question_tokens = [sum(1 for start, _ in f["offset_mapping"] if start < 0) - 4 for f in features]
    # "what" and the space: the emoji's four bytes, four tokens, no longer fit beside them
    assert set(question_tokens) == {2} and max(len(ids) for ids in features["input_ids"]) == 32


SEGMENTERS = '''
def by_char(text):
    return [c for c in text if not c.isspace()]

def raises(text):
    raise RuntimeError("dictionary missing")

def number(text):
    return 7

def pairs(text):
    return [(c, i) for i, c in enumerate(text)]

def normalized(text):
    return [text.replace("北", "Ｎ")]

def skips_first(text):
    return list(text[2:])

def empty(text):
    return []

def first_three(text):
    return list(text[:3])
'''


@pytest.fixture
def user_segmenters(tmp_path, monkeypatch):
    """A module of segmenters in the working folder, which the `mrc` script does not put on sys.path."""
    import sys

    from mrc_cli.features import segmenter

    module = tmp_path / "user_segmenters_mod.py"
    module.write_text(SEGMENTERS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # an edit within the second would load the old .pyc
    monkeypatch.setattr(sys, "path", list(sys.path))  # the working folder, which segmenter() adds, goes with the test
    yield module
    segmenter.cache_clear()
    sys.modules.pop("user_segmenters_mod", None)


def _chinese_features(tmp_path, tokenizer, word_segmenter):
    context = "北京大学创办于1898年。"
    path = write_squad(tmp_path / "zh.json", [(context, [{"id": "zh", "question": "何时？", "answers": []}])])
    examples, _, _ = load_examples(str(path), "predict")
    return build_features(examples, tokenizer, DataConfig(word_segmenter=word_segmenter, cache_dir=str(tmp_path)),
                          labels=False)


@pytest.mark.parametrize("name, problem", [
    ("raises", "it failed (RuntimeError: dictionary missing)"),
    ("number", "it returned int; it must return the words of the text, a list of strings"),
    ("pairs", "it returned a list holding tuple;"),
    ("normalized", "its word 'Ｎ京大学创办于1898年。' is not in the text after the words before it (from char 0)"),
    ("empty", "its words cover 0 of the text's 13 characters (whitespace aside); it must return all the text's words"),
    ("first_three", "its words cover 3 of the text's 13 characters"),
])
def test_a_broken_user_segmenter_is_one_error_naming_it_and_the_context(user_segmenters, wordpiece_tokenizer, tmp_path,
                                                                        name, problem):
    with pytest.raises(DataError) as err:
        _chinese_features(tmp_path, wordpiece_tokenizer, f"user_segmenters_mod:{name}")
    assert str(err.value).startswith(f"data.word_segmenter 'user_segmenters_mod:{name}' on the context '北京大学创办于1898年。'")
    assert problem in str(err.value)


def test_a_user_segmenter_from_the_working_folder_and_its_edits_reach_the_features(user_segmenters, wordpiece_tokenizer,
                                                                                    tmp_path):
    import sys

    from mrc_cli.features import segmenter

    (tmp_path / ".#user_segmenters_mod.py").symlink_to(tmp_path / "gone")  # an editor's lock beside it: no file
    (tmp_path / "notes.py").mkdir()
    features, _ = _chinese_features(tmp_path, wordpiece_tokenizer, "user_segmenters_mod:skips_first")
    words = [w for w in features[0]["word_ids"] if w >= 0]
    assert words[0] == 0 and sorted(set(words)) == list(range(max(words) + 1))  # "北京", left out, is a word too
    user_segmenters.write_text(SEGMENTERS.replace("text[2:]", "text[4:]"))  # edited: another module, other words
    segmenter.cache_clear()
    sys.modules.pop("user_segmenters_mod")
    again, summary_again = _chinese_features(tmp_path, wordpiece_tokenizer, "user_segmenters_mod:skips_first")
    assert not summary_again.from_cache and again[0]["word_ids"] != features[0]["word_ids"]
    # named through a module that re-exports it (a helper of the user's): an edit of the module defining it counts too
    (tmp_path / "reexports_mod.py").write_text("from user_segmenters_mod import skips_first\n\n\n"
                                               "def via_helper(text):\n    return skips_first(text)\n")
    through, _ = _chinese_features(tmp_path, wordpiece_tokenizer, "reexports_mod:via_helper")
    first, _ = _chinese_features(tmp_path, wordpiece_tokenizer, "reexports_mod:skips_first")
    user_segmenters.write_text(SEGMENTERS)
    segmenter.cache_clear()
    for name in ("user_segmenters_mod", "reexports_mod"):
        sys.modules.pop(name)
    edited, summary = _chinese_features(tmp_path, wordpiece_tokenizer, "reexports_mod:skips_first")
    assert not summary.from_cache and edited[0]["word_ids"] == features[0]["word_ids"] != first[0]["word_ids"]
    again, summary = _chinese_features(tmp_path, wordpiece_tokenizer, "reexports_mod:via_helper")
    assert not summary.from_cache and again[0]["word_ids"] == edited[0]["word_ids"] != through[0]["word_ids"]
    sys.modules.pop("reexports_mod")


def test_python_callers_get_the_type_they_passed_wrong_named(tiny_bert_dir):
    """A path for the tokenizer, or records as a list: a TypeError saying what to pass, not an AttributeError."""
    from mrc_cli.tokenizer import load_tokenizer

    examples, _, _ = load_examples("data/quickstart/en_dev.json", "eval")
    with pytest.raises(TypeError, match="tokenizer must be a loaded tokenizer .*load_tokenizer"):
        build_features(examples, tiny_bert_dir, DataConfig(), labels=False, cache=False)
    with pytest.raises(TypeError, match="examples must be a datasets.Dataset .* not list"):
        build_features([examples[0]], load_tokenizer(tiny_bert_dir), DataConfig(), labels=False, cache=False)
