// SimHash codes and SDIM group signatures.
//
// Contract (kernels/README.md has the table; CPU twin: src/search/simhash.rs):
//   codes[i, w] bit b = [ sum_c x[i, c] * R[c, 32 w + b] > 0 ]   for 32 w + b < bits, else 0
//   x [n, d] row-major (f32, or f16 / bf16 as raw 16-bit words), R [d, bits] f32,
//   codes [n, ceil(bits / 32)] u32.
// Launch: block = SH_WARPS * 32 threads, grid = ceil(n / (SH_WARPS * SH_ROWS)). Each warp owns
// SH_ROWS rows; lane b of the warp computes projection 32 w + b of each of them, and one
// __ballot_sync packs the 32 signs of a word (bit b = lane b).
//
// Self-contained on purpose: NVRTC gets no include path, so f16 / bf16 are read as bits.

typedef unsigned int u32;
typedef unsigned short u16;

#define SH_WARPS 8
#define SH_ROWS 4
#define SH_CHUNK 128

template <int KIND>
__device__ __forceinline__ float load_x(const void *x, long long i) {
    if (KIND == 0) {
        return static_cast<const float *>(x)[i];
    }
    u16 h = static_cast<const u16 *>(x)[i];
    if (KIND == 1) {
        float f;
        asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
        return f;
    }
    return __uint_as_float(((u32)h) << 16);  // bf16: the high half of an f32
}

template <int KIND>
__device__ void simhash_codes(const void *__restrict__ x, const float *__restrict__ r,
                              u32 *__restrict__ codes, int n, int d, int bits) {
    __shared__ float xs[SH_WARPS][SH_ROWS][SH_CHUNK];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const long long row0 = ((long long)blockIdx.x * SH_WARPS + warp) * SH_ROWS;
    if (row0 >= n) {
        return;  // the whole warp: no ballot below is left waiting
    }
    const int words = (bits + 31) / 32;
    for (int w = 0; w < words; ++w) {
        const int col = w * 32 + lane;
        const bool live = col < bits;
        float acc[SH_ROWS];
#pragma unroll
        for (int q = 0; q < SH_ROWS; ++q) {
            acc[q] = 0.f;
        }
        for (int c0 = 0; c0 < d; c0 += SH_CHUNK) {
            const int cn = min(SH_CHUNK, d - c0);
            __syncwarp();
#pragma unroll
            for (int q = 0; q < SH_ROWS; ++q) {
                const long long row = row0 + q;
                for (int c = lane; c < cn; c += 32) {
                    xs[warp][q][c] = row < n ? load_x<KIND>(x, row * d + c0 + c) : 0.f;
                }
            }
            __syncwarp();
            if (live) {
                const float *rc = r + (long long)c0 * bits + col;
                for (int c = 0; c < cn; ++c) {
                    const float rv = __ldg(rc + (long long)c * bits);
#pragma unroll
                    for (int q = 0; q < SH_ROWS; ++q) {
                        acc[q] = fmaf(xs[warp][q][c], rv, acc[q]);
                    }
                }
            }
        }
#pragma unroll
        for (int q = 0; q < SH_ROWS; ++q) {
            const u32 word = __ballot_sync(0xffffffffu, live && acc[q] > 0.f);
            if (lane == 0 && row0 + q < n) {
                codes[(row0 + q) * words + w] = word;
            }
        }
    }
}

extern "C" __global__ void simhash_codes_f32(const float *x, const float *r, u32 *codes, int n,
                                             int d, int bits) {
    simhash_codes<0>(x, r, codes, n, d, bits);
}

extern "C" __global__ void simhash_codes_f16(const u16 *x, const float *r, u32 *codes, int n,
                                             int d, int bits) {
    simhash_codes<1>(x, r, codes, n, d, bits);
}

extern "C" __global__ void simhash_codes_bf16(const u16 *x, const float *r, u32 *codes, int n,
                                              int d, int bits) {
    simhash_codes<2>(x, r, codes, n, d, bits);
}

// SDIM signatures: sigs[i, g] = bits [g tau, (g + 1) tau) of codes[i] as an integer, bit g tau
// lowest (tau in 1..=16, groups * tau <= 32 * words). One thread per (row, group).
extern "C" __global__ void sdim_signatures(const u32 *__restrict__ codes, u32 *__restrict__ sigs,
                                           int n, int words, int groups, int tau) {
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)n * groups) {
        return;
    }
    const long long i = t / groups;
    const int g = (int)(t - i * groups);
    const int start = g * tau;
    const int w = start >> 5, s = start & 31;
    unsigned long long v = codes[i * words + w] >> s;
    if (s + tau > 32) {
        v |= (unsigned long long)codes[i * words + w + 1] << (32 - s);
    }
    sigs[t] = (u32)(v & ((1ull << tau) - 1));
}
