//! The grid: `--grid KEY=V1,V2,…` parsed (top-level commas only), expanded to its Cartesian
//! product or a seeded sample of it.

use super::*;

/// Splits `s` on its top-level commas: commas inside brackets, braces or quotes (TOML arrays,
/// inline tables, strings) do not split. Each part is trimmed.
///
/// `0.01, 0.1` → `["0.01", "0.1"]`; `[200, 80],[64]` → `["[200, 80]", "[64]"]`;
/// `{ recent = 20 },"all"` → `["{ recent = 20 }", "\"all\""]`.
///
/// # Errors
/// [`Error::InvalidArgument`] for an empty part (`a,,b`, a trailing comma), an unclosed or
/// unmatched bracket or brace, or an unterminated string.
pub fn split_top_level(s: &str) -> Result<Vec<String>> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut open: Vec<char> = Vec::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in s.chars() {
        if let Some(q) = quote {
            cur.push(c);
            if escaped {
                escaped = false;
            } else if q == '"' && c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => {
                quote = Some(c);
                cur.push(c);
            }
            '[' | '{' => {
                open.push(c);
                cur.push(c);
            }
            ']' | '}' => {
                let want = if c == ']' { '[' } else { '{' };
                if open.pop() != Some(want) {
                    return Err(invalid(format!("`{s}`: unmatched `{c}`")));
                }
                cur.push(c);
            }
            ',' if open.is_empty() => parts.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if let Some(q) = quote {
        return Err(invalid(format!(
            "`{s}`: unterminated string (no closing {q})"
        )));
    }
    if let Some(c) = open.last() {
        return Err(invalid(format!("`{s}`: unclosed `{c}`")));
    }
    parts.push(cur);
    let parts: Vec<String> = parts.into_iter().map(|p| p.trim().to_string()).collect();
    if let Some(i) = parts.iter().position(|p| p.is_empty()) {
        return Err(invalid(format!(
            "`{s}`: value {} of {} is empty",
            i + 1,
            parts.len()
        )));
    }
    Ok(parts)
}

/// One key of the grid and the values it takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GridAxis {
    /// A dotted config path, as `--set` takes it (`train.sparse_lr`, `model.aggregate.1.window`).
    pub key: String,
    /// Its values, TOML text as `--set` takes it, in the order given.
    pub values: Vec<String>,
}

impl GridAxis {
    /// The last segment of the key that is not a list index (`model.aggregate.1.window` →
    /// `window`): a short label.
    pub fn short_key(&self) -> &str {
        self.key
            .rsplit('.')
            .find(|k| k.parse::<usize>().is_err())
            .unwrap_or(&self.key)
    }
}

/// Parses one `--grid KEY=V1,V2,...` (values split by [`split_top_level`]).
///
/// # Errors
/// [`Error::InvalidArgument`] naming the argument: no `=`, an empty key or key segment, an
/// empty value, or a value listed twice.
pub fn parse_grid(arg: &str) -> Result<GridAxis> {
    let bad = |why: String| invalid(format!("--grid `{arg}`: {why}"));
    let (key, values) = arg
        .split_once('=')
        .ok_or_else(|| bad("expected KEY=V1,V2,...".into()))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(|k| k.trim().is_empty()) {
        return Err(bad("empty key in the path".into()));
    }
    let values = split_top_level(values).map_err(|e| bad(e.to_string()))?;
    for (i, v) in values.iter().enumerate() {
        if values[..i].contains(v) {
            return Err(bad(format!("value `{v}` is listed twice")));
        }
    }
    Ok(GridAxis {
        key: key.to_string(),
        values,
    })
}

