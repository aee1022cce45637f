// GGUF's quantized block formats, decoded 32 weights at a time into what the kernels multiply:
// 32 small integers q (one byte each) and, per half of 16, a scale d and a min m such that
// w = d * q + m. The bytes are GGUF's own (ggml-common.h): tensors keep their file layout.
//
// Included by each ISA's kernel file under its `#pragma GCC target`, inside that file's
// namespace, so every copy of these inline functions is compiled for one ISA only (the
// including file brings <immintrin.h> and <cstring>). Only AVX2-level intrinsics here: both
// targets have them.
#pragma once

// One 32-weight block, decoded. `q` holds unsigned bytes, or for `Signed` formats signed
// ones (then m is 0). d[0], m[0] apply to weights 0..15, d[1], m[1] to 16..31 (they differ
// only in `Halves` formats).
struct Block {
  __m256i q;
  float d[2], m[2];
};

inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }

inline uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// 16 bytes of nibbles -> 32 bytes: low nibbles first, then high nibbles (GGUF's order for
// the 32-blocks; K-quants pair two sub-blocks per 32 bytes instead, see `nibbles32`).
inline __m256i nibbles16(const uint8_t* p) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i mask = _mm_set1_epi8(0x0F);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), mask), _mm_and_si128(v, mask));
}

// 32 bytes -> their low (high = false) or high nibbles.
inline __m256i nibbles32(const uint8_t* p, bool high) {
  __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  if (high) v = _mm256_srli_epi16(v, 4);
  return _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
}

// 32 bits -> 32 bytes, 0x10 where the bit is set (the fifth bit of Q5_0's weights): one mask
// move on AVX-512 (the including file defines OCTAVO_AVX512 there), four ops on AVX2.
inline __m256i fifth_bits(uint32_t bits) {
#if OCTAVO_AVX512
  return _mm256_maskz_mov_epi8(bits, _mm256_set1_epi8(0x10));
#else
  const __m256i shuffle = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
  __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(bits)), shuffle);
  bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));  // all ones where the bit is set
  return _mm256_and_si256(_mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1)), _mm256_set1_epi8(0x10));
#endif
}

inline Block block(__m256i q, float d, float m) { return Block{q, {d, d}, {m, m}}; }

// Each format: kWeights per super-block (the unit of its bytes), kBytes, a Header decoded
// once per super-block, unpack(super-block, header, j) for its j-th 32-block, and how its
// min is applied: Signed (q signed, no min), Offset = log2(c) where m = -c d (symmetric
// formats: the kernels subtract c sum(xq) in integers), or Offset = -1 (m from the block).
// `Format` holds the defaults: 32-weight blocks, no header, unsigned, the min from the block.
struct Format {
  static constexpr int kWeights = 32;
  static constexpr bool Signed = false, Halves = false;
  static constexpr int Offset = -1;
  struct Header {};
  static Header header(const uint8_t*) { return {}; }
};

struct Q4_0 : Format {
  static constexpr int kBytes = 18, Offset = 3;
  static Block unpack(const uint8_t* b, Header, int) {
    const float d = half_to_float(load_u16(b));
    return block(nibbles16(b + 2), d, -8.f * d);
  }
};

struct Q4_1 : Format {
  static constexpr int kBytes = 20;
  static Block unpack(const uint8_t* b, Header, int) {
    return block(nibbles16(b + 4), half_to_float(load_u16(b)), half_to_float(load_u16(b + 2)));
  }
};

struct Q5_0 : Format {
  static constexpr int kBytes = 22, Offset = 4;
  static Block unpack(const uint8_t* b, Header, int) {
    const float d = half_to_float(load_u16(b));
    uint32_t qh;
    std::memcpy(&qh, b + 2, 4);
    return block(_mm256_or_si256(nibbles16(b + 6), fifth_bits(qh)), d, -16.f * d);
  }
};

struct Q5_1 : Format {
  static constexpr int kBytes = 24;
  static Block unpack(const uint8_t* b, Header, int) {
    uint32_t qh;
    std::memcpy(&qh, b + 4, 4);
    return block(_mm256_or_si256(nibbles16(b + 8), fifth_bits(qh)), half_to_float(load_u16(b)),
                 half_to_float(load_u16(b + 2)));
  }
};

