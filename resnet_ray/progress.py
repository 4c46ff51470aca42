"""Progress of a run as the driver shows it without --verbose.

Train: rank 0 posts its steps and epoch metrics to a small actor (`Board`) and the driver
draws them: one line per finished epoch, and on a terminal a live progress bar below those
lines with loss, accuracy and ETA (as Keras' `fit` leaves its history on screen). Tune: a
Tune callback counts the trials' epochs the same way, prints a line per finished trial, and a
compact table of the trials at the end (resnet_ray/tune.py).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from . import console

POLL_S = 0.5


def epoch_line(m: dict[str, Any], epochs: int) -> str:
    return (f"epoch {m['epoch']}/{epochs}  loss {m['loss']:.4f}  acc {m['accuracy']:.4f}  "
            f"val_loss {m['val_loss']:.4f}  val_acc {m['val_accuracy']:.4f}  "
            f"{m['epoch_time_s']:.1f}s  {m['images_per_s']:.1f} img/s")


def make_board():
    """The actor rank 0 posts to: a list of events the driver takes in turn."""
    import ray

    @ray.remote(num_cpus=0)
    class Board:
        def __init__(self):
            self.events: list[dict[str, Any]] = []

        def put(self, event: dict[str, Any]) -> None:
            self.events.append(event)

        def take(self) -> list[dict[str, Any]]:
            events, self.events = self.events, []
            return events

    return Board.remote()


def _bar(total: int, desc: str, unit: str, initial: int = 0):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt} "
                           "[{elapsed}<{remaining}{postfix}]")


class Ticker:
    """Calls `tick` every `interval_s` on a thread of its own, from the `with` to its end."""

    def __init__(self, tick: Callable[[], None], interval_s: float):
        self.tick, self.interval_s = tick, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.tick()


class TrainProgress:
    """The driver's view of one Train run: polls the board while `fit()` runs."""

    def __init__(self, epochs: int, steps: int):
        self.epochs, self.steps = epochs, steps
        self.board = make_board()
        self.interactive = console.interactive()
        self.bar = None  # drawn from the first step on, so that start-up does not skew the ETA
        self._poller = Ticker(self._draw, POLL_S)

    def __enter__(self):
        self._poller.__enter__()
        return self

    def __exit__(self, *exc):
        import ray

        self._poller.__exit__(*exc)
        self._draw()  # what arrived after the last poll
        if self.bar is not None:
            self.bar.close()
        try:
            ray.kill(self.board)
        except Exception:  # gone with the cluster
            pass

    def _draw(self) -> None:
        import ray

        try:
            events = ray.get(self.board.take.remote(), timeout=10)
        except Exception:  # the board is gone with the cluster; the run reports the cause
            return
        for event in events:
            self._show(event)

    def note(self, line: str) -> None:
        """A line above the bar (or alone, before the bar is drawn)."""
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def _show(self, event: dict[str, Any]) -> None:
        if "note" in event:
            self.note(event["note"])
            return
        if not self.interactive:
            if "metrics" in event:
                print(epoch_line(event["metrics"], self.epochs), flush=True)
            return
        if self.bar is None:  # from the epoch this event is in: a resumed run starts later
            first = event["metrics"]["epoch"] if "metrics" in event else event["epoch"] - 1
            self.bar = _bar(self.epochs * self.steps, "train", "step", first * self.steps)
        if "metrics" in event:
            m = event["metrics"]
            self.bar.write(epoch_line(m, self.epochs))
            self._move_to(m["epoch"] * self.steps)
            self.bar.set_postfix_str(f"epoch {m['epoch']}/{self.epochs}, loss {m['loss']:.3f}, "
                                     f"acc {m['accuracy']:.3f}, val_acc {m['val_accuracy']:.3f}")
        else:
            self._move_to((event["epoch"] - 1) * self.steps + event["step"])
            self.bar.set_postfix_str(f"epoch {event['epoch']}/{self.epochs}, "
                                     f"loss {event['loss']:.3f}, acc {event['accuracy']:.3f}")

    def _move_to(self, n: int) -> None:
        if n > self.bar.n:
            self.bar.update(n - self.bar.n)
        elif n < self.bar.n:  # a restarted worker group repeats an epoch
            self.bar.n = n
            self.bar.refresh()


def step_sender(board, interval_s: float = 1.0):
    """A Keras callback for rank 0 that posts its step, loss and accuracy at most once per
    interval; the posts are fire-and-forget, so training never waits on the driver."""
    from .keras_backend import keras

    class StepSender(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch, self.last = epoch + 1, time.monotonic()

        def on_train_batch_end(self, batch, logs=None):
            now = time.monotonic()
            if now - self.last >= interval_s and logs:
                self.last = now
                board.put.remote({"epoch": self.epoch, "step": batch + 1,
                                  "loss": float(logs.get("loss", 0.0)),
                                  "accuracy": float(logs.get("accuracy", 0.0))})

    return StepSender()


def tune_callback(num_trials: int, epochs: int, metric: str, searched: list[str]):
    """A Tune callback: one line per finished trial, and on a terminal a bar over the trials'
    epochs below those lines."""
    from ray import tune

    class TuneProgress(tune.Callback):
        # Tune pickles its run config, callbacks included: the bar is made in setup().
        def setup(self, **info):
            self.best = None
            self.bar = _bar(num_trials * epochs, "tune", "epoch") if console.interactive() \
                else None

        def __getstate__(self):
            return {}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            value = result.get(metric)
            if value is not None and (self.best is None or value > self.best):
                self.best = value
            if self.bar is not None:
                self.bar.update(1)
                done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
                self.bar.set_postfix_str(f"{done}/{num_trials} trials done, best {metric} "
                                         f"{self.best:.3f}" if self.best is not None else "")

        def on_trial_complete(self, iteration, trials, trial, **info):
            params = ", ".join(f"{k} {_fmt(trial.config.get(k))}" for k in searched)
            last = trial.last_result or {}
            line = (f"trial {trial.trial_id} ({params}): {last.get('epoch', 0)} epochs, "
                    f"{metric} {last.get(metric, float('nan')):.4f}")
            if self.bar is not None:
                self.bar.write(line)
            else:
                print(line, flush=True)

        def on_experiment_end(self, trials, **info):
            if self.bar is not None:
                self.bar.total = self.bar.n  # ASHA stopped the rest
                self.bar.close()

    return TuneProgress()


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
