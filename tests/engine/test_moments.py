"""engine/moments.py: moments finer than the window, several per video, never overlapping."""

from __future__ import annotations

import numpy as np

from probret.engine.moments import find_moments


def _video(sims, spacing=1.0, per_segment=4):
    """Frames every ``spacing`` s (times 0.5, 1.5, ...), ``per_segment`` to a segment."""
    n = len(sims)
    times = (np.arange(n) + 0.5) * spacing
    seg = np.arange(n) // per_segment
    return times, np.asarray(sims, float), seg, (0.0, n * spacing)


def test_a_moment_is_finer_than_its_window():
    # 12 frames in 3 segments of 4 s; the event is frames 5-6 (inside segment 1: 4-8 s)
    times, sims, seg, span = _video([.1, .1, .1, .1, .1, .9, .95, .1, .1, .1, .1, .1])
    (m,) = find_moments(times, sims, seg, np.array([.2, .8, .2]), span, 1, n=1)
    assert (m.start, m.end, m.best_time, m.score) == (5.0, 7.0, 6.5, 0.8)  # not the 4-8 s window


def test_top_moments_are_disjoint_and_ordered():
    sims = [.1, .8, .9, .1, .1, .1, .1, .1, .1, .7, .75, .1]  # two places; the first matches best
    times, sims, seg, span = _video(sims)
    got = find_moments(times, sims, seg, np.array([.9, .1, .6]), span, 0, n=3)
    assert [(m.start, m.end) for m in got] == [(1.0, 3.0), (9.0, 11.0)]  # only two places match
    assert got[0].best_time == 2.5 and got[1].best_time == 10.5 and got[0].score == .9 and got[1].score == .6
    assert got[0].end <= got[1].start


def test_a_single_dip_does_not_split_and_the_ends_are_the_video_ends():
    times, sims, seg, span = _video([.9, .85, .2, .9, .1, .1, .1, .1])
    (m,) = find_moments(times, sims, seg, np.array([.5, .1]), span, 0)
    assert (m.start, m.end) == (0.0, 4.0)


def test_a_clip_that_matches_everywhere_is_one_moment_the_whole_clip():
    times, sims, seg, span = _video([.5] * 8)
    got = find_moments(times, sims, seg, np.array([.3, .3]), span, 0, n=3)
    assert [(m.start, m.end) for m in got] == [(0.0, 8.0)]


def test_repeated_frames_of_a_short_clip_count_once():
    times = np.array([0.0, 0.0, 0.4, 0.4, 0.8, 0.8])  # a 3-frame clip sampled at T = 6
    sims = np.array([.1, .1, .9, .9, .1, .1])
    (m,) = find_moments(times, sims, np.zeros(6, int), np.array([.7]), (0.0, 1.2), 0)
    np.testing.assert_allclose((m.start, m.end, m.best_time), (0.2, 0.6, 0.4))
