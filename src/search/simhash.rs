//! SimHash (Charikar, 2002): the sign bits of fixed Gaussian projections, `bit_k(x) = [x·r_k > 0]`.
//!
//! Two vectors at angle θ agree on a bit with probability `1 − θ/π`, so the Hamming distance of
//! two codes estimates the angle (ETA's search), and a τ-bit signature collides with probability
//! `(1 − θ/π)^τ` (SDIM's attention kernel on angles).
//!
//! - codes: `bits` signs packed into `u64` words, bit `k` of word `k / 64` = bit `k`;
//! - SDIM signatures: bits `[g·τ, (g+1)·τ)` read as an integer in `[0, 2^τ)`, g < G.
//!
//! The projections `R [dim, bits]` are drawn once from a seed and saved with the model (a
//! buffer), never redrawn per forward pass.
//!
//! Tokens are concatenations of field rows, and `x·R = Σ_f x_f·R_f` is linear, so
//! [`token_codes`] projects each *unique* table row of a batch once (one GEMM per field) and
//! adds the per-field projections per behavior: O(u·d·bits + n·F·bits) instead of O(n·d·bits).
//!
//! | input | layout |
//! |---|---|
//! | x | `[n, dim]` f32 |
//! | R | `[dim, bits]` f32, N(0, 1) |
//! | codes | `[n, words]` u64, words = ⌈bits / 64⌉ |

use crate::cpu::{sgemm, Mat};
use crate::data::Batch;
use crate::embedding::{Tables, ViewSpec};
use crate::{Error, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use std::sync::Arc;

/// Fixed random projections `R [dim, bits]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SimHash {
    dim: usize,
    bits: usize,
    proj: Vec<f32>,
}

impl SimHash {
    /// Projections with N(0, 1) entries drawn from `seed`.
    pub fn new(dim: usize, bits: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let proj = (0..dim * bits)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        Self { dim, bits, proj }
    }

    /// Projections from saved values `[dim, bits]`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the length is not `dim · bits` or a value is not finite.
    pub fn from_values(dim: usize, bits: usize, proj: Vec<f32>) -> Result<Self> {
        if proj.len() != dim * bits || proj.iter().any(|x| !x.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "SimHash projections: {} values (want {dim}·{bits}, all finite)",
                proj.len()
            )));
        }
        Ok(Self { dim, bits, proj })
    }

    /// Input width.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Code length.
    pub fn bits(&self) -> usize {
        self.bits
    }
    /// `u64` words per code.
    pub fn words(&self) -> usize {
        self.bits.div_ceil(64)
    }
    /// `R`, row-major `[dim, bits]`.
    pub fn projections(&self) -> &[f32] {
        &self.proj
    }

    /// `x·R` for `n` rows.
    ///
    /// # Shapes
    /// x `[n, dim]` → `[n, bits]`
    pub fn project(&self, x: &[f32], n: usize) -> Vec<f32> {
        let mut out = vec![0f32; n * self.bits];
        sgemm(
            Mat::new(&x[..n * self.dim], n, self.dim),
            Mat::new(&self.proj, self.dim, self.bits),
            &mut out,
            false,
        );
        out
    }

    /// Codes of `n` rows.
    ///
    /// # Shapes
    /// x `[n, dim]` → `[n, words]`
    pub fn codes(&self, x: &[f32], n: usize) -> Vec<u64> {
        let p = self.project(x, n);
        let w = self.words();
        let mut out = vec![0u64; n * w];
        out.par_chunks_mut(w.max(1))
            .zip(p.par_chunks(self.bits.max(1)))
            .for_each(|(c, row)| pack_signs(row, c));
        out
    }
}

/// Packs `[x_k > 0]` of `proj` (length bits) into `out` (⌈bits/64⌉ words). Branch-free (the
/// signs of random projections are coin flips: a branch per bit mispredicts half the time), and
/// 8 bits per compare + movemask where the CPU has AVX2.
#[inline]
pub fn pack_signs(proj: &[f32], out: &mut [u64]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is present (checked above).
            unsafe { pack_signs_avx2(proj, out) };
            return;
        }
    }
    pack_signs_scalar(proj, out)
}

fn pack_signs_scalar(proj: &[f32], out: &mut [u64]) {
    for (w, chunk) in out.iter_mut().zip(proj.chunks(64)) {
        let mut c = 0u64;
        for (k, &v) in chunk.iter().enumerate() {
            c |= ((v > 0.0) as u64) << k;
        }
        *w = c;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pack_signs_avx2(proj: &[f32], out: &mut [u64]) {
    use std::arch::x86_64::*;
    let zero = _mm256_setzero_ps();
    for (w, chunk) in out.iter_mut().zip(proj.chunks(64)) {
        let mut c = 0u64;
        let mut eights = chunk.chunks_exact(8);
        for (i, e) in (&mut eights).enumerate() {
            // SAFETY: `e` holds exactly 8 f32 (an unaligned load).
            let v = unsafe { _mm256_loadu_ps(e.as_ptr()) };
            let m = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(v, zero)) as u32 as u64;
            c |= m << (8 * i);
        }
        let done = chunk.len() - eights.remainder().len();
        for (k, &v) in eights.remainder().iter().enumerate() {
            c |= ((v > 0.0) as u64) << (done + k);
        }
        *w = c;
    }
}

/// Codes of tokens `t0..`: for each, `Σ_f P_f[local_f[t]]` (rows of `bits` floats) packed into
/// signs, written to `out` (`words` per token).
fn sum_and_pack(
    fields: &[(&[f32], &[u32])],
    t0: usize,
    bits: usize,
    words: usize,
    out: &mut [u64],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is present (checked above).
            unsafe { sum_and_pack_avx2(fields, t0, bits, words, out) };
            return;
        }
    }
    let mut acc = vec![0f32; bits];
    for (k, code) in out.chunks_exact_mut(words).enumerate() {
        let t = t0 + k;
        acc.iter_mut().for_each(|a| *a = 0.0);
        for (proj, local) in fields {
            let l = local[t] as usize;
            acc.iter_mut()
                .zip(&proj[l * bits..(l + 1) * bits])
                .for_each(|(a, x)| *a += x);
        }
        pack_signs_scalar(&acc, code);
    }
}

