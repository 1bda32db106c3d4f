//! The rows a training step reads, gathered into one leaf.
//!
//! Per step, only the rows the differentiable part reads are copied out of the host tables: the
//! sorted unique rows of each table, side by side in one flat buffer (a [`Var`] when training).
//! Candle's backward then produces a gradient of that buffer's size, never of a table's, and the
//! trainer applies the row-wise optimiser to exactly those rows ([`Leaves::row_grads`]).
//!
//! ```text
//! tables ─ LeafBuilder (requests: targets, history rows, the whole history) ─▶ flat [Σ u_t·d_t]
//!                                                                           + one TokenIndex per request
//! flat ─ gather(TokenIndex) ─▶ tokens [m, width]   (or a fused op reads flat through the index)
//! ```
//!
//! A [`TokenIndex`] says, for every output row and every field of a view, which row of the flat
//! buffer holds it, and inverts that (which output rows read a flat row) for deterministic,
//! parallel scatter-adds in backward passes.

use super::table::{Tables, ViewSpec};
use crate::data::batch::{unique_remap, Batch, Field, SparseIds, NONE};
use crate::{Error, Result};
use candle_core::{backprop::GradStore, Device, Tensor, Var};
use rayon::prelude::*;
use std::sync::{Arc, OnceLock};

/// Which tokens a request reads.
#[derive(Debug, Clone)]
pub enum Tokens {
    /// The batch's targets, one row per sample.
    Targets,
    /// Packed history rows (indices into the batch's `hist_*`), [`NONE`] = a zero row.
    History(Arc<Vec<u32>>),
    /// The whole packed history, in order (rows `0..n`); its tables are gathered whole for the
    /// batch (every row the batch touches).
    AllHistory,
}

/// Where one table's rows sit in the flat leaf.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Index of the table in [`Tables`].
    pub table: usize,
    /// The table rows held, sorted and distinct.
    pub rows: Arc<Vec<u32>>,
    /// Offset of the first row in the flat buffer (in floats).
    pub offset: usize,
    /// Row width.
    pub dim: usize,
}

/// One field of a [`TokenIndex`].
#[derive(Debug, Clone)]
pub struct FieldIndex {
    /// The field.
    pub field: Field,
    /// Its first column in the output.
    pub col: usize,
    /// Its width.
    pub dim: usize,
    /// Offset of its segment in the flat leaf.
    pub seg_offset: usize,
    /// Rows in its segment.
    pub seg_rows: usize,
    /// Per output row, the row within the segment, or [`NONE`].
    pub local: Arc<Vec<u32>>,
}

impl FieldIndex {
    /// The flat-leaf offset of output row `r`'s field, or `None` for a padding row.
    #[inline]
    pub fn offset(&self, r: usize) -> Option<usize> {
        let l = self.local[r];
        (l != NONE).then(|| self.seg_offset + l as usize * self.dim)
    }
}

/// Which output rows read each segment row (CSR), ascending.
#[derive(Debug, Clone)]
pub struct Inverse {
    /// `seg_rows + 1` offsets into `slots`.
    pub starts: Vec<u32>,
    /// Output rows.
    pub slots: Vec<u32>,
}

impl Inverse {
    /// Counting sort of `(output row, segment row)` pairs (ascending output rows; padding,
    /// [`NONE`], skipped) into rows per segment row.
    fn build<I>(seg_rows: usize, pairs: I) -> Self
    where
        I: Iterator<Item = (u32, u32)> + Clone,
    {
        let mut starts = vec![0u32; seg_rows + 1];
        for (_, l) in pairs.clone() {
            if l != NONE {
                starts[l as usize + 1] += 1;
            }
        }
        for i in 0..seg_rows {
            starts[i + 1] += starts[i];
        }
        let mut fill = starts.clone();
        let mut slots = vec![0u32; starts[seg_rows] as usize];
        for (r, l) in pairs {
            if l != NONE {
                slots[fill[l as usize] as usize] = r;
                fill[l as usize] += 1;
            }
        }
        Self { starts, slots }
    }
}

