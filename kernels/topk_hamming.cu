// Hamming top-k: per row, the k behavior codes nearest to the target's code.
//
// Contract (kernels/README.md; CPU twin: topk_hamming_rows / topk_hamming_codes in
// src/search/topk.rs):
//   target [rows, words] u32, codes [n, words] u32 (rows' behaviors packed, row r owns
//   codes[offsets[r] .. offsets[r + 1]]), offsets [rows + 1] u32 (non-decreasing, last <= n),
//   idx [rows, k] u32: positions within the row (0 = oldest), nearest first, ties to the higher
//   (more recent) position, slots past min(k, len) set to 0xFFFFFFFF.
//   distance = min(popcount(target ^ code), 255); words <= TH_MAX_WORDS.
// Launch: grid = rows, block = TH_WARPS * 32 threads (the kernel assumes exactly that).
//
// Fused: the distances live in registers only. Pass 1 counts distances per warp (each warp owns a
// contiguous segment of the row), which gives the cut-off distance and, per distance, where its
// run starts in the output. Pass 2 recomputes each distance, ranks it among equal distances
// newest first (earlier warps' counts + __match_any_sync inside the warp) and writes the
// position straight into its output slot. The code row is read twice (the second pass usually
// from L2); nothing of size L is written.

typedef unsigned int u32;

#define TH_WARPS 8
#define TH_THREADS (TH_WARPS * 32)
#define TH_BINS 256
#define TH_MAX_WORDS 32
#define TH_NONE 0xFFFFFFFFu

__device__ __forceinline__ u32 distance(const u32 *q, const u32 *c, int words) {
    u32 s = 0;
    for (int i = 0; i < words; ++i) {
        s += __popc(q[i] ^ __ldg(c + i));
    }
    return min(s, 255u);
}

extern "C" __global__ void topk_hamming(const u32 *__restrict__ target,
                                        const u32 *__restrict__ codes,
                                        const u32 *__restrict__ offsets, u32 *__restrict__ idx,
                                        int rows, int words, int k) {
    __shared__ u32 q[TH_MAX_WORDS];
    // Pass 1: per warp, how many of each distance; then, per warp, how many of each distance
    // the *newer* warps hold (the warp's rank base in pass 2).
    __shared__ u32 hist[TH_WARPS][TH_BINS];
    __shared__ u32 start[TH_BINS];  // where distance d's run begins in the output
    __shared__ u32 scan[TH_BINS];
    __shared__ u32 cut_s, at_cut_s;

    const int row = blockIdx.x;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const u32 s0 = offsets[row];
    const u32 len = offsets[row + 1] - s0;
    const u32 kk = min((u32)k, len);
    u32 *out = idx + (long long)row * k;
    for (int t = (int)kk + tid; t < k; t += TH_THREADS) {
        out[t] = TH_NONE;
    }
    if (kk == 0) {
        return;
    }
    if (tid < words) {
        q[tid] = target[(long long)row * words + tid];
    }
    for (int b = tid; b < TH_WARPS * TH_BINS; b += TH_THREADS) {
        (&hist[0][0])[b] = 0;
    }
    __syncthreads();

    const u32 seg = (len + TH_WARPS - 1) / TH_WARPS;
    const u32 lo = min(seg * warp, len), hi = min(lo + seg, len);
    const u32 *base = codes + (long long)s0 * words;

    for (u32 j0 = lo; j0 < hi; j0 += 32) {
        const u32 j = j0 + lane;
        const bool valid = j < hi;
        const u32 d = valid ? distance(q, base + (long long)j * words, words) : TH_BINS;
        const u32 peers = __match_any_sync(0xffffffffu, d);
        if (valid && lane == __ffs(peers) - 1) {
            hist[warp][d] += __popc(peers);  // one leader per distance: no two write one bin
        }
        // The next iteration's leader for the same distance may be another lane: order the
        // read-modify-writes (__match_any_sync is no memory fence).
        __syncwarp();
    }
    __syncthreads();

    // Per distance (thread = bin): the total, and each warp's base = the newer warps' counts.
    {
        const int b = tid;  // TH_THREADS == TH_BINS
        u32 run = 0;
        for (int w = TH_WARPS - 1; w >= 0; --w) {
            const u32 c = hist[w][b];
            hist[w][b] = run;
            run += c;
        }
        scan[b] = run;
        __syncthreads();
        // Inclusive prefix sum over distances (Hillis-Steele; 256 bins).
        for (int off = 1; off < TH_BINS; off <<= 1) {
            const u32 v = b >= off ? scan[b - off] : 0;
            __syncthreads();
            scan[b] += v;
            __syncthreads();
        }
        const u32 incl = scan[b], excl = incl - run;
        start[b] = excl;
        if (incl >= kk && excl < kk) {
            cut_s = b;          // the smallest distance whose run reaches kk
            at_cut_s = kk - excl;  // how many of it are taken: the most recent ones
        }
    }
    __syncthreads();
    const u32 cut = cut_s, at_cut = at_cut_s;

    // Pass 2, each warp over its segment newest first (lane 0 the newest of a group of 32).
    const unsigned lower = (1u << lane) - 1;  // lanes below = newer positions
    for (u32 top = hi; top > lo;) {
        const u32 n_here = min(32u, top - lo);
        const bool valid = (u32)lane < n_here;
        const u32 j = top - 1 - lane;
        const u32 d = valid ? distance(q, base + (long long)j * words, words) : TH_BINS;
        const bool sel = valid && d <= cut;
        const u32 peers = __match_any_sync(0xffffffffu, d);
        const u32 rank = sel ? hist[warp][d] + __popc(peers & lower) : 0;
        __syncwarp();
        if (sel && lane == __ffs(peers) - 1) {
            hist[warp][d] += __popc(peers);
        }
        __syncwarp();
        if (sel && (d < cut || rank < at_cut)) {
            out[start[d] + rank] = j;
        }
        top -= n_here;
    }
}
