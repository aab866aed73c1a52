"""Dataset readers on small files written in each benchmark's exact format."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest

from probret.engine.errors import DataError
from probret.train.datasets import (
    DatasetWarning,
    RetrievalSplit,
    VideoRecord,
    convert_msvd_pickle,
    load_split,
)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load_quiet(*args, **kwargs) -> RetrievalSplit:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning here is a test failure
        return load_split(*args, **kwargs)


def check_consistent(s: RetrievalSplit) -> None:
    assert s.text_video_index.dtype == np.int64
    assert len(s.texts) == len(s.text_video_index)
    for j, v in enumerate(s.videos):
        assert v.captions == [t for t, i in zip(s.texts, s.text_video_index) if i == j]


# --------------------------------------------------------------------------------------------
# MSRVTT
# --------------------------------------------------------------------------------------------


def msrvtt_root(tmp_path: Path) -> Path:
    root = tmp_path / "msrvtt"
    data = {
        "info": {},
        "videos": [
            {"video_id": "video0", "split": "train", "url": "u0"},
            {"video_id": "video1", "split": "train", "url": "u1"},
            {"video_id": "video7", "split": "validate", "url": "u7"},
            {"video_id": "video9", "split": "test", "url": "u9"},
        ],
        "sentences": [
            {"caption": "a man sings", "video_id": "video0", "sen_id": 0},
            {"caption": "a cat jumps", "video_id": "video1", "sen_id": 1},
            {"caption": "someone is singing", "video_id": "video0", "sen_id": 2},
            {"caption": "a kitten leaps", "video_id": "video1", "sen_id": 3},
            {"caption": "cars race", "video_id": "video7", "sen_id": 4},
            {"caption": "a dog runs", "video_id": "video9", "sen_id": 5},
            {"caption": "a puppy  is\nrunning ", "video_id": "video9", "sen_id": 6},
        ],
    }
    write(root / "MSRVTT_data.json", json.dumps(data))
    write(root / "MSRVTT_train.9k.csv", "video_id\nvideo0\nvideo1\nvideo0\n")
    write(root / "MSRVTT_train.7k.csv", "video_id\nvideo1\n")
    write(
        root / "MSRVTT_JSFUSION_test.csv",
        'key,vid_key,video_id,sentence\nret0,msr9,video9,a dog runs\nret1,msr7,video7,"cars race, fast"\n'
        "ret2,msr1,video1,a cat jumps\n",
    )
    touch(root / "videos" / "all" / "video0.mp4")  # CLIP4Clip layout
    touch(root / "videos" / "video1.mp4")  # X-Pool layout (videos_dir points at the files)
    touch(root / "videos" / "all" / "video9.mp4")
    return root


def test_msrvtt_train_pairs_every_caption(tmp_path):
    root = msrvtt_root(tmp_path)
    s = load_quiet("msrvtt", root, "train")
    assert (s.name, s.split) == ("msrvtt", "train")
    assert s.video_ids == ["video0", "video1"]  # csv order, duplicates removed
    assert s.texts == ["a man sings", "someone is singing", "a cat jumps", "a kitten leaps"]
    assert s.text_video_index.tolist() == [0, 0, 1, 1]
    assert s.videos[0].path == str(root / "videos" / "all" / "video0.mp4")
    assert s.videos[1].path == str(root / "videos" / "video1.mp4")
    assert s.missing == [] and s.relevant is None
    assert (s.videos[0].start, s.videos[0].end) == (None, None)
    check_consistent(s)
    assert load_quiet("msrvtt", root, "train-9k").texts == s.texts
    assert load_quiet("msrvtt", root, "train-7k").texts == ["a cat jumps", "a kitten leaps"]


def test_msrvtt_test_is_1k_a_pairs_with_missing_video(tmp_path):
    root = msrvtt_root(tmp_path)
    with pytest.warns(DatasetWarning, match=r"1 of 3 video files missing.*video7\.mp4"):
        s = load_split("MSRVTT", root, "test")
    assert s.split == "test"
    assert s.texts == ["a dog runs", "cars race, fast", "a cat jumps"]  # quoted comma kept
    assert s.video_ids == ["video9", "video7", "video1"]
    assert s.text_video_index.tolist() == [0, 1, 2]
    assert [v.captions for v in s.videos] == [["a dog runs"], ["cars race, fast"], ["a cat jumps"]]
    # the missing video is reported, not dropped: the protocol keeps all its candidates
    assert s.missing == [str(root / "videos" / "video7.mp4")]
    assert s.videos[1].path == s.missing[0]
    with pytest.raises(DataError, match="video7.mp4"):
        load_split("msrvtt", root, "test", strict_missing=True)
    kept = s.without_missing()
    assert kept.video_ids == ["video9", "video1"] and kept.texts == ["a dog runs", "a cat jumps"]
    assert kept.text_video_index.tolist() == [0, 1] and kept.missing == []


def test_msrvtt_val_is_the_test_split_with_a_warning(tmp_path):
    root = msrvtt_root(tmp_path)
    touch(root / "videos" / "video7.mp4")
    with pytest.warns(DatasetWarning, match="'val' loads the test split"):
        s = load_split("msrvtt", root, "val", video_dir=root / "videos")
    assert s.split == "test" and len(s.texts) == 3


def test_msrvtt_test_full_uses_all_captions_of_official_test_videos(tmp_path):
    root = msrvtt_root(tmp_path)
    s = load_quiet("msrvtt", root, "test-full")
    assert s.video_ids == ["video9"]
    assert s.texts == ["a dog runs", "a puppy is running"]  # whitespace normalised
    assert s.text_video_index.tolist() == [0, 0]


def test_video_dir_override_and_missing_folder(tmp_path):
    root = msrvtt_root(tmp_path)
    other = tmp_path / "elsewhere"
    for v in ("video9", "video7", "video1"):
        touch(other / f"{v}.mp4")
    s = load_quiet("msrvtt", root, "test", video_dir=other)
    assert s.missing == [] and s.videos[0].path == str(other / "video9.mp4")
    with pytest.warns(DatasetWarning, match="does not exist"):
        s = load_split("msrvtt", root, "test", video_dir=tmp_path / "nope")
    assert len(s.missing) == 3


def test_msrvtt_malformed_files(tmp_path):
    root = msrvtt_root(tmp_path)
    (root / "MSRVTT_data.json").write_text("{not json")
    with pytest.raises(DataError, match=r"MSRVTT_data.json: not valid JSON"):
        load_split("msrvtt", root, "train")
    (root / "MSRVTT_data.json").write_text(json.dumps({"videos": [], "sentences": [{"video_id": "video0"}]}))
    with pytest.raises(DataError, match=r"MSRVTT_data.json: sentences\[0\] must be an object with string 'video_id'"):
        load_split("msrvtt", root, "train")
    (root / "MSRVTT_data.json").write_text(json.dumps([1, 2]))
    with pytest.raises(DataError, match="MSRVTT_data.json format"):
        load_split("msrvtt", root, "train")
    write(root / "MSRVTT_JSFUSION_test.csv", "key,vid_key,sentence\nret0,msr9,a dog\n")
    with pytest.raises(DataError, match=r"MSRVTT_JSFUSION_test.csv: missing column\(s\) \['video_id'\]"):
        load_split("msrvtt", root, "test")
    write(root / "MSRVTT_JSFUSION_test.csv", "key,vid_key,video_id,sentence\nret0,msr9,video9,a dog, running\n")
    with pytest.raises(DataError, match=r"MSRVTT_JSFUSION_test.csv, line 2: expected 4 fields .* got 5"):
        load_split("msrvtt", root, "test")
    (root / "MSRVTT_train.9k.csv").unlink()
    with pytest.raises(DataError, match=r"MSRVTT_train.9k.csv not found"):
        load_split("msrvtt", root, "train")


def test_video_ids_cannot_escape_the_video_folder(tmp_path):
    root = msrvtt_root(tmp_path)
    write(root / "MSRVTT_JSFUSION_test.csv", "key,vid_key,video_id,sentence\nret0,msr9,../../etc/passwd,a dog\n")
    with pytest.raises(DataError, match="not a plain file name"):
        load_split("msrvtt", root, "test")


def test_unknown_dataset_split_and_root(tmp_path):
    root = msrvtt_root(tmp_path)
    with pytest.raises(DataError, match="unknown dataset 'kinetics'"):
        load_split("kinetics", root, "test")
    with pytest.raises(DataError, match="unknown split 'dev' for 'msrvtt'"):
        load_split("msrvtt", root, "dev")
    with pytest.raises(DataError, match="dataset folder not found"):
        load_split("msrvtt", tmp_path / "absent", "test")


def test_a_missing_procedural_world_suggests_the_command_that_makes_it(tmp_path):
    with pytest.raises(DataError, match=r"dataset folder not found; make one with `probret synth .*my world.* --videos"):
        load_split("procedural", tmp_path / "my world", "train")


def test_walk_fallback_finds_videos_elsewhere_in_the_folder(tmp_path):
    root = msrvtt_root(tmp_path)
    touch(root / "videos" / "TestVideo" / "video7.mp4")  # official MSR-VTT archive layout
    s = load_quiet("msrvtt", root, "test")
    assert s.videos[1].path == str(root / "videos" / "TestVideo" / "video7.mp4")


# --------------------------------------------------------------------------------------------
# DiDeMo
# --------------------------------------------------------------------------------------------


def test_didemo_clip4clip_paragraphs(tmp_path):
    root = tmp_path / "didemo"
    moments = [
        {"video": "111@N00_a.mov", "description": "a dog barks. ", "times": [[0, 0], [0, 1]], "annotation_id": 1},
        {"video": "222@N00_b.avi", "description": "the car stops", "times": [[2, 3]], "annotation_id": 2},
        {"video": "111@N00_a.mov", "description": "the dog runs away", "times": [[3, 4]], "annotation_id": 3},
        {"video": "333@N00_c.mp4", "description": "not in the list", "times": [[1, 1]], "annotation_id": 4},
    ]
    write(root / "test_data.json", json.dumps(moments))
    write(root / "test_list.txt", "222@N00_b.avi\n111@N00_a.mov\n444@N00_d.mov\n")
    touch(root / "videos" / "111@N00_a.mp4")  # re-encoded copy of the .mov
    touch(root / "videos" / "222@N00_b.avi")
    with pytest.warns(DatasetWarning, match=r"1 video\(s\) of test_list.txt have no description"):
        s = load_split("didemo", root, "test")
    assert s.video_ids == ["222@N00_b.avi", "111@N00_a.mov"]  # list order, undescribed video left out
    assert s.texts == ["the car stops", "a dog barks. the dog runs away"]
    assert s.text_video_index.tolist() == [0, 1]
    assert s.videos[1].path == str(root / "videos" / "111@N00_a.mp4")
    assert (s.videos[0].start, s.videos[0].end) == (0.0, 30.0)
    assert s.missing == []
    check_consistent(s)


def test_didemo_ret_json_and_errors(tmp_path):
    root = tmp_path / "didemo"
    write(root / "didemo_ret_train.json", json.dumps([
        {"video": "v1.mp4", "caption": ["one.", "two."]},
        {"video": "v2.mp4", "caption": "a paragraph"},
    ]))
    touch(root / "videos" / "v1.mp4")
    with pytest.warns(DatasetWarning, match="1 of 2 video files missing"):
        s = load_split("didemo", root, "train")
    assert s.texts == ["one. two.", "a paragraph"]
    write(root / "didemo_ret_train.json", json.dumps([{"video": "v1.mp4", "caption": [3]}]))
    with pytest.raises(DataError, match=r"didemo_ret_train.json: entry 0 'caption' must be"):
        load_split("didemo", root, "train")
    write(root / "val_data.json", json.dumps([{"video": 5, "description": "x"}]))
    with pytest.raises(DataError, match=r"val_data.json: entry 0 'video' must be a string"):
        load_split("didemo", root, "val")
    with pytest.raises(DataError, match="neither test_data.json"):
        load_split("didemo", root, "test")


# --------------------------------------------------------------------------------------------
# MSVD
# --------------------------------------------------------------------------------------------


def msvd_root(tmp_path: Path) -> Path:
    root = tmp_path / "msvd"
    write(root / "train_list.txt", "vidA_1_5\n")
    write(root / "test_list.txt", "vidB_2_9\nvidC_0_4\n")
    touch(root / "YouTubeClips" / "vidA_1_5.avi")
    touch(root / "YouTubeClips" / "vidB_2_9.avi")
    touch(root / "YouTubeClips" / "vidC_0_4.avi")
    return root


CAPTIONS = {
    "vidA_1_5": [["a", "man", "cooks"]],
    "vidB_2_9": [["a", "girl", "dances"], ["someone", "is", "dancing"], ["a", "woman", "dances"]],
    "vidC_0_4": [["a", "bird", "flies"]],
}


def test_msvd_multi_caption_test(tmp_path):
    root = msvd_root(tmp_path)
    write(root / "raw-captions.json", json.dumps(CAPTIONS))  # tokens, as in CLIP4Clip's pickle
    s = load_quiet("msvd", root, "test")
    assert s.video_ids == ["vidB_2_9", "vidC_0_4"]
    assert s.texts == ["a girl dances", "someone is dancing", "a woman dances", "a bird flies"]
    assert s.text_video_index.tolist() == [0, 0, 0, 1]
    assert s.videos[0].path == str(root / "YouTubeClips" / "vidB_2_9.avi")
    check_consistent(s)
    # X-Pool's captions_msvd.json (strings) reads the same
    (root / "raw-captions.json").unlink()
    write(root / "captions_msvd.json", json.dumps({k: [" ".join(c) for c in v] for k, v in CAPTIONS.items()}))
    assert load_quiet("msvd", root, "test").texts == s.texts
    write(root / "test_list.txt", "vidB_2_9\nvidZ\n")
    with pytest.raises(DataError, match=r"test_list.txt: 1 video\(s\) have no captions in captions_msvd.json"):
        load_split("msvd", root, "test")


def test_msvd_pickle_is_refused_then_converted_safely(tmp_path):
    root = msvd_root(tmp_path)
    pkl = root / "raw-captions.pkl"
    pkl.write_bytes(pickle.dumps(CAPTIONS, protocol=2))
    with pytest.raises(DataError, match=r"does not load pickles.*probret data convert-msvd"):
        load_split("msvd", root, "train")
    out = convert_msvd_pickle(pkl)
    assert out == root / "raw-captions.json"
    assert json.loads(out.read_text())["vidA_1_5"] == ["a man cooks"]
    s = load_quiet("msvd", root, "train")
    assert s.texts == ["a man cooks"]


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_msvd_pickle_with_code_is_rejected(tmp_path):
    pkl = tmp_path / "raw-captions.pkl"
    pkl.write_bytes(pickle.dumps({"vid": [_Evil()]}))
    with pytest.raises(DataError, match="refusing"):
        convert_msvd_pickle(pkl)
    assert not (tmp_path / "raw-captions.json").exists()


# --------------------------------------------------------------------------------------------
# LSMDC
# --------------------------------------------------------------------------------------------


def test_lsmdc_tab_separated(tmp_path):
    root = tmp_path / "lsmdc"
    clip_a = "1012_Unbreakable_00.05.16.065-00.05.21.941"
    clip_b = "3001_21_JUMP_STREET_00.00.41.120-00.00.45.456"
    write(
        root / "LSMDC16_annos_training.csv",
        f"{clip_a}\t00.05.16.065\t00.05.21.941\t00.05.16.000\t00.05.22.000\tSOMEONE opens the door.\n"
        f"{clip_b}\t00.00.41.120\t00.00.45.456\t00.00.41.000\t00.00.46.000\tHe looks around, nervous.\n"
        f"{clip_a}\t00.05.16.065\t00.05.21.941\t00.05.16.000\t00.05.22.000\tSOMEONE walks in.\n\n",
    )
    touch(root / "videos" / "1012_Unbreakable" / f"{clip_a}.avi")  # X-Pool: per-movie folders
    touch(root / "videos" / f"{clip_b}.mp4")
    s = load_quiet("lsmdc", root, "train")
    assert s.video_ids == [clip_a, clip_b]  # a clip id may repeat in training
    assert s.texts == ["SOMEONE opens the door.", "He looks around, nervous.", "SOMEONE walks in."]
    assert s.text_video_index.tolist() == [0, 1, 0]
    assert s.videos[0].path == str(root / "videos" / "1012_Unbreakable" / f"{clip_a}.avi")
    assert s.videos[1].path == str(root / "videos" / f"{clip_b}.mp4")
    check_consistent(s)
    write(root / "LSMDC16_challenge_1000_publictect.csv", f"{clip_a}\t1\t2\t3\tonly five fields\n")
    with pytest.raises(DataError, match=r"publictect.csv, line 1: expected 6 tab-separated fields .* found 5"):
        load_split("lsmdc", root, "test")
    with pytest.raises(DataError, match="LSMDC16_annos_val.csv not found"):
        load_split("lsmdc", root, "val")


# --------------------------------------------------------------------------------------------
# VATEX
# --------------------------------------------------------------------------------------------


def test_vatex_ref_captions_and_val_fallback(tmp_path):
    root = tmp_path / "vatex"
    write(root / "ref_captions.json", json.dumps({
        "Ptf_2VRj-V0_000122_000132": ["a man plays guitar", "a person strums"],
        "abc_000001_000011": ["kids play football"],
    }))
    write(root / "train_list.txt", "abc_000001_000011\n")
    write(root / "test_list.txt", "Ptf_2VRj-V0_000122_000132\n")
    touch(root / "videos" / "Ptf_2VRj-V0_000122_000132.mp4")
    touch(root / "videos" / "abc_000001_000011.mp4")
    s = load_quiet("vatex", root, "test")
    assert s.texts == ["a man plays guitar", "a person strums"] and s.text_video_index.tolist() == [0, 0]
    with pytest.warns(DatasetWarning, match="no val_list.txt"):
        v = load_split("vatex", root, "val")
    assert v.split == "test" and v.texts == s.texts
    write(root / "val_list.txt", "abc_000001_000011\n")
    assert load_quiet("vatex", root, "val").split == "val"


def test_vatex_official_json(tmp_path):
    root = tmp_path / "vatex"
    write(root / "vatex_training_v1.0.json", json.dumps([
        {"videoID": "aaa_000000_000010", "enCap": ["one", "two"], "chCap": ["一"]},
        {"videoID": "bbb_000005_000015", "enCap": ["three"], "chCap": []},
    ]))
    touch(root / "videos" / "aaa_000000_000010.mp4")
    touch(root / "videos" / "bbb_000005_000015.mp4")
    s = load_quiet("vatex", root, "train")
    assert s.texts == ["one", "two", "three"] and s.text_video_index.tolist() == [0, 0, 1]
    with pytest.raises(DataError, match="test_list.txt: not found"):
        load_split("vatex", root, "test")
    write(root / "vatex_validation_v1.0.json", json.dumps([{"videoID": "ccc", "enCap": "oops"}]))
    with pytest.raises(DataError, match=r"vatex_validation_v1.0.json: entry 0 'enCap' must be a list"):
        load_split("vatex", root, "train")


# --------------------------------------------------------------------------------------------
# Charades
# --------------------------------------------------------------------------------------------


def test_charades_descriptions(tmp_path):
    root = tmp_path / "charades"
    header = "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"
    write(root / "Charades_v1_test.csv", header
          + 'YSKX3,HR43,Kitchen,6,7,Yes,"A person cooks.",pan;stove,'
          + '"A person is cooking, then eats.;They eat.",c092 11.90 21.20,30.0\n'
          + "Z9ABC,HR43,Bedroom,6,7,Yes,A person sleeps.,bed,,c001 0.0 3.0,31.2\n")
    touch(root / "Charades_v1_480" / "YSKX3.mp4")
    touch(root / "Charades_v1_480" / "Z9ABC.mp4")
    with pytest.warns(DatasetWarning, match="dropped 1 empty caption"):
        s = load_split("charades", root, "test")
    assert s.video_ids == ["YSKX3", "Z9ABC"]  # the undescribed video stays a candidate
    assert s.texts == ["A person is cooking, then eats.;They eat."]
    assert s.text_video_index.tolist() == [0]
    assert s.videos[1].captions == [] and s.missing == []
    with pytest.warns(DatasetWarning) as record:
        assert load_split("charades", root, "val").split == "test"
    assert any("Charades has no validation split" in str(w.message) for w in record)
    with pytest.raises(DataError, match="Charades_v1_train.csv not found"):
        load_split("charades", root, "train")


# --------------------------------------------------------------------------------------------
# procedural world (train/world.py layout)
# --------------------------------------------------------------------------------------------


def procedural_root(tmp_path: Path, *, world: bool = True) -> Path:
    root = tmp_path / "world"
    videos = [("video0", "train"), ("video1", "train"), ("video2", "test"), ("video3", "test"), ("video4", "test")]
    sentences = [
        ("video0", 0, "a red circle moves left"), ("video0", 1, "a circle moving"),
        ("video1", 2, "a blue square grows"),
        ("video2", 3, "a green star spins"), ("video2", 4, "a star"),
        ("video3", 5, "a circle moving"), ("video4", 6, "a small green star spins"),
    ]
    write(root / "procedural_data.json", json.dumps({
        "info": {}, "videos": [{"video_id": v, "split": "validate" if s == "val" else s, "id": i}
                               for i, (v, s) in enumerate(videos)],
        "sentences": [{"caption": c, "video_id": v, "sen_id": k} for v, k, c in sentences],
    }))
    write(root / "train.csv", "video_id\nvideo0\nvideo1\n")
    write(root / "test.csv", "key,vid_key,video_id,sentence\nret0,msr2,video2,a green star spins\n"
          "ret1,msr3,video3,a circle moving\nret2,msr4,video4,a small green star spins\n")
    if world:
        caps = {
            "3": {"video_id": "video2", "split": "test", "caption": "a green star spins", "eval": True,
                  "matches": ["video2", "video4"]},
            "4": {"video_id": "video2", "split": "test", "caption": "a star", "eval": False,
                  "matches": ["video2", "video4"]},
            "5": {"video_id": "video3", "split": "test", "caption": "a circle moving", "eval": True,
                  "matches": ["video3", "video0"]},  # video0 is a training video: not a candidate
            "6": {"video_id": "video4", "split": "test", "caption": "a small green star spins", "eval": True,
                  "matches": ["video4"]},
        }
        write(root / "world.json", json.dumps({"format": "probret-world", "videos": {}, "captions": caps}))
    for v, _ in videos:
        touch(root / "videos" / f"{v}.mp4")
    return root


def test_procedural_relevant_sets(tmp_path):
    root = procedural_root(tmp_path)
    s = load_quiet("procedural", root, "test")
    assert s.texts == ["a green star spins", "a circle moving", "a small green star spins"]
    assert s.video_ids == ["video2", "video3", "video4"]
    assert s.relevant == [[0, 2], [1], [2]]
    train = load_quiet("procedural", root, "train")
    assert train.texts == ["a red circle moves left", "a circle moving", "a blue square grows"]
    assert train.relevant is None
    with pytest.raises(DataError, match="val.csv not found"):
        load_split("procedural", root, "val")
    kept = RetrievalSplit("p", "test", s.videos, s.texts, s.text_video_index, [s.videos[2].path], s.relevant)
    assert kept.without_missing().relevant == [[0], [1]]


def test_procedural_without_world_json(tmp_path):
    root = procedural_root(tmp_path, world=False)
    with pytest.warns(DatasetWarning, match="world.json not found"):
        s = load_split("procedural", root, "test")
    assert s.relevant is None and len(s.texts) == 3


def test_procedural_generated_world_round_trip(tmp_path):
    """The reader against the real generator (train/world.py), a tiny world."""
    world = pytest.importorskip("probret.train.world")
    out = tmp_path / "gen"
    world.generate_world(out, videos=10, seed=0, resolution=(32, 32), frames=4, fps=4)
    test = load_quiet("procedural", out, "test")
    val = load_quiet("procedural", out, "val")
    train = load_quiet("procedural", out, "train")
    assert test.missing == [] and val.missing == [] and train.missing == []
    sets = world.eval_match_sets(world.load_world(out), "test")
    for i, j in enumerate(test.text_video_index):
        expected = sorted(test.video_ids.index(v) for v in sets[test.video_ids[j]])
        assert test.relevant[i] == expected
    assert len(train.texts) > len(train.videos)


def test_records_are_plain_data():
    r = VideoRecord("v", "/x/v.mp4", ["a"])
    assert (r.start, r.end) == (None, None)
    with pytest.raises(ValueError, match="2 texts but 1"):
        RetrievalSplit("n", "test", [r], ["a", "b"], np.array([0]), [])


def test_reader_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, probret.train.datasets; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
