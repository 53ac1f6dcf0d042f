"""The wrong-answer windows of the real-HA tests: two sampled signals compared as step functions."""

from __future__ import annotations

import pytest
from support.windows import Window, changes, wrong_windows


def steps(*points: tuple[float, bool]) -> list[tuple[float, bool]]:
    return list(points)


def test_an_answer_that_always_agrees_has_no_wrong_window() -> None:
    """The same changes at the same times, sampled at different instants: nothing is wrong."""
    answers = steps((0.0, True), (5.0, False), (9.0, True), (12.0, True))
    truths = steps((0.0, True), (2.0, True), (5.0, False), (9.0, True), (12.0, True))
    assert wrong_windows(answers, truths) == []


def test_an_answer_that_lags_the_truth_is_wrong_for_the_lag() -> None:
    """Truth turns false at 3 s, the answer at 5 s: wrong (still ready) from 3 to 5."""
    answers = steps((0.0, True), (5.0, False), (10.0, False))
    truths = steps((0.0, True), (3.0, False), (10.0, False))
    assert wrong_windows(answers, truths) == [Window(3.0, 5.0, ready=True)]


def test_not_ready_while_a_server_is_acceptable_counts_too() -> None:
    """Truth recovers at 4 s, the answer at 7 s: a not-ready window of 3 s."""
    answers = steps((0.0, False), (7.0, True), (8.0, True))
    truths = steps((0.0, False), (4.0, True), (8.0, True))
    (window,) = wrong_windows(answers, truths)
    assert (window.start, window.end, window.ready) == (4.0, 7.0, False)
    assert window.seconds == pytest.approx(3.0)


def test_only_the_span_both_signals_cover_counts() -> None:
    """Answers before the first truth sample and after the last one are not judged."""
    answers = steps((0.0, False), (2.0, True), (20.0, False))
    truths = steps((1.0, True), (10.0, True))
    assert wrong_windows(answers, truths) == [Window(1.0, 2.0, ready=False)]


def test_a_wrong_answer_until_the_end_is_a_window_up_to_the_end() -> None:
    """A sidecar that never catches up is wrong from the truth's change to the last sample."""
    answers = steps((0.0, True), (30.0, True))
    truths = steps((0.0, True), (4.0, False), (30.0, False))
    assert wrong_windows(answers, truths) == [Window(4.0, 30.0, ready=True)]


def test_adjacent_spans_with_the_same_answer_merge_and_flaps_stay_apart() -> None:
    """Samples inside one wrong span do not split it; separate flaps are separate windows."""
    answers = steps((0.0, True), (1.0, False), (2.0, False), (3.0, True), (5.0, False), (6.0, True))
    truths = steps((0.0, True), (1.5, True), (6.0, True))
    windows = wrong_windows(answers, truths)
    assert windows == [Window(1.0, 3.0, ready=False), Window(5.0, 6.0, ready=False)]
    assert sum(w.seconds for w in windows) == pytest.approx(3.0)


def test_no_samples_means_no_window() -> None:
    """An empty signal, or signals that never overlap, judge nothing."""
    assert wrong_windows([], steps((0.0, True))) == []
    assert wrong_windows(steps((0.0, True), (1.0, True)), steps((2.0, False), (3.0, False))) == []


def test_changes_keep_the_first_sample_and_each_flip() -> None:
    """The change list, relative to a start time, for assertion messages."""
    samples = steps((10.0, True), (10.1, True), (12.0, False), (12.5, False), (13.0, True))
    assert changes(samples, since=10.0) == [(0.0, True), (2.0, False), (3.0, True)]
