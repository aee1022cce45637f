// The quantized-weight kernels for AVX2 + FMA + F16C (the floor: any x86-64 CPU since 2013).
// Generic headers first, so their inline functions are not compiled for this target.
#include <ATen/Parallel.h>

#include <immintrin.h>

#include <cstring>
#include <type_traits>

#include "quant.h"

#pragma GCC target("avx2,fma,f16c")
#define OCTAVO_ISA avx2
#define OCTAVO_VNNI 0
#include "quant_isa.inc"
