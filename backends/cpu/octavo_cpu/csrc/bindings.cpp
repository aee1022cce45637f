// The module torch builds from csrc/: one entry per kernel, and the layer classes.
#include <torch/extension.h>

#include "decode_layer.h"
#include "kernels.h"
#include "linear.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_decode", &paged_decode);
  m.def("write_kv", &write_kv);
  m.def("amx_available", &amx_available);
  m.def("rms_norm", &rms_norm);
  m.def("silu_and_mul", &silu_and_mul);
  m.def("rope_", &rope_);
  m.def("bf16_pack", &octavo::bf16_pack);
  m.def("bf16_linear", &octavo::bf16_linear);
  m.def("quant_panels_linear_out", &octavo::quant_panels_linear_out);
  m.def("quant_isa", &octavo::quant::quant_isa);
  m.def("set_quant_isa", &octavo::quant::set_quant_isa);
  m.def("quant_linear_out", &octavo::quant::quant_linear_out);
  m.def("quant_dequantize", &octavo::quant::quant_dequantize);
  pybind11::class_<octavo::Linear>(m, "Linear")
      .def_static("quantized", &octavo::Linear::quantized)
      .def_static("packed", &octavo::Linear::packed)
      .def_static("panels", &octavo::Linear::panels)
      .def("forward", &octavo::Linear::forward);
  pybind11::class_<octavo::DecodeLayer>(m, "DecodeLayer")
      .def(pybind11::init<at::Tensor, at::Tensor, double, octavo::Linear, octavo::Linear, octavo::Linear,
                          octavo::Linear, int64_t, int64_t, int64_t, double, int64_t>())
      .def("forward", &octavo::DecodeLayer::forward);
}
