//! CPU compute helpers for the fused ops: a safe row-major SGEMM over slices (the `gemm` crate
//! candle itself uses, multi-threaded on rayon), a linear op with a parallel weight gradient, and
//! a `Send` pointer for disjoint parallel writes.

use rayon::prelude::*;

/// Layout of a row-major matrix operand: `rows × cols`, optionally read transposed.
#[derive(Debug, Clone, Copy)]
pub struct Mat<'a> {
    /// Data, row-major `[rows, cols]` as stored.
    pub data: &'a [f32],
    /// Stored rows.
    pub rows: usize,
    /// Stored columns.
    pub cols: usize,
    /// Use the transpose (`[cols, rows]`).
    pub t: bool,
}

impl<'a> Mat<'a> {
    /// A stored `[rows, cols]` matrix.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            t: false,
        }
    }
    /// Its transpose (no copy).
    pub fn t(self) -> Self {
        Self { t: !self.t, ..self }
    }
    fn shape(&self) -> (usize, usize) {
        if self.t {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }
    /// (row stride, column stride) of the logical matrix.
    fn strides(&self) -> (isize, isize) {
        if self.t {
            (1, self.cols as isize)
        } else {
            (self.cols as isize, 1)
        }
    }
}

/// `out = a·b` (or `out += a·b` with `accumulate`), `out` row-major `[m, n]`.
///
/// # Panics
/// When the shapes do not agree or a slice is shorter than its shape (a programming error in a
/// fused op, never a data error).
pub fn sgemm(a: Mat, b: Mat, out: &mut [f32], accumulate: bool) {
    gemm_with(a, b, out, accumulate, true)
}

/// [`sgemm`] on the calling thread only: for the small per-block products inside a task that
/// already runs in parallel with others.
///
/// # Panics
/// As [`sgemm`].
pub fn sgemm_serial(a: Mat, b: Mat, out: &mut [f32], accumulate: bool) {
    gemm_with(a, b, out, accumulate, false)
}

fn gemm_with(a: Mat, b: Mat, out: &mut [f32], accumulate: bool, parallel: bool) {
    let (m, k) = a.shape();
    let (k2, n) = b.shape();
    assert_eq!(k, k2, "sgemm: inner dimensions {k} and {k2}");
    assert!(
        a.data.len() >= a.rows * a.cols && b.data.len() >= b.rows * b.cols && out.len() >= m * n
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            out[..m * n].iter_mut().for_each(|x| *x = 0.0);
        }
        return;
    }
    let (ars, acs) = a.strides();
    let (brs, bcs) = b.strides();
    let threads = rayon::current_num_threads();
    let par = if parallel && m * n * k > 1 << 16 && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every access inside the slices; `out` does not alias the
    // inputs (it is a distinct &mut).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            acs,
            ars,
            b.data.as_ptr(),
            bcs,
            brs,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// `out = aᵀ·b` for tall `a [n, m]`, `b [n, k]` (n ≫ m, k): GEMMs over fixed blocks of rows in
/// parallel, summed in block order (a single GEMM parallelises poorly over the long reduction;
/// fixed blocks keep the result independent of the thread count).
pub fn sgemm_tn_tall(a: &[f32], b: &[f32], n: usize, m: usize, k: usize, out: &mut [f32]) {
    const BLOCK: usize = 8192;
    if n <= BLOCK {
        sgemm(Mat::new(a, n, m).t(), Mat::new(b, n, k), out, false);
        return;
    }
    let parts: Vec<Vec<f32>> = (0..n.div_ceil(BLOCK))
        .into_par_iter()
        .map(|blk| {
            let (r0, r1) = (blk * BLOCK, ((blk + 1) * BLOCK).min(n));
            let mut o = vec![0f32; m * k];
            sgemm(
                Mat::new(&a[r0 * m..r1 * m], r1 - r0, m).t(),
                Mat::new(&b[r0 * k..r1 * k], r1 - r0, k),
                &mut o,
                false,
            );
            o
        })
        .collect();
    out[..m * k].copy_from_slice(&parts[0]);
    for p in &parts[1..] {
        out.iter_mut().zip(p).for_each(|(o, v)| *o += v);
    }
}