/// `dst = src` for a field's few floats, in 8-float pieces the compiler inlines (a
/// `copy_from_slice` of a run-time length is a `memcpy` call per row).
#[inline]
fn copy_short(src: &[f32], dst: &mut [f32]) {
    let mut d8 = dst.chunks_exact_mut(8);
    let mut s8 = src.chunks_exact(8);
    for (d, s) in (&mut d8).zip(&mut s8) {
        let s: &[f32; 8] = s.try_into().expect("8 floats");
        let d: &mut [f32; 8] = d.try_into().expect("8 floats");
        *d = *s;
    }
    for (d, s) in d8.into_remainder().iter_mut().zip(s8.remainder()) {
        *d = *s;
    }
}

/// For every output row and field of a view, its place in the flat leaf.
#[derive(Debug)]
pub struct TokenIndex {
    /// Output rows.
    pub rows: usize,
    /// Token width (Σ field dims).
    pub width: usize,
    /// Fields in token order.
    pub fields: Vec<FieldIndex>,
    inverse: OnceLock<Vec<Inverse>>,
}

impl TokenIndex {
    /// An index of `rows` tokens of `width` columns read through `fields` (the leaf builder
    /// makes them; tests build them by hand).
    pub fn new(rows: usize, width: usize, fields: Vec<FieldIndex>) -> Self {
        Self {
            rows,
            width,
            fields,
            inverse: OnceLock::new(),
        }
    }

    /// The inverse of every field (built once, by a counting sort).
    pub fn inverse(&self) -> &[Inverse] {
        self.inverse.get_or_init(|| {
            self.fields
                .par_iter()
                .map(|f| {
                    Inverse::build(
                        f.seg_rows,
                        (0..f.local.len() as u32).map(|r| (r, f.local[r as usize])),
                    )
                })
                .collect()
        })
    }

    /// Copies output row `r` (all fields; zeros for padding) from `flat` into `out` (`width`).
    #[inline]
    pub fn read_row(&self, flat: &[f32], r: usize, out: &mut [f32]) {
        for f in &self.fields {
            let dst = &mut out[f.col..f.col + f.dim];
            match f.offset(r) {
                Some(o) => copy_short(&flat[o..o + f.dim], dst),
                None => dst.iter_mut().for_each(|x| *x = 0.0),
            }
        }
    }

    /// `⟨row r, q⟩` read in place from `flat` (`q` has the token's width; padding rows give 0).
    #[inline]
    pub fn dot_row(&self, flat: &[f32], r: usize, q: &[f32]) -> f32 {
        let mut s = 0f32;
        for f in &self.fields {
            if let Some(o) = f.offset(r) {
                s += crate::cpu::dot(&q[f.col..f.col + f.dim], &flat[o..o + f.dim]);
            }
        }
        s
    }

    /// `out += alpha · row r`, read in place from `flat`.
    #[inline]
    pub fn axpy_row(&self, flat: &[f32], r: usize, alpha: f32, out: &mut [f32]) {
        for f in &self.fields {
            if let Some(o) = f.offset(r) {
                crate::cpu::axpy(alpha, &flat[o..o + f.dim], &mut out[f.col..f.col + f.dim]);
            }
        }
    }

    /// A flat-sized gradient built by scatter-adding per-output-row gradients: for every field
    /// and every segment row, `add(r, cols, acc)` is called for each output row `r` that reads it,
    /// in ascending `r`, and must add the gradient of columns `cols` of row `r` into `acc`.
    /// Segment rows run in parallel; the result does not depend on the thread count.
    pub fn scatter<F>(&self, flat_len: usize, add: F) -> Vec<f32>
    where
        F: Fn(usize, std::ops::Range<usize>, &mut [f32]) + Sync,
    {
        let mut g = vec![0f32; flat_len];
        self.scatter_into(&mut g, add);
        g
    }

