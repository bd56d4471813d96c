"""ddgan: Denoising Diffusion GANs (Xiao, Kreis & Vahdat, ICLR 2022)."""

from setuptools import find_packages, setup

setup(
    name="ddgan",
    version="0.1.0",
    description="Denoising Diffusion GANs: train and sample few-step diffusion models whose steps are GANs",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["ddgan", "ddgan.*", "networks", "networks.*", "ops", "ops.*", "eval", "eval.*"]),
    package_data={"ops": ["csrc/*.c", "csrc/*.cpp", "csrc/*.cu", "csrc/*.h"]},
    py_modules=["train"],
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "numpy>=1.24",
        "scipy>=1.10",
        "pillow>=9.0",
        "fire>=0.5",
        "tqdm>=4.60",
        "tensorboard>=2.12",
        "clean-fid>=0.1.35",
        "prdc>=0.2",  # precision, recall, density and coverage (Naeem et al.), with scikit-learn
        "scikit-learn>=1.0",  # its bundled handwritten digits: eval.digits, the real-data class check
        "lmdb>=1.4",
        "ninja>=1.11",
        "safetensors>=0.4",  # model folders (ddgan export, from_pretrained): weights without pickle
        "huggingface_hub>=0.23",  # a Hub id wherever a model folder is taken
    ],
    extras_require={
        "dev": ["pytest>=7.0", "ruff>=0.5"],
        # ddgan.latent: LDM (latent-diffusion) first-stage autoencoders as diffusers models, LDM's yaml configs
        "latent": ["diffusers>=0.27", "pyyaml>=5.1"],
        # ddgan export --format=onnx and --backend=onnxruntime: the sampler as one ONNX graph
        "onnx": ["onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.1"],
        # --data as WebDataset tar shards or Hugging Face datasets (parquet, save_to_disk, Hub ids), streamed
        "shards": ["webdataset>=0.2.86", "datasets>=2.19"],
    },
    entry_points={"console_scripts": ["ddgan=ddgan.cli:main"]},
    license="MIT",
)
