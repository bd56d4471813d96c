"""Custom ops of the DDGAN networks: upfirdn2d (FIR resampling) and bias_act (fused bias + activation).

Each op lives in its own module with a PyTorch reference and a CUDA kernel; `ops.custom_ops` builds the
kernels on first use and every op falls back to the reference when CUDA or the build is unavailable.
"""
