//! Optimisers: [`Adam`] (dense, decoupled weight decay = AdamW when > 0) for the MLP and
//! attention parameters, and [`RowWise`] (Adam or Adagrad) for the embedding tables, touching only
//! the rows a batch used.
//!
//! Row-wise Adam keeps per-element moments `m`, `v` and a per-row step count, so a rarely seen
//! row gets the same bias correction as a dense Adam would after that many updates of it. The
//! moment arrays are allocated zeroed for the whole table (the OS maps untouched pages lazily, so
//! resident memory grows with the rows actually touched). Row-wise Adagrad keeps one
//! accumulator per row (`acc += mean(g²)`), as TorchRec's.
//!
//! **Lazy or caught up.** A dense Adam over a table (what PyTorch peers run) moves every row on
//! every step: a row the batch did not touch has a zero gradient, but its moments decay and its
//! weights keep moving by `lr·m̂/(√v̂ + ε)`. Row-wise ("lazy") Adam skips such rows entirely.
//! With `catch_up`, a row touched again after `k` skipped steps first gets those steps exactly as
//! dense Adam would have applied them (moments decayed by `β^j`, the weights moved by each
//! skipped step's update, bias corrections at the global step), so the trajectory is dense
//! Adam's while the work stays proportional to the touched rows. The moved distance shrinks
//! geometrically (by `β₁/√β₂` ≈ 0.9 a step), so skipped steps past [`CATCH_UP_STEPS`] only decay
//! the moments (their movement is below 1e-9 of the first step's).

use crate::config::SparseOptimizer;
use crate::cpu::SendPtr;
use crate::embedding::EmbeddingTable;
use crate::{Error, Result};
use candle_core::{backprop::GradStore, Tensor, Var};
use rayon::prelude::*;
use std::collections::BTreeMap;

/// Adam hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamParams {
    /// Learning rate.
    pub lr: f64,
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay (0 = plain Adam).
    pub weight_decay: f64,
}

impl AdamParams {
    /// Adam with the usual β and ε and no weight decay.
    pub fn with_lr(lr: f64) -> Self {
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Dense Adam(W) over named variables, with state that can be saved and restored.
#[derive(Debug)]
pub struct Adam {
    params: AdamParams,
    vars: Vec<(String, Var)>,
    m: Vec<Var>,
    v: Vec<Var>,
    step: u64,
}

impl Adam {
    /// Adam over `vars` (name, variable).
    pub fn new(vars: Vec<(String, Var)>, params: AdamParams) -> Result<Self> {
        let m = vars
            .iter()
            .map(|(_, v)| Var::zeros(v.shape(), v.dtype(), v.device()))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = vars
            .iter()
            .map(|(_, v)| Var::zeros(v.shape(), v.dtype(), v.device()))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            params,
            vars,
            m,
            v,
            step: 0,
        })
    }

