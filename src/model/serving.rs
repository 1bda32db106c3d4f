//! Serving: one user, many candidates, from the user's encoding.
//!
//! A [`UserEncoding`] holds what the model needs of a user's history at serving time, computed
//! once per user ([`CtrModel::encode_user`], offline by `lifelong encode`) and folded forward as
//! new behaviors arrive ([`CtrModel::extend_encoding`]):
//!
//! | part | held | used for |
//! |---|---|---|
//! | `items`, `cates` | the last `max_len` behaviors' indices, oldest first | windows, attention search, SIM hard search |
//! | `codes` | the Hamming search's SimHash codes `[L, words]` | ETA's search: one XOR + popcount per behavior |
//! | `buckets[i]` | SDIM aggregation i's bucket sums (BSE) `[G, 2^τ, d_v]`, dense | SDIM: `G` lookups per candidate, flat in L |
//!
//! [`CtrModel::score_encoded`] then does the user-side work once per request (the window's tokens
//! gathered once, the shared windows projected once) and the per-candidate work for all
//! candidates together. The discrete decisions (SimHash codes and signatures, top-k) go through
//! the very functions training and `eval` use, so the probabilities equal `eval`'s (tested for
//! every preset). The auxiliary heads are training-only and not computed.

use super::{Agg, CtrModel, SearchUnit};
use crate::aggregate::sdim::add_to_buckets;
use crate::config::{AggregateConfig, View, WindowConfig};
use crate::data::Batch;
use crate::embedding::{Field, ViewSpec};
use crate::search::{self, signature, token_codes, topk_hamming_codes, topk_row};
use crate::{Error, Result};
use candle_core::Tensor;
use rayon::prelude::*;
use std::ops::Range;

/// Candidates scored per forward at most when every candidate reads a long window (DIN over the
/// whole history), so that `candidates × window` rows stay bounded.
const MAX_REPLICATED_ROWS: usize = 1 << 20;

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

impl CtrModel {
    /// The layout of this model's encodings.
    pub fn encoding_layout(&self) -> EncodingLayout {
        let code_words = match &self.search {
            SearchUnit::Hamming { proj, .. } => proj.as_tensor().dim(1).unwrap_or(0).div_ceil(64),
            _ => 0,
        };
        let buckets = self
            .aggs
            .iter()
            .map(|a| match a {
                Agg::Sdim { unit, values, .. } => {
                    unit.groups * (1 << unit.tau) * self.tables.view(*values).width
                }
                _ => 0,
            })
            .collect();
        let searches = !matches!(self.search, SearchUnit::None);
        let serving_window = if searches {
            self.max_len
        } else {
            self.cfg
                .aggregate
                .iter()
                .filter(|a| !matches!(a, AggregateConfig::Sdim(_)))
                .map(|a| self.window_len(a.window()))
                .max()
                .unwrap_or(0)
        };
        EncodingLayout {
            max_len: self.max_len,
            code_words,
            buckets,
            serving_window,
        }
    }

    fn window_len(&self, w: WindowConfig) -> usize {
        match w {
            WindowConfig::Recent(n) => n.min(self.max_len),
            _ => self.max_len,
        }
    }

    /// Whether a view's tokens depend on the behaviors' positions (so an encoding of them
    /// shifts as behaviors arrive and is recomputed rather than folded).
    fn positional(&self, view: View) -> bool {
        self.tables
            .view(view)
            .fields
            .iter()
            .any(|f| f.field == Field::Pos)
    }

