"""`staging`: folders that appear whole or not at all, also when two processes race to write
the same one (two capture workers saving a teacher's tokenizer)."""

import pytest

from polydistill.staging import _rename_unless_there, staged_folder


def test_a_folder_appears_whole(tmp_path):
    target = tmp_path / "out"
    with staged_folder(target, replace=False) as staging:
        (staging / "a.txt").write_text("mine")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left


def test_a_folder_written_meanwhile_by_another_process_is_kept(tmp_path):
    """Both saw no target; the other renamed its folder in first: this one gets
    FileExistsError (which a capture worker takes as "saved already") and theirs stays whole."""
    target = tmp_path / "tokenizer"
    refused = pytest.raises(FileExistsError, match="exists; refusing to overwrite it")
    with refused, staged_folder(target, replace=False) as staging:
        (staging / "a.txt").write_text("mine")
        target.mkdir()
        (target / "a.txt").write_text("theirs")
    assert (target / "a.txt").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer"]


def test_a_rename_onto_a_folder_written_at_the_same_moment_is_refused(tmp_path):
    """Both saw no target at the last check, then renamed: the second rename meets a full
    folder (ENOTEMPTY), which is the same FileExistsError, not an OSError that stops the run."""
    mine, target = tmp_path / ".staging", tmp_path / "tokenizer"
    for folder, text in ((mine, "mine"), (target, "theirs")):
        folder.mkdir()
        (folder / "a.txt").write_text(text)
    with pytest.raises(FileExistsError):
        _rename_unless_there(mine, target)
    assert (target / "a.txt").read_text() == "theirs"


def test_replace_swaps_an_existing_folder_once_the_new_one_is_whole(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(FileExistsError), staged_folder(target, replace=False):
        pass
    with staged_folder(target, replace=True) as staging:
        (staging / "new.txt").write_text("new")
        assert (target / "old.txt").exists()
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
