"""Networks of Denoising Diffusion GANs: the NCSN++ generator with AdaGN and the two discriminators.

`build`, `from_reference`, `to_reference` and `load_reference_file` speak the original implementation's
config names and weight layout (NVlabs/denoising-diffusion-gan), so its checkpoints load unchanged.
`WaveletNCSNpp` is WaveDiff's wavelet generator; `from_wavediff` and `to_wavediff` convert its weights.
`MLPGenerator` and `MLPDiscriminator` are ours: time-embedded MLPs for 2-D points and small images on a CPU.
"""

from networks.discriminator import Discriminator, DiscriminatorLarge, DiscriminatorSmall
from networks.generator import NCSNpp, check_generator_args
from networks.mlp import MLPDiscriminator, MLPGenerator
from networks.reference import (
    KINDS,
    REFERENCE_DEFAULTS,
    build,
    count_parameters,
    from_reference,
    load_reference_file,
    load_reference_state_dict,
    to_reference,
    with_reference_defaults,
)
from networks.wavediff import WAVEDIFF_KINDS, attention_that_occurs, from_wavediff, to_wavediff
from networks.wavelet_generator import WaveletNCSNpp

__all__ = [
    "KINDS",
    "MLPDiscriminator",
    "MLPGenerator",
    "REFERENCE_DEFAULTS",
    "Discriminator",
    "DiscriminatorLarge",
    "DiscriminatorSmall",
    "NCSNpp",
    "WAVEDIFF_KINDS",
    "WaveletNCSNpp",
    "build",
    "check_generator_args",
    "count_parameters",
    "from_reference",
    "attention_that_occurs",
    "from_wavediff",
    "load_reference_file",
    "load_reference_state_dict",
    "with_reference_defaults",
    "to_reference",
    "to_wavediff",
]
