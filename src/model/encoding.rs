//! What a user's history contributes at serving time, computed once per user
//! ([`CtrModel::encode_user`], offline by `lifelong encode`) and folded forward as new behaviors
//! arrive ([`CtrModel::extend_encoding`]):
//!
//! | part | held | used for |
//! |---|---|---|
//! | `items`, `cates` | the last `max_len` behaviors' indices, oldest first | windows, attention search, SIM hard search |
//! | `codes` | the Hamming search's SimHash codes `[L, words]` | ETA's search: one XOR + popcount per behavior |
//! | `buckets[i]` | SDIM aggregation i's bucket sums (BSE) `[G, 2^τ, d_v]`, dense | SDIM: `G` lookups per candidate, flat in L |
//!
//! Each part computes and extends its own share (`Aggregation::encode` and `extend` in
//! `model/part.rs`, `Search::encode` in `model/search/mod.rs`); this file only lays them side by
//! side.

use super::part::Extension;
use super::CtrModel;
use crate::data::Batch;
use crate::{Error, Result};

/// What a user's history contributes at serving time (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct UserEncoding {
    /// The user's vocabulary index (1 = unknown).
    pub user: u32,
    /// Item indices of the last `max_len` behaviors, oldest first.
    pub items: Vec<u32>,
    /// Their category indices.
    pub cates: Vec<u32>,
    /// The Hamming search's codes `[L, words]` (empty without a Hamming search).
    pub codes: Vec<u64>,
    /// Per aggregation: SDIM's bucket sums `[G, 2^τ, d_v]` (empty for other aggregations).
    pub buckets: Vec<Vec<f32>>,
}

/// The shape of a model's encodings: what [`UserEncoding`]s for it hold.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EncodingLayout {
    /// The longest window kept.
    pub max_len: usize,
    /// 64-bit words per Hamming code (0: no codes).
    pub code_words: usize,
    /// Per aggregation: floats of its bucket table (0: not SDIM).
    pub buckets: Vec<usize>,
    /// The most recent behaviors scoring reads from `items`/`cates` (the rest serves updates).
    pub serving_window: usize,
}

/// One sample's history as a batch (positions newest = 1, as in training).
fn one_history(items: &[u32], cates: &[u32]) -> Batch {
    Batch::from_samples(&[0], &[0], &[0], &[(items, cates)])
}

impl CtrModel {
    /// The layout of this model's encodings.
    pub fn encoding_layout(&self) -> EncodingLayout {
        let cx = self.cx();
        let serving_window = if self.search.is_some() {
            self.max_len
        } else {
            self.parts
                .iter()
                .filter(|p| p.reads_ids_when_scoring())
                .map(|p| cx.window_len(p.window()))
                .max()
                .unwrap_or(0)
        };
        EncodingLayout {
            max_len: self.max_len,
            code_words: self.search.as_ref().map_or(0, |s| s.code_words()),
            buckets: self.parts.iter().map(|p| p.encoding_floats(&cx)).collect(),
            serving_window,
        }
    }

    pub(crate) fn check_history(&self, items: &[u32], cates: &[u32]) -> Result<()> {
        if items.len() != cates.len() {
            return Err(Error::InvalidArgument(format!(
                "{} items but {} categories",
                items.len(),
                cates.len()
            )));
        }
        for (ids, field, rows) in [
            (items, "item", self.vocab.items),
            (cates, "cate", self.vocab.cates),
        ] {
            if let Some(&bad) = ids.iter().find(|&&i| i as usize >= rows) {
                return Err(Error::InvalidArgument(format!(
                    "{field} index {bad} is outside the model's table of {rows} rows"
                )));
            }
        }
        Ok(())
    }

