// bias_act: y = clamp(gain * act(x + b)) and its first and second derivatives, elementwise.
//
// The derivative modes recompute z = x + b and the clamp mask from the saved input instead of reading a
// saved output, so the autograd Functions only keep x. Math runs in float (double for double inputs).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "ddgan_ops.h"

namespace {

// Activation ids, as listed in ops/bias_act.py.
enum Act : int {
    kLinear = 1,
    kRelu = 2,
    kLrelu = 3,
    kTanh = 4,
    kSigmoid = 5,
    kElu = 6,
    kSelu = 7,
    kSoftplus = 8,
    kSilu = 9,
};

constexpr double kSeluScale = 1.0507009873554804934193349852946;
constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
constexpr double kSoftplusThreshold = 20.0;  // torch.nn.functional.softplus switches to identity above

// act(z) and its first two derivatives at one point.
template <typename T>
struct Derivatives {
    T value, first, second;
};

template <typename T>
__device__ __forceinline__ T sigmoid(T z) {
    return T(1) / (T(1) + exp(-z));
}

template <typename T>
__device__ __forceinline__ Derivatives<T> evaluate(int act, T z, T alpha) {
    switch (act) {
        case kRelu:
            return z > T(0) ? Derivatives<T>{z, T(1), T(0)} : Derivatives<T>{T(0), T(0), T(0)};
        case kLrelu:
            return z > T(0) ? Derivatives<T>{z, T(1), T(0)} : Derivatives<T>{z * alpha, alpha, T(0)};
        case kTanh: {
            const T t = tanh(z);
            const T slope = T(1) - t * t;
            return {t, slope, T(-2) * t * slope};
        }
        case kSigmoid: {
            const T s = sigmoid(z);
            const T slope = s * (T(1) - s);
            return {s, slope, slope * (T(1) - T(2) * s)};
        }
        // At z = 0 torch takes the first derivative from the exponential side, the second from the flat one.
        case kElu: {
            if (z > T(0)) return {z, T(1), T(0)};
            const T e = exp(z);
            return {e - T(1), e, z < T(0) ? e : T(0)};
        }
        case kSelu: {
            const T scale = T(kSeluScale);
            if (z > T(0)) return {scale * z, scale, T(0)};
            const T e = scale * T(kSeluAlpha) * exp(z);
            return {e - scale * T(kSeluAlpha), e, z < T(0) ? e : T(0)};
        }
        case kSoftplus: {
            if (z > T(kSoftplusThreshold)) return {z, T(1), T(0)};
            const T s = sigmoid(z);
            return {log1p(exp(z)), s, s * (T(1) - s)};
        }
        case kSilu: {
            const T s = sigmoid(z);
            const T curve = s * (T(1) - s);
            return {z * s, s + z * curve, curve * (T(2) + z * (T(1) - T(2) * s))};
        }
        default:  // kLinear
            return {z, T(1), T(0)};
    }
}

struct BiasActParams {
    int64_t total;       // elements of x
    int64_t bias_step;   // memory stride of `dim`: element i has bias index (i / bias_step) % bias_len
    int64_t bias_len;    // 0 when there is no bias
    int grad;            // 0: value, 1: first derivative, 2: second derivative (each times dy)
    int act;
    double alpha, gain, clamp;
};

// v rounded to the storage type and back: the value the reference path would compare.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t round_to_storage(acc_t v) {
    return static_cast<acc_t>(static_cast<scalar_t>(v));
}

