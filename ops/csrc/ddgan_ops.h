// Host entry points of the ddgan_ops CUDA extension (defined in upfirdn2d.cu and bias_act.cu).
#pragma once

#include <ATen/ATen.h>

// y = downsample(convolve(pad(upsample(x)), f)) on an NCHW tensor, any memory layout.
// f is a 2-D filter (a 1xK or Kx1 filter runs one axis); a true convolution unless flip_filter.
at::Tensor upfirdn2d(const at::Tensor& x, const at::Tensor& f, int64_t upx, int64_t upy, int64_t downx,
                     int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1,
                     bool flip_filter, double gain);

// grad == 0: y = clamp(gain * act(x + b)); grad == 1: dy * dy/dx; grad == 2: dy * d2y/dx2.
// b is broadcast along `dim` (empty for no bias); clamp < 0 disables clamping.
at::Tensor bias_act(const at::Tensor& x, const at::Tensor& b, const at::Tensor& dy, int64_t grad,
                    int64_t dim, int64_t act, double alpha, double gain, double clamp);
