"""The sampler as one ONNX graph: ONNX Runtime draws `ddgan sample`'s images, at any batch, from seeded inputs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ddgan
from ddgan import sampling
from ddgan.cli import main
from ddgan.config import make_config
from ddgan.data import read_image_array
from ddgan.export import onnx as onnx_sampler
from ddgan.export.onnx import OnnxSampler, export_onnx, onnx_inputs
from ddgan.models import build_generator
from ddgan.models.space import space_for
from eval import benchmark
from eval import sample as sample_command
from tests.conftest import perturbed, save_generator_checkpoint, skip_or_fail

TINY = dict(num_channels_dae=8, ch_mult=[1, 2], nz=4, z_emb_dim=8, t_emb_dim=8, n_mlp=1, ngf=8)
MODELS = {
    "pixel": dict(cond=False, image_size=8),
    "conditional": dict(cond=True, num_classes=4, class_names=("circle", "square", "triangle", "cross"),
                        image_size=8),
    "wavelet": dict(cond=False, image_size=16, space="wavelet", net_type="wavelet"),  # WaveDiff's generator
    "one_step": dict(cond=False, image_size=8, sample_steps=1),  # the graph runs the model's one step of its T
    "mlp": dict(cond=False, image_size=8, net_type="mlp", mlp_width=16, mlp_depth=2),  # the flattened image's MLP
}
SEEDS = "0-5"


@pytest.fixture(scope="module", autouse=True)
def onnx_extra():
    """The `onnx` extra (onnx, onnxruntime, onnxscript); CI installs it."""
    absent = [name for name in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(name) is None]
    if absent:
        skip_or_fail(f"{absent} not installed: pip install -e '.[onnx]'")


def write_model(folder: Path, kind: str) -> Path:
    """A checkpoint of a tiny `kind` generator with perturbed weights (at init its output is flat grey)."""
    config = make_config("demo", **TINY, **MODELS[kind])
    return save_generator_checkpoint(folder, config, perturbed(build_generator(config)))


@pytest.fixture(scope="module", params=sorted(MODELS))
def exported(request, tmp_path_factory):
    """(kind, checkpoint, G, config, the sampler graph's path) of each tiny model."""
    folder = tmp_path_factory.mktemp(request.param)
    ckpt = write_model(folder / "run", request.param)
    # As a user deploys: the run to a model folder, the folder to a graph, the folder's config for the inputs.
    main(["export", str(ckpt.parent), f"--out={folder / 'model'}"])
    main(["export", str(folder / "model"), "--format=onnx", f"--out={folder / 'sampler.onnx'}"])
    G, config = ddgan.from_pretrained(str(folder / "model"))
    return request.param, ckpt, G, config, folder / "sampler.onnx"


def assert_close_images(got: np.ndarray, expected: np.ndarray) -> None:
    """The acceptance bound: equal on at least 99.9% of the uint8 values (or all but one value per image), never
    more than one level apart."""
    assert got.dtype == np.uint8 and got.shape == expected.shape
    difference = np.abs(got.astype(np.int16) - expected.astype(np.int16))
    assert difference.max() <= 1, f"{difference.max()} levels apart"
    # The tiny test images hold 192 values each, where 0.1% allows no difference at all, yet a host's float kernels
    # can put one value on the other side of a rounding boundary (seen once in 576 values on an EPYC).
    allowed = max(0.001 * difference.size, len(got))
    assert (difference != 0).sum() <= allowed, f"only {(difference == 0).mean():.4%} of the values equal"


def test_onnx_runtime_draws_what_ddgan_sample_writes(exported, tmp_path):
    kind, ckpt, G, config, path = exported
    written = sample_command.sample(str(ckpt), out=str(tmp_path / "s.npz"), seeds=SEEDS, device="cpu")
    expected = read_image_array(written)
    got = OnnxSampler(path).run(onnx_inputs(config, SEEDS))
    assert len(got) == 6 * (4 if kind == "conditional" else 1)  # a conditional model: every class, as sample
    assert_close_images(got, expected)
    # The images are not flat, so matching them means something.
    assert expected.std() > 10


def test_one_graph_takes_any_batch(exported):
    kind, _, G, config, path = exported
    runner = OnnxSampler(path)
    labels = "circle" if kind == "conditional" else None  # a class by name, as --class takes it
    one, three = (runner.run(onnx_inputs(config, seeds, labels)) for seeds in ([4], [2, 3, 4]))
    assert one.shape[0] == 1 and three.shape[0] == 3
    expected = np.concatenate(list(sampling.generate(G, config, [2, 3, 4], batch=3, progress=False, amp="none",
                                                     labels=None if labels is None else 0)))
    assert_close_images(three, expected)
    assert_close_images(one, expected[2:])


def test_the_graph_declares_its_inputs_and_a_dynamic_batch(exported):
    import onnx

    kind, _, _, config, path = exported
    model = onnx.load(str(path))
    declared = {i.name: i.type.tensor_type for i in model.graph.input}
    inputs = onnx_inputs(config, [0, 1])
    assert list(declared) == list(inputs) == onnx_sampler.input_names(config)
    assert ("labels" in declared) == (kind == "conditional")
    for name, value in inputs.items():
        dims = declared[name].shape.dim
        assert dims[0].dim_param and not dims[0].dim_value, f"{name}'s batch is fixed"
        assert [d.dim_value for d in dims[1:]] == list(value.shape[1:])
        assert onnx.helper.tensor_dtype_to_np_dtype(declared[name].elem_type) == value.dtype
    assert [o.name for o in model.graph.output] == [onnx_sampler.OUTPUT_NAME]
    # Standard operators only: the custom ops went through their PyTorch reference, nothing needs a plugin.
    assert {node.domain for node in model.graph.node} == {""} and not model.functions


def test_inputs_follow_the_seeds_and_classes_as_sample_does():
    config = make_config("demo", **TINY, **MODELS["conditional"])
    inputs = onnx_inputs(config, [7, 3], labels="square,cross")
    assert inputs["labels"].tolist() == [1, 1, 3, 3]
    x_T, zs, noises = sampling.seed_noise([7, 3, 7, 3], config)
    np.testing.assert_array_equal(inputs["x_T"], x_T.numpy())
    np.testing.assert_array_equal(inputs["z"], zs.transpose(0, 1).numpy())  # batch first
    np.testing.assert_array_equal(inputs["noise"], noises.transpose(0, 1).numpy())
    with pytest.raises(ValueError, match="not one of this model's 4 classes"):
        onnx_inputs(config, 2, labels="hexagon")
    unconditional = make_config("demo", **TINY, **MODELS["pixel"])
    with pytest.raises(ValueError, match="unconditional"):
        onnx_inputs(unconditional, 2, labels=1)
    with pytest.raises(ValueError, match="--seeds"):
        onnx_inputs(unconditional, "5-1")


def test_missing_onnx_names_the_extra(monkeypatch, tmp_path):
    config = make_config("demo", **TINY, **MODELS["pixel"])
    for module in ("onnx", "onnxruntime"):
        monkeypatch.setitem(sys.modules, module, None)  # `import onnx` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install -e '\.\[onnx\]'"):
        export_onnx(build_generator(config), config, tmp_path / "sampler.onnx")
    with pytest.raises(ImportError, match=r"onnxruntime.*pip install -e '\.\[onnx\]'"):
        OnnxSampler(tmp_path / "sampler.onnx")
    assert not (tmp_path / "sampler.onnx").exists()


class DataDependent(torch.nn.Module):
    """A "generator" whose control flow depends on its input's values, which no traced graph can hold."""

    def forward(self, x, t, z):
        return x if float(x.mean()) > 0 else -x


def test_what_cannot_be_exported_is_refused_with_the_reason(tmp_path):
    config = make_config("demo", **TINY, **MODELS["pixel"])
    with pytest.raises(ValueError, match="cannot export the pixel-space sampler.*data-dependent"):
        export_onnx(DataDependent(), config, tmp_path / "sampler.onnx")
    with pytest.raises(ValueError, match="--opset must be an integer >= 18"):
        export_onnx(DataDependent(), config, tmp_path / "sampler.onnx", opset=11)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_onnx(DataDependent(), config, tmp_path / "absent" / "sampler.onnx")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_a_latent_model_exports_with_its_decoder(tmp_path, latent_extra):
    """LDDGAN's space: the diffusers decoder is part of the graph, at any batch (also above 63, see export_onnx)."""
    from tests.helpers import tiny_autoencoder

    autoencoder = tiny_autoencoder(tmp_path / "autoencoder")
    space = space_for(make_config("demo", **TINY, cond=False, image_size=16, space="latent",
                                  autoencoder=str(autoencoder), latent_scale=1.5))
    config = space.config
    G = build_generator(config).eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator))
    runner = OnnxSampler(export_onnx(G, config, tmp_path / "sampler.onnx", space=space))
    expected = np.concatenate(list(sampling.generate(G, config, "0-4", batch=5, progress=False, amp="none",
                                                     space=space)))
    assert_close_images(runner.run(onnx_inputs(config, "0-4")), expected)
    assert runner.run(onnx_inputs(config, 70)).shape == (70, 16, 16, 3)