    fn check_history(&self, items: &[u32], cates: &[u32]) -> Result<()> {
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

    /// The tokens of `view` for behaviors `rows` of a window of `l` (position `l − j` for row j).
    fn window_tokens(
        &self,
        view: &ViewSpec,
        items: &[u32],
        cates: &[u32],
        rows: impl Iterator<Item = usize>,
    ) -> Result<Vec<f32>> {
        let (l, w) = (items.len(), view.width);
        let mut out = Vec::with_capacity(w * rows.size_hint().0);
        for j in rows {
            let start = out.len();
            out.resize(start + w, 0.0);
            for f in &view.fields {
                let id = match f.field {
                    Field::Item => items[j],
                    Field::Cate => cates[j],
                    Field::Pos => (l - j) as u32,
                    Field::User => return Err(Error::Config("a view with the user field".into())),
                };
                let t = self.tables.table(f.table);
                t.check_ids(&[id])?;
                out[start + f.col..start + f.col + f.dim].copy_from_slice(t.row(id));
            }
        }
        Ok(out)
    }

    /// SimHash codes of a history's tokens in `view` (the same computation as training's).
    fn history_codes(
        &self,
        view: View,
        hash: &search::SimHash,
        items: &[u32],
        cates: &[u32],
    ) -> Result<Vec<u64>> {
        let b = Batch::from_samples(&[0], &[0], &[0], &[(items, cates)]);
        Ok(token_codes(&self.tables, self.tables.view(view), hash, &b)?.1)
    }

    /// SDIM aggregation `i`'s bucket sums over a history (the whole of it).
    fn bucket_table(&self, i: usize, items: &[u32], cates: &[u32]) -> Result<Vec<f32>> {
        let Agg::Sdim {
            unit,
            proj,
            keys,
            values,
        } = &self.aggs[i]
        else {
            return Ok(Vec::new());
        };
        let v = self.tables.view(*values);
        let mut table = vec![0f32; unit.groups * (1 << unit.tau) * v.width];
        self.fold_buckets(&mut table, unit, proj, *keys, v, items, cates, 1.0)?;
        Ok(table)
    }

    /// Adds (`sign = 1`) or takes out (`-1`) a history's rows in a bucket table.
    #[allow(clippy::too_many_arguments)]
    fn fold_buckets(
        &self,
        table: &mut [f32],
        unit: &crate::aggregate::Sdim,
        proj: &candle_core::Var,
        keys: View,
        values: &ViewSpec,
        items: &[u32],
        cates: &[u32],
        sign: f32,
    ) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let hash = Self::simhash(proj)?;
        let codes = self.history_codes(keys, &hash, items, cates)?;
        let (g, words) = (unit.groups, hash.words());
        let sigs: Vec<u16> = codes
            .chunks_exact(words)
            .flat_map(|c| (0..g).map(move |q| signature(c, q, unit.tau) as u16))
            .collect();
        let vals = self.window_tokens(values, items, cates, 0..items.len())?;
        add_to_buckets(table, &vals, values.width, &sigs, g, unit.tau, sign);
        Ok(())
    }

