//! The statistics a normalisation uses and the fold of a batch's statistics into running ones,
//! shared by [`super::Dice`] and [`super::BatchNorm`].

use crate::Result;
use candle_core::{Tensor, Var};

/// The statistics a normalisation uses: the `fixed` running ones (evaluation), or the batch's
/// mean and biased variance over the rows; and whether they are the batch's.
pub(super) fn normalising_stats(
    xs: &Tensor,
    fixed: Option<(&Tensor, &Tensor)>,
) -> Result<(Tensor, Tensor, bool)> {
    Ok(match fixed {
        Some((m, v)) => (m.clone(), v.clone(), false),
        None => {
            let mean = xs.mean(0)?;
            let var = xs.broadcast_sub(&mean)?.sqr()?.mean(0)?;
            (mean, var, true)
        }
    })
}

/// Folds a batch's statistics over `n` rows (mean, biased variance) into running ones, as
/// PyTorch's batch norm does: running ← (1 − m)·running + m·batch, with the unbiased batch
/// variance `var·n/(n − 1)` (`var` itself when n = 1; nothing when n = 0). Dice's and
/// BatchNorm's running statistics both move by it.
pub(crate) fn fold_running(
    running_mean: &Var,
    running_var: &Var,
    momentum: f32,
    mean: &Tensor,
    var: &Tensor,
    n: usize,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let m = momentum as f64;
    let unbias = if n > 1 {
        n as f64 / (n as f64 - 1.0)
    } else {
        1.0
    };
    let rm = ((running_mean.as_tensor() * (1.0 - m))? + (mean.detach() * m)?)?;
    let rv = ((running_var.as_tensor() * (1.0 - m))? + (var.detach() * (m * unbias))?)?;
    running_mean.set(&rm)?;
    running_var.set(&rv)?;
    Ok(())
}
