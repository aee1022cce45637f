// The quantized-weight kernels for AVX-512 with VNNI (Intel Cascade Lake and later, AMD Zen 4
// and later): the byte dot products are one VPDPBUSD each.
// Generic headers first, so their inline functions are not compiled for this target.
#include <ATen/Parallel.h>

#include <immintrin.h>

#include <cstring>
#include <type_traits>

#include "quant.h"

#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
#define OCTAVO_ISA avx512
#define OCTAVO_VNNI 1
#define OCTAVO_AVX512 1
#include "quant_isa.inc"