def test_runner_names_missing_and_unknown_inputs(exported, tmp_path):
    _, _, _, config, path = exported
    inputs = onnx_inputs(config, [0])
    inputs.pop("z")
    with pytest.raises(ValueError, match=r"missing \['z'\]"):
        OnnxSampler(path).run({**inputs, "seed": np.zeros(1)})
    with pytest.raises(FileNotFoundError, match="--format=onnx"):
        OnnxSampler(tmp_path / "absent.onnx")


@pytest.mark.slow  # an export and three timed passes: about half a minute
@pytest.mark.usefixtures("quick_ceilings")
def test_bench_times_onnx_runtime_against_pytorch_and_the_original(capsys):
    """`ddgan bench --what=sample --backend=onnxruntime` at a tiny width; the CIFAR-10 preset's export (minutes
    on 2 cores) and run is that benchmark at full width, too heavy for a unit test."""
    records = benchmark.bench(preset="demo", what="sample", backend="onnxruntime", device="cpu", width=4, batch=2,
                              repeats=1, warmup=0)
    assert [(r["backend"], r["baseline"]) for r in records] == [("onnxruntime", None), ("pytorch", None),
                                                                ("pytorch", "original")]
    onnxruntime, ours, _ = records
    assert onnxruntime["uint8_max_difference"] <= 1 and onnxruntime["uint8_equal"] >= 0.999
    assert onnxruntime["images_per_s"] > 0 and onnxruntime["speedup_vs_original"] > 0
    assert ours["speedup_vs_original"] > 0
    assert "onnxruntime" in capsys.readouterr().out  # the table's backend column


@pytest.mark.parametrize("flags, message", [
    (dict(what="train"), "--backend=onnxruntime times --what=sample"),
    (dict(what="sample", baseline="original"), "leave out --baseline"),
    (dict(what="sample", backend="tensorrt"), "--backend must be one of pytorch, onnxruntime"),
])
def test_bench_refuses_what_onnx_runtime_cannot_time(flags, message):
    with pytest.raises(ValueError, match=message):
        benchmark.bench(**{"preset": "demo", "device": "cpu", "backend": "onnxruntime", **flags})