/// [`sum_and_pack`] 8 lanes at a time: per 8 bits one add per field, one compare, one movemask
/// (the scalar form's OR chain of shifted booleans costs a few cycles per bit).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_and_pack_avx2(
    fields: &[(&[f32], &[u32])],
    t0: usize,
    bits: usize,
    words: usize,
    out: &mut [u64],
) {
    use std::arch::x86_64::*;
    let zero = _mm256_setzero_ps();
    let lanes = bits / 8;
    let mut rows: Vec<&[f32]> = Vec::with_capacity(fields.len());
    for (k, code) in out.chunks_exact_mut(words).enumerate() {
        let t = t0 + k;
        rows.clear();
        for (proj, local) in fields {
            let l = local[t] as usize;
            rows.push(&proj[l * bits..(l + 1) * bits]);
        }
        code.iter_mut().for_each(|w| *w = 0);
        for i in 0..lanes {
            // SAFETY: every row has `bits` ≥ 8(i + 1) floats (unaligned loads).
            let mut v = unsafe { _mm256_loadu_ps(rows[0].as_ptr().add(8 * i)) };
            for r in &rows[1..] {
                v = _mm256_add_ps(v, unsafe { _mm256_loadu_ps(r.as_ptr().add(8 * i)) });
            }
            let m = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(v, zero)) as u32 as u64;
            code[i / 8] |= m << (8 * (i % 8));
        }
        for j in 8 * lanes..bits {
            let x: f32 = rows.iter().map(|r| r[j]).sum();
            code[j / 64] |= ((x > 0.0) as u64) << (j % 64);
        }
    }
}

/// Signature `g` of a code: bits `[g·tau, (g+1)·tau)` as an integer (bit `g·tau` lowest).
#[inline]
pub fn signature(code: &[u64], g: usize, tau: usize) -> u32 {
    let start = g * tau;
    let (w, s) = (start / 64, start % 64);
    let mut v = code[w] >> s;
    if s + tau > 64 {
        v |= code[w + 1] << (64 - s);
    }
    (v & ((1u64 << tau) - 1)) as u32
}

/// Hamming distance of two codes.
#[inline]
pub fn hamming(a: &[u64], b: &[u64]) -> u32 {
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

/// SimHash codes of a batch's tokens in `view`: the targets' `[B, words]` and the packed
/// history's `[n, words]`, from the host tables (no gradient), each unique row projected once.
///
/// # Errors
/// [`Error::InvalidArgument`] when the projections' width is not the view's, or an id is outside
/// its table.
pub fn token_codes(
    tables: &Tables,
    view: &ViewSpec,
    hash: &SimHash,
    batch: &Batch,
) -> Result<(Vec<u64>, Vec<u64>)> {
    if hash.dim() != view.width {
        return Err(Error::InvalidArgument(format!(
            "SimHash projections are {} wide, the tokens {}",
            hash.dim(),
            view.width
        )));
    }
    let (b, n, bits, words) = (batch.size(), batch.n_packed(), hash.bits(), hash.words());
    // Per field: projections of the rows it uses, and each token's row among them.
    struct FieldProj {
        proj: Vec<f32>,       // [rows, bits]
        local: Arc<Vec<u32>>, // [B + n] row of each token
    }
    let mut fields = Vec::with_capacity(view.fields.len());
    for f in &view.fields {
        let table = tables.table(f.table);
        let r_f = &hash.projections()[f.col * bits..(f.col + f.dim) * bits];
        // The batch's own unique rows and row indices, borrowed (not copied per step).
        let (rows, local): (Arc<Vec<u32>>, Arc<Vec<u32>>) = if f.field.is_context() {
            let mut local = vec![0u32; b];
            local.extend_from_slice(batch.hist_ids(f.field)?);
            (
                Arc::new((0..table.rows() as u32).collect()),
                Arc::new(local),
            )
        } else {
            let ids = batch.full_ids(f.field)?;
            (ids.unique, ids.local)
        };
        table.check_ids(rows.last().map(std::slice::from_ref).unwrap_or(&[]))?;
        if let Some(&bad) = local.iter().find(|&&l| l as usize >= rows.len()) {
            return Err(Error::InvalidArgument(format!(
                "`{}` index {bad} is outside the table",
                table.name()
            )));
        }
        let mut x = vec![0f32; rows.len() * f.dim];
        x.par_chunks_mut(f.dim)
            .zip(rows.par_iter())
            .for_each(|(o, &i)| o.copy_from_slice(table.row(i)));
        let mut proj = vec![0f32; rows.len() * bits];
        sgemm(
            Mat::new(&x, rows.len(), f.dim),
            Mat::new(r_f, f.dim, bits),
            &mut proj,
            false,
        );
        fields.push(FieldProj { proj, local });
    }
    let mut codes = vec![0u64; (b + n) * words];
    let views: Vec<(&[f32], &[u32])> = fields
        .iter()
        .map(|f| (f.proj.as_slice(), f.local.as_slice()))
        .collect();
    codes
        .par_chunks_mut(words * 1024)
        .enumerate()
        .for_each(|(c, chunk)| sum_and_pack(&views, c * 1024, bits, words, chunk));
    let hist = codes.split_off(b * words);
    Ok((codes, hist))
}
