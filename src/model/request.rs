//! One serving request's user side: the user's encoding, the candidates as a batch of targets,
//! the encoded window as a one-history batch, and the tokens every part reads, gathered once
//! per request (views over the same tables share one gather).

use super::part::Ctx;
use crate::config::View;
use crate::data::Batch;
use crate::embedding::ViewSpec;
use crate::search::{history_tokens, target_tokens};
use crate::window::Window;
use crate::Result;
use candle_core::Tensor;
use std::cell::RefCell;
use std::ops::Range;

/// Tokens of one kind (the candidates' or the window's) per view, computed on first use.
#[derive(Debug, Default)]
struct TokenCache(RefCell<Vec<(ViewSpec, Tensor)>>);

impl TokenCache {
    fn get(&self, view: &ViewSpec, make: impl FnOnce() -> Result<Tensor>) -> Result<Tensor> {
        if let Some((_, x)) = self.0.borrow().iter().find(|(s, _)| s == view) {
            return Ok(x.clone());
        }
        let x = make()?;
        self.0.borrow_mut().push((view.clone(), x.clone()));
        Ok(x)
    }
}

/// A request: the user side, shared by every candidate and every part.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    pub cx: Ctx<'a>,
    /// The candidates, as targets with no history of their own.
    pub cand: Batch,
    /// The encoded window as one sample's history (positions newest = 1, as in training).
    pub history: Batch,
    targets: TokenCache,
    window: TokenCache,
}

impl<'a> Request<'a> {
    /// The request of candidates `items`/`cates` for a user with the encoded window
    /// `window` (items, categories; oldest first); with `time`, the window's times, the
    /// buckets and the request's time (each behavior's gap is seen from it).
    pub fn new(
        cx: Ctx<'a>,
        user: u32,
        window: (&[u32], &[u32]),
        items: &[u32],
        cates: &[u32],
        time: Option<(&[i64], &crate::data::TimeBuckets, i64)>,
    ) -> Result<Self> {
        let c = items.len();
        let cand = Batch::from_samples(&vec![user; c], items, cates, &vec![(&[][..], &[][..]); c]);
        let mut history = Batch::from_samples(&[user], &[0], &[0], &[window]);
        if let Some((ts, tb, now)) = time {
            history.set_times(&[ts], &[now], tb)?;
        }
        Ok(Self {
            cx,
            cand,
            history,
            targets: TokenCache::default(),
            window: TokenCache::default(),
        })
    }

    /// Candidates C.
    pub fn candidates(&self) -> usize {
        self.cand.size()
    }
    /// Behaviors of the encoded window L.
    pub fn len(&self) -> usize {
        self.history.n_packed()
    }

    /// The candidates' tokens of `view`, `[C, w]`.
    pub fn targets(&self, view: View) -> Result<Tensor> {
        let v = self.cx.tables.view(view);
        self.targets.get(v, || {
            let x = target_tokens(self.cx.tables, v, &self.cand)?;
            Ok(Tensor::from_vec(
                x,
                (self.candidates(), v.width),
                self.cx.device,
            )?)
        })
    }

    /// The encoded window's tokens of `view`, `[L, w]`, oldest first.
    pub fn window(&self, view: View) -> Result<Tensor> {
        let v = self.cx.tables.view(view);
        self.window.get(v, || {
            let x = history_tokens(self.cx.tables, v, &self.history)?;
            Ok(Tensor::from_vec(x, (self.len(), v.width), self.cx.device)?)
        })
    }
}

/// The behaviors of the encoded window a part reads for each candidate.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ServingWindow<'a> {
    /// The same rows for every candidate (the whole window or its most recent n).
    Shared(&'a Range<usize>),
    /// Each candidate's own rows (the search's top-k), candidate after candidate.
    PerCandidate(&'a Window),
}

impl ServingWindow<'_> {
    /// Candidate `c`'s rows of the encoded window.
    pub fn rows_of(&self, c: usize) -> Vec<usize> {
        match self {
            ServingWindow::Shared(r) => (*r).clone().collect(),
            ServingWindow::PerCandidate(w) => w.rows[w.offsets[c]..w.offsets[c + 1]]
                .iter()
                .map(|&j| j as usize)
                .collect(),
        }
    }
}