/// `x·wᵀ` (a linear layer without bias) as one op whose backward computes the weight gradient
/// `gᵀ·x` over fixed row blocks in parallel ([`sgemm_tn_tall`]): candle's generic matmul backward
/// runs that long reduction (tens of thousands of rows into a `[out, in]` matrix) on one GEMM
/// that parallelises poorly.
///
/// # Shapes
/// x `[n, in]`, w `[out, in]` → `[n, out]`
pub fn linear(
    x: &candle_core::Tensor,
    w: &candle_core::Tensor,
) -> candle_core::Result<candle_core::Tensor> {
    x.apply_op2(w, Linear)
}

struct Linear;

impl candle_core::CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (n, i) = l1.shape().dims2()?;
        let (o, i2) = l2.shape().dims2()?;
        if i != i2 {
            candle_core::bail!(
                "linear: x {:?} and w {:?} do not agree",
                l1.dims(),
                l2.dims()
            );
        }
        let (x, w) = match (l1.contiguous_offsets(), l2.contiguous_offsets()) {
            (Some((a, b)), Some((c, d))) => {
                (&s1.as_slice::<f32>()?[a..b], &s2.as_slice::<f32>()?[c..d])
            }
            _ => candle_core::bail!("linear: inputs must be contiguous"),
        };
        let mut out = vec![0f32; n * o];
        sgemm(Mat::new(x, n, i), Mat::new(w, o, i).t(), &mut out, false);
        Ok((
            candle_core::CpuStorage::F32(out),
            candle_core::Shape::from((n, o)),
        ))
    }

    fn bwd(
        &self,
        x: &candle_core::Tensor,
        w: &candle_core::Tensor,
        _res: &candle_core::Tensor,
        grad: &candle_core::Tensor,
    ) -> candle_core::Result<(Option<candle_core::Tensor>, Option<candle_core::Tensor>)> {
        let (n, i) = x.dims2()?;
        let o = w.dim(0)?;
        let (dx, dw) = with_data(x, |xd| {
            with_data(w, |wd| {
                with_data(grad, |g| {
                    let mut dx = vec![0f32; n * i];
                    sgemm(Mat::new(g, n, o), Mat::new(wd, o, i), &mut dx, false);
                    let mut dw = vec![0f32; o * i];
                    sgemm_tn_tall(g, xd, n, o, i, &mut dw);
                    Ok((dx, dw))
                })
            })
        })?;
        Ok((
            Some(candle_core::Tensor::from_vec(dx, (n, i), x.device())?),
            Some(candle_core::Tensor::from_vec(dw, (o, i), w.device())?),
        ))
    }
}

/// A raw pointer that may cross threads, for parallel writes to provably disjoint parts of one
/// buffer (each user states why its parts are disjoint).
#[derive(Debug)]
pub struct SendPtr<T = f32>(pub *mut T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
// SAFETY: only used for disjoint writes, documented at each use.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

/// `e^x` for f32 without a libm call, so loops that use it vectorise: range reduction
/// `x = k·ln2 + r` (|r| ≤ ln2/2, two-constant Cody–Waite), a degree-6 polynomial for `e^r`,
/// and `2^k` built in the exponent bits. Relative error below 2e-7 on [−87, 88]; inputs are
/// clamped there (so it never returns inf/NaN for finite input).
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest with the 1.5·2²³ trick (|x·log2 e| < 2²²): `f32::round` is a libm call
    // that would stop the loop from vectorising.
    // The rounded value also sits in the low mantissa bits of `x·log2 e + MAGIC` (its ulp is 1),
    // so `k` as an integer comes from the bits: an `f32 as i32` cast would be a saturating
    // conversion that LLVM scalarises lane by lane (it was most of this function's time).
    const MAGIC: f32 = 12_582_912.0;
    let shifted = x * std::f32::consts::LOG2_E + MAGIC;
    let k = shifted - MAGIC;
    let ki = shifted.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
    let r = x - k * 0.693_145_75 - k * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67
                    + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    let bits = (ki.wrapping_add(127) as u32) << 23;
    p * f32::from_bits(bits)
}

