"""ddgan: Denoising Diffusion GANs (Xiao, Kreis & Vahdat, ICLR 2022)."""

__version__ = "0.1.0"
