"""The whole T-step sampler as one ONNX graph, its seeded inputs, and an ONNX Runtime session to run it.

`export_onnx(G, config, path)` writes one graph that takes every random number the sampler needs and
returns finished images, so that a model can be deployed where there is no PyTorch (ONNX Runtime on a
server, from C++/C#/Java, or onnxruntime-web). The graph's inputs and output (N is dynamic):

    x_T     float32 [N, C, H, W]     the initial noise, in the space the networks see (pixels, wavelets, latents)
    z       float32 [N, T, nz]       the code z of every step; z[:, t] is step t's (t = T-1 runs first)
    noise   float32 [N, T, C, H, W]  the posterior noise of every step (step 0's is unused: it adds none)
    labels  int64   [N]              class indices, a class-conditional model only
    images  uint8   [N, H', W', C']  the images, as `ddgan sample` writes them (a wavelet model's inverse
                                     transform and a latent model's decoder are part of the graph)

Every input is standard normal noise: a deployment draws its own (same distribution, other images), and
`onnx_inputs(config, seeds)` gives the inputs of `ddgan sample --seeds=...`, drawn by ddgan's own seeded
generator, so that ONNX Runtime reproduces its images. The graph computes what `ddgan.sampling` computes
in float32 (`Diffusion.sample`, the space's decode, `to_uint8`); the custom ops export through their
PyTorch reference (the graph is traced on the CPU, where they take it). `OnnxSampler` runs a written
graph with ONNX Runtime on the CPU.

onnx, onnxruntime and onnxscript are the optional extra `onnx`: `pip install -e '.[onnx]'`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ddgan.config import Config
from ddgan.diffusion.process import Diffusion
from ddgan.models.space import space_for
from ddgan.runtime.files import atomic_write
from ddgan.sampling import class_labels, default_steps, parse_classes, parse_seeds, seed_noise, to_uint8
from ddgan.spaces import Space

INPUT_NAMES = ("x_T", "z", "noise", "labels")
OUTPUT_NAME = "images"
INSTALL_HINT = "pip install -e '.[onnx]' (or pip install onnx onnxruntime onnxscript)"
MIN_OPSET = 18
EXAMPLE_BATCH = 2  # traced at this batch; 0 and 1 would be specialised as constants by torch.export


def require_onnx(*modules: str):
    """Import the ONNX packages this needs, or raise ImportError naming what installs them."""
    imported = []
    for name in modules:
        try:
            imported.append(__import__(name))
        except ImportError as error:
            raise ImportError(f"the ONNX sampler needs the {name} package, which is not installed: "
                              f"{INSTALL_HINT}") from error
    return imported


def input_names(config: Config) -> list[str]:
    """The graph's input names for a model of this config (labels only for a conditional model)."""
    return list(INPUT_NAMES if config.num_classes else INPUT_NAMES[:3])


class SamplerGraph(nn.Module):
    """Noise in, uint8 images [N, H, W, C] out: G's denoising steps (the model's sample_steps of its T), the
    space's decode and to_uint8."""

    def __init__(self, G: nn.Module, config: Config, space: Space | None = None):
        super().__init__()
        self.G, self.config = G, config
        self.diffusion = Diffusion.from_config(config)
        self.space = space or space_for(config)

    def forward(self, x_T: torch.Tensor, z: torch.Tensor, noise: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        # Batch-first inputs are what a deployment draws; Diffusion.sample indexes its noise by step first.
        x = self.diffusion.sample(self.G, x_T, self.config.nz, zs=z.transpose(0, 1),
                                  noises=noise.transpose(0, 1), labels=labels, num_steps=default_steps(self.config))
        return to_uint8(self.space.decode(x)).permute(0, 2, 3, 1)


def _traceable_generator(G: nn.Module) -> nn.Module:
    """A float32, NCHW copy of G on the CPU (the caller's G is left as it is), where the custom ops take their
    PyTorch reference (they call the compiled kernels for CUDA tensors only)."""
    G = getattr(G, "_orig_mod", G)  # a torch.compile'd generator: its module
    return copy.deepcopy(G).cpu().float().to(memory_format=torch.contiguous_format).eval().requires_grad_(False)


def _decoding_space(config: Config, space: Space | None) -> Space:
    """The space whose decode ends the graph; a latent one's autoencoder must be traceable on the CPU."""
    return (space or space_for(config)).for_export()


def _example_inputs(config: Config) -> tuple[torch.Tensor, ...]:
    """Inputs of EXAMPLE_BATCH images to trace the graph with."""
    x_T, zs, noises = seed_noise(range(EXAMPLE_BATCH), config)
    inputs = (x_T, zs.transpose(0, 1).contiguous(), noises.transpose(0, 1).contiguous())
    return inputs + ((torch.zeros(EXAMPLE_BATCH, dtype=torch.int64),) if config.num_classes else ())


def export_onnx(G: nn.Module, config: Config, path: str | os.PathLike, opset: int | None = None,
                space: Space | None = None) -> Path:
    """Write the T-step sampler of G (with `config`) as one ONNX graph to `path` (atomically) and check it.

    The graph's inputs and output are those of the module docstring, its batch dimension dynamic.
    opset: the ONNX opset (default: torch.onnx's), 18 or newer. space: the space that decodes (default
    space_for(config)). A model that cannot be traced raises ValueError with the exporter's reason.
    """
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET):
        raise ValueError(f"--opset must be an integer >= {MIN_OPSET} (torch.onnx's exporter writes no older "
                         f"opset), got {opset!r}")
    onnx, _ = require_onnx("onnx", "onnxscript")
    path = Path(path).expanduser()
    if not path.parent.is_dir():
        raise FileNotFoundError(f"--out={str(path)!r}: the folder {str(path.parent)!r} does not exist")
    graph = SamplerGraph(_traceable_generator(G), config, _decoding_space(config, space)).eval()
    inputs = _example_inputs(config)
    batch = torch.export.Dim("batch", min=1, max=graph.space.onnx_batch_limit)
    try:
        # torch.export itself, not torch.onnx's fallbacks: those would fix the batch size rather than fail.
        program = torch.export.export(graph, inputs, dynamic_shapes=tuple({0: batch} for _ in inputs), strict=False)
        onnx_program = torch.onnx.export(
            program, inputs, dynamo=True, opset_version=opset, input_names=input_names(config),
            output_names=[OUTPUT_NAME], external_data=False, verbose=False,
            # onnxscript's optimiser took 45% of the export (the demo: 98 s against 54 s on 2 cores) for a graph
            # that ONNX Runtime runs no faster (its own optimisations at session start do that work).
            optimize=False,
            custom_translation_table={torch.ops.aten.scaled_dot_product_attention.default: _attention_translation()})
    except Exception as error:
        reason = error
        while reason.__cause__ is not None:  # torch.onnx wraps the reason in errors that name only the step
            reason = reason.__cause__
        first_line = (str(reason).strip().splitlines() or [""])[0]
        raise ValueError(f"cannot export the {config.space}-space sampler of this {config.generator_kind} to ONNX: "
                         f"{type(reason).__name__}: {first_line}") from error
    model = onnx_program.model_proto
    onnx.checker.check_model(model, full_check=True)
    return atomic_write(path, lambda f: f.write(model.SerializeToString()))