/// `1 / (1 + e^−x)` with [`fast_exp`].
#[inline(always)]
pub fn fast_sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + fast_exp(-x))
}

/// Dot product. Short vectors (a field of a token: 16 to 32 floats) run inline with 4
/// accumulators; longer ones through [`dot_wide`] (the call and its CPU dispatch cost more than
/// a 16-float product).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    if n > 32 {
        return dot_wide(a, b);
    }
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 4];
    let mut ca = a.chunks_exact(4);
    let mut cb = b.chunks_exact(4);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..4 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    (acc[0] + acc[2]) + (acc[1] + acc[3]) + tail
}

/// Dot product with 16 independent accumulators (LLVM does not reorder float sums, so a plain
/// `zip().sum()` runs one lane at a time), vectorised for the CPU at hand.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
pub fn dot_wide(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b)
}

/// The body of [`dot_wide`], inlined into callers that are themselves compiled per CPU (a row
/// kernel calling [`dot_wide`] would pay its dispatch per row): 16 lanes, then a tree reduction.
#[inline(always)]
pub fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    // Tree reduction (a left fold of the 16 lanes is 15 dependent adds; halving vectorises).
    let mut w = 8;
    while w > 0 {
        for i in 0..w {
            acc[i] += acc[i + w];
        }
        w /= 2;
    }
    acc[0] + tail
}

/// `y += a·x`; short vectors inline (see [`dot`]), longer ones through [`axpy_wide`].
#[inline]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    if n > 32 {
        return axpy_wide(a, x, y);
    }
    let (x, y) = (&x[..n], &mut y[..n]);
    for i in 0..n {
        y[i] += a * x[i];
    }
}

/// `y += a·x`, vectorised for the CPU at hand.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
pub fn axpy_wide(a: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &mut y[..n]);
    for i in 0..n {
        y[i] += a * x[i];
    }
}

/// The contiguous f32 data of an op input (`what` names it in the error).
///
/// # Errors
/// A candle error for another dtype or a non-contiguous layout.
pub fn storage_f32<'a>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    storage::<f32>(s, l, what)
}

/// The contiguous data of an op input of dtype `T` (`what` names it in the error).
///
/// # Errors
/// A candle error for another dtype or a non-contiguous layout.
pub fn storage<'a, T: candle_core::WithDType>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    what: &str,
) -> candle_core::Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what}: expected a contiguous {:?} tensor", T::DTYPE),
    }
}

/// What an op's forward pass keeps for its backward pass (or for its caller, as Dice's batch
/// statistics), shared through an `Arc` between the op and its graph node.
#[derive(Debug)]
pub struct Stash<T>(std::sync::Mutex<Option<T>>);

impl<T> Default for Stash<T> {
    fn default() -> Self {
        Self(std::sync::Mutex::new(None))
    }
}

impl<T> Stash<T> {
    /// Keeps `v` (replacing what was kept).
    pub fn put(&self, v: T) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
    }
    /// Takes what was kept; an error naming `what` when nothing was (a backward without its
    /// forward).
    ///
    /// # Errors
    /// A candle error when the stash is empty.
    pub fn take(&self, what: &str) -> candle_core::Result<T> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| candle_core::Error::Msg(format!("{what}: backward without forward")))
    }
    /// A copy of what was kept, if anything.
    pub fn get(&self) -> Option<T>
    where
        T: Clone,
    {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Runs `f` on a CPU tensor's contiguous f32 data without copying it (a copy is made only for a
/// non-contiguous layout).
///
/// # Errors
/// A candle error for a non-f32 or non-CPU tensor.
pub fn with_data<R>(
    t: &candle_core::Tensor,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (st, l) = t.storage_and_layout();
    match &*st {
        candle_core::Storage::Cpu(c) => {
            let data = c.as_slice::<f32>()?;
            match l.contiguous_offsets() {
                Some((a, b)) => f(&data[a..b]),
                None => candle_core::bail!("expected a contiguous tensor"),
            }
        }
        _ => candle_core::bail!("expected a CPU tensor"),
    }
}

/// Large f32 buffers kept between training steps, so the fused ops do not zero (or fault in)
/// hundreds of MB of fresh memory every step.
static POOL: std::sync::Mutex<Vec<Vec<f32>>> = std::sync::Mutex::new(Vec::new());
/// Buffers smaller than this are not pooled.
const POOL_MIN: usize = 1 << 16;
/// At most this many buffers are kept.
const POOL_MAX: usize = 16;

/// A buffer of `n` f32 whose contents are **unspecified** (zeros or data of an earlier use): the
/// caller must write every element before reading it. Return it with [`recycle`].
pub fn scratch(n: usize) -> Vec<f32> {
    let taken = {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, v)| v.capacity() >= n)
            .min_by_key(|(_, v)| v.capacity())
            .map(|(i, _)| i);
        best.map(|i| pool.swap_remove(i))
    };
    let mut v = taken.unwrap_or_default();
    if v.len() >= n {
        v.truncate(n);
    } else {
        v.resize(n, 0.0);
    }
    v
}

