//! Inverted dropout with masks seeded per layer, training step and call.

use super::{ParamStore, CHUNK_ROWS};
use crate::{Error, Result};
use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Inverted dropout: in training each entry is zeroed with probability `p` and the others are
/// scaled by `1/(1 − p)`; the identity in evaluation. The masks are drawn on the host from
/// ChaCha8 streams seeded by (the layer's seed, the training step of [`ParamStore::set_step`],
/// the layer's call within that step, the row chunk), so they are the same on every machine and
/// path, and a resumed run draws those of an uninterrupted one.
#[derive(Debug, Clone)]
pub struct Dropout {
    p: f32,
    seed: u64,
    step: Arc<AtomicU64>,
    /// (step, calls within it).
    calls: Arc<Mutex<(u64, u64)>>,
}

impl Dropout {
    /// Dropout with rate `p` in [0, 1), its masks seeded from the store's seed and `name`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for `p` outside [0, 1).
    pub fn new(ps: &ParamStore, name: &str, p: f32) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::InvalidArgument(format!(
                "dropout `{name}`: rate {p} is not in [0, 1)"
            )));
        }
        Ok(Self {
            p,
            seed: ps.seed_of(&format!("dropout/{name}")),
            step: ps.step.clone(),
            calls: Arc::new(Mutex::new((0, 0))),
        })
    }

    /// The rate.
    pub fn p(&self) -> f32 {
        self.p
    }

    /// # Shapes
    /// `[n, dim]` → `[n, dim]`
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        if !train || self.p == 0.0 {
            return Ok(xs.clone());
        }
        let (n, dim) = xs.dims2()?;
        let step = self.step.load(Ordering::Relaxed);
        let call = {
            let mut c = self.calls.lock().unwrap_or_else(|e| e.into_inner());
            if c.0 != step {
                *c = (step, 0);
            }
            c.1 += 1;
            c.1 - 1
        };
        let seed = crate::seed::named_seed(self.seed, &format!("{step}/{call}"));
        let mask = Tensor::from_vec(dropout_mask(seed, n, dim, self.p), (n, dim), xs.device())?
            .to_dtype(xs.dtype())?;
        Ok((xs * mask)?)
    }
}

/// A `[n, dim]` inverted-dropout mask (row-major): 0 with probability `p`, else `1/(1 − p)`.
/// Rows are drawn in fixed chunks of 512, chunk `c` from ChaCha8 stream `c` of
/// `seed`, so the mask does not depend on the thread count.
pub fn dropout_mask(seed: u64, n: usize, dim: usize, p: f32) -> Vec<f32> {
    let keep = 1.0 / (1.0 - p);
    let mut out = vec![0f32; n * dim];
    if dim == 0 {
        return out;
    }
    out.par_chunks_mut(CHUNK_ROWS * dim)
        .enumerate()
        .for_each(|(c, chunk)| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(c as u64);
            for v in chunk.iter_mut() {
                *v = if rng.random::<f32>() < p { 0.0 } else { keep };
            }
        });
    out
}
