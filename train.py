"""Train a Denoising Diffusion GAN: `python train.py --preset=cifar10 ...` is `ddgan train ...`.

Several GPUs or nodes: `torchrun --nproc_per_node=8 train.py --preset=celeba256 --data=PATH`.
"""

import fire

from ddgan.cli import train

if __name__ == "__main__":
    fire.Fire(train, name="train.py")
