//! What the benchmark examples share: a line describing the machine and the process's peak RSS.

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
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
