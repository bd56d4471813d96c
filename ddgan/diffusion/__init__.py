"""Diffusion: the forward process q, its posterior and the T-step sampler (process.py), and the losses a DDGAN
trains with (losses.py)."""

from ddgan.diffusion.process import Diffusion, check_schedule

__all__ = ["Diffusion", "check_schedule"]
