// upfirdn2d: upsample by zero insertion, pad, FIR-filter and downsample an NCHW tensor in one pass.
//
// One thread per output sample. Instead of materialising the zero-inserted, padded image, each thread
// visits only the filter taps that land on real input samples: along an axis, tap k of output o sits at
// position o * down + k - pad0 of the upsampled grid, which holds input sample (o * down + k - pad0) / up
// when that is a whole number and zero otherwise.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>

#include "ddgan_ops.h"

namespace {

struct Upfirdn2dParams {
    int n, c, in_h, in_w, out_h, out_w;  // sizes
    int f_h, f_w;                        // filter taps
    int upx, upy, downx, downy, padx0, pady0;
    bool flip_filter;
    int64_t x_stride[4], y_stride[4];    // element strides, NCHW order
    int total;                           // number of output samples
};

// Non-negative remainder, so that negative positions (in the padding) map to the right phase.
__device__ __forceinline__ int positive_mod(int a, int m) {
    int r = a % m;
    return r < 0 ? r + m : r;
}

// kChannelsLast orders the threads channel-fastest so that neighbouring threads touch neighbouring
// addresses in an NHWC tensor; otherwise width-fastest for NCHW.
template <typename scalar_t, typename filter_t, bool kChannelsLast>
__global__ void upfirdn2d_kernel(const scalar_t* __restrict__ x, const filter_t* __restrict__ f,
                                 scalar_t* __restrict__ y, const Upfirdn2dParams p, const filter_t gain) {
    using acc_t = at::opmath_type<scalar_t>;
    // The grid covers every output once; 64-bit here so the last block cannot overflow.
    const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (index < p.total) {
        const int i = static_cast<int>(index);
        int n, c, oy, ox, rest;
        if (kChannelsLast) {
            c = i % p.c;
            rest = i / p.c;
            ox = rest % p.out_w;
            rest /= p.out_w;
            oy = rest % p.out_h;
            n = rest / p.out_h;
        } else {
            ox = i % p.out_w;
            rest = i / p.out_w;
            oy = rest % p.out_h;
            rest /= p.out_h;
            c = rest % p.c;
            n = rest / p.c;
        }
        // Upsampled-grid position of tap 0, and the first tap that falls on a real input sample.
        const int base_y = oy * p.downy - p.pady0;
        const int base_x = ox * p.downx - p.padx0;
        const int first_ky = positive_mod(-base_y, p.upy);
        const int first_kx = positive_mod(-base_x, p.upx);
        const scalar_t* x_nc = x + n * p.x_stride[0] + c * p.x_stride[1];

        acc_t sum = 0;
        for (int ky = first_ky; ky < p.f_h; ky += p.upy) {
            const int iy = (base_y + ky) / p.upy;  // exact: base_y + ky is a multiple of upy
            if (iy < 0 || iy >= p.in_h) continue;
            // A true convolution reads the filter back to front; flip_filter makes it a correlation.
            const int fy = p.flip_filter ? ky : p.f_h - 1 - ky;
            for (int kx = first_kx; kx < p.f_w; kx += p.upx) {
                const int ix = (base_x + kx) / p.upx;
                if (ix < 0 || ix >= p.in_w) continue;
                const int fx = p.flip_filter ? kx : p.f_w - 1 - kx;
                const acc_t value = static_cast<acc_t>(x_nc[iy * p.x_stride[2] + ix * p.x_stride[3]]);
                sum += value * static_cast<acc_t>(f[fy * p.f_w + fx]);
            }
        }
        y[n * p.y_stride[0] + c * p.y_stride[1] + oy * p.y_stride[2] + ox * p.y_stride[3]] =
            static_cast<scalar_t>(sum * static_cast<acc_t>(gain));
    }
}

// Output length along one axis; negative when the padding leaves nothing.
int64_t output_size(int64_t size, int64_t up, int64_t down, int64_t pad0, int64_t pad1, int64_t taps) {
    const int64_t valid = size * up + pad0 + pad1 - taps;
    return valid < 0 ? -1 : valid / down + 1;
}

template <typename scalar_t, typename filter_t>
void launch_upfirdn2d(const at::Tensor& x, const at::Tensor& f, at::Tensor& y, const Upfirdn2dParams& p,
                      double gain, bool channels_last) {
    constexpr int kThreads = 256;
    const int blocks = static_cast<int>((static_cast<int64_t>(p.total) + kThreads - 1) / kThreads);
    const auto stream = c10::cuda::getCurrentCUDAStream();
    const auto* x_ptr = x.data_ptr<scalar_t>();
    const auto* f_ptr = f.data_ptr<filter_t>();
    auto* y_ptr = y.data_ptr<scalar_t>();
    if (channels_last) {
        upfirdn2d_kernel<scalar_t, filter_t, true>
            <<<blocks, kThreads, 0, stream>>>(x_ptr, f_ptr, y_ptr, p, static_cast<filter_t>(gain));
    } else {
        upfirdn2d_kernel<scalar_t, filter_t, false>
            <<<blocks, kThreads, 0, stream>>>(x_ptr, f_ptr, y_ptr, p, static_cast<filter_t>(gain));
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor upfirdn2d(const at::Tensor& x, const at::Tensor& f, int64_t upx, int64_t upy, int64_t downx,
                     int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1,
                     bool flip_filter, double gain) {
    TORCH_CHECK(x.is_cuda(), "upfirdn2d: x must be a CUDA tensor");
    TORCH_CHECK(x.dim() == 4, "upfirdn2d: x must be 4-D NCHW, got ", x.dim(), " dimensions");
    TORCH_CHECK(f.dim() == 2, "upfirdn2d: f must be 2-D, got ", f.dim(), " dimensions");
    TORCH_CHECK(f.size(0) >= 1 && f.size(1) >= 1, "upfirdn2d: f must have at least one tap");
    TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1, "upfirdn2d: up and down must be >= 1");
    const c10::cuda::CUDAGuard device_guard(x.device());

    // Kernels read and write dense tensors in the input's layout; channels_last stays channels_last.
    const auto format = x.suggest_memory_format();
    const bool channels_last = format == at::MemoryFormat::ChannelsLast;
    const at::Tensor xc = x.contiguous(format);
    // Filters are tiny: keep their taps at the accumulation precision.
    const auto filter_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    const at::Tensor fc = f.to(x.device(), filter_type).contiguous();

    const int64_t out_h = output_size(x.size(2), upy, downy, pady0, pady1, f.size(0));
    const int64_t out_w = output_size(x.size(3), upx, downx, padx0, padx1, f.size(1));
    TORCH_CHECK(out_h >= 1 && out_w >= 1, "upfirdn2d: padding leaves an empty output");
    at::Tensor y = at::empty({x.size(0), x.size(1), out_h, out_w}, x.options().memory_format(format));
    if (y.numel() == 0) return y;
    constexpr int64_t kMaxIndex = std::numeric_limits<int>::max();
    TORCH_CHECK(xc.numel() <= kMaxIndex && y.numel() <= kMaxIndex,
                "upfirdn2d: tensors with more than 2^31 elements are not supported; use impl='ref'");

    Upfirdn2dParams p;
    p.n = static_cast<int>(x.size(0));
    p.c = static_cast<int>(x.size(1));
    p.in_h = static_cast<int>(x.size(2));
    p.in_w = static_cast<int>(x.size(3));
    p.out_h = static_cast<int>(out_h);
    p.out_w = static_cast<int>(out_w);
    p.f_h = static_cast<int>(f.size(0));
    p.f_w = static_cast<int>(f.size(1));
    p.upx = static_cast<int>(upx);
    p.upy = static_cast<int>(upy);
    p.downx = static_cast<int>(downx);
    p.downy = static_cast<int>(downy);
    p.padx0 = static_cast<int>(padx0);
    p.pady0 = static_cast<int>(pady0);
    p.flip_filter = flip_filter;
    for (int d = 0; d < 4; ++d) {
        p.x_stride[d] = xc.stride(d);
        p.y_stride[d] = y.stride(d);
    }
    p.total = static_cast<int>(y.numel());

    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upfirdn2d", [&] {
        if constexpr (std::is_same_v<scalar_t, double>) {
            launch_upfirdn2d<scalar_t, double>(xc, fc, y, p, gain, channels_last);
        } else {
            launch_upfirdn2d<scalar_t, float>(xc, fc, y, p, gain, channels_last);
        }
    });
    return y;
}