    /// [`TokenIndex::scatter_into`] over only the output rows `slots` (ascending, distinct):
    /// the inverse is built for them alone, so a sparse backward (SDIM's colliding behaviors)
    /// costs what it touches.
    pub fn scatter_subset_into<F>(&self, g: &mut [f32], slots: &[u32], add: F)
    where
        F: Fn(usize, std::ops::Range<usize>, &mut [f32]) + Sync,
    {
        for f in &self.fields {
            let Inverse {
                starts,
                slots: list,
            } = Inverse::build(f.seg_rows, slots.iter().map(|&r| (r, f.local[r as usize])));
            let seg = &mut g[f.seg_offset..f.seg_offset + f.seg_rows * f.dim];
            let cols = f.col..f.col + f.dim;
            seg.par_chunks_mut(f.dim)
                .enumerate()
                .with_min_len(256)
                .for_each(|(l, acc)| {
                    for &r in &list[starts[l] as usize..starts[l + 1] as usize] {
                        add(r as usize, cols.clone(), acc);
                    }
                });
        }
    }

    /// [`TokenIndex::scatter`] into an existing flat-sized buffer (adds).
    pub fn scatter_into<F>(&self, g: &mut [f32], add: F)
    where
        F: Fn(usize, std::ops::Range<usize>, &mut [f32]) + Sync,
    {
        let inv = self.inverse();
        for (f, iv) in self.fields.iter().zip(inv) {
            let seg = &mut g[f.seg_offset..f.seg_offset + f.seg_rows * f.dim];
            let cols = f.col..f.col + f.dim;
            seg.par_chunks_mut(f.dim)
                .enumerate()
                .with_min_len(64)
                .for_each(|(l, acc)| {
                    let (s, e) = (iv.starts[l] as usize, iv.starts[l + 1] as usize);
                    for &r in &iv.slots[s..e] {
                        add(r as usize, cols.clone(), acc);
                    }
                });
        }
    }
}

/// The gradient of the flat leaf, accumulated in place by the ops that read it (gather, SDIM,
/// full-attention pooling) during the backward pass, instead of each returning a flat-sized
/// gradient tensor for candle to allocate, zero and add (one per lookup: at long histories
/// those copies cost more than the lookups).
#[derive(Debug, Default)]
pub(crate) struct GradAccumulator {
    len: usize,
    buf: std::sync::Mutex<Option<Vec<f32>>>,
}

impl GradAccumulator {
    /// Adds into the buffer (zeroed on first use) with `f`.
    ///
    /// # Errors
    /// A candle error if the lock is poisoned (a panic in an earlier backward op).
    pub fn add_with(&self, f: impl FnOnce(&mut [f32])) -> candle_core::Result<()> {
        let mut b = self
            .buf
            .lock()
            .map_err(|_| candle_core::Error::Msg("leaf gradient: poisoned lock".into()))?;
        let g = b.get_or_insert_with(|| vec![0f32; self.len]);
        f(g);
        Ok(())
    }

    /// Takes the accumulated gradient (leaving none).
    fn take(&self) -> Option<Vec<f32>> {
        self.buf.lock().ok().and_then(|mut b| b.take())
    }
}

/// One step's leaf: the rows of every table the step reads, in one flat buffer.
#[derive(Debug)]
pub struct Leaves {
    flat: Tensor,
    var: Option<Var>,
    segments: Vec<Segment>,
    grad: Arc<GradAccumulator>,
    generic: bool,
    compute: candle_core::DType,
}

/// The gradient of one table's rows.
#[derive(Debug, Clone)]
pub struct RowGrad {
    /// Index of the table.
    pub table: usize,
    /// Sorted, distinct table rows.
    pub rows: Arc<Vec<u32>>,
    /// `[rows.len(), dim]` gradient.
    pub grad: Vec<f32>,
}

