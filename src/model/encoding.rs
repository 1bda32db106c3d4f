//! What a user's history contributes at serving time, computed once per user
//! ([`CtrModel::encode_user`], offline by `lifelong encode`) and folded forward as new behaviors
//! arrive ([`CtrModel::extend_encoding`]):
//!
//! | part | held | used for |
//! |---|---|---|
//! | `items`, `cates` | the last `max_len` behaviors' indices, oldest first | windows, attention search, SIM hard search |
//! | `ts` | their times (a model with a time field) | the window's time gaps to the request's time; recomputing shifted parts |
//! | `codes` | the Hamming search's SimHash codes `[L, words]` | ETA's search: one XOR + popcount per behavior |
//! | `buckets[i]` | SDIM aggregation i's bucket sums (BSE) `[G, 2^τ, d_v]`, dense | SDIM: `G` lookups per candidate, flat in L |
//!
//! Each part computes and extends its own share (`Aggregation::encode` and `extend` in
//! `model/part.rs`, `Search::encode` in `model/search/mod.rs`); this file only lays them side by
//! side.
//!
//! **Time.** With a time field, every precomputed part (codes, bucket sums) sees the behaviors
//! from the encoding's "now": its newest behavior's time (`ts.last()`, the encodings file's
//! `last_ts`). Parts computed per request from `items`/`ts` (attention, DIN, the attention
//! search) see them from the request's time, by default the same "now". An extension moves
//! "now" to the newest new behavior and recomputes every part whose tokens hold the time field.

use super::part::{one_history, Extension};
use super::CtrModel;
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
    /// Their times (a model with a time field; empty otherwise). The newest is the encoding's
    /// "now" (see the module docs).
    pub ts: Vec<i64>,
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
    /// Whether the encodings hold the behaviors' times (`ts`): the model has a time field.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub time: bool,
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
            time: self.time.is_some(),
        }
    }

    /// The times a history needs: `ts` checked against the ids, with the buckets, for a model
    /// with a time field; `None` for one without (whose encodings hold no times).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a time model given no times, times of another length, or
    /// times out of order.
    pub(crate) fn history_times<'a>(
        &'a self,
        n: usize,
        ts: Option<&'a [i64]>,
    ) -> Result<Option<(&'a [i64], &'a crate::data::TimeBuckets)>> {
        let Some(tb) = self.time.as_deref() else {
            return Ok(None);
        };
        let ts = ts.ok_or_else(|| {
            Error::InvalidArgument(
                "the model has a time field (model.embedding.time): give the behaviors' timestamps"
                    .into(),
            )
        })?;
        if ts.len() != n {
            return Err(Error::InvalidArgument(format!(
                "{} timestamps for {n} behaviors",
                ts.len()
            )));
        }
        if let Some(k) = ts.windows(2).position(|w| w[1] < w[0]) {
            return Err(Error::InvalidArgument(format!(
                "timestamps not chronological: behavior {} ({}) is earlier than behavior {k} ({})",
                k + 1,
                ts[k + 1],
                ts[k]
            )));
        }
        Ok(Some((ts, tb)))
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
        self.encode_user_at(user, items, cates, None)
    }

    /// [`CtrModel::encode_user`] with the behaviors' times `ts` (chronological), which a model
    /// with a time field needs (and one without ignores). The encoding's "now" is the newest
    /// behavior's time.
    ///
    /// # Errors
    /// As [`CtrModel::encode_user`], and [`Error::InvalidArgument`] for missing or malformed
    /// times.
    pub fn encode_user_at(
        &self,
        user: u32,
        items: &[u32],
        cates: &[u32],
        ts: Option<&[i64]>,
    ) -> Result<UserEncoding> {
        self.check_history(items, cates)?;
        let times = self.history_times(items.len(), ts)?;
        let cx = self.cx();
        let cut = items.len().saturating_sub(self.max_len);
        let (items, cates) = (&items[cut..], &cates[cut..]);
        let times = times.map(|(t, tb)| (&t[cut..], tb));
        let from_row = |from: usize| times.map(|(t, tb)| (&t[from..], tb));
        let codes = match &self.search {
            Some(s) if s.code_words() > 0 => s.encode(&cx, &one_history(items, cates, times)?)?,
            _ => Vec::new(),
        };
        let mut buckets = Vec::with_capacity(self.parts.len());
        for p in &self.parts {
            if p.encoding_floats(&cx) == 0 {
                buckets.push(Vec::new());
                continue;
            }
            let from = items.len().saturating_sub(cx.window_len(p.window()));
            // A window's "now" is still the newest behavior's time (the last row of every window).
            buckets.push(p.encode(
                &cx,
                &one_history(&items[from..], &cates[from..], from_row(from))?,
            )?);
        }
        Ok(UserEncoding {
            user,
            items: items.to_vec(),
            cates: cates.to_vec(),
            ts: times.map(|(t, _)| t.to_vec()).unwrap_or_default(),
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
        self.extend_encoding_at(enc, items, cates, None)
    }

    /// [`CtrModel::extend_encoding`] with the new behaviors' times (a model with a time field
    /// needs them, no earlier than the encoding's newest): "now" moves to the newest, and every
    /// part whose tokens hold the time field is recomputed from the kept window.
    ///
    /// # Errors
    /// As [`CtrModel::extend_encoding`], and [`Error::InvalidArgument`] for missing, malformed
    /// or earlier times.
    pub fn extend_encoding_at(
        &self,
        enc: &UserEncoding,
        items: &[u32],
        cates: &[u32],
        ts: Option<&[i64]>,
    ) -> Result<UserEncoding> {
        self.check_encoding(enc, false)?;
        self.check_history(items, cates)?;
        let all_ts: Option<Vec<i64>> = ts.map(|t| [&enc.ts[..], t].concat());
        let times = self.history_times(enc.items.len() + items.len(), all_ts.as_deref())?;
        let cx = self.cx();
        let old = enc.items.len();
        let all_items = [&enc.items[..], items].concat();
        let all_cates = [&enc.cates[..], cates].concat();
        let drop = all_items.len().saturating_sub(self.max_len);
        let (w_items, w_cates) = (&all_items[drop..], &all_cates[drop..]);
        let w_times = times.map(|(t, tb)| (&t[drop..], tb));
        let codes = match &self.search {
            Some(s) if s.code_words() > 0 => {
                if s.codes_shift(&cx) {
                    s.encode(&cx, &one_history(w_items, w_cates, w_times)?)?
                } else {
                    // Old codes still in the window, then the new behaviors still in it.
                    let first_new = drop.saturating_sub(old);
                    let mut c = enc.codes[drop.min(old) * s.code_words()..].to_vec();
                    c.extend(s.encode(
                        &cx,
                        &one_history(&items[first_new..], &cates[first_new..], None)?,
                    )?);
                    c
                }
            }
            _ => Vec::new(),
        };
        let ext = Extension {
            old: (&enc.items, &enc.cates),
            all: (&all_items, &all_cates),
            added: items.len(),
            time: times,
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
            ts: w_times.map(|(t, _)| t.to_vec()).unwrap_or_default(),
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
        if enc.ts.len() != if lay.time { l } else { 0 } {
            return bad(format!(
                "{} timestamps for {l} behaviors (the model {} a time field)",
                enc.ts.len(),
                if lay.time { "has" } else { "has no" }
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