template <typename scalar_t>
__global__ void bias_act_kernel(scalar_t* __restrict__ out, const scalar_t* __restrict__ x,
                                const scalar_t* __restrict__ b, const scalar_t* __restrict__ dy,
                                const BiasActParams p) {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t alpha = static_cast<acc_t>(p.alpha);
    const acc_t gain = static_cast<acc_t>(p.gain);
    const bool clamped = p.clamp >= 0;
    // torch.clamp compares in the tensor's dtype and passes no gradient at the bound itself.
    const acc_t clamp = static_cast<acc_t>(static_cast<scalar_t>(p.clamp));
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < p.total; i += stride) {
        acc_t z = static_cast<acc_t>(x[i]);
        if (p.bias_len > 0) z += static_cast<acc_t>(b[(i / p.bias_step) % p.bias_len]);
        const Derivatives<acc_t> d = evaluate<acc_t>(p.act, z, alpha);
        const acc_t y = d.value * gain;
        const acc_t y_stored = round_to_storage<scalar_t>(y);
        acc_t result;
        if (p.grad == 0) {
            // NaN stays NaN (fminf/fmaxf would return the bound), as torch.clamp keeps it.
            result = clamped && !isnan(y) ? min(max(y, -clamp), clamp) : y;
        } else if (clamped && !(-clamp < y_stored && y_stored < clamp)) {
            result = acc_t(0);  // clipped samples (and those at the bound) pass no gradient
        } else {
            const acc_t slope = p.grad == 1 ? d.first : d.second;
            result = static_cast<acc_t>(dy[i]) * gain * slope;
        }
        out[i] = static_cast<scalar_t>(result);
    }
}

// Bring t into exactly the layout of `like`, so that one flat index addresses both.
at::Tensor match_layout(const at::Tensor& t, const at::Tensor& like) {
    if (t.strides() == like.strides()) return t;
    return at::empty_like(like).copy_(t);
}

}  // namespace

at::Tensor bias_act(const at::Tensor& x, const at::Tensor& b, const at::Tensor& dy, int64_t grad,
                    int64_t dim, int64_t act, double alpha, double gain, double clamp) {
    TORCH_CHECK(x.is_cuda(), "bias_act: x must be a CUDA tensor");
    TORCH_CHECK(grad >= 0 && grad <= 2, "bias_act: grad must be 0, 1 or 2");
    TORCH_CHECK(act >= kLinear && act <= kSilu, "bias_act: unknown activation id ", act);
    TORCH_CHECK(dim >= 0 && dim < x.dim(), "bias_act: dim out of range");
    TORCH_CHECK(b.numel() == 0 || (b.dim() == 1 && b.numel() == x.size(dim)),
                "bias_act: b must be empty or have x.shape[dim] entries");
    TORCH_CHECK(grad == 0 || dy.sizes() == x.sizes(), "bias_act: dy must have the shape of x");
    TORCH_CHECK(grad == 0 || dy.device() == x.device(), "bias_act: dy must be on x's device");
    const c10::cuda::CUDAGuard device_guard(x.device());

    // A dense layout (any dimension order) lets the kernel walk memory linearly.
    const at::Tensor xc = x.is_non_overlapping_and_dense() ? x : x.contiguous();
    const at::Tensor bc = b.to(x.device(), x.scalar_type()).contiguous();
    const at::Tensor dyc = grad == 0 ? dy : match_layout(dy.to(x.scalar_type()), xc);
    at::Tensor out = at::empty_like(xc);
    if (out.numel() == 0) return out;

    BiasActParams p;
    p.total = xc.numel();
    p.bias_step = xc.size(dim) > 1 ? xc.stride(dim) : 1;
    p.bias_len = bc.numel();
    p.grad = static_cast<int>(grad);
    p.act = static_cast<int>(act);
    p.alpha = alpha;
    p.gain = gain;
    p.clamp = clamp;

    constexpr int kThreads = 256;
    constexpr int64_t kMaxBlocks = 65536;  // the loop strides over the rest
    const int blocks = static_cast<int>(std::min((p.total + kThreads - 1) / kThreads, kMaxBlocks));
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bias_act", [&] {
        const scalar_t* dy_ptr = grad == 0 ? nullptr : dyc.data_ptr<scalar_t>();
        const scalar_t* b_ptr = p.bias_len > 0 ? bc.data_ptr<scalar_t>() : nullptr;
        bias_act_kernel<scalar_t>
            <<<blocks, kThreads, 0, stream>>>(out.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(), b_ptr, dy_ptr, p);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return out;
}