impl Leaves {
    /// Whether tokens are read from it through candle ops ([`crate::device::Ops::Generic`]; always
    /// on a device other than the CPU) rather than the fused gather.
    pub fn generic(&self) -> bool {
        self.generic
    }
    /// The leaf read through candle ops when `on` (it always is off the CPU).
    pub fn into_generic(mut self, on: bool) -> Self {
        self.generic |= on;
        self
    }
    /// The leaf with its tokens handed to the parts in `dtype` (bf16: the generic path's
    /// reduced precision; the leaf itself, the master copy of the rows, stays f32).
    ///
    /// # Errors
    /// [`Error::Config`] for a reduced precision without the generic path.
    pub fn computing_in(mut self, dtype: candle_core::DType) -> Result<Self> {
        if dtype != candle_core::DType::F32 && !self.generic {
            return Err(Error::Config(format!(
                "{dtype:?} activations need the generic path (model.ops = \"generic\", or a GPU)"
            )));
        }
        self.compute = dtype;
        Ok(self)
    }
    /// The dtype the parts compute in.
    pub fn compute_dtype(&self) -> candle_core::DType {
        self.compute
    }
    /// The flat buffer (a variable's tensor when built for gradients).
    pub fn tensor(&self) -> &Tensor {
        &self.flat
    }
    /// The variable, when built for gradients.
    pub fn var(&self) -> Option<&Var> {
        self.var.as_ref()
    }
    /// Where each table's rows are.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }
    /// Floats in the flat buffer.
    pub fn len(&self) -> usize {
        self.flat.elem_count()
    }
    /// No rows at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where the ops that read the leaf add their gradients.
    pub(crate) fn accumulator(&self) -> &Arc<GradAccumulator> {
        &self.grad
    }

    /// The gradient of the flat buffer after a backward pass: what the ops accumulated plus what
    /// candle's graph holds for it (an L2 term on the leaf, say). Taking it resets the
    /// accumulator, so call it once per backward pass.
    ///
    /// # Errors
    /// A candle error if candle's gradient cannot be read.
    pub fn take_grad(&self, grads: &GradStore) -> Result<Option<Vec<f32>>> {
        let acc = self.grad.take();
        let direct = match grads.get(&self.flat) {
            Some(g) => Some(g.flatten_all()?.to_vec1::<f32>()?),
            None => None,
        };
        Ok(match (acc, direct) {
            (Some(mut a), Some(d)) => {
                a.iter_mut().zip(&d).for_each(|(x, y)| *x += y);
                Some(a)
            }
            (a, d) => a.or(d),
        })
    }

    /// The gradient of every table's rows, from a backward pass (see [`Leaves::take_grad`]).
    ///
    /// # Errors
    /// A candle error if the gradient cannot be read.
    pub fn row_grads(&self, grads: &GradStore) -> Result<Vec<RowGrad>> {
        let Some(g) = self.take_grad(grads)? else {
            return Ok(Vec::new());
        };
        Ok(self
            .segments
            .iter()
            .map(|s| RowGrad {
                table: s.table,
                rows: s.rows.clone(),
                grad: g[s.offset..s.offset + s.rows.len() * s.dim].to_vec(),
            })
            .collect())
    }
}

enum Mode {
    /// Every row of the table (the position table: a few hundred rows).
    Whole,
    /// The batch's unique rows over targets and the whole history.
    Full(SparseIds),
    /// The unique rows of what the requests read.
    Partial(SparseIds),
}

struct Request {
    fields: Vec<(usize, Field, usize, usize)>, // (table, field, col, dim)
    width: usize,
    tokens: Tokens,
}

/// Collects what a step reads, then gathers it into [`Leaves`] and one [`TokenIndex`] per
/// request.
pub struct LeafBuilder<'a> {
    tables: &'a Tables,
    batch: &'a Batch,
    requests: Vec<Request>,
}

impl<'a> LeafBuilder<'a> {
    /// A builder over `tables` for `batch`.
    pub fn new(tables: &'a Tables, batch: &'a Batch) -> Self {
        Self {
            tables,
            batch,
            requests: Vec::new(),
        }
    }

