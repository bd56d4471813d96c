"""Train a Denoising Diffusion GAN: `python train.py --preset=cifar10 ...` is `ddgan train ...`.

Several GPUs or nodes: `torchrun --nproc_per_node=8 train.py --preset=celeba256 --data=PATH`.
"""

from ddgan.cli import run_command, train

if __name__ == "__main__":
    run_command("train", train)
