//! A batch's tokens of a view as tensors on the model's device, for the plan's kernel ops
//! ([`crate::kernels`]): per field, the batch's unique rows (read from the host tables) and
//! each token's index among them cross to the device, never the `[n, width]` tokens
//! themselves; the tokens are assembled there by `index_select`.

use crate::data::Batch;
use crate::embedding::{Field, Tables, ViewSpec};
use crate::window::Window;
use crate::{Error, Result};
use candle_core::{Device, Tensor};

/// The targets' `[B, width]` and the packed history's `[n, width]` tokens of a view.
#[derive(Debug, Clone)]
pub struct ViewTokens {
    /// `[B, width]`.
    pub targets: Tensor,
    /// `[n, width]`.
    pub history: Tensor,
}

/// The view's tokens of `batch` on `device` (see the module docs).
///
/// # Errors
/// [`Error::InvalidArgument`] for ids outside a table or a view with the user field.
pub fn view_tokens(
    tables: &Tables,
    view: &ViewSpec,
    batch: &Batch,
    device: &Device,
) -> Result<ViewTokens> {
    let b = batch.size();
    let (mut targets, mut history) = (Vec::new(), Vec::new());
    for f in &view.fields {
        let table = tables.table(f.table);
        let (rows, local): (Vec<u32>, Vec<u32>) = match f.field {
            Field::Pos | Field::Time => {
                let mut local = vec![0u32; b];
                local.extend_from_slice(batch.hist_ids(f.field)?);
                ((0..table.rows() as u32).collect(), local)
            }
            Field::User => {
                return Err(Error::InvalidArgument(
                    "a behavior view cannot hold the user field".into(),
                ))
            }
            field => {
                let ids = batch.full_ids(field)?;
                (ids.unique.to_vec(), ids.local.to_vec())
            }
        };
        table.check_ids(rows.last().map(std::slice::from_ref).unwrap_or(&[]))?;
        if let Some(&bad) = local.iter().find(|&&l| l as usize >= rows.len()) {
            return Err(Error::InvalidArgument(format!(
                "`{}` index {bad} is outside the table",
                table.name()
            )));
        }
        let mut data = Vec::with_capacity(rows.len() * f.dim);
        for &r in &rows {
            data.extend_from_slice(table.row(r));
        }
        let unique = Tensor::from_vec(data, (rows.len(), f.dim), device)?;
        let n_local = local.len();
        let local = Tensor::from_vec(local, n_local, device)?;
        let tokens = unique.index_select(&local, 0)?;
        targets.push(tokens.narrow(0, 0, b)?);
        history.push(tokens.narrow(0, b, n_local - b)?);
    }
    let cat = |v: Vec<Tensor>| -> Result<Tensor> {
        Ok(match v.len() {
            1 => v.into_iter().next().expect("one field"),
            _ => Tensor::cat(&v, 1)?.contiguous()?,
        })
    };
    Ok(ViewTokens {
        targets: cat(targets)?,
        history: cat(history)?,
    })
}

/// A `[B, k]` u32 top-k of positions within each sample's history (unused slots
/// [`crate::data::batch::NONE`]), brought to the host as a [`Window`] of packed rows.
pub fn window_of_topk(top: &Tensor, offsets: &[usize]) -> Result<Window> {
    let per: Vec<Vec<u32>> = top
        .to_vec2::<u32>()?
        .into_iter()
        .zip(offsets)
        .map(|(row, &start)| {
            row.into_iter()
                .filter(|&p| p != crate::data::batch::NONE)
                .map(|p| p + start as u32)
                .collect()
        })
        .collect();
    Ok(Window::from_rows(per))
}