    /// Asks for tokens of a view; returns the request's number (its index in `build`'s list).
    /// The same view and tokens asked twice give the same request (one index, built once).
    pub fn request(&mut self, view: &ViewSpec, tokens: Tokens) -> usize {
        let fields: Vec<_> = view
            .fields
            .iter()
            .map(|f| (f.table, f.field, f.col, f.dim))
            .collect();
        let same = |a: &Tokens, b: &Tokens| match (a, b) {
            (Tokens::Targets, Tokens::Targets) | (Tokens::AllHistory, Tokens::AllHistory) => true,
            (Tokens::History(x), Tokens::History(y)) => Arc::ptr_eq(x, y),
            _ => false,
        };
        if let Some(i) = self
            .requests
            .iter()
            .position(|r| r.fields == fields && same(&r.tokens, &tokens))
        {
            return i;
        }
        self.requests.push(Request {
            fields,
            width: view.width,
            tokens,
        });
        self.requests.len() - 1
    }

    /// Asks for the targets' rows of one table (the user field).
    pub fn request_table(&mut self, table: usize, tokens: Tokens) -> usize {
        let t = self.tables.table(table);
        let field = self.tables.key(table).field;
        self.requests.push(Request {
            fields: vec![(table, field, 0, t.dim())],
            width: t.dim(),
            tokens,
        });
        self.requests.len() - 1
    }

    /// The ids of `field` for the rows of `tokens`.
    fn ids(&self, field: Field, tokens: &Tokens) -> Result<Vec<u32>> {
        let b = self.batch;
        Ok(match tokens {
            Tokens::Targets => b.target_ids(field).into_owned(),
            Tokens::AllHistory => b.hist_ids(field)?.to_vec(),
            Tokens::History(rows) => {
                let h = b.hist_ids(field)?;
                rows.iter()
                    .map(|&r| if r == NONE { NONE } else { h[r as usize] })
                    .collect()
            }
        })
    }

