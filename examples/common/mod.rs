//! What the benchmark examples share: a line describing the machine, the process's memory, a
//! preset model.

#![allow(dead_code)]

/// "N threads, AVX-512|AVX2|other, loadavg …": timings are only comparable on one machine with
/// nothing else running, so every table says where and under what load it was taken.
pub fn machine() -> String {
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let isa = if flags.contains("avx512f") {
        "AVX-512"
    } else if flags.contains("avx2") {
        "AVX2"
    } else {
        "other"
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{} threads, {isa}, loadavg {}",
        rayon::current_num_threads(),
        load.trim()
    )
}

/// The process's peak resident memory (VmHWM) in MB.
pub fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

/// The process's resident memory now (VmRSS) in MB.
pub fn rss_mb() -> f64 {
    status_mb("VmRSS:")
}

/// A memory line of `/proc/self/status` in MB (NaN where there is none).
fn status_mb(key: &str) -> f64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// A preset (`kind`: its name) at `data.max_len = max_len` over `items` items in `cates`
/// categories (plus padding and unknown), randomly initialised on the CPU.
pub fn preset_model(
    kind: &str,
    max_len: usize,
    items: usize,
    cates: usize,
) -> lifelong::model::CtrModel {
    use lifelong::config::{Config, Preset};
    let p = Preset::ALL
        .into_iter()
        .find(|p| p.name() == kind)
        .unwrap_or_else(|| panic!("unknown model {kind}"));
    let cfg = Config::from_toml(&format!(
        "[data]\ndir = \"unused\"\nmax_len = {max_len}\n[model]\nkind = \"{}\"\n",
        p.name()
    ))
    .expect("preset config");
    let vocab = lifelong::embedding::VocabSizes {
        users: 2,
        items: items + 2,
        cates: cates + 2,
    };
    lifelong::model::CtrModel::new(&cfg.model, max_len, vocab, 1, &candle_core::Device::Cpu)
        .expect("model")
}

/// The 50th and 99th percentiles of `v` (nearest rank).
pub fn percentiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    (at(0.5), at(0.99))
}