def onnx_inputs(config: Config, seeds: int | str | Sequence[int], labels=None) -> dict[str, np.ndarray]:
    """The graph's inputs, keyed by input name, that make it draw the images of `ddgan sample --seeds=SEEDS`.

    seeds: as --seeds takes them (`64`, `0-15`, `1,5,7`, or a list). labels: as --class takes them, for a
    conditional model (an index, a name, a list of them, or `all`, the default): as `ddgan sample`, every
    seed is drawn for every chosen class, class after class.
    """
    seeds = parse_seeds(seeds)
    per_image = None
    if config.num_classes:
        classes = parse_classes("all" if labels is None else labels, config)
        per_image = [c for c in classes for _ in seeds]
        seeds = seeds * len(classes)
    else:
        class_labels(config, labels, len(seeds))  # refuses labels for an unconditional model, as ddgan sample
    x_T, zs, noises = seed_noise(seeds, config)
    inputs = {"x_T": x_T.numpy(), "z": zs.transpose(0, 1).contiguous().numpy(),
              "noise": noises.transpose(0, 1).contiguous().numpy()}
    if per_image is not None:
        inputs["labels"] = np.asarray(per_image, dtype=np.int64)
    return inputs


def default_threads() -> int:
    """Threads for ONNX Runtime: as many as PyTorch uses here (OMP_NUM_THREADS when set, else the cores)."""
    return max(1, torch.get_num_threads())


class OnnxSampler:
    """A written sampler graph in an ONNX Runtime session on the CPU: run(inputs) gives uint8 images."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        (ort,) = require_onnx("onnxruntime")
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{str(path)!r}: no such ONNX file; write one with ddgan export CKPT "
                                    "--format=onnx --out=sampler.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """uint8 images [N, H, W, C] for the graph's inputs (see onnx_inputs), keyed by name."""
        missing = [name for name in self.input_names if name not in inputs]
        extra = [name for name in inputs if name not in self.input_names]
        if missing or extra:
            raise ValueError(f"the sampler graph takes inputs {self.input_names}; missing {missing}, unknown {extra}")
        return self.session.run([OUTPUT_NAME], dict(inputs))[0]


def _attention_translation():
    """ONNX for F.scaled_dot_product_attention on [B, L, E] tensors (SelfAttention's single head), which the
    exporter's own translation takes only in 4-D: softmax(q k^T / sqrt(E)) v."""
    from onnxscript import opset18 as op

    def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if attn_mask is not None or is_causal or dropout_p or enable_gqa:
            raise NotImplementedError("the ONNX sampler exports plain single-head attention only (no mask, "
                                      "causality, dropout or grouped heads)")
        factor = scale if scale is not None else query.shape[-1] ** -0.5
        scores = op.MatMul(op.Mul(query, op.CastLike(factor, query)), op.Transpose(key, perm=[0, 2, 1]))
        return op.MatMul(op.Softmax(scores, axis=-1), value)

    return attention