    /// The encoding of user `user` whose history is `items`/`cates` (oldest first; only the last
    /// `max_len` count, as in training).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for lists of different lengths or ids outside the tables.
    pub fn encode_user(&self, user: u32, items: &[u32], cates: &[u32]) -> Result<UserEncoding> {
        self.check_history(items, cates)?;
        let cut = items.len().saturating_sub(self.max_len);
        let (items, cates) = (&items[cut..], &cates[cut..]);
        let codes = match &self.search {
            SearchUnit::Hamming { proj, view, .. } => {
                self.history_codes(*view, &Self::simhash(proj)?, items, cates)?
            }
            _ => Vec::new(),
        };
        let mut buckets = Vec::with_capacity(self.aggs.len());
        for (i, cfg) in self.cfg.aggregate.iter().enumerate() {
            let from = items.len().saturating_sub(self.window_len(cfg.window()));
            buckets.push(self.bucket_table(i, &items[from..], &cates[from..])?);
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
        let (old, added) = (enc.items.len(), items.len());
        let all_items = [&enc.items[..], items].concat();
        let all_cates = [&enc.cates[..], cates].concat();
        let drop = all_items.len().saturating_sub(self.max_len);
        let (w_items, w_cates) = (&all_items[drop..], &all_cates[drop..]);
        let codes = match &self.search {
            SearchUnit::Hamming { proj, view, .. } => {
                let hash = Self::simhash(proj)?;
                if self.positional(*view) {
                    self.history_codes(*view, &hash, w_items, w_cates)?
                } else {
                    // Old codes still in the window, then the new behaviors still in it.
                    let words = hash.words();
                    let first_new = drop.saturating_sub(old);
                    let mut c = enc.codes[drop.min(old) * words..].to_vec();
                    c.extend(self.history_codes(
                        *view,
                        &hash,
                        &items[first_new..],
                        &cates[first_new..],
                    )?);
                    c
                }
            }
            _ => Vec::new(),
        };
        let mut buckets = Vec::with_capacity(self.aggs.len());
        for (i, (a, cfg)) in self.aggs.iter().zip(&self.cfg.aggregate).enumerate() {
            let Agg::Sdim {
                unit,
                proj,
                keys,
                values,
            } = a
            else {
                buckets.push(Vec::new());
                continue;
            };
            let wl = self.window_len(cfg.window());
            let total = all_items.len();
            let new_from = total - wl.min(total); // the new window: all_*[new_from..]
            let old_from = old - wl.min(old); // the old window: enc.*[old_from..]
            let entering = added.min(total - new_from);
            if self.positional(*keys) || self.positional(*values) || entering == total - new_from {
                buckets.push(self.bucket_table(
                    i,
                    &all_items[new_from..],
                    &all_cates[new_from..],
                )?);
                continue;
            }
            // Rows of the old window that leave: enc.*[old_from..new_from] (new_from < old here).
            let mut table = enc.buckets[i].clone();
            let v = self.tables.view(*values);
            let (li, lc) = (
                &enc.items[old_from..new_from.max(old_from)],
                &enc.cates[old_from..new_from.max(old_from)],
            );
            self.fold_buckets(&mut table, unit, proj, *keys, v, li, lc, -1.0)?;
            let (ei, ec) = (&items[added - entering..], &cates[added - entering..]);
            self.fold_buckets(&mut table, unit, proj, *keys, v, ei, ec, 1.0)?;
            buckets.push(table);
        }
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
        self.check_history(items, cates)?;
        self.check_encoding(enc, true)?;
        let c = items.len();
        if c == 0 {
            return Ok(Vec::new());
        }
        let l = enc.items.len();
        let t = &self.tables;
        let dev = &self.device;
        let cand = Batch::from_samples(
            &vec![enc.user; c],
            items,
            cates,
            &vec![(&[][..], &[][..]); c],
        );
        let (hi, hc) = (&enc.items[..], &enc.cates[..]);
        // The candidates' tokens `[C, w]` and the window's `[L, w]` of each view, gathered once
        // per request (views over the same tables share one gather) and read by every part.
        type Cache = std::cell::RefCell<Vec<(ViewSpec, Tensor)>>;
        let (target_cache, window_cache): (Cache, Cache) = Default::default();
        let cached = |cache: &Cache, view: View, make: &dyn Fn(&ViewSpec) -> Result<Tensor>| {
            let v = t.view(view);
            if let Some((_, x)) = cache.borrow().iter().find(|(s, _)| s == v) {
                return Ok(x.clone());
            }
            let x = make(v)?;
            cache.borrow_mut().push((v.clone(), x.clone()));
            Ok::<Tensor, Error>(x)
        };
        let tokens = |view: View| {
            cached(&target_cache, view, &|v| {
                let x = search::target_tokens(t, v, &cand)?;
                Ok(Tensor::from_vec(x, (c, v.width), dev)?)
            })
        };
        let window = |view: View| {
            cached(&window_cache, view, &|v| {
                let x = self.window_tokens(v, hi, hc, 0..l)?;
                Ok(Tensor::from_vec(x, (l, v.width), dev)?)
            })
        };
        let retrieved: Option<Vec<Vec<u32>>> = match &self.search {
            SearchUnit::None => None,
            SearchUnit::Hamming { proj, k, view } => {
                let hash = Self::simhash(proj)?;
                if enc.codes.len() != l * hash.words() {
                    return Err(Error::InvalidArgument(format!(
                        "encoding: {} code words for {l} behaviors",
                        enc.codes.len()
                    )));
                }
                let (tc, _) = token_codes(t, t.view(*view), &hash, &cand)?;
                let (words, bits) = (hash.words(), hash.bits() as u32);
                Some(
                    tc.par_chunks(words)
                        .map_init(Vec::new, |scratch, q| {
                            let mut out = Vec::with_capacity((*k).min(l));
                            topk_hamming_codes(q, &enc.codes, bits, *k, &mut out, scratch);
                            out
                        })
                        .collect(),
                )
            }
            SearchUnit::Attention { k, scorer, view } => {
                let v = t.view(*view);
                let q = self
                    .search_query(scorer, &tokens(*view)?)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                // The window's tokens transposed, once per request; scores 64 candidates at a time.
                let w = v.width;
                let e = window(*view)?.flatten_all()?.to_vec1::<f32>()?;
                let mut et = vec![0f32; w * l];
                for (j, row) in e.chunks_exact(w).enumerate() {
                    for (c, &x) in row.iter().enumerate() {
                        et[c * l + j] = x;
                    }
                }
                let per: Vec<Vec<Vec<u32>>> = q
                    .par_chunks(w * 64)
                    .map(|qs| {
                        let nq = qs.len() / w;
                        let mut scores = vec![0f32; nq * l];
                        search::query_scores(qs, &et, l, &mut scores);
                        scores
                            .chunks(l.max(1))
                            .take(nq)
                            .map(|s| {
                                let mut out = Vec::with_capacity((*k).min(l));
                                topk_row(s, None, *k, &mut out);
                                out
                            })
                            .collect()
                    })
                    .collect();
                Some(per.into_iter().flatten().collect())
            }
            SearchUnit::Category { k } => Some(
                cates
                    .iter()
                    .map(|&cc| {
                        (0..l)
                            .rev()
                            .filter(|&j| hc[j] == cc)
                            .take(*k)
                            .map(|j| j as u32)
                            .collect()
                    })
                    .collect(),
            ),
        };
        let t_rep = tokens(View::Representation)?;
        let mut head_in = vec![t_rep.clone()];
        for (i, (a, cfg)) in self.aggs.iter().zip(&self.cfg.aggregate).enumerate() {
            let shared: Option<Range<usize>> = match cfg.window() {
                WindowConfig::Retrieved => None,
                w => Some(l - self.window_len(w).min(l)..l),
            };
            let rows_of = |b: usize| -> Vec<usize> {
                match (&shared, &retrieved) {
                    (Some(r), _) => r.clone().collect(),
                    (None, Some(ret)) => ret[b].iter().map(|&j| j as usize).collect(),
                    (None, None) => Vec::new(),
                }
            };
            head_in.push(match a {
                Agg::Din {
                    unit,
                    view,
                    product,
                } => {
                    let v = t.view(*view);
                    let tt = tokens(*view)?;
                    let per = shared.as_ref().map_or(1, |r| r.len().max(1));
                    let chunk = (MAX_REPLICATED_ROWS / per).max(1);
                    let mut parts = Vec::new();
                    for start in (0..c).step_by(chunk) {
                        let end = (start + chunk).min(c);
                        let mut lens = Vec::with_capacity(end - start);
                        let mut rows = Vec::new();
                        for b in start..end {
                            let r = rows_of(b);
                            lens.push(r.len() as u32);
                            rows.extend(r);
                        }
                        let n = rows.len();
                        let idx: Vec<u32> = rows.iter().map(|&j| j as u32).collect();
                        let seq = if n == 0 {
                            Tensor::zeros((0, v.width), candle_core::DType::F32, dev)?
                        } else {
                            window(*view)?.index_select(&Tensor::from_vec(idx, n, dev)?, 0)?
                        };
                        let tb = tt.narrow(0, start, end - start)?;
                        let packed = crate::aggregate::Packed::from_lens(&lens);
                        parts.push(unit.forward_t(&tb, &seq, &packed, false)?);
                    }
                    let u = Tensor::cat(&parts, 0)?;
                    if *product {
                        let p = (&u * &tt)?;
                        Tensor::cat(&[&u, &p], 1)?
                    } else {
                        u
                    }
                }
                Agg::Attention { unit, keys, values } => {
                    let (vk, vv) = (t.view(*keys), t.view(*values));
                    let tk = tokens(*keys)?;
                    let tv = if keys == values {
                        tk.clone()
                    } else {
                        tokens(*values)?
                    };
                    match &shared {
                        Some(r) => {
                            let m = r.len();
                            let kk = window(*keys)?.narrow(0, r.start, m)?;
                            let vals = window(*values)?.narrow(0, r.start, m)?;
                            unit.forward_shared(&tk, &kk, &vals, &tv)?
                        }
                        None => {
                            let ret = retrieved.as_ref().ok_or_else(|| {
                                Error::Config("a retrieved window without a search".into())
                            })?;
                            if ret.iter().all(Vec::is_empty) {
                                // No candidate retrieved anything (an empty history): zeros.
                                let none =
                                    Tensor::zeros((0, vk.width), candle_core::DType::F32, dev)?;
                                let nonev =
                                    Tensor::zeros((0, vv.width), candle_core::DType::F32, dev)?;
                                unit.forward_shared(&tk, &none, &nonev, &tv)?
                            } else {
                                // Project the user's window once; each candidate reads its rows.
                                let (kk, vals) = (window(*keys)?, window(*values)?);
                                let (kp, vp) = unit.project(&kk, &vals)?;
                                unit.forward_indexed(&tk, &kp, &vp, ret, &tv)?
                            }
                        }
                    }
                }
                Agg::Sdim {
                    unit,
                    proj,
                    keys,
                    values,
                } => {
                    let hash = Self::simhash(proj)?;
                    let (tc, _) = token_codes(t, t.view(*keys), &hash, &cand)?;
                    let (g, nb, d) = (unit.groups, 1usize << unit.tau, t.view(*values).width);
                    let table = &enc.buckets[i];
                    let words = hash.words();
                    let mut sums = vec![0f32; c * g * d];
                    for (code, s) in tc.chunks_exact(words).zip(sums.chunks_exact_mut(g * d)) {
                        for q in 0..g {
                            let sig = signature(code, q, unit.tau) as usize;
                            s[q * d..(q + 1) * d].copy_from_slice(
                                &table[(q * nb + sig) * d..(q * nb + sig + 1) * d],
                            );
                        }
                    }
                    Tensor::from_vec(unit.from_sums(&sums, d), (c, d), dev)?
                }
            });
        }
        if let Some(u) = t.user() {
            let tab = t.table(u);
            tab.check_ids(&[enc.user])?;
            let row = Tensor::from_slice(tab.row(enc.user), (1, tab.dim()), dev)?;
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