/// Parses every `--grid` argument and checks the keys: each at most once across the grid, and
/// none also given by `--set` (`sets`, `KEY=VALUE`).
///
/// # Errors
/// As [`parse_grid`]; [`Error::InvalidArgument`] naming a key given twice.
pub fn parse_axes(grid: &[String], sets: &[String]) -> Result<Vec<GridAxis>> {
    let axes = grid
        .iter()
        .map(|g| parse_grid(g))
        .collect::<Result<Vec<_>>>()?;
    for (i, a) in axes.iter().enumerate() {
        if axes[..i].iter().any(|b| b.key == a.key) {
            return Err(invalid(format!(
                "--grid {}: the key is given by two --grid arguments (list its values in one)",
                a.key
            )));
        }
        if sets
            .iter()
            .any(|s| s.split_once('=').map(|(k, _)| k.trim()) == Some(a.key.as_str()))
        {
            return Err(invalid(format!(
                "--grid {}: the key is also given by --set (drop one of them)",
                a.key
            )));
        }
    }
    Ok(axes)
}

/// The number of combinations of `axes` (1 for no axis).
///
/// # Errors
/// [`Error::InvalidArgument`] when the count does not fit in a `usize`.
pub fn grid_size(axes: &[GridAxis]) -> Result<usize> {
    axes.iter().try_fold(1usize, |n, a| {
        n.checked_mul(a.values.len())
            .ok_or_else(|| invalid("the grid has more combinations than can be counted"))
    })
}

/// Combination `index` of the Cartesian product of `axes` (one value per axis), in the order of
/// nested loops over the axes as given: the first axis varies slowest, the last fastest.
/// `index` must be below [`grid_size`].
pub fn combination(axes: &[GridAxis], index: usize) -> Vec<String> {
    let mut rest = index;
    let mut out = vec![String::new(); axes.len()];
    for (slot, a) in out.iter_mut().zip(axes).rev() {
        let n = a.values.len().max(1);
        *slot = a.values[rest % n].clone();
        rest /= n;
    }
    out
}

/// `n` distinct indices below `total`, drawn uniformly without replacement with a ChaCha8
/// generator seeded by `seed`, in ascending order: the same `(total, n, seed)` gives the same
/// indices.
///
/// # Errors
/// [`Error::InvalidArgument`] for `n` = 0 or `n` > `total`.
pub fn sample_indices(total: usize, n: usize, seed: u64) -> Result<Vec<usize>> {
    use rand::SeedableRng;
    if n == 0 {
        return Err(invalid("--random 0: sample at least one trial"));
    }
    if n > total {
        return Err(invalid(format!(
            "--random {n}: the grid has only {total} combinations"
        )));
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut idx = rand::seq::index::sample(&mut rng, total, n).into_vec();
    idx.sort_unstable();
    Ok(idx)
}

/// `--random N --seed S`: N trials sampled from the grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Random {
    /// Trials to sample.
    pub n: usize,
    /// Seed of the sample.
    pub seed: u64,
}

/// One trial: a combination of the grid's values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    /// Its name and run directory's name: `trial-001`, `trial-002`, … (at least three digits).
    pub name: String,
    /// The index of its combination in the full grid ([`combination`]).
    pub combination: usize,
    /// Its value of each axis, in the axes' order.
    pub values: Vec<String>,
    /// Its overrides, `KEY=VALUE` per axis (applied after the sweep's `--set`s).
    pub overrides: Vec<String>,
}

/// The trials of a sweep: every combination of `axes` in [`combination`] order, or with
/// `random` a sample of them ([`sample_indices`]), still in that order; named `trial-001`, ….
///
/// # Errors
/// As [`grid_size`] and [`sample_indices`].
pub fn trials(axes: &[GridAxis], random: Option<Random>) -> Result<Vec<Trial>> {
    let total = grid_size(axes)?;
    let picked: Vec<usize> = match random {
        Some(r) => sample_indices(total, r.n, r.seed)?,
        None => (0..total).collect(),
    };
    let width = picked.len().to_string().len().max(3);
    Ok(picked
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let values = combination(axes, c);
            let overrides = axes
                .iter()
                .zip(&values)
                .map(|(a, v)| format!("{}={v}", a.key))
                .collect();
            Trial {
                name: format!("trial-{:0width$}", i + 1),
                combination: c,
                values,
                overrides,
            }
        })
        .collect())
}
