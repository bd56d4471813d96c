"""Training: how a run starts (start.py), one DDGAN iteration with its D step and G step (trainer.py), the run
around it (loop.py) on the loop skeleton every trainer shares (skeleton.py), the signals a run obeys
(signals.py), what it reports (monitor.py), and `ddgan autoencoder`'s trainer (autoencoder.py)."""

from ddgan.training.loop import EXIT_REQUEUE, run_training
from ddgan.training.start import config_from_flags
from ddgan.training.trainer import NonFiniteError, Trainer

__all__ = ["EXIT_REQUEUE", "NonFiniteError", "Trainer", "config_from_flags", "run_training"]