    /// Steps taken.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// One update from `grads`, each gradient multiplied by `scale` (gradient clipping).
    pub fn step(&mut self, grads: &GradStore, scale: f64) -> Result<()> {
        self.step += 1;
        let p = self.params;
        let t = self.step as i32;
        let bc1 = 1.0 - p.beta1.powi(t);
        let bc2 = 1.0 - p.beta2.powi(t);
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = if scale != 1.0 {
                (g * scale)?
            } else {
                g.clone()
            };
            let m = ((self.m[i].as_tensor() * p.beta1)? + (&g * (1.0 - p.beta1))?)?;
            let v = ((self.v[i].as_tensor() * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + p.eps)?)?;
            let mut w = var.as_tensor().clone();
            if p.weight_decay > 0.0 {
                w = (w * (1.0 - p.lr * p.weight_decay))?;
            }
            var.set(&(w - (update * p.lr)?)?)?;
            self.m[i].set(&m)?;
            self.v[i].set(&v)?;
        }
        Ok(())
    }

    /// State tensors (`optim/dense/<name>/{m,v}`) for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, (n, _)) in self.vars.iter().enumerate() {
            out.push((format!("optim/dense/{n}/m"), self.m[i].as_tensor().clone()));
            out.push((format!("optim/dense/{n}/v"), self.v[i].as_tensor().clone()));
        }
        out
    }

    /// Restores the state saved by [`Adam::state_tensors`] and the step count.
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>, step: u64) -> Result<()> {
        for (i, (n, var)) in self.vars.iter().enumerate() {
            for (kind, slot) in [("m", &self.m[i]), ("v", &self.v[i])] {
                let key = format!("optim/dense/{n}/{kind}");
                let t = tensors
                    .get(&key)
                    .ok_or_else(|| Error::InvalidArgument(format!("tensor `{key}` is missing")))?;
                if t.dims() != var.dims() {
                    return Err(Error::InvalidArgument(format!(
                        "tensor `{key}` has shape {:?}, expected {:?}",
                        t.dims(),
                        var.dims()
                    )));
                }
                slot.set(&t.to_device(var.device())?)?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Skipped steps replayed in full by the catch-up (see the module docs); older ones only decay.
pub const CATCH_UP_STEPS: u64 = 200;

/// State of one table under a row-wise optimiser.
#[derive(Debug, Clone, PartialEq)]
pub enum RowState {
    /// Per-element moments and a per-row step count.
    Adam {
        /// First moments `[rows · dim]`.
        m: Vec<f32>,
        /// Second moments `[rows · dim]`.
        v: Vec<f32>,
        /// Lazy: updates applied to each row. Caught up: the global step the row is current at.
        steps: Vec<u32>,
    },
    /// One accumulator per row.
    Adagrad {
        /// `Σ mean(g²)` per row.
        acc: Vec<f32>,
    },
}

/// Row-wise optimiser over embedding tables: updates only the rows given to [`RowWise::update`].
#[derive(Debug, Clone)]
pub struct RowWise {
    kind: SparseOptimizer,
    params: AdamParams,
    states: BTreeMap<String, RowState>,
    catch_up: bool,
    step: u64,
}

impl RowWise {
    /// A row-wise optimiser of `kind` (Adagrad uses `params.lr` and `params.eps`).
    pub fn new(kind: SparseOptimizer, params: AdamParams) -> Self {
        Self {
            kind,
            params,
            states: BTreeMap::new(),
            catch_up: false,
            step: 0,
        }
    }

    /// With `on`, Adam replays the steps a row skipped before updating it, as dense Adam would
    /// have moved it (see the module docs); bias corrections count global steps. Call
    /// [`RowWise::begin_step`] once per training step.
    pub fn with_catch_up(mut self, on: bool) -> Self {
        self.catch_up = on;
        self
    }

    /// Starts training step `step` (1-based, the trainer's count after this step): the global
    /// step the catch-up brings rows up to.
    pub fn begin_step(&mut self, step: u64) {
        self.step = step;
    }

    fn state_for(&mut self, table: &EmbeddingTable) -> &mut RowState {
        let (rows, dim) = (table.rows(), table.dim());
        let kind = self.kind;
        self.states
            .entry(table.name().to_string())
            .or_insert_with(|| match kind {
                SparseOptimizer::Adam => RowState::Adam {
                    m: vec![0.0; rows * dim],
                    v: vec![0.0; rows * dim],
                    steps: vec![0; rows],
                },
                SparseOptimizer::Adagrad => RowState::Adagrad {
                    acc: vec![0.0; rows],
                },
            })
    }

    /// Applies one update to rows `ids` of `table` with gradient rows `grad` (`[ids.len(), dim]`,
    /// row `i` belongs to `ids[i]`), each multiplied by `scale`. A table's padding row is never changed.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `ids` are not strictly increasing (so not distinct), an
    /// id is outside the table, or the gradient has the wrong size.
    pub fn update(
        &mut self,
        table: &mut EmbeddingTable,
        ids: &[u32],
        grad: &[f32],
        scale: f32,
    ) -> Result<()> {
        let dim = table.dim();
        if grad.len() != ids.len() * dim {
            return Err(Error::InvalidArgument(format!(
                "gradient of `{}` has {} values, expected {}",
                table.name(),
                grad.len(),
                ids.len() * dim
            )));
        }
        if ids.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::InvalidArgument(format!(
                "row ids of `{}` must be sorted and distinct",
                table.name()
            )));
        }
        table.check_ids(ids)?;
        let p = self.params;
        let (b1, b2, eps, lr) = (p.beta1 as f32, p.beta2 as f32, p.eps as f32, p.lr as f32);
        let (catch_up, now) = (self.catch_up, self.step.max(1));
        if catch_up && now > u64::from(u32::MAX) {
            return Err(Error::InvalidArgument(format!(
                "step {now}: the catch-up counts steps in 32 bits"
            )));
        }
        // The padding row (when the table has one) stays zero; a position table's row 0 is the
        // target's position and is trained like any other.
        let pad = table.has_padding();
        let wptr = SendPtr(table.data_mut().as_mut_ptr());
        match self.state_for(table) {
            RowState::Adam { m, v, steps } => {
                let (mp, vp) = (SendPtr(m.as_mut_ptr()), SendPtr(v.as_mut_ptr()));
                let sp = SendPtr(steps.as_mut_ptr());
                ids.par_iter()
                    .enumerate()
                    .with_min_len(64)
                    .for_each(|(k, &id)| {
                        if pad && id == crate::data::PAD {
                            return;
                        }
                        let (wp, mp, vp, sp) = (wptr, mp, vp, sp);
                        let off = id as usize * dim;
                        // SAFETY: ids are distinct and in range (checked above), so each task
                        // writes a disjoint row of w, m, v and a distinct step counter.
                        let (w, m, v, s) = unsafe {
                            (
                                std::slice::from_raw_parts_mut(wp.0.add(off), dim),
                                std::slice::from_raw_parts_mut(mp.0.add(off), dim),
                                std::slice::from_raw_parts_mut(vp.0.add(off), dim),
                                &mut *sp.0.add(id as usize),
                            )
                        };
                        let t = if catch_up {
                            let last = u64::from(*s);
                            if last > 0 && now > last + 1 {
                                replay_skipped(w, m, v, &p, last, now);
                            }
                            *s = now as u32;
                            now.min(i32::MAX as u64) as i32
                        } else {
                            *s += 1;
                            *s as i32
                        };
                        let bc1 = 1.0 - (p.beta1).powi(t);
                        let bc2 = 1.0 - (p.beta2).powi(t);
                        let step = (lr as f64 / bc1) as f32;
                        let bc2s = bc2.sqrt() as f32;
                        let g = &grad[k * dim..(k + 1) * dim];
                        for j in 0..dim {
                            let gj = g[j] * scale;
                            m[j] = b1 * m[j] + (1.0 - b1) * gj;
                            v[j] = b2 * v[j] + (1.0 - b2) * gj * gj;
                            // m̂ / (sqrt(v̂) + ε) with m̂ = m/bc1, v̂ = v/bc2.
                            w[j] -= step * m[j] / (v[j].sqrt() / bc2s + eps);
                        }
                    });
            }
            RowState::Adagrad { acc } => {
                let ap = SendPtr(acc.as_mut_ptr());
                ids.par_iter()
                    .enumerate()
                    .with_min_len(64)
                    .for_each(|(k, &id)| {
                        if pad && id == crate::data::PAD {
                            return;
                        }
                        let (wp, ap) = (wptr, ap);
                        let off = id as usize * dim;
                        // SAFETY: as above, distinct rows.
                        let (w, a) = unsafe {
                            (
                                std::slice::from_raw_parts_mut(wp.0.add(off), dim),
                                &mut *ap.0.add(id as usize),
                            )
                        };
                        let g = &grad[k * dim..(k + 1) * dim];
                        let mean_sq =
                            g.iter().map(|x| (x * scale) * (x * scale)).sum::<f32>() / dim as f32;
                        *a += mean_sq;
                        let denom = a.sqrt() + eps;
                        for j in 0..dim {
                            w[j] -= lr * g[j] * scale / denom;
                        }
                    });
            }
        }
        Ok(())
    }

    /// Whether the catch-up is on.
    pub fn catches_up(&self) -> bool {
        self.catch_up
    }

    /// State tensors (`optim/sparse/<table>/{m,v,steps}` or `/acc`) for a checkpoint.
    pub fn state_tensors(&self, tables: &[&EmbeddingTable]) -> Result<Vec<(String, Tensor)>> {
        let dev = candle_core::Device::Cpu;
        let mut out = Vec::new();
        for t in tables {
            let Some(s) = self.states.get(t.name()) else {
                continue;
            };
            let n = t.name();
            match s {
                RowState::Adam { m, v, steps } => {
                    out.push((
                        format!("optim/sparse/{n}/m"),
                        Tensor::from_slice(m, (t.rows(), t.dim()), &dev)?,
                    ));
                    out.push((
                        format!("optim/sparse/{n}/v"),
                        Tensor::from_slice(v, (t.rows(), t.dim()), &dev)?,
                    ));
                    out.push((
                        format!("optim/sparse/{n}/steps"),
                        Tensor::from_slice(steps, t.rows(), &dev)?,
                    ));
                }
                RowState::Adagrad { acc } => {
                    out.push((
                        format!("optim/sparse/{n}/acc"),
                        Tensor::from_slice(acc, t.rows(), &dev)?,
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Restores what [`RowWise::state_tensors`] saved for `tables` (tables without saved state
    /// start fresh).
    pub fn load_state(
        &mut self,
        tensors: &BTreeMap<String, Tensor>,
        tables: &[&EmbeddingTable],
    ) -> Result<()> {
        let get = |key: String, len: usize| -> Result<Option<Tensor>> {
            match tensors.get(&key) {
                None => Ok(None),
                Some(t) if t.elem_count() == len => Ok(Some(t.flatten_all()?)),
                Some(t) => Err(Error::InvalidArgument(format!(
                    "tensor `{key}` has {} values, expected {len}",
                    t.elem_count()
                ))),
            }
        };
        for t in tables {
            let n = t.name();
            let state = match self.kind {
                SparseOptimizer::Adam => {
                    let (m, v, s) = (
                        get(format!("optim/sparse/{n}/m"), t.rows() * t.dim())?,
                        get(format!("optim/sparse/{n}/v"), t.rows() * t.dim())?,
                        get(format!("optim/sparse/{n}/steps"), t.rows())?,
                    );
                    match (m, v, s) {
                        (Some(m), Some(v), Some(s)) => Some(RowState::Adam {
                            m: m.to_vec1()?,
                            v: v.to_vec1()?,
                            steps: s.to_vec1()?,
                        }),
                        _ => None,
                    }
                }
                SparseOptimizer::Adagrad => get(format!("optim/sparse/{n}/acc"), t.rows())?
                    .map(|a| a.to_vec1().map(|acc| RowState::Adagrad { acc }))
                    .transpose()?,
            };
            if let Some(s) = state {
                self.states.insert(n.to_string(), s);
            }
        }
        Ok(())
    }
}

/// Applies to one row (current at global step `last`) the dense-Adam steps `last + 1 .. now`
/// it skipped with a zero gradient: `m ← β₁m`, `v ← β₂v`, `w ← w − lr·(m/bc₁)/(√(v/bc₂) + ε)`
/// each step, the first [`CATCH_UP_STEPS`] of them in full and the rest as a decay only.
fn replay_skipped(
    w: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    p: &AdamParams,
    last: u64,
    now: u64,
) {
    let skipped = now - last - 1;
    let full = skipped.min(CATCH_UP_STEPS);
    let (b1, b2, eps) = (p.beta1 as f32, p.beta2 as f32, p.eps as f32);
    if m.iter().all(|&x| x == 0.0) && v.iter().all(|&x| x == 0.0) {
        return; // never updated: dense Adam would not have moved it either
    }
    for j in 1..=full {
        let t = (last + j).min(i32::MAX as u64) as i32;
        let step = (p.lr / (1.0 - p.beta1.powi(t))) as f32;
        let bc2s = (1.0 - p.beta2.powi(t)).sqrt() as f32;
        for k in 0..w.len() {
            m[k] *= b1;
            v[k] *= b2;
            w[k] -= step * m[k] / (v[k].sqrt() / bc2s + eps);
        }
    }
    let rest = skipped - full;
    if rest > 0 {
        let (d1, d2) = (
            p.beta1.powf(rest as f64) as f32,
            p.beta2.powf(rest as f64) as f32,
        );
        m.iter_mut().for_each(|x| *x *= d1);
        v.iter_mut().for_each(|x| *x *= d2);
    }
}
