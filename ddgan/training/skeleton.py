"""The loop every trainer runs: steps until a number of images, actions due every so many images, stop
signals that always end with a snapshot, and the monitor closed whatever happens.

DDGAN training (`ddgan.training.loop`) and autoencoder training (`ddgan.training.autoencoder`) differ in their
step, their scheduled actions and their snapshot; the skeleton around them is this one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ddgan.training.monitor import Monitor
from ddgan.training.signals import StopRequest


def next_mark(images_seen: int, every_images: float) -> float:
    """The next multiple of `every_images` strictly after `images_seen`; inf when off (every_images <= 0)."""
    if every_images <= 0:
        return math.inf
    return (math.floor(images_seen / every_images) + 1) * every_images


@dataclass
class Every:
    """An action due each time the images seen pass a multiple of `images` (never when images <= 0)."""

    images: float  # the period, in images
    action: Callable[[], object]
    at_the_end: bool = True  # also on the step that completes training (else the final snapshot stands for it)
    due_at: float = field(default=math.inf, init=False)

    def start(self, images_seen: int) -> None:
        self.due_at = next_mark(images_seen, self.images)

    def poll(self, images_seen: int, total_images: int) -> None:
        if images_seen >= self.due_at:
            self.due_at = next_mark(images_seen, self.images)
            if self.at_the_end or images_seen < total_images:
                self.action()


def train(step: Callable[[], bool], images_seen: Callable[[], int], total_images: int, monitor: Monitor,
          scheduled: Sequence[Every], stopping: Callable[[StopRequest], bool], finish: Callable[[bool], None],
          max_steps: int | None = None) -> None:
    """Run `step` until `total_images` are seen (or `max_steps` steps), then `finish(stopped)`.

    step: one training step; False when it was skipped (nothing scheduled runs after it).
    scheduled: what runs every so many images, in order, after each step.
    stopping: asked after each step whether to stop early (given the signals seen so far).
    finish: the final snapshot and report, also after a stop (stopped=True); the monitor is closed last.
    """
    for action in scheduled:
        action.start(images_seen())
    steps_done = 0
    with StopRequest() as stop:
        try:
            stopped = False
            while images_seen() < total_images and (max_steps is None or steps_done < max_steps):
                if not step():
                    continue
                steps_done += 1
                monitor.progress(images_seen() / 1000)
                for action in scheduled:
                    action.poll(images_seen(), total_images)
                if stopping(stop):
                    stopped = True
                    break
            finish(stopped)
        finally:
            monitor.close()