    /// Gathers the rows (a variable when `grad`) on `device`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an id outside its table or a history row outside the batch.
    pub fn build(self, device: &Device, grad: bool) -> Result<(Leaves, Vec<Arc<TokenIndex>>)> {
        let nt = self.tables.len();
        let b = self.batch.size();
        // Which tables are read, and how.
        let mut used = vec![false; nt];
        let mut full = vec![false; nt];
        for r in &self.requests {
            for &(t, _, _, _) in &r.fields {
                used[t] = true;
                if matches!(r.tokens, Tokens::AllHistory) {
                    full[t] = true;
                }
            }
        }
        // Per table: its mode, and (partial) the ids of every request in order.
        let mut modes: Vec<Option<Mode>> = (0..nt).map(|_| None).collect();
        let mut partial_ids: Vec<Vec<u32>> = vec![Vec::new(); nt];
        let mut partial_spans: Vec<Vec<(usize, usize, usize)>> = vec![Vec::new(); nt]; // (request, start, len)
        let mut per_request_ids: Vec<Vec<Vec<u32>>> = Vec::with_capacity(self.requests.len());
        for (ri, r) in self.requests.iter().enumerate() {
            let mut ids_of_fields = Vec::with_capacity(r.fields.len());
            for &(t, field, _, _) in &r.fields {
                let ids = self.ids(field, &r.tokens)?;
                if !field.is_context() && !full[t] {
                    let start = partial_ids[t].len();
                    partial_ids[t].extend(ids.iter().copied().filter(|&i| i != NONE));
                    partial_spans[t].push((ri, start, partial_ids[t].len() - start));
                }
                ids_of_fields.push(ids);
            }
            per_request_ids.push(ids_of_fields);
        }
        for t in 0..nt {
            if !used[t] {
                continue;
            }
            let field = self.tables.key(t).field;
            modes[t] = Some(if field.is_context() {
                Mode::Whole
            } else if full[t] {
                Mode::Full(self.batch.full_ids(field)?)
            } else {
                Mode::Partial(unique_remap(&partial_ids[t]))
            });
        }
        // Segments.
        let mut segments = Vec::new();
        let mut seg_of = vec![usize::MAX; nt];
        let mut offset = 0usize;
        for t in 0..nt {
            let Some(mode) = &modes[t] else { continue };
            let table = self.tables.table(t);
            let rows: Arc<Vec<u32>> = match mode {
                Mode::Whole => Arc::new((0..table.rows() as u32).collect()),
                Mode::Full(s) | Mode::Partial(s) => s.unique.clone(),
            };
            table.check_ids(rows.last().map(std::slice::from_ref).unwrap_or(&[]))?;
            seg_of[t] = segments.len();
            segments.push(Segment {
                table: t,
                rows: rows.clone(),
                offset,
                dim: table.dim(),
            });
            offset += rows.len() * table.dim();
        }
        // The flat buffer.
        let mut flat = vec![0f32; offset];
        for s in &segments {
            let table = self.tables.table(s.table);
            let d = s.dim;
            flat[s.offset..s.offset + s.rows.len() * d]
                .par_chunks_mut(d * 256)
                .zip(s.rows.par_chunks(256))
                .for_each(|(o, ids)| {
                    for (orow, &i) in o.chunks_exact_mut(d).zip(ids) {
                        orow.copy_from_slice(table.row(i));
                    }
                });
        }
        // Token indices.
        let mut partial_cursor = vec![0usize; nt];
        let mut indices = Vec::with_capacity(self.requests.len());
        for (ri, r) in self.requests.iter().enumerate() {
            let rows = match &r.tokens {
                Tokens::Targets => b,
                Tokens::AllHistory => self.batch.n_packed(),
                Tokens::History(rows) => rows.len(),
            };
            let mut fields = Vec::with_capacity(r.fields.len());
            for (fi, &(t, field, col, dim)) in r.fields.iter().enumerate() {
                let seg = &segments[seg_of[t]];
                let ids = &per_request_ids[ri][fi];
                let local: Vec<u32> = match modes[t].as_ref() {
                    Some(Mode::Whole) => {
                        let n = seg.rows.len() as u32;
                        if let Some(&bad) = ids.iter().find(|&&i| i != NONE && i >= n) {
                            return Err(Error::InvalidArgument(format!(
                                "`{}` index {bad} is outside the table ({n} rows)",
                                self.tables.table(t).name()
                            )));
                        }
                        ids.clone()
                    }
                    Some(Mode::Full(s)) => {
                        let loc = &s.local;
                        match &r.tokens {
                            Tokens::Targets => loc[..b].to_vec(),
                            Tokens::AllHistory => loc[b..].to_vec(),
                            Tokens::History(hr) => hr
                                .iter()
                                .map(|&j| if j == NONE { NONE } else { loc[b + j as usize] })
                                .collect(),
                        }
                    }
                    Some(Mode::Partial(s)) => {
                        let (_, start, len) = partial_spans[t][partial_cursor[t]];
                        partial_cursor[t] += 1;
                        let loc = &s.local[start..start + len];
                        let mut k = 0;
                        ids.iter()
                            .map(|&i| {
                                if i == NONE {
                                    NONE
                                } else {
                                    k += 1;
                                    loc[k - 1]
                                }
                            })
                            .collect()
                    }
                    None => unreachable!("a requested table has a mode"),
                };
                fields.push(FieldIndex {
                    field,
                    col,
                    dim,
                    seg_offset: seg.offset,
                    seg_rows: seg.rows.len(),
                    local: Arc::new(local),
                });
            }
            indices.push(Arc::new(TokenIndex::new(rows, r.width, fields)));
        }
        let (flat, var) = if grad {
            let v = Var::from_vec(flat, offset, device)?;
            (v.as_tensor().clone(), Some(v))
        } else {
            (Tensor::from_vec(flat, offset, device)?, None)
        };
        Ok((
            Leaves {
                flat,
                var,
                segments,
                grad: Arc::new(GradAccumulator {
                    len: offset,
                    buf: Default::default(),
                }),
                generic: !device.is_cpu(),
                compute: candle_core::DType::F32,
            },
            indices,
        ))
    }
}
