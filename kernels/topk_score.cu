// Score top-k: per row, the k largest of L float scores (optionally masked), L up to 10^5+.
//
// Contract (kernels/README.md; CPU twin: topk_rows in src/search/topk.rs):
//   scores [rows, L] f32, mask [rows, L] u8 (0 = excluded; read only when has_mask != 0),
//   scratch [rows, L] u32 (work space, any contents), idx [rows, k] u32: positions, best first,
//   ties to the higher (more recent) position, slots past min(k, unmasked) set to 0xFFFFFFFF.
//   1 <= k <= TS_MAX_K. -0.0 ranks as 0.0, NaN below every number (the CPU's score_key).
// Launch: grid = rows, block = TS_THREADS threads (the kernel assumes exactly that).
//
// A radix select in the manner of AIR top-k (Zhang et al., SC'23), over 64-bit keys
// (ordered score bits << 32 | position): the keys are unique, so "the k largest keys" is exactly
// the answer with the tie rule built in, and no pass needs a tie special case. The row is never
// held in shared memory:
//   pass 1 (row): histogram of the keys' top TS_DIGIT bits -> the bin b holding the k-th key;
//   pass 2 (row): keys above b are selected (shared list, < k of them), keys in b are candidates,
//                 kept in shared memory when few, else their positions go to `scratch`;
//   refine (scratch, only when candidates are many): next TS_DIGIT bits, same split, until the
//                 candidates fit in shared memory;
//   finish: one bitonic sort (descending) of selected + candidates in shared memory.

typedef unsigned int u32;
typedef unsigned long long u64;

#define TS_THREADS 512
#define TS_DIGIT 11
#define TS_BINS (1 << TS_DIGIT)
#define TS_MAX_K 1024
#define TS_FINISH 2048  // candidates that go straight to the final sort
#define TS_SORT 4096    // >= TS_MAX_K - 1 + TS_FINISH, a power of two
#define TS_NONE 0xFFFFFFFFu
#define TS_UNROLL 4

__device__ __forceinline__ u32 score_key(float x) {
    if (x != x) {
        return 0;  // NaN
    }
    const u32 b = __float_as_uint(x + 0.0f);  // -0.0 -> +0.0
    const u32 flip = (u32)((int)b >> 31) | 0x80000000u;
    return b ^ flip;
}

__device__ __forceinline__ u64 make_key(float x, u32 j) {
    return ((u64)score_key(x) << 32) | j;
}

// The top `pbits` bits of `key` equal `prefix` (always true for pbits == 0).
__device__ __forceinline__ bool has_prefix(u64 key, u64 prefix, int pbits) {
    return pbits == 0 || (key >> (64 - pbits)) == prefix;
}

struct Digit {
    int shift, bits;
};

__device__ __forceinline__ Digit next_digit(int pbits) {
    Digit g;
    g.bits = min(TS_DIGIT, 64 - pbits);
    g.shift = 64 - pbits - g.bits;
    return g;
}

__device__ __forceinline__ u32 digit_of(u64 key, Digit g) {
    return (u32)(key >> g.shift) & ((1u << g.bits) - 1);
}

// After a histogram: the bin holding the `need`-th largest key (counting from the top), the count
// above it and in it. Every thread returns the same values.
__device__ void find_bin(u32 *hist, u32 *part, u32 need, u32 *bin, u32 *above, u32 *in_bin,
                         u32 *total) {
    __shared__ u32 res[4];
    const int t = threadIdx.x;
    const int per = TS_BINS / TS_THREADS;  // bins per thread, thread t owns [t per, (t + 1) per)
    u32 mine = 0;
    for (int i = 0; i < per; ++i) {
        mine += hist[t * per + i];
    }
    part[t] = mine;
    __syncthreads();
    // Inclusive suffix sum over threads (Hillis-Steele).
    for (int off = 1; off < TS_THREADS; off <<= 1) {
        const u32 v = t + off < TS_THREADS ? part[t + off] : 0;
        __syncthreads();
        part[t] += v;
        __syncthreads();
    }
    u32 run = part[t] - mine;  // keys in bins above this thread's
    for (int i = per - 1; i >= 0; --i) {
        const u32 c = hist[t * per + i];
        if (run < need && run + c >= need) {
            res[0] = t * per + i;
            res[1] = run;
            res[2] = c;
        }
        run += c;
    }
    if (t == 0) {
        res[3] = part[0];
    }
    __syncthreads();
    *bin = res[0];
    *above = res[1];
    *in_bin = res[2];
    *total = res[3];
    __syncthreads();
}

