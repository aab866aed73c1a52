"""``probret data`` (cli/data_cmd.py): convert MSVD's pickle safely, check a dataset layout."""

from __future__ import annotations

import pickle

from probret.cli.main import cli

CAPTIONS = {
    "vidA_1_5": [["a", "man", "cooks"]],
    "vidB_2_9": [["a", "girl", "dances"], ["someone", "is", "dancing"], ["a", "woman", "dances"]],
    "vidC_0_4": [["a", "bird", "flies"]],
}


def _msvd(tmp_path):
    root = tmp_path / "msvd"
    (root / "YouTubeClips").mkdir(parents=True)
    (root / "train_list.txt").write_text("vidA_1_5\n")
    (root / "test_list.txt").write_text("vidB_2_9\nvidC_0_4\n")
    for vid in CAPTIONS:
        (root / "YouTubeClips" / f"{vid}.avi").write_bytes(b"")
    return root


def _run(args, capsys) -> tuple[int, str, str]:
    """``probret ARGS`` as the console script runs it: (exit code, stdout, stderr)."""
    try:
        cli(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_convert_then_check(tmp_path, capsys):
    root = _msvd(tmp_path)
    pkl = root / "raw-captions.pkl"
    pkl.write_bytes(pickle.dumps(CAPTIONS))
    code, out, _ = _run(["data", "convert-msvd", str(pkl), str(root / "raw-captions.json")], capsys)
    assert code == 0 and "3 videos" in out
    code, out, _ = _run(["data", "check", "msvd", str(root), "test"], capsys)
    assert code == 0 and "msvd/test: 4 texts, 2 videos, 0 missing" in out


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_a_pickle_that_runs_code_is_a_data_error(tmp_path, capsys):
    pkl = tmp_path / "raw-captions.pkl"
    pkl.write_bytes(pickle.dumps({"vid": [_Evil()]}))
    code, _, err = _run(["data", "convert-msvd", str(pkl)], capsys)
    assert code == 3 and "refusing" in err and err.count("\n") == 1
    assert not (tmp_path / "raw-captions.json").exists()


def test_unknown_dataset_is_a_usage_error(tmp_path, capsys):
    code, _, err = _run(["data", "check", "webvid", str(tmp_path), "test"], capsys)
    assert code == 2 and "webvid" in err
