//! Serving: one user, many candidates, from the user's [`UserEncoding`].
//!
//! [`CtrModel::score_encoded`] does the user-side work once per request (the window's tokens
//! gathered once, the shared windows projected once: `model/request.rs`) and the
//! per-candidate work for all candidates together. The search is the very function training
//! runs, on the encoded window as a one-history batch, and each part scores itself
//! (`Aggregation::score` in `model/part.rs`), so the probabilities equal `eval`'s (tested for every
//! preset). The auxiliary heads are training-only and not computed.

use super::encoding::UserEncoding;
use super::request::{Request, ServingWindow};
use super::search::Searched;
use super::CtrModel;
use crate::config::{View, WindowConfig};
use crate::{Error, Result};
use candle_core::Tensor;

impl CtrModel {
    /// Logits of candidates `items`/`cates` for the user of `enc` (evaluation mode), equal to
    /// [`CtrModel::predict`] on a batch of these candidates with the user's history.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an encoding of another layout, candidate lists of
    /// different lengths or ids outside the tables.
    pub fn score_encoded(
        &self,
        enc: &UserEncoding,
        items: &[u32],
        cates: &[u32],
    ) -> Result<Vec<f32>> {
        self.score_encoded_at(enc, items, cates, None)
    }

    /// [`CtrModel::score_encoded`] at the request's time `now` (a model with a time field: the
    /// window's gaps are seen from it; `None` = the encoding's "now", its newest behavior's
    /// time). Precomputed parts (codes, bucket sums) stay as of the encoding's "now".
    ///
    /// # Errors
    /// As [`CtrModel::score_encoded`].
    pub fn score_encoded_at(
        &self,
        enc: &UserEncoding,
        items: &[u32],
        cates: &[u32],
        now: Option<i64>,
    ) -> Result<Vec<f32>> {
        self.check_history(items, cates)?;
        self.check_encoding(enc, true)?;
        let c = items.len();
        if c == 0 {
            return Ok(Vec::new());
        }
        let cx = self.cx();
        // Only the behaviors some part or the search reads (an encoding straight from
        // `encode_user` holds `max_len`; one loaded for serving is already cut to this).
        let layout = self.encoding_layout();
        let cut = enc.items.len() - layout.serving_window.min(enc.items.len());
        let window = (&enc.items[cut..], &enc.cates[cut..]);
        let codes = &enc.codes[(cut * layout.code_words).min(enc.codes.len())..];
        let time = self.time.as_deref().map(|tb| {
            let ts = &enc.ts[cut..];
            (ts, tb, now.or(enc.ts.last().copied()).unwrap_or(0))
        });
        let req = Request::new(cx, enc.user, window, items, cates, time)?;
        let l = req.len();
        let retrieved = match &self.search {
            Some(s) => Some(s.retrieve(
                &cx,
                &self.parts,
                &Searched {
                    targets: &req.cand,
                    hist: &req.history,
                    one_history: true,
                    codes: Some(codes),
                },
            )?),
            None => None,
        };
        let mut head_in = vec![req.targets(View::Representation)?];
        for (p, table) in self.parts.iter().zip(&enc.buckets) {
            let shared;
            let window = match p.window() {
                WindowConfig::Retrieved => {
                    ServingWindow::PerCandidate(retrieved.as_ref().ok_or_else(|| {
                        Error::Config("a retrieved window without a search".into())
                    })?)
                }
                w => {
                    shared = l - cx.window_len(w).min(l)..l;
                    ServingWindow::Shared(&shared)
                }
            };
            head_in.push(p.score(&req, table, window)?);
        }
        if let Some(u) = self.tables.user() {
            let tab = self.tables.table(u);
            tab.check_ids(&[enc.user])?;
            let row = Tensor::from_slice(tab.row(enc.user), (1, tab.dim()), &self.device)?;
            head_in.push(row.broadcast_as((c, tab.dim()))?.contiguous()?);
        }
        let x = Tensor::cat(&head_in, 1)?;
        Ok(self
            .head
            .forward_t(&x, false)?
            .squeeze(1)?
            .to_vec1::<f32>()?)
    }
}
