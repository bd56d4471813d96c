"""Sampling from a generator: each image a function of its own seed, in batches, as uint8 arrays or grids.

Image i is determined by seed s_i alone: one CPU generator seeded with s_i draws every random number
the T-step sampler needs (x_T, the noise z of every step and the posterior noise of every step), so a
seed gives the same image in any batch, split or order. The T-step loop itself is
`ddgan.diffusion.Diffusion.sample`; this package feeds it the seeds' noise (seeds.py), runs it in batches
(generate.py, with fast.py's compiled paths) and turns its output into pictures (images.py). In Python:

    G, config = ddgan.models.load_generator("runs/00000-demo-demo")
    images = np.concatenate(list(ddgan.sampling.generate(G, config, seeds=range(64))))  # uint8 NHWC
    ddgan.sampling.save_grid(images, "grid.png")

`ddgan sample` (eval/sample.py) is the command line around it.
"""

from ddgan.sampling.generate import default_steps, edit, generate, generate_share, generate_shared, interpolate
from ddgan.sampling.images import grid_image, grid_layout, readable_scale, save_grid, to_uint8, write_png
from ddgan.sampling.seeds import class_labels, parse_classes, parse_seeds, seed_list, seed_noise

__all__ = ["class_labels", "default_steps", "edit", "generate", "generate_share", "generate_shared", "grid_image",
           "grid_layout", "interpolate", "parse_classes", "parse_seeds", "readable_scale", "save_grid", "seed_list",
           "seed_noise", "to_uint8", "write_png"]