/// Gives a buffer back to the pool used by [`scratch`].
pub fn recycle(v: Vec<f32>) {
    if v.capacity() < POOL_MIN {
        return;
    }
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if pool.len() < POOL_MAX {
        pool.push(v);
    }
}

/// Tunes the process for training, first thing in `main` of a program whose global allocator is
/// `mimalloc::MiMalloc` (the `lifelong` binary, the benchmarks and examples):
///
/// - mimalloc keeps freed memory instead of returning it to the OS, and backs large blocks with
///   large OS pages: candle allocates and frees `[n, d]` buffers of tens of MB every step, and
///   with the defaults each step faults them in again (measured: +13% DIN throughput at L = 200);
/// - candle's element-wise ops run on the calling thread (`CANDLE_NUM_THREADS=1` unless set):
///   candle 0.11 splits large element-wise ops over its own pool of spinning threads, which on
///   a few cores compete with the rayon workers every fused op and GEMM here runs on (measured on
///   2 cores: DARE at its MovieLens settings 9,020 → 14,280 samples/s, ETA at L = 1,000 3,604 →
///   4,475, SDIM 4,747 → 5,161, with another training running beside them).
pub fn tune_runtime() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // Before any thread starts (this is the first call of `main`), so no reader races.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    // Option ids from mimalloc.h (`mi_option_e`): 6 = allow_large_os_pages, 15 = purge_delay
    // (−1 = never purge).
    // SAFETY: plain option setters of the C library; no pointers involved.
    unsafe {
        libmimalloc_sys::mi_option_set(6, 1);
        libmimalloc_sys::mi_option_set(15, -1);
    }
}

/// Lets mimalloc give freed memory back to the OS again (undoing [`tune_runtime`]'s "never
/// purge", right for a training step's buffers but not for a server that loads gigabytes of
/// encodings through transient parquet buffers once), and returns what the calling thread
/// freed so far.
pub(crate) fn return_freed_memory() {
    // 15 = purge_delay (ms; mimalloc's default is 10). Large OS pages stay on: with them the
    // server answered 542 requests/s at 100,000 users, without 423 (the bucket sums' TLB misses).
    // SAFETY: plain option setter and collection call of the C library; no pointers involved.
    unsafe {
        libmimalloc_sys::mi_option_set(15, 10);
        libmimalloc_sys::mi_collect(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_matches_std_exp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let rel = ((fast_exp(x) as f64) - (x as f64).exp()).abs() / (x as f64).exp();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 2e-7 * 4.0, "worst relative error {worst}");
        assert_eq!(fast_exp(-1000.0), fast_exp(-87.0));
        assert!(fast_sigmoid(1000.0) == 1.0 && fast_sigmoid(-1000.0) < 1e-37);
    }

    #[test]
    fn dot_matches_naive_sum() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.25).collect();
        let naive: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (*x as f64) * (*y as f64))
            .sum();
        assert!((dot(&a, &b) as f64 - naive).abs() < 1e-3);
    }
}
