"""A model: its networks built from a Config, the space it diffuses, its checkpoints and model folders, and the
loaders of the original implementations' files.

build.py builds G and D; space.py opens a config's space; checkpoint.py writes and reads training checkpoints;
model_folder.py reads and writes `config.json` + `model.safetensors`; original.py maps the original code's
flags onto a Config; load.py gives a ready-to-sample generator from any of them; describe.py is `ddgan info`.
"""

from ddgan.models.build import build_discriminator, build_generator
from ddgan.models.describe import describe_checkpoint
from ddgan.models.load import default_output, load_generator, resolve_source
from ddgan.models.original import looks_like_wavediff, original_config
from ddgan.models.space import space_for

__all__ = ["build_discriminator", "build_generator", "default_output", "describe_checkpoint", "load_generator",
           "looks_like_wavediff", "original_config", "resolve_source", "space_for"]
