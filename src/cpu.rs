//! CPU compute helpers for the fused ops: a safe row-major SGEMM over slices (the `gemm` crate
//! candle itself uses, multi-threaded on rayon) and a `Send` pointer for disjoint parallel writes.

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
    let par = if m * n * k > 1 << 16 && threads > 1 {
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

/// A raw pointer that may cross threads, for parallel writes to provably disjoint parts of one
/// buffer (each user states why its parts are disjoint).
#[derive(Debug, Clone, Copy)]
pub struct SendPtr(pub *mut f32);
// SAFETY: only used for disjoint writes, documented at each use.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
