"""ddgan: Denoising Diffusion GANs (Xiao, Kreis & Vahdat, ICLR 2022)."""

from ddgan.version import __version__

__all__ = ["__version__", "from_pretrained"]


def from_pretrained(path: str, device: str = "cpu"):
    """(generator, Config) of a model folder: a local path or a Hub id `owner/name[@revision]` (`ddgan export`'s).

    A Hub id is fetched with huggingface_hub into its cache (HF_HOME, HF_HUB_OFFLINE honoured); the folder is read
    with json and safetensors only. Sample with `ddgan.sampling.generate(G, config, seeds)`.
    """
    from ddgan.models import model_folder

    folder = model_folder.locate(path)
    if folder is None:
        raise model_folder.ModelFolderError(
            f"{path} is not a model folder (config.json with \"format\": \"{model_folder.FORMAT}\") nor a Hub id "
            "of one; export one with `ddgan export RUN --out=DIR`")
    return model_folder.read(folder, device)
