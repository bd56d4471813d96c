"""Custom ops of the DDGAN networks: upfirdn2d (FIR resampling), bias_act (fused bias + activation) and
adaptive_group_norm (AdaGN fused with its activation).

Each op lives in its own module with a PyTorch reference and a kernel: CUDA kernels for the first two
(`ops.custom_ops` builds them on first use), a CPU kernel for the third (`ops.cpu_library`); every op falls
back to its reference where its kernel cannot run or its build is unavailable.
"""
