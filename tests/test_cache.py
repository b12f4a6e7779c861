"""The cache of examples and features: what `mrc cache` lists and what pruning removes, on real SQuAD data."""

import os
import time

from typer.testing import CliRunner

from conftest import shared_file
from mrc_cli.cache import DAY, entries, prune
from mrc_cli.cli import app
from mrc_cli.config import DataConfig

runner = CliRunner()


def _featurize(cache, wordpiece_tokenizer):
    from mrc_cli.splits import featurize_file

    return featurize_file(str(shared_file("squad_v2.0_dev_head.json")), wordpiece_tokenizer,
                          DataConfig(cache_dir=str(cache)), "eval")


def _age(entry, days: float) -> None:
    then = time.time() - days * DAY
    for path in entry.paths:
        for f in [path, *(path.rglob("*") if path.is_dir() else [])]:
            os.utime(f, (then, then))


def test_a_loaded_entry_is_marked_used_and_an_unused_one_is_pruned(tmp_path, wordpiece_tokenizer):
    cache = tmp_path / "cache"
    _featurize(cache, wordpiece_tokenizer)
    listed = entries(cache)
    assert sorted(entry.kind for entry in listed) == ["examples", "features"]
    assert all(entry.bytes > 0 for entry in listed)
    for entry in listed:
        _age(entry, 10)
    assert _featurize(cache, wordpiece_tokenizer).summary.from_cache  # the second run loads both entries...
    assert prune(cache, unused_days=5) == ([], entries(cache))  # ...so both were used just now
    for entry in entries(cache):
        _age(entry, 10)
    removed, kept = prune(cache, unused_days=5, dry_run=True)
    assert len(removed) == 2 and not kept and len(entries(cache)) == 2  # a dry run removes nothing
    prune(cache, unused_days=5)
    assert entries(cache) == []
    assert not _featurize(cache, wordpiece_tokenizer).summary.from_cache  # tokenized again


def test_max_gb_removes_the_least_recently_used_first_and_dead_leftovers_go(tmp_path):
    features = tmp_path / "features"
    features.mkdir()
    for name, days in (("features-aa", 3), ("features-bb", 1), ("features-cc", 2)):
        (features / f"{name}.arrow").write_bytes(b"x" * 400_000)
        (features / f"{name}.counts.json").write_text("{}")
        then = time.time() - days * DAY
        for f in features.glob(f"{name}.*"):
            os.utime(f, (then, then))
    examples = tmp_path / "examples"
    (examples / f"examples-ab.tmp-{os.getpid()}").mkdir(parents=True)  # being written by a live process: not listed
    dead = examples / "examples-cd.tmp-999999999"
    dead.mkdir()
    os.utime(dead, (time.time() - 1.5 * DAY, time.time() - 1.5 * DAY))
    assert [entry.name for entry in entries(tmp_path)] == ["features-aa", "features-cc", "examples-cd.tmp-999999999",
                                                           "features-bb"]
    removed, kept = prune(tmp_path, max_gb=0.0005)
    assert [entry.name for entry in removed] == ["features-aa", "features-cc", "examples-cd.tmp-999999999"]
    assert [entry.name for entry in kept] == ["features-bb"] and not dead.exists()
    assert sorted(p.name for p in features.iterdir()) == ["features-bb.arrow", "features-bb.counts.json"]
    assert (examples / f"examples-ab.tmp-{os.getpid()}").is_dir()


def test_mrc_cache_lists_and_prunes(tmp_path, wordpiece_tokenizer):
    cache = tmp_path / "cache"
    _featurize(cache, wordpiece_tokenizer)
    listed = runner.invoke(app, ["cache", "--cache-dir", str(cache)])
    assert listed.exit_code == 0, listed.output
    assert listed.stdout.startswith(f"{cache}: 2 entries, ") and "(examples 1, features 1)" in listed.stdout
    dry = runner.invoke(app, ["cache", "--cache-dir", str(cache), "--clear", "--dry-run"])
    assert "would remove 2 entries" in dry.stdout and len(entries(cache)) == 2
    cleared = runner.invoke(app, ["cache", "--cache-dir", str(cache), "--clear"])
    assert "removed 2 entries" in cleared.stdout and "kept no entries" in cleared.stdout and entries(cache) == []


def test_mrc_cache_lists_a_missing_cache_folder_without_making_it(tmp_path):
    result = runner.invoke(app, ["cache", "--cache-dir", str(tmp_path / "nowhere")])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{tmp_path / 'nowhere'}: no entries") and not (tmp_path / "nowhere").exists()