    /// The encoding of user `user` whose history is `items`/`cates` (oldest first; only the last
    /// `max_len` count, as in training).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for lists of different lengths or ids outside the tables.
    pub fn encode_user(&self, user: u32, items: &[u32], cates: &[u32]) -> Result<UserEncoding> {
        self.check_history(items, cates)?;
        let cx = self.cx();
        let cut = items.len().saturating_sub(self.max_len);
        let (items, cates) = (&items[cut..], &cates[cut..]);
        let codes = match &self.search {
            Some(s) if s.code_words() > 0 => s.encode(&cx, &one_history(items, cates))?,
            _ => Vec::new(),
        };
        let mut buckets = Vec::with_capacity(self.parts.len());
        for p in &self.parts {
            if p.encoding_floats(&cx) == 0 {
                buckets.push(Vec::new());
                continue;
            }
            let from = items.len().saturating_sub(cx.window_len(p.window()));
            buckets.push(p.encode(&cx, &one_history(&items[from..], &cates[from..]))?);
        }
        Ok(UserEncoding {
            user,
            items: items.to_vec(),
            cates: cates.to_vec(),
            codes,
            buckets,
        })
    }

    /// `enc` with new behaviors appended (oldest first), without the old history: the codes of
    /// the new behaviors are appended and those leaving the window dropped; each bucket table
    /// gets the entering rows added and the leaving ones taken out. Parts whose tokens hold the
    /// position field shift as a whole and are recomputed from the kept window. Equal to
    /// [`CtrModel::encode_user`] of the extended history (up to float rounding of the sums).
    ///
    /// # Errors
    /// As [`CtrModel::encode_user`], and [`Error::InvalidArgument`] for an encoding of another
    /// layout.
    pub fn extend_encoding(
        &self,
        enc: &UserEncoding,
        items: &[u32],
        cates: &[u32],
    ) -> Result<UserEncoding> {
        self.check_encoding(enc, false)?;
        self.check_history(items, cates)?;
        let cx = self.cx();
        let old = enc.items.len();
        let all_items = [&enc.items[..], items].concat();
        let all_cates = [&enc.cates[..], cates].concat();
        let drop = all_items.len().saturating_sub(self.max_len);
        let (w_items, w_cates) = (&all_items[drop..], &all_cates[drop..]);
        let codes = match &self.search {
            Some(s) if s.code_words() > 0 => {
                if s.codes_shift(&cx) {
                    s.encode(&cx, &one_history(w_items, w_cates))?
                } else {
                    // Old codes still in the window, then the new behaviors still in it.
                    let first_new = drop.saturating_sub(old);
                    let mut c = enc.codes[drop.min(old) * s.code_words()..].to_vec();
                    c.extend(
                        s.encode(&cx, &one_history(&items[first_new..], &cates[first_new..]))?,
                    );
                    c
                }
            }
            _ => Vec::new(),
        };
        let ext = Extension {
            old: (&enc.items, &enc.cates),
            all: (&all_items, &all_cates),
            added: items.len(),
        };
        let buckets = self
            .parts
            .iter()
            .zip(&enc.buckets)
            .map(|(p, b)| p.extend(&cx, b, &ext))
            .collect::<Result<_>>()?;
        Ok(UserEncoding {
            user: enc.user,
            items: w_items.to_vec(),
            cates: w_cates.to_vec(),
            codes,
            buckets,
        })
    }

    /// Checks an encoding against this model's layout (`trimmed`: the ids may be only the
    /// serving window).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming what does not fit.
    pub fn check_encoding(&self, enc: &UserEncoding, trimmed: bool) -> Result<()> {
        let lay = self.encoding_layout();
        let l = enc.items.len();
        let bad = |why: String| Err(Error::InvalidArgument(format!("encoding: {why}")));
        if l > self.max_len || enc.cates.len() != l {
            return bad(format!(
                "{l} items and {} categories (max_len {})",
                enc.cates.len(),
                self.max_len
            ));
        }
        if !trimmed && enc.codes.len() != l * lay.code_words {
            return bad(format!(
                "{} code words for {l} behaviors ({} each)",
                enc.codes.len(),
                lay.code_words
            ));
        }
        if enc.buckets.len() != lay.buckets.len()
            || enc
                .buckets
                .iter()
                .zip(&lay.buckets)
                .any(|(b, &n)| b.len() != n)
        {
            return bad(format!(
                "bucket tables of {:?} floats; the model's are {:?}",
                enc.buckets.iter().map(Vec::len).collect::<Vec<_>>(),
                lay.buckets
            ));
        }
        self.check_history(&enc.items, &enc.cates)
    }
}
