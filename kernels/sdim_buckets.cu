// SDIM bucket sums: the behaviors that share the target's signature, summed per group, and (for
// offline encoding) every bucket of every group at once.
//
// Contract (kernels/README.md; CPU twins: matched_sums and bucket_table in
// src/aggregate/sdim.rs):
//   values [n, d] f32 (rows' behaviors packed), sigs [n, G] u32, offsets [rows + 1] u32
//   (non-decreasing, last <= n): row r owns behaviors offsets[r] .. offsets[r + 1].
//   sdim_matched_sums: tsigs [rows, G] u32 -> out [rows, G, d] f32,
//       out[r, g] = sum of values[j] over the row's j with sigs[j, g] == tsigs[r, g].
//   sdim_bucket_table: out [rows, G, 2^tau, d] f32 (every entry written),
//       out[r, g, s] = sum of values[j] over the row's j with sigs[j, g] == s;
//       a signature >= 2^tau sets *bad = 1 and is skipped (the op turns that into an error).
// Launch (both): block = SD_WARPS * 32 threads, dynamic shared memory as below.
//   matched: grid = (rows, ceil(G / gc)), gc = groups per block (<= 32), shared SD_WARPS*gc*d floats.
//   table:   grid = (rows, G), shared SD_WARPS * 2^tau * d floats when that fits (in_shared = 1),
//            else 0 and the sums go straight to `out` with atomics (out must be zeroed then).
// Each warp sums a contiguous segment of the row into its own partial; the partials are added
// in warp order at the end (no atomics on the shared path).

typedef unsigned int u32;

#define SD_WARPS 4

extern "C" __global__ void sdim_matched_sums(const float *__restrict__ values,
                                             const u32 *__restrict__ sigs,
                                             const u32 *__restrict__ tsigs,
                                             const u32 *__restrict__ offsets,
                                             float *__restrict__ out, int rows, int d, int groups,
                                             int gc) {
    extern __shared__ float part[];  // [SD_WARPS][gc][d]
    const int row = blockIdx.x;  // x: rows may exceed grid.y's 65,535
    const int g0 = blockIdx.y * gc;
    const int ng = min(gc, groups - g0);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    for (int i = tid; i < SD_WARPS * gc * d; i += blockDim.x) {
        part[i] = 0.f;
    }
    __syncthreads();
    const u32 s0 = offsets[row], len = offsets[row + 1] - s0;
    const u32 seg = (len + SD_WARPS - 1) / SD_WARPS;
    const u32 lo = min(seg * warp, len), hi = min(lo + seg, len);
    const u32 tsig = lane < ng ? tsigs[(long long)row * groups + g0 + lane] : 0;
    float *mine = part + warp * gc * d;
    for (u32 j = lo; j < hi; ++j) {
        const long long jj = (long long)s0 + j;
        const bool hit = lane < ng && __ldg(sigs + jj * groups + g0 + lane) == tsig;
        u32 match = __ballot_sync(0xffffffffu, hit);
        if (match == 0) {
            continue;  // the common case: the row's values are never read
        }
        const float *v = values + jj * d;
        for (int c = lane; c < d; c += 32) {
            const float x = __ldg(v + c);
            for (u32 mm = match; mm != 0; mm &= mm - 1) {
                mine[(__ffs(mm) - 1) * d + c] += x;
            }
        }
    }
    __syncthreads();
    for (int i = tid; i < ng * d; i += blockDim.x) {
        float acc = 0.f;
        for (int w = 0; w < SD_WARPS; ++w) {
            acc += part[w * gc * d + i];
        }
        const int q = i / d, c = i - q * d;
        out[((long long)row * groups + g0 + q) * d + c] = acc;
    }
}

extern "C" __global__ void sdim_bucket_table(const float *__restrict__ values,
                                             const u32 *__restrict__ sigs,
                                             const u32 *__restrict__ offsets,
                                             float *__restrict__ out, u32 *__restrict__ bad,
                                             int rows, int d, int groups, int tau,
                                             int in_shared) {
    extern __shared__ float part[];  // [SD_WARPS][2^tau][d] when in_shared
    const int row = blockIdx.x, g = blockIdx.y;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const u32 nb = 1u << tau;
    const long long slice = (long long)nb * d;
    float *dst = out + ((long long)row * groups + g) * slice;
    if (in_shared) {
        for (int i = tid; i < SD_WARPS * slice; i += blockDim.x) {
            part[i] = 0.f;
        }
        __syncthreads();
    }
    const u32 s0 = offsets[row], len = offsets[row + 1] - s0;
    const u32 seg = (len + SD_WARPS - 1) / SD_WARPS;
    const u32 lo = min(seg * warp, len), hi = min(lo + seg, len);
    float *mine = in_shared ? part + warp * slice : dst;
    for (u32 j = lo; j < hi; ++j) {
        const long long jj = (long long)s0 + j;
        const u32 s = __ldg(sigs + jj * groups + g);  // one address: a broadcast
        if (s >= nb) {
            if (lane == 0) {
                atomicExch(bad, 1u);
            }
            continue;
        }
        const float *v = values + jj * d;
        for (int c = lane; c < d; c += 32) {
            if (in_shared) {
                mine[s * d + c] += __ldg(v + c);
            } else {
                atomicAdd(mine + s * d + c, __ldg(v + c));
            }
        }
    }
    if (in_shared) {
        __syncthreads();
        for (long long i = tid; i < slice; i += blockDim.x) {
            float acc = 0.f;
            for (int w = 0; w < SD_WARPS; ++w) {
                acc += part[w * slice + i];
            }
            dst[i] = acc;
        }
    }
}
