"""Train a Denoising Diffusion GAN: `python train.py --preset=cifar10 ...` is `ddgan train ...`.

Several GPUs or nodes: `torchrun --nproc_per_node=8 train.py --preset=celeba256 --data=PATH`. With
`--run_dir=PATH`, a restart of the same command (torchrun's --max-restarts, a requeue) continues the run;
after SIGUSR1 the checkpoint is saved and the exit status is 75 (ddgan.training.EXIT_REQUEUE).
"""

from ddgan.cli import train
from ddgan.command import run_command

if __name__ == "__main__":
    run_command("train", train)
