//! SIM's hard search: each target's most recent `k` behaviors of the target's category.

use super::{Search, Searched};
use crate::model::part::{Aggregation, Ctx};
use crate::window::Window;
use crate::Result;
use rayon::prelude::*;

#[derive(Debug)]
pub(crate) struct CategorySearch {
    pub k: usize,
}

impl Search for CategorySearch {
    fn retrieve(&self, _cx: &Ctx, _parts: &[Box<dyn Aggregation>], s: &Searched) -> Result<Window> {
        let per: Vec<Vec<u32>> = (0..s.targets.size())
            .into_par_iter()
            .map(|b| {
                let c = s.targets.target_cate[b];
                s.range(s.history_of(b))
                    .rev()
                    .filter(|&j| s.hist.hist_cate[j] == c)
                    .take(self.k)
                    .map(|j| j as u32)
                    .collect()
            })
            .collect();
        Ok(Window::from_rows(per))
    }
}
