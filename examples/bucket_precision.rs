//! What holding SDIM's bucket sums in f16 (`lifelong serve --bucket-precision f16`, or the
//! `--store` file in f16) costs in quality: every impression of a split scored through its
//! user's encoding (`encode_user` on the impression's own history, then `score_encoded`, the
//! serving path) with the bucket sums as computed and rounded to f16, beside `eval::predict`'s
//! probabilities for the same rows. Prints AUC, GAUC and logloss of each and the largest
//! probability differences.
//!
//! ```text
//! cargo run --release --example bucket_precision -- --checkpoint /tmp/ml/run_sdim --data /tmp/ml/prepared
//! ```

use candle_core::Device;
use clap::Parser;
use lifelong::checkpoint::ModelFile;
use lifelong::data::{Dataset, Split};
use lifelong::metrics::{compute, sigmoid};
use rayon::prelude::*;
use std::path::PathBuf;

#[derive(Parser, Debug)]
struct Args {
    /// Run directory (its best checkpoint) or checkpoint file of an SDIM model.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The prepared dataset it was trained on.
    #[arg(long)]
    data: PathBuf,
    /// Impressions scored at most per split (0: all).
    #[arg(long, default_value_t = 0)]
    max_rows: usize,
}

fn main() -> lifelong::Result<()> {
    lifelong::tune_runtime();
    let args = Args::parse();
    let mf = ModelFile::open(&args.checkpoint, &Device::Cpu)?;
    let m = &mf.model;
    let ds = Dataset::open(&args.data)?;
    println!("| split | rows | path | AUC | GAUC | logloss | largest Δp against eval |");
    println!("|---|---|---|---|---|---|---|");
    for split in [Split::Valid, Split::Test] {
        let imp = ds.load_split(split)?;
        let n = if args.max_rows == 0 {
            imp.len()
        } else {
            imp.len().min(args.max_rows)
        };
        let rows: Vec<(f32, f32)> = (0..n)
            .into_par_iter()
            .map(|r| {
                let (items, cates) = ds.histories.get(imp.history_of(r));
                let len = imp.seq_len[r] as usize;
                let enc = m.encode_user(imp.user[r], &items[..len], &cates[..len])?;
                let (it, ct) = ([imp.item[r]], [imp.cate[r]]);
                let full = m.score_encoded(&enc, &it, &ct)?[0];
                let mut half = enc;
                for b in &mut half.buckets {
                    b.iter_mut()
                        .for_each(|x| *x = half::f16::from_f32(*x).to_f32());
                }
                Ok((full, m.score_encoded(&half, &it, &ct)?[0]))
            })
            .collect::<lifelong::Result<_>>()?;
        let sub = lifelong::data::Impressions {
            label: imp.label[..n].to_vec(),
            user: imp.user[..n].to_vec(),
            item: imp.item[..n].to_vec(),
            cate: imp.cate[..n].to_vec(),
            seq_len: imp.seq_len[..n].to_vec(),
            history: imp.history.get(..n).map_or_else(Vec::new, <[u32]>::to_vec),
            ts: imp.ts.get(..n).map_or_else(Vec::new, <[i64]>::to_vec),
        };
        let eval = lifelong::eval::predict(m, &ds.histories, &std::sync::Arc::new(sub), 4096)?;
        let (f32s, f16s): (Vec<f32>, Vec<f32>) = rows.into_iter().unzip();
        let labels = &imp.label[..n];
        let groups = &imp.user[..n];
        let worst = |a: &[f32]| {
            a.iter()
                .zip(&eval)
                .map(|(&x, &e)| (sigmoid(x) - sigmoid(e)).abs())
                .fold(0f32, f32::max)
        };
        for (name, logits) in [
            ("eval::predict", &eval),
            ("serving, f32 sums", &f32s),
            ("serving, f16 sums", &f16s),
        ] {
            let mt = compute(groups, labels, logits)?;
            println!(
                "| {split:?} | {n} | {name} | {:.5} | {:.5} | {:.5} | {:.2e} |",
                mt.auc.unwrap_or(f64::NAN),
                mt.gauc.unwrap_or(f64::NAN),
                mt.logloss,
                worst(logits)
            );
        }
    }
    Ok(())
}
