//! The ops: inputs checked on the host (the same contract on both devices), the CPU twin in
//! `cpu_fwd`, the CUDA kernel in `cuda_fwd` (`cuda` feature, `super::cuda`).

use super::limits::{SD_SHARED_FLOATS, SD_WARPS, TH_MAX_WORDS, TS_MAX_K};
use crate::aggregate::sdim::{add_to_buckets, matched_sums};
use crate::cpu::storage;
use crate::search::{signature, topk_hamming_codes, topk_rows, SimHash};
use crate::{Error, Result};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// An unused output slot.
pub use crate::data::batch::NONE;

fn invalid(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

/// `t`'s dims when it has `rank` of them and dtype one of `dtypes`.
fn dims(t: &Tensor, what: &str, rank: usize, dtypes: &[DType]) -> Result<Vec<usize>> {
    if t.rank() != rank || !dtypes.contains(&t.dtype()) {
        return Err(invalid(format!(
            "{what}: expected a rank-{rank} tensor of {dtypes:?}, got {:?} {:?}",
            t.dims(),
            t.dtype()
        )));
    }
    Ok(t.dims().to_vec())
}

fn same_device(a: &Tensor, b: &Tensor, what: &str) -> Result<()> {
    if !a.device().same_device(b.device()) {
        return Err(invalid(format!("{what}: inputs on different devices")));
    }
    Ok(())
}

/// Row offsets `[rows + 1]` over `n` packed entries: non-decreasing, the last at most `n`.
/// Returns `rows`.
fn check_offsets(offsets: &[u32], n: usize, what: &str) -> Result<usize> {
    if offsets.is_empty() {
        return Err(invalid(format!("{what}: offsets need at least one entry")));
    }
    if let Some(i) = offsets.windows(2).position(|w| w[1] < w[0]) {
        return Err(invalid(format!(
            "{what}: offsets decrease at row {i} ({} then {})",
            offsets[i],
            offsets[i + 1]
        )));
    }
    let last = *offsets.last().unwrap_or(&0) as usize;
    if last > n {
        return Err(invalid(format!(
            "{what}: offsets end at {last}, past the {n} packed rows"
        )));
    }
    Ok(offsets.len() - 1)
}

/// u32 code words (the kernels' layout) as u64 words (the CPU code's): the same bits on a
/// little-endian machine, the odd last word zero-padded.
fn words64(w32: &[u32]) -> Vec<u64> {
    let mut out = Vec::new();
    codes64(w32, w32.len(), &mut out);
    out
}

/// [`words64`] of every code of `codes` (`w` u32 words each) into `out`, reused across calls.
fn codes64(codes: &[u32], w: usize, out: &mut Vec<u64>) {
    let w64 = w.div_ceil(2);
    out.clear();
    out.resize(codes.len() / w.max(1) * w64, 0);
    if w == 2 {
        // The common 64-bit code: one word each, a tight loop.
        for (o, p) in out.iter_mut().zip(codes.chunks_exact(2)) {
            *o = p[0] as u64 | (p[1] as u64) << 32;
        }
        return;
    }
    for (o, c) in out
        .chunks_exact_mut(w64.max(1))
        .zip(codes.chunks_exact(w.max(1)))
    {
        for (k, &v) in c.iter().enumerate() {
            o[k / 2] |= (v as u64) << (32 * (k % 2));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SimHash codes

/// SimHash codes `[n, ⌈bits/32⌉]` u32 of `x [n, d]` (f32, f16 or bf16) under projections
/// `proj [d, bits]` f32: bit `b` of word `w` is `[x·proj[:, 32w + b] > 0]`.
///
/// # Errors
/// [`Error::InvalidArgument`] on a shape, dtype or device mismatch.
pub fn simhash_codes(x: &Tensor, proj: &Tensor) -> Result<Tensor> {
    let xd = dims(
        x,
        "simhash_codes x",
        2,
        &[DType::F32, DType::F16, DType::BF16],
    )?;
    let pd = dims(proj, "simhash_codes proj", 2, &[DType::F32])?;
    same_device(x, proj, "simhash_codes")?;
    if xd[1] != pd[0] || pd[1] == 0 {
        return Err(invalid(format!(
            "simhash_codes: x is {xd:?}, proj {pd:?} (want [n, d] and [d, bits ≥ 1])"
        )));
    }
    if xd[0] == 0 {
        // (A zero-byte device allocation is an error in CUDA.)
        return Ok(Tensor::zeros(
            (0, pd[1].div_ceil(32)),
            DType::U32,
            x.device(),
        )?);
    }
    Ok(x.contiguous()?
        .apply_op2_no_bwd(&proj.contiguous()?, &SimHashCodes)?)
}

pub(super) struct SimHashCodes;

impl CustomOp2 for SimHashCodes {
    fn name(&self) -> &'static str {
        "simhash-codes"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, d) = l1.shape().dims2()?;
        let bits = l2.shape().dims2()?.1;
        // f32 input is read in place; only f16 / bf16 are widened (as the kernel does).
        let x: std::borrow::Cow<[f32]> = match s1 {
            CpuStorage::F32(_) => storage::<f32>(s1, l1, "simhash x")?.into(),
            CpuStorage::F16(_) => storage::<half::f16>(s1, l1, "simhash x")?
                .iter()
                .map(|v| v.to_f32())
                .collect(),
            CpuStorage::BF16(_) => storage::<half::bf16>(s1, l1, "simhash x")?
                .iter()
                .map(|v| v.to_f32())
                .collect(),
            _ => candle_core::bail!("simhash x: f32, f16 or bf16"),
        };
        let proj = storage::<f32>(s2, l2, "simhash proj")?.to_vec();
        let hash = SimHash::from_values(d, bits, proj).map_err(candle_core::Error::wrap)?;
        let (w64, w32) = (hash.words(), bits.div_ceil(32));
        let codes = hash.codes(&x, n);
        let mut out = vec![0u32; n * w32];
        out.par_chunks_mut(w32)
            .zip(codes.par_chunks(w64))
            .for_each(|(o, c)| {
                for (k, v) in o.iter_mut().enumerate() {
                    *v = (c[k / 2] >> (32 * (k % 2))) as u32;
                }
            });
        Ok((CpuStorage::U32(out), Shape::from((n, w32))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::simhash_codes(s1, l1, s2, l2)
    }
}

// ---------------------------------------------------------------------------------------------
// SDIM signatures

/// SDIM's signatures `[n, G]` u32 of codes `[n, words]` u32: bits `[g·τ, (g+1)·τ)` of each code
/// as an integer, bit `g·τ` lowest.
///
/// # Errors
/// [`Error::InvalidArgument`] when τ is not in 1..=16 or `G·τ` exceeds the code length.
pub fn sdim_signatures(codes: &Tensor, groups: usize, tau: usize) -> Result<Tensor> {
    let cd = dims(codes, "sdim_signatures codes", 2, &[DType::U32])?;
    if !(1..=16).contains(&tau) || groups == 0 || groups * tau > 32 * cd[1] {
        return Err(invalid(format!(
            "sdim_signatures: {groups} groups of {tau} bits from {}-bit codes (τ in 1..=16, G·τ ≤ bits)",
            32 * cd[1]
        )));
    }
    if cd[0] == 0 {
        return Ok(Tensor::zeros((0, groups), DType::U32, codes.device())?);
    }
    Ok(codes
        .contiguous()?
        .apply_op1_no_bwd(&SdimSignatures { groups, tau })?)
}

pub(super) struct SdimSignatures {
    pub(super) groups: usize,
    pub(super) tau: usize,
}

impl CustomOp1 for SdimSignatures {
    fn name(&self) -> &'static str {
        "sdim-signatures"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, w) = l.shape().dims2()?;
        let codes = storage::<u32>(s, l, "sdim_signatures codes")?;
        let g = self.groups;
        let mut out = vec![0u32; n * g];
        out.par_chunks_mut(g)
            .zip(codes.par_chunks(w.max(1)))
            .for_each(|(o, c)| {
                let c64 = words64(c);
                for (q, v) in o.iter_mut().enumerate() {
                    *v = signature(&c64, q, self.tau);
                }
            });
        Ok((CpuStorage::U32(out), Shape::from((n, g))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::sdim_signatures(self, s, l)
    }
}

// ---------------------------------------------------------------------------------------------
// Hamming top-k

/// Per row, the `k` codes nearest to the row's target by Hamming distance (capped at 255):
/// `target [rows, words]` u32, `codes [n, words]` u32 packed by `offsets [rows + 1]` →
/// `[rows, k]` u32 positions within the row (0 = oldest), nearest first, ties to the more
/// recent, unused slots [`NONE`].
///
/// # Errors
/// [`Error::InvalidArgument`] on shapes, `words > 32`, or offsets that are not non-decreasing
/// within `n`.
pub fn topk_hamming(target: &Tensor, codes: &Tensor, offsets: &[u32], k: usize) -> Result<Tensor> {
    let td = dims(target, "topk_hamming target", 2, &[DType::U32])?;
    let cd = dims(codes, "topk_hamming codes", 2, &[DType::U32])?;
    same_device(target, codes, "topk_hamming")?;
    let rows = check_offsets(offsets, cd[0], "topk_hamming")?;
    if td[0] != rows || td[1] != cd[1] || td[1] == 0 || td[1] > TH_MAX_WORDS {
        return Err(invalid(format!(
            "topk_hamming: target {td:?}, codes {cd:?}, {rows} rows of offsets (same words, 1..={TH_MAX_WORDS})"
        )));
    }
    if rows == 0 || k == 0 {
        return Ok(Tensor::zeros((rows, k), DType::U32, target.device())?);
    }
    let op = TopKHamming {
        offsets: Arc::new(offsets.to_vec()),
        k,
    };
    Ok(target
        .contiguous()?
        .apply_op2_no_bwd(&codes.contiguous()?, &op)?)
}

pub(super) struct TopKHamming {
    pub(super) offsets: Arc<Vec<u32>>,
    pub(super) k: usize,
}

impl CustomOp2 for TopKHamming {
    fn name(&self) -> &'static str {
        "topk-hamming"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, w) = l1.shape().dims2()?;
        let target = storage::<u32>(s1, l1, "topk_hamming target")?;
        let codes = storage::<u32>(s2, l2, "topk_hamming codes")?;
        let k = self.k;
        let mut out = vec![NONE; rows * k];
        out.par_chunks_mut(k).enumerate().for_each_init(
            || (Vec::new(), Vec::new(), Vec::new()),
            |(scratch, row, v), (r, o)| {
                let (s0, s1) = (self.offsets[r] as usize, self.offsets[r + 1] as usize);
                let q = words64(&target[r * w..(r + 1) * w]);
                codes64(&codes[s0 * w..s1 * w], w, row);
                v.clear();
                topk_hamming_codes(&q, row, (32 * w) as u32, k, v, scratch);
                o[..v.len()].copy_from_slice(v);
            },
        );
        Ok((CpuStorage::U32(out), Shape::from((rows, k))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::topk_hamming(self, s1, l1, s2, l2)
    }
}

// ---------------------------------------------------------------------------------------------
// Score top-k

/// Per row of `scores [rows, L]` f32, the positions of the `k` largest among those with
/// `mask [rows, L]` u8 ≠ 0 (all without a mask): `[rows, k]` u32, best first, ties to the higher
/// position, unused slots [`NONE`]. `-0.0` ranks as `0.0`, NaN below every number.
///
/// # Errors
/// [`Error::InvalidArgument`] when k is not in 1..=1024 or the shapes disagree.
pub fn topk_scores(scores: &Tensor, mask: Option<&Tensor>, k: usize) -> Result<Tensor> {
    let sd = dims(scores, "topk_scores scores", 2, &[DType::F32])?;
    if !(1..=TS_MAX_K).contains(&k) || sd[1] > i32::MAX as usize {
        return Err(invalid(format!(
            "topk_scores: k = {k} (want 1..={TS_MAX_K}), rows of {} scores",
            sd[1]
        )));
    }
    if let Some(m) = mask {
        let md = dims(m, "topk_scores mask", 2, &[DType::U8])?;
        same_device(scores, m, "topk_scores")?;
        if md != sd {
            return Err(invalid(format!(
                "topk_scores: mask {md:?} for scores {sd:?}"
            )));
        }
    }
    if sd[0] == 0 {
        return Ok(Tensor::zeros((0, k), DType::U32, scores.device())?);
    }
    let scores = scores.contiguous()?;
    let op = TopKScores {
        k,
        has_mask: mask.is_some(),
    };
    // Without a mask the scores stand in as the second argument (never read).
    let second = match mask {
        Some(m) => m.contiguous()?,
        None => scores.clone(),
    };
    Ok(scores.apply_op2_no_bwd(&second, &op)?)
}

pub(super) struct TopKScores {
    pub(super) k: usize,
    pub(super) has_mask: bool,
}

impl CustomOp2 for TopKScores {
    fn name(&self) -> &'static str {
        "topk-scores"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, len) = l1.shape().dims2()?;
        let scores = storage::<f32>(s1, l1, "topk_scores scores")?;
        let mask = if self.has_mask {
            Some(storage::<u8>(s2, l2, "topk_scores mask")?)
        } else {
            None
        };
        let (idx, _) = topk_rows(scores, len, mask, self.k);
        Ok((CpuStorage::U32(idx), Shape::from((rows, self.k))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::topk_scores(self, s1, l1, s2, l2)
    }
}

// ---------------------------------------------------------------------------------------------
// SDIM bucket sums

/// Checks values `[n, d]` f32 and signatures `[n, G]` u32 packed by `offsets`; returns
/// `(n, d, G, rows)`.
fn check_values(
    values: &Tensor,
    sigs: &Tensor,
    offsets: &[u32],
    what: &str,
) -> Result<(usize, usize, usize, usize)> {
    let vd = dims(values, &format!("{what} values"), 2, &[DType::F32])?;
    let gd = dims(sigs, &format!("{what} sigs"), 2, &[DType::U32])?;
    same_device(values, sigs, what)?;
    let max_d = SD_SHARED_FLOATS / SD_WARPS;
    if vd[0] != gd[0] || gd[1] == 0 || gd[1] > 65_535 || vd[1] == 0 || vd[1] > max_d {
        return Err(invalid(format!(
            "{what}: values {vd:?}, sigs {gd:?} (want [n, d] with 1 ≤ d ≤ {max_d} and [n, G] with 1 ≤ G ≤ 65,535)"
        )));
    }
    let rows = check_offsets(offsets, vd[0], what)?;
    Ok((vd[0], vd[1], gd[1], rows))
}

/// Per row and group, the sum of the row's values whose signature equals the target's:
/// `values [n, d]` f32, `sigs [n, G]` u32 packed by `offsets [rows + 1]`, `target [rows, G]` u32
/// → `[rows, G, d]` f32 (the sums SDIM normalises and averages).
///
/// # Errors
/// [`Error::InvalidArgument`] on shapes (d ≤ 3,072) or offsets.
pub fn sdim_matched_sums(
    values: &Tensor,
    sigs: &Tensor,
    target: &Tensor,
    offsets: &[u32],
) -> Result<Tensor> {
    let (_, d, g, rows) = check_values(values, sigs, offsets, "sdim_matched_sums")?;
    let td = dims(target, "sdim_matched_sums target", 2, &[DType::U32])?;
    same_device(values, target, "sdim_matched_sums")?;
    if td != [rows, g] {
        return Err(invalid(format!(
            "sdim_matched_sums: target {td:?}, want [{rows}, {g}]"
        )));
    }
    if rows == 0 {
        return Ok(Tensor::zeros((0, g, d), DType::F32, values.device())?);
    }
    let op = SdimMatchedSums {
        offsets: Arc::new(offsets.to_vec()),
    };
    Ok(values
        .contiguous()?
        .apply_op3_no_bwd(&sigs.contiguous()?, &target.contiguous()?, &op)?)
}

pub(super) struct SdimMatchedSums {
    pub(super) offsets: Arc<Vec<u32>>,
}

impl CustomOp3 for SdimMatchedSums {
    fn name(&self) -> &'static str {
        "sdim-matched-sums"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = l1.shape().dims2()?.1;
        let (rows, g) = l3.shape().dims2()?;
        let values = storage::<f32>(s1, l1, "sdim values")?;
        let sigs = storage::<u32>(s2, l2, "sdim sigs")?;
        let target = storage::<u32>(s3, l3, "sdim target")?;
        let out = matched_sums(values, d, sigs, g, target, &self.offsets);
        Ok((CpuStorage::F32(out), Shape::from((rows, g, d))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::sdim_matched_sums(self, s1, l1, s2, l2, s3, l3)
    }
}

/// Every bucket of every group per row (SDIM's behavior-sequence encoding): `values [n, d]`
/// f32 and `sigs [n, G]` u32 (each < 2^τ) packed by `offsets` → `[rows, G, 2^τ, d]` f32,
/// `out[r, g, s] = Σ values[j]` over the row's j with `sigs[j, g] = s`.
///
/// # Errors
/// [`Error::InvalidArgument`] on shapes, offsets, τ outside 1..=16, or a signature ≥ 2^τ.
pub fn sdim_bucket_table(
    values: &Tensor,
    sigs: &Tensor,
    offsets: &[u32],
    tau: usize,
) -> Result<Tensor> {
    let (_, d, g, rows) = check_values(values, sigs, offsets, "sdim_bucket_table")?;
    if !(1..=16).contains(&tau) {
        return Err(invalid(format!(
            "sdim_bucket_table: τ = {tau} (want 1..=16)"
        )));
    }
    if rows == 0 {
        return Ok(Tensor::zeros(
            (0, g, 1usize << tau, d),
            DType::F32,
            values.device(),
        )?);
    }
    let op = SdimBucketTable {
        offsets: Arc::new(offsets.to_vec()),
        tau,
    };
    Ok(values
        .contiguous()?
        .apply_op2_no_bwd(&sigs.contiguous()?, &op)?)
}

pub(super) struct SdimBucketTable {
    pub(super) offsets: Arc<Vec<u32>>,
    pub(super) tau: usize,
}

impl CustomOp2 for SdimBucketTable {
    fn name(&self) -> &'static str {
        "sdim-bucket-table"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = l1.shape().dims2()?.1;
        let g = l2.shape().dims2()?.1;
        let values = storage::<f32>(s1, l1, "sdim values")?;
        let sigs = storage::<u32>(s2, l2, "sdim sigs")?;
        let nb = 1usize << self.tau;
        // The kernel's rule: the signatures of the packed rows the offsets cover (rows outside
        // them are never read on either device).
        let (first, last) = (
            self.offsets[0] as usize * g,
            *self.offsets.last().unwrap_or(&0) as usize * g,
        );
        let covered = &sigs[first.min(last)..last];
        if let Some(j) = covered.iter().position(|&s| s as usize >= nb) {
            candle_core::bail!(
                "sdim_bucket_table: signature {} of packed row {} is ≥ 2^τ = {nb}",
                covered[j],
                (first + j) / g
            );
        }
        let rows = self.offsets.len() - 1;
        let slice = g * nb * d;
        let mut out = vec![0f32; rows * slice];
        out.par_chunks_mut(slice).enumerate().for_each(|(r, o)| {
            let (s0, s1) = (self.offsets[r] as usize, self.offsets[r + 1] as usize);
            let s16: Vec<u16> = sigs[s0 * g..s1 * g].iter().map(|&s| s as u16).collect();
            // `bucket_table`'s sums, written in place.
            add_to_buckets(o, &values[s0 * d..s1 * d], d, &s16, g, self.tau, 1.0);
        });
        Ok((CpuStorage::F32(out), Shape::from((rows, g, nb, d))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::sdim_bucket_table(self, s1, l1, s2, l2)
    }
}