struct Q8_0 : Format {
  static constexpr int kBytes = 34;
  static constexpr bool Signed = true;
  static Block unpack(const uint8_t* b, Header, int) {
    return block(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 2)), half_to_float(load_u16(b)), 0.f);
  }
};

// Q4_K and Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins, w = d sc q - dmin m.
struct KScales {
  float d[8], m[8];
};

inline KScales k_scales(const uint8_t* b) {
  const float d = half_to_float(load_u16(b)), dmin = half_to_float(load_u16(b + 2));
  // The 12 bytes of 6-bit values, unpacked four at a time in 32-bit words (as llama.cpp
  // does): scales 0-3 are the low 6 bits of bytes 0-3 and mins 0-3 of bytes 4-7; scales and
  // mins 4-7 take their low 4 bits from bytes 8-11 and their top 2 bits from bytes 0-3 / 4-7.
  uint32_t s[3], v[4];
  std::memcpy(s, b + 4, 12);
  v[0] = s[0] & 0x3f3f3f3f;                                                  // scales 0-3
  v[1] = (s[2] & 0x0f0f0f0f) | (((s[0] >> 6) & 0x03030303) << 4);            // scales 4-7
  v[2] = s[1] & 0x3f3f3f3f;                                                  // mins 0-3
  v[3] = ((s[2] >> 4) & 0x0f0f0f0f) | (((s[1] >> 6) & 0x03030303) << 4);     // mins 4-7
  const __m256 scales = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(v))));
  const __m256 mins = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(v + 2))));
  KScales k;
  _mm256_storeu_ps(k.d, _mm256_mul_ps(scales, _mm256_set1_ps(d)));
  _mm256_storeu_ps(k.m, _mm256_mul_ps(mins, _mm256_set1_ps(-dmin)));
  return k;
}

// The K formats' 256-weight super-blocks open with their scales and mins.
struct KFormat : Format {
  static constexpr int kWeights = 256;
  using Header = KScales;
  static Header header(const uint8_t* b) { return k_scales(b); }
};

struct Q4_K : KFormat {
  static constexpr int kBytes = 144;
  static Block unpack(const uint8_t* b, const Header& h, int j) {
    return block(nibbles32(b + 16 + 32 * (j / 2), j % 2), h.d[j], h.m[j]);
  }
};

struct Q5_K : KFormat {
  static constexpr int kBytes = 176;
  static Block unpack(const uint8_t* b, const Header& h, int j) {
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 16));
    const __m256i bit = _mm256_and_si256(_mm256_srli_epi16(qh, j), _mm256_set1_epi8(1));
    return block(_mm256_or_si256(nibbles32(b + 48 + 32 * (j / 2), j % 2), _mm256_slli_epi16(bit, 4)), h.d[j], h.m[j]);
  }
};

// Q6_K: two halves of 128 weights; 16 sub-blocks of 16 with int8 scales, w = d sc (q - 32).
struct Q6_K : Format {
  static constexpr int kWeights = 256, kBytes = 210, Offset = 5;
  static constexpr bool Halves = true;
  struct Header {
    float d[16];
  };
  static Header header(const uint8_t* b) {
    const __m256 d = _mm256_set1_ps(half_to_float(load_u16(b + 208)));
    const __m128i sc = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 192));
    Header h;
    _mm256_storeu_ps(h.d, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc))));
    _mm256_storeu_ps(h.d + 8, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(sc, 8)))));
    return h;
  }
  static Block unpack(const uint8_t* b, const Header& h, int j) {
    const int half = j / 4, k = j % 4;
    const uint8_t* ql = b + 64 * half + 32 * (k % 2);
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 128 + 32 * half));
    const __m256i high = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * k), _mm256_set1_epi8(3));
    const __m256i q = _mm256_or_si256(nibbles32(ql, k >= 2), _mm256_slli_epi16(high, 4));
    const float* d = h.d + 8 * half + 2 * k;
    return Block{q, {d[0], d[1]}, {-32.f * d[0], -32.f * d[1]}};
  }
};
