//! Embeddings: host tables per (field, role), and per step one flat leaf of the rows the step
//! reads, with sparse row gradients.
//!
//! A table lives in host memory. Per training step only the rows the differentiable part reads
//! are gathered ([`LeafBuilder`]) into one leaf [`candle_core::Var`]; ops read tokens from it
//! through a [`TokenIndex`] ([`gather()`], or a fused op such as SDIM's), candle's backward produces a
//! gradient of the leaf's size only, and the row-wise optimiser ([`crate::optim::RowWise`])
//! updates just those rows. A step so costs O(rows touched · dim), never O(table).
//!
//! ```text
//! batch ids ─ LeafBuilder ─▶ flat leaf [Σ_t u_t·d_t] (rows of item | cate | pos | … side by side)
//!    flat ─ gather(TokenIndex) ─▶ [m, width] ─ … ─ backward ─▶ ∂flat ─ Leaves::row_grads ─▶ per table
//! ```

pub mod gather;
pub mod leaves;
pub mod table;

pub use crate::data::batch::{unique_remap, Field, SparseIds, NONE};
pub use gather::gather;
pub use leaves::{LeafBuilder, Leaves, RowGrad, Segment, TokenIndex, Tokens};
pub use table::{EmbeddingTable, Role, TableKey, Tables, ViewField, ViewSpec, VocabSizes};
