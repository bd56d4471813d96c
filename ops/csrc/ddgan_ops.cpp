// Python bindings of the ddgan_ops extension.
#include <torch/extension.h>

#include "ddgan_ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("upfirdn2d", &upfirdn2d, "Upsample, FIR-filter and downsample an NCHW tensor (CUDA)",
          py::arg("x"), py::arg("f"), py::arg("upx"), py::arg("upy"), py::arg("downx"), py::arg("downy"),
          py::arg("padx0"), py::arg("padx1"), py::arg("pady0"), py::arg("pady1"), py::arg("flip_filter"),
          py::arg("gain"));
    m.def("bias_act", &bias_act, "Fused bias, activation, gain and clamp, or its derivatives (CUDA)",
          py::arg("x"), py::arg("b"), py::arg("dy"), py::arg("grad"), py::arg("dim"), py::arg("act"),
          py::arg("alpha"), py::arg("gain"), py::arg("clamp"));
}
