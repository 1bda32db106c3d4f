//! The CUDA kernels of `kernels/` and their CPU twins, as candle custom ops: one call site for
//! both devices. On a CPU tensor an op runs its twin (the crate's own SimHash, top-k and SDIM
//! bucket code); on a CUDA tensor (`cuda` feature) it launches the kernel, compiled from the
//! embedded source by NVRTC once per process and device architecture.
//!
//! | op | kernel (file) | CPU twin |
//! |---|---|---|
//! | [`simhash_codes`] | `simhash_codes_{f32,f16,bf16}` (simhash.cu) | [`crate::search::SimHash::codes`] |
//! | [`sdim_signatures`] | `sdim_signatures` (simhash.cu) | [`crate::search::signature`] |
//! | [`topk_hamming`] | `topk_hamming` (topk_hamming.cu) | [`crate::search::topk_hamming_codes`] |
//! | [`topk_scores`] | `topk_score` (topk_score.cu) | [`crate::search::topk_rows`] |
//! | [`sdim_matched_sums`] | `sdim_matched_sums` (sdim_buckets.cu) | [`crate::aggregate::sdim::matched_sums`] |
//! | [`sdim_bucket_table`] | `sdim_bucket_table` (sdim_buckets.cu) | [`crate::aggregate::sdim::bucket_table`] |
//!
//! Layouts, launch shapes and limits are in `kernels/README.md`; the limits the host checks
//! before a launch are the constants below, which a test compares with the sources' `#define`s.
//! No op has a backward pass: search and hashing carry no gradient in these models.

mod ops;

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "nvrtc")]
pub mod nvrtc;

pub use ops::{
    sdim_bucket_table, sdim_matched_sums, sdim_signatures, simhash_codes, topk_hamming,
    topk_scores, NONE,
};

/// One CUDA source file of `kernels/`, embedded in the crate.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    /// File name under `kernels/` (also NVRTC's program name).
    pub file: &'static str,
    /// The source text.
    pub code: &'static str,
    /// Its `extern "C" __global__` functions.
    pub functions: &'static [&'static str],
}

/// SimHash codes and SDIM signatures.
pub const SIMHASH: Source = Source {
    file: "simhash.cu",
    code: include_str!("../../kernels/simhash.cu"),
    functions: &[
        "simhash_codes_f32",
        "simhash_codes_f16",
        "simhash_codes_bf16",
        "sdim_signatures",
    ],
};

/// Hamming top-k.
pub const TOPK_HAMMING: Source = Source {
    file: "topk_hamming.cu",
    code: include_str!("../../kernels/topk_hamming.cu"),
    functions: &["topk_hamming"],
};

/// Score top-k.
pub const TOPK_SCORE: Source = Source {
    file: "topk_score.cu",
    code: include_str!("../../kernels/topk_score.cu"),
    functions: &["topk_score"],
};

/// SDIM bucket sums.
pub const SDIM_BUCKETS: Source = Source {
    file: "sdim_buckets.cu",
    code: include_str!("../../kernels/sdim_buckets.cu"),
    functions: &["sdim_matched_sums", "sdim_bucket_table"],
};

/// Every kernel source.
pub const SOURCES: &[Source] = &[SIMHASH, TOPK_HAMMING, TOPK_SCORE, SDIM_BUCKETS];

/// Limits and launch shapes shared with the sources (`#define` name, value).
pub mod limits {
    /// simhash.cu: warps per block, rows per warp.
    pub const SH_WARPS: usize = 8;
    /// simhash.cu: rows per warp.
    pub const SH_ROWS: usize = 4;
    /// topk_hamming.cu: warps per block (one block per row).
    pub const TH_WARPS: usize = 8;
    /// topk_hamming.cu: the most u32 words per code (1,024 bits).
    pub const TH_MAX_WORDS: usize = 32;
    /// topk_score.cu: threads per block (one block per row).
    pub const TS_THREADS: usize = 512;
    /// topk_score.cu: the largest k.
    pub const TS_MAX_K: usize = 1024;
    /// sdim_buckets.cu: warps per block.
    pub const SD_WARPS: usize = 4;
    /// Floats of shared memory a block of sdim_buckets.cu may use (48 KB).
    pub const SD_SHARED_FLOATS: usize = 12 * 1024;

    /// Every constant above that a source `#define`s, with its file.
    pub const DEFINED: &[(&str, &str, usize)] = &[
        ("simhash.cu", "SH_WARPS", SH_WARPS),
        ("simhash.cu", "SH_ROWS", SH_ROWS),
        ("topk_hamming.cu", "TH_WARPS", TH_WARPS),
        ("topk_hamming.cu", "TH_MAX_WORDS", TH_MAX_WORDS),
        ("topk_score.cu", "TS_THREADS", TS_THREADS),
        ("topk_score.cu", "TS_MAX_K", TS_MAX_K),
        ("sdim_buckets.cu", "SD_WARPS", SD_WARPS),
    ];
}