// This thread's TS_UNROLL scores of the chunk at j0 (all loads issued before any is used), and
// whether each is in the row and unmasked.
__device__ __forceinline__ void load_chunk(const float *s, const unsigned char *m, int len,
                                           long long j0, float *v, bool *ok) {
#pragma unroll
    for (int u = 0; u < TS_UNROLL; ++u) {
        const long long j = j0 + u * TS_THREADS + threadIdx.x;
        ok[u] = j < len && (m == 0 || m[j] != 0);
        v[u] = j < len ? s[j] : 0.f;
    }
}

extern "C" __global__ void topk_score(const float *__restrict__ scores,
                                      const unsigned char *__restrict__ mask, int has_mask,
                                      u32 *__restrict__ scratch, u32 *__restrict__ idx, int rows,
                                      int len, int k) {
    __shared__ u64 sortbuf[TS_SORT];  // [0, n_sel): selected; [TS_MAX_K, ...): candidates
    __shared__ u32 hist[TS_BINS];
    __shared__ u32 part[TS_THREADS];
    __shared__ u32 n_sel, n_cand;

    const int row = blockIdx.x;
    const int t = threadIdx.x;
    const float *s = scores + (long long)row * len;
    const unsigned char *m = has_mask ? mask + (long long)row * len : 0;
    u32 *scr = scratch + (long long)row * len;
    u32 *out = idx + (long long)row * k;

    // Pass 1: histogram of the top digit over the unmasked keys.
    for (int b = t; b < TS_BINS; b += TS_THREADS) {
        hist[b] = 0;
    }
    if (t == 0) {
        n_sel = 0;
        n_cand = 0;
    }
    __syncthreads();
    Digit g = next_digit(0);
    for (long long j0 = 0; j0 < len; j0 += TS_THREADS * TS_UNROLL) {
        float v[TS_UNROLL];
        bool ok[TS_UNROLL];
        load_chunk(s, m, len, j0, v, ok);
#pragma unroll
        for (int u = 0; u < TS_UNROLL; ++u) {
            if (ok[u]) {
                atomicAdd(&hist[digit_of(make_key(v[u], 0), g)], 1u);
            }
        }
    }
    __syncthreads();
    u32 bin, above, in_bin, total;
    // need = kk is not known before the total: find_bin with need = 1 first gives the total.
    find_bin(hist, part, 1, &bin, &above, &in_bin, &total);
    const u32 kk = min((u32)k, total);
    for (int i = (int)kk + t; i < k; i += TS_THREADS) {
        out[i] = TS_NONE;
    }
    if (kk == 0) {
        return;
    }
    find_bin(hist, part, kk, &bin, &above, &in_bin, &total);
    u32 need = kk - above;  // still to take from bin `bin`, 1..=in_bin
    bool in_shared = in_bin <= TS_FINISH;

    // Pass 2: split the row at the bin.
    for (long long j0 = 0; j0 < len; j0 += TS_THREADS * TS_UNROLL) {
        float v[TS_UNROLL];
        bool ok[TS_UNROLL];
        load_chunk(s, m, len, j0, v, ok);
#pragma unroll
        for (int u = 0; u < TS_UNROLL; ++u) {
            if (ok[u]) {
                const u32 j = (u32)(j0 + u * TS_THREADS + t);
                const u64 key = make_key(v[u], j);
                const u32 dg = digit_of(key, g);
                if (dg > bin) {
                    sortbuf[atomicAdd(&n_sel, 1u)] = key;
                } else if (dg == bin) {
                    const u32 c = atomicAdd(&n_cand, 1u);
                    if (in_shared) {
                        sortbuf[TS_MAX_K + c] = key;
                    } else {
                        scr[c] = j;
                    }
                }
            }
        }
    }
    __syncthreads();

    // Refine over the scratch positions until the candidates fit in shared memory. The scratch
    // list is never compacted: each round filters it by the prefix fixed so far.
    const u32 n_scr = n_cand;
    u64 prefix = bin;
    int pbits = g.bits;
    while (!in_shared) {
        g = next_digit(pbits);
        for (int b = t; b < TS_BINS; b += TS_THREADS) {
            hist[b] = 0;
        }
        __syncthreads();
        for (u32 i = t; i < n_scr; i += TS_THREADS) {
            const u32 j = scr[i];
            const u64 key = make_key(s[j], j);
            if (has_prefix(key, prefix, pbits)) {
                atomicAdd(&hist[digit_of(key, g)], 1u);
            }
        }
        __syncthreads();
        find_bin(hist, part, need, &bin, &above, &in_bin, &total);
        in_shared = in_bin <= TS_FINISH;
        if (t == 0) {
            n_cand = 0;
        }
        __syncthreads();
        for (u32 i = t; i < n_scr; i += TS_THREADS) {
            const u32 j = scr[i];
            const u64 key = make_key(s[j], j);
            if (has_prefix(key, prefix, pbits)) {
                const u32 dg = digit_of(key, g);
                if (dg > bin) {
                    sortbuf[atomicAdd(&n_sel, 1u)] = key;
                } else if (dg == bin && in_shared) {
                    sortbuf[TS_MAX_K + atomicAdd(&n_cand, 1u)] = key;
                }
            }
        }
        need -= above;
        prefix = (prefix << g.bits) | bin;
        pbits += g.bits;
        __syncthreads();
    }

    // Finish: selected keys (all above every candidate) then the candidates, sorted descending.
    const u32 ns = n_sel, nc = n_cand;
    // Move the candidates down behind the selected keys (ns <= TS_MAX_K - 1, so no overlap
    // problem: read everything first, then write).
    u64 mv[TS_FINISH / TS_THREADS];
#pragma unroll
    for (int u = 0; u < TS_FINISH / TS_THREADS; ++u) {
        const u32 i = u * TS_THREADS + t;
        mv[u] = i < nc ? sortbuf[TS_MAX_K + i] : 0;
    }
    __syncthreads();
#pragma unroll
    for (int u = 0; u < TS_FINISH / TS_THREADS; ++u) {
        const u32 i = u * TS_THREADS + t;
        if (i < nc) {
            sortbuf[ns + i] = mv[u];
        }
    }
    __syncthreads();
    u32 size = 1;
    while (size < ns + nc) {
        size <<= 1;
    }
    for (u32 i = ns + nc + t; i < size; i += TS_THREADS) {
        sortbuf[i] = 0;  // below every real key (or equal to the one key 0: NaN at position 0)
    }
    __syncthreads();
    for (u32 span = 2; span <= size; span <<= 1) {
        for (u32 stride = span >> 1; stride > 0; stride >>= 1) {
            for (u32 p = t; p < size / 2; p += TS_THREADS) {
                const u32 a = 2 * p - (p & (stride - 1));
                const u32 b = a + stride;
                const bool desc = (a & span) == 0;
                const u64 x = sortbuf[a], y = sortbuf[b];
                if ((x < y) == desc && x != y) {
                    sortbuf[a] = y;
                    sortbuf[b] = x;
                }
            }
            __syncthreads();
        }
    }
    for (u32 i = t; i < kk; i += TS_THREADS) {
        out[i] = (u32)(sortbuf[i] & 0xFFFFFFFFull);
    }
}
