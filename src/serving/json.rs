//! The JSON request format of `lifelong serve` and [`Scorer::handle_json`].
//!
//! Request: `{"user": ID, "candidates": [ITEM | {"item": ITEM, "cate": CATE}, …]}`, or with
//! `"history": {"items": [ITEM, …], "cates": [CATE, …]?}` instead of (or besides) `"user"`; ids
//! are numbers or strings; `"time": T` scores at that time (a model with a time field; default:
//! the user's newest behavior's time) and `"history"` then takes `"ts": [T, …]`. Response: `{"scores": [p, …]}` (200), or `{"error": "…"}` with 400
//! (a malformed or invalid request), 404 (unknown user), 421 (a user of another shard than the
//! one this replica serves: the message names it) or 500 (an internal error).

use super::scorer::{Candidate, Scorer, User};
use crate::data::RawId;
use crate::Error;

impl Scorer {
    /// Answers one JSON request: `(HTTP status, JSON body)`. Never panics.
    ///
    /// Request: `{"user": ID, "candidates": [ITEM | {"item": ITEM, "cate": CATE}, …]}`, or with
    /// `"history": {"items": [ITEM, …], "cates": [CATE, …]?}` instead of (or besides) `"user"`;
    /// ids are numbers or strings. Response: `{"scores": [p, …]}` (200), or `{"error": "…"}`
    /// with 400 (malformed request), 404 (unknown user), 421 (a user of another shard) or 500.
    pub fn handle_json(&self, body: &[u8]) -> (u16, String) {
        let (status, body, _) = self.answer_json(body);
        (status, body)
    }

    /// [`Scorer::handle_json`], and how many candidates were scored (0 unless 200).
    pub fn answer_json(&self, body: &[u8]) -> (u16, String, usize) {
        let run = || -> std::result::Result<(String, usize), (u16, String)> {
            let req: Request = serde_json::from_slice(body)
                .map_err(|e| (400, format!("malformed request: {e}")))?;
            let user = match (req.user, req.history) {
                (id, Some(h)) => User::History {
                    id: id.map(RawId::from),
                    items: h.items.into_iter().map(RawId::from).collect(),
                    cates: h.cates.map(|c| c.into_iter().map(RawId::from).collect()),
                    ts: h.ts,
                },
                (Some(id), None) => User::Id(id.into()),
                (None, None) => return Err((400, "give \"user\" or \"history\"".into())),
            };
            if let User::Id(id) = &user {
                if !self.has_encoding(id) {
                    return Err(match self.misrouted(id) {
                        Some(msg) => (421, msg),
                        None => (404, format!("unknown user {id}: no encoding for it")),
                    });
                }
            }
            let cands: Vec<Candidate> = req.candidates.into_iter().map(Candidate::from).collect();
            let scores = self
                .score_at(&user, &cands, req.time)
                .map_err(|e| (status_of(&e), e.to_string()))?;
            let n = scores.len();
            let body =
                serde_json::to_string(&Response { scores }).map_err(|e| (500, e.to_string()))?;
            Ok((body, n))
        };
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
            .unwrap_or_else(|_| Err((500, "internal error while scoring".into())));
        match out {
            Ok((body, n)) => (200, body, n),
            Err((status, msg)) => (status, serde_json::json!({ "error": msg }).to_string(), 0),
        }
    }
}

/// The HTTP status of a scoring error: the request's fault (400) or ours (500).
fn status_of(e: &Error) -> u16 {
    match e {
        Error::InvalidArgument(_) | Error::IdOutOfRange { .. } => 400,
        _ => 500,
    }
}

/// A raw id in JSON: a number or a string.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
enum JsonId {
    Int(i64),
    Str(String),
}

impl From<JsonId> for RawId {
    fn from(j: JsonId) -> Self {
        match j {
            JsonId::Int(x) => RawId::Int(x),
            JsonId::Str(s) => RawId::Str(s),
        }
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum JsonCandidate {
    Id(JsonId),
    Full { item: JsonId, cate: Option<JsonId> },
}

impl From<JsonCandidate> for Candidate {
    fn from(c: JsonCandidate) -> Self {
        match c {
            JsonCandidate::Id(i) => Candidate::item(i.into()),
            JsonCandidate::Full { item, cate } => Candidate {
                item: item.into(),
                cate: cate.map(RawId::from),
            },
        }
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonHistory {
    items: Vec<JsonId>,
    cates: Option<Vec<JsonId>>,
    ts: Option<Vec<i64>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    user: Option<JsonId>,
    history: Option<JsonHistory>,
    candidates: Vec<JsonCandidate>,
    time: Option<i64>,
}

#[derive(Debug, serde::Serialize)]
struct Response {
    scores: Vec<f32>,
}
