"""Wall time of a training run: what the rest of it takes (the progress bar's time left, its evaluations included)
and train.max_time's budget, both projected from the measured time of a training step and of an evaluation."""

from __future__ import annotations

import contextlib
import time

from tqdm.auto import tqdm

now = time.perf_counter  # one clock for the run's start, its steps and its pauses (a test replaces it)


def remaining_seconds(steps_left: int, step_seconds: float, evaluations_left: int,
                      evaluation_seconds: float | None) -> float:
    """The wall time of the rest of a run: its steps at the time of one, its evaluations at the time of one (None:
    none measured yet, so none counted)."""
    return steps_left * step_seconds + evaluations_left * (evaluation_seconds or 0.0)


def evaluations_left(step: int, total_steps: int, eval_steps: int) -> int:
    """The dev evaluations after `step` of a run that evaluates: every eval_steps-th step's and the last step's."""
    if step >= total_steps:
        return 0
    between = total_steps // eval_steps - step // eval_steps if eval_steps else 0
    return between + (not eval_steps or total_steps % eval_steps != 0)


class RunClock:
    """This process's measured times: seconds per training step (evaluations and saves left out) and the latest
    evaluation's and save's; with a budget (seconds, from the command's start: set-up counts against a job's time
    limit too), whether the run must end at this step to end within it."""

    def __init__(self, started: float, budget: float | None, evaluates: bool, processes: int):
        self.deadline = started + budget if budget else None
        self.evaluates = evaluates
        # several processes agree on a stop a step after one asks (training._StopVote): they look a step further
        self.lookahead = 1 + (processes > 1)
        self.loop_started, self.steps, self.paused = now(), 0, 0.0
        self.evaluation: float | None = None
        self.save = 0.0

    def step_done(self) -> None:
        self.steps += 1

    @property
    def step_seconds(self) -> float:
        return (now() - self.loop_started - self.paused) / max(1, self.steps)

    @contextlib.contextmanager
    def evaluating(self):
        start = now()
        yield
        self.evaluation = now() - start
        self.paused += self.evaluation

    @contextlib.contextmanager
    def saving(self):
        start = now()
        yield
        self.save = now() - start
        self.paused += self.save

    def out_of_time(self, evaluates_now: bool, saves_now: bool) -> bool:
        """Whether going on past this step would end the run after its deadline: this step's evaluation and save,
        the steps until a stop can take effect, then the end's evaluation and checkpoint, at their measured times
        (an evaluation not yet measured counts nothing)."""
        if self.deadline is None:
            return False
        pending = (self.evaluation or 0.0) * evaluates_now + self.save * saves_now
        end = (self.evaluation or 0.0) * self.evaluates + self.save
        return now() + pending + self.lookahead * self.step_seconds + end > self.deadline


class TrainingBar(tqdm):
    """The training progress bar, whose time left holds the evaluations still to come at the measured time of one
    (tqdm's own counts steps only: its rate leaves out the pauses in which the run evaluated and saved, as it should,
    and so promised 5 minutes to a run with 15 minutes of evaluations still ahead)."""

    def __init__(self, *args, evaluations_left=lambda step: 0, clock: RunClock | None = None, **kwargs):
        self.evaluations_left, self.clock = evaluations_left, clock
        super().__init__(*args, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, "
                                           "{rate_fmt}{postfix}]", **kwargs)

    @property
    def format_dict(self):
        shown = super().format_dict
        if self.disable or not shown.get("rate") or self.clock is None:
            return shown  # no rate yet: tqdm's "?"
        left = remaining_seconds(self.total - self.n, 1 / shown["rate"], self.evaluations_left(self.n),
                                 self.clock.evaluation)
        return {**shown, "remaining": self.format_interval(left)}


class WallClock:
    """The wall seconds a run has taken over all its parts: this process's since it began and, where it resumed, the
    earlier parts' up to that checkpoint (a stopped part's time after its checkpoint is not counted: those steps are
    trained again). Kept in checkpoints as a part of `stateful`."""

    def __init__(self):
        self.started, self.before = now(), 0.0

    @property
    def seconds(self) -> float:
        return self.before + now() - self.started

    def state_dict(self) -> dict:
        return {"seconds": self.seconds}

    def load_state_dict(self, state: dict) -> None:
        self.before = state["seconds"]
