"""eval.roofline: torch's FLOP count against a hand count, the measured ceilings, and a bench row's roofline."""

import pytest
import torch
from torch import nn

from eval import benchmark, roofline


def conv_flops(n, c_in, c_out, k, h_out, w_out):
    return 2 * c_in * c_out * k * k * h_out * w_out * n


@pytest.mark.parametrize("bias", [True, False])
def test_count_equals_the_hand_count_of_a_conv_and_a_linear_layer(bias):
    """A multiply-add counts as two; torch counts no FLOPs for the bias."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=bias)
    linear = nn.Linear(5 * 4 * 4, 7, bias=bias)
    net = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), linear)
    x = torch.randn(2, 3, 8, 8)
    convs = []
    flops = roofline.count_flops(lambda: net(x), convs)
    assert flops == conv_flops(2, 3, 5, 3, 4, 4) + 2 * 80 * 7 * 2 == 2 * 3 * 5 * 9 * 16 * 2 + 2240
    (shape,) = convs
    assert shape == roofline.ConvShape((2, 3, 8, 8), (5, 3, 3, 3), (2, 2), (1, 1), (1, 1), 1)
    assert shape.output_size() == (4, 4) and shape.flops() == conv_flops(2, 3, 5, 3, 4, 4)
    assert shape.with_batch(6).flops() == 3 * shape.flops() and str(shape) == "3->5 3x3 at 2x3x8x8"


def test_backward_and_the_double_backward_of_r1_are_counted():
    """Backward through a conv is two products of its forward's size (input and weight gradients); R1's
    gradient at a leaf input, taken with create_graph, is counted and backpropagated too."""
    conv = nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(3, 4, 8, 8, requires_grad=True)
    forward = conv_flops(3, 4, 6, 3, 8, 8)
    assert roofline.count_flops(lambda: conv(x).square().sum().backward()) == 3 * forward

    def r1_step():
        out = conv(x).square().sum()
        (grad,) = torch.autograd.grad(out, x, create_graph=True)  # a leaf: FlopCounterMode's own tracker fails here
        (out + grad.square().sum()).backward()

    assert roofline.count_flops(r1_step) > 3 * forward


def test_typical_conv_is_the_largest_dense_3x3():
    shape = roofline.ConvShape
    small = shape((2, 8, 16, 16), (8, 8, 3, 3), (1, 1), (1, 1), (1, 1), 1)
    large = shape((2, 16, 16, 16), (16, 16, 3, 3), (1, 1), (1, 1), (1, 1), 1)
    pointwise = shape((2, 64, 16, 16), (64, 64, 1, 1), (1, 1), (0, 0), (1, 1), 1)
    depthwise = shape((2, 64, 32, 32), (64, 1, 3, 3), (1, 1), (1, 1), (1, 1), 64)
    assert pointwise.flops() > large.flops() and depthwise.flops() > small.flops()
    assert roofline.typical_conv([small, pointwise, large, depthwise]) == large
    assert roofline.typical_conv([pointwise]) is None


def test_ceilings_are_positive_and_measured_once_per_device_and_dtype(quick_ceilings, monkeypatch):
    cpu = torch.device("cpu")
    assert roofline.matmul_ceiling_tflops(cpu, torch.float32, 32, min_seconds=0.001) > 0
    shape = roofline.ConvShape((1, 4, 8, 8), (4, 4, 3, 3), (1, 1), (1, 1), (1, 1), 1)
    assert roofline.conv_ceiling_tflops(shape, cpu, torch.float32, channels_last=True, min_seconds=0.001) > 0

    calls = []
    measure = roofline.matmul_ceiling_tflops
    monkeypatch.setattr(roofline, "matmul_ceiling_tflops", lambda *args: calls.append(args) or measure(*args))
    first = roofline.ceilings(cpu, torch.float32, shape, channels_last=False)
    assert first == roofline.ceilings("cpu", torch.float32, shape, channels_last=False)
    assert len(calls) == 1 and first["ceiling_matmul_tflops"] > 0 and first["ceiling_conv_tflops"] > 0
    assert first["ceiling_conv"] == "4->4 3x3 at 1x4x8x8"
    roofline.ceilings(cpu, torch.bfloat16, None, channels_last=False)
    assert len(calls) == 2  # another dtype is another ceiling


def test_ceilings_keep_the_faster_of_before_and_after_the_timings(quick_ceilings, monkeypatch):
    rates = iter([1.0, 3.0, 2.0, 0.5])  # a slow phase during the first matmul measurement
    monkeypatch.setattr(roofline, "matmul_ceiling_tflops", lambda *args: next(rates))
    assert roofline.ceilings("cpu", torch.float32, None, channels_last=False)["ceiling_matmul_tflops"] == 1.0
    after = roofline.ceilings("cpu", torch.float32, None, channels_last=False, after_timing=True)
    assert after["ceiling_matmul_tflops"] == 3.0
    # measured twice now: further rows of this run reuse it
    assert roofline.ceilings("cpu", torch.float32, None, channels_last=False, after_timing=True) == after
    # a row measured only after its timings measures once
    assert roofline.ceilings("cpu", torch.bfloat16, None, False, after_timing=True)["ceiling_matmul_tflops"] == 2.0
    assert roofline.ceilings("cpu", torch.bfloat16, None, False, after_timing=True)["ceiling_matmul_tflops"] == 2.0


def test_roofline_fields_take_the_higher_ceiling():
    fields = roofline.roofline_fields(2e9, 50.0, {"ceiling_matmul_tflops": 0.5, "ceiling_conv_tflops": 0.8,
                                                  "ceiling_conv": "c"})
    assert fields["tflops"] == pytest.approx(0.1) and fields["ceiling_tflops"] == 0.8
    assert fields["percent_of_ceiling"] == pytest.approx(12.5) and fields["ceiling_conv"] == "c"
    no_conv = roofline.roofline_fields(2e9, 50.0, {"ceiling_matmul_tflops": 0.5, "ceiling_conv_tflops": None,
                                                   "ceiling_conv": None})
    assert no_conv["ceiling_tflops"] == 0.5 and no_conv["percent_of_ceiling"] == pytest.approx(20.0)


def test_a_sample_row_carries_its_roofline(quick_ceilings):
    (record,) = benchmark.bench(preset="demo", what="sample", device="cpu", batch=3, width=8, repeats=1, warmup=0)
    config = benchmark.bench_config("demo", 8)
    work = benchmark.sample_work(config, torch.device("cpu"), 3, None, False)
    assert record["flops_per_image"] == work.flops_per_image > 1e6
    assert record["tflops"] > 0
    assert record["tflops"] == pytest.approx(record["flops_per_image"] * record["images_per_s"] / 1e12)
    assert record["ceiling_tflops"] == max(record["ceiling_matmul_tflops"], record["ceiling_conv_tflops"]) > 0
    assert record["percent_of_ceiling"] > 0
    assert record["percent_of_ceiling"] == pytest.approx(100 * record["tflops"] / record["ceiling_tflops"])
    assert work.conv.input[0] == 3 and record["ceiling_conv"] == str(work.conv)  # the conv at the row's batch


def test_the_count_is_per_image_at_any_batch(monkeypatch):
    """What lets a row be counted at FLOP_COUNT_BATCH and scaled: the same FLOPs per image at every batch."""
    config, cpu = benchmark.bench_config("demo", 8), torch.device("cpu")
    per_image = {}
    for batch in (1, 4):
        monkeypatch.setattr(benchmark, "FLOP_COUNT_BATCH", batch)
        per_image[batch] = (benchmark.sample_work(config, cpu, batch, None, False).flops_per_image,
                            benchmark.train_work(config, cpu, batch, range(1, 2)).flops_per_image)
    assert per_image[1] == per_image[4]
    # T = 2 generator passes, each at least the hand count of the generator's typical conv
    work = benchmark.sample_work(config, cpu, 4, None, False)
    assert work.flops_per_image > 2 * work.conv.flops() / 4


def test_train_work_averages_the_r1_and_plain_iterations():
    config, cpu = benchmark.bench_config("demo", 8), torch.device("cpu")
    assert config.r1_gamma > 0 and config.lazy_reg > 2  # R1 at step 0 only among steps 0..2
    r1 = benchmark.train_work(config, cpu, 2, range(0, 1)).flops_per_image
    plain = benchmark.train_work(config, cpu, 2, range(1, 3)).flops_per_image
    mixed = benchmark.train_work(config, cpu, 2, range(0, 3)).flops_per_image
    assert r1 > plain > 0 and mixed == pytest.approx((r1 + 2 * plain) / 3)
    sampling = benchmark.sample_work(config, cpu, 2, None, False).flops_per_image
    assert plain > 3 * sampling / config.num_timesteps  # a generator forward, its backward and the D passes
