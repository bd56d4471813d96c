"""LDDGAN's autoencoders under the name users' scripts import (`ddgan.latent.from_ldm`); they live in
`ddgan.spaces.autoencoders`, beside the latent space that uses them."""

from ddgan.spaces.autoencoders import LDMAutoencoder, from_diffusers, from_ldm, load_ldm

__all__ = ["LDMAutoencoder", "from_diffusers", "from_ldm", "load_ldm"]
