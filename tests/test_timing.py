"""The time left that the training bar shows, evaluations included, and the arithmetic behind it."""

from __future__ import annotations

import io

import pytest

from mrc_cli import timing


def test_the_time_left_adds_the_evaluations_still_to_come():
    # 30 steps of 10 s and 3 evaluations of 5 min: 20 min, not the 5 the steps alone take
    assert timing.remaining_seconds(30, 10.0, 3, 300.0) == 1200
    assert timing.remaining_seconds(30, 10.0, 3, None) == 300  # no evaluation measured yet: the steps alone


@pytest.mark.parametrize(("step", "total", "eval_steps", "left"), [
    (0, 100, 25, 4),  # 25, 50, 75, 100
    (25, 100, 25, 3),  # 25's is done
    (0, 110, 25, 5),  # 25, 50, 75, 100 and the last step's, 110
    (100, 110, 25, 1),
    (0, 100, 0, 1),  # at the end only
    (100, 100, 25, 0),
])
def test_evaluations_left_are_every_eval_steps_th_and_the_last_steps(step, total, eval_steps, left):
    assert timing.evaluations_left(step, total, eval_steps) == left


def test_the_training_bar_shows_the_time_left_with_the_evaluations():
    clock = timing.RunClock(started=timing.now(), budget=None, evaluates=True, processes=1)
    bar = timing.TrainingBar(total=100, file=io.StringIO(), mininterval=0, clock=clock,
                             evaluations_left=lambda step: timing.evaluations_left(step, 100, 50))
    bar.update(1)
    bar.update(1)  # steps of microseconds: their share of the time left rounds to nothing
    assert "<00:00" in str(bar)  # no evaluation measured yet
    clock.evaluation = 600.0
    assert "2/100 [00:00<20:00" in str(bar)  # the evaluations at steps 50 and 100
    bar.close()
