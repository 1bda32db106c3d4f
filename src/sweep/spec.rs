//! The sweep's spec (`sweep.json`): what a rerun must match to resume into the same directory.

use super::*;

/// What a sweep is: rerunning the same spec into the same directory continues it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepSpec {
    /// The base config's path as given (provenance: a rerun may name the same text elsewhere).
    pub config: String,
    /// CRC-32 of the base config's text (hex).
    pub config_crc32: String,
    /// The base config's text.
    pub config_text: String,
    /// `--data`, if given.
    pub data: Option<String>,
    /// `--set` overrides, in order.
    pub sets: Vec<String>,
    /// The grid.
    pub grid: Vec<GridAxis>,
    /// `--random` and `--seed`, if given.
    pub random: Option<Random>,
}

impl SweepSpec {
    /// The spec of a sweep of the config at `config` (whose text is `config_text`).
    pub fn new(
        config: &Path,
        config_text: &str,
        data: Option<&Path>,
        sets: &[String],
        grid: Vec<GridAxis>,
        random: Option<Random>,
    ) -> Self {
        Self {
            config: config.display().to_string(),
            config_crc32: format!("{:08x}", crc32fast::hash(config_text.as_bytes())),
            config_text: config_text.to_string(),
            data: data.map(|d| d.display().to_string()),
            sets: sets.to_vec(),
            grid,
            random,
        }
    }

    /// How `now` differs from this (recorded) spec, one line per difference; empty when they
    /// are the same sweep (the config's path is not compared, its text is).
    pub fn differences(&self, now: &SweepSpec) -> Vec<String> {
        let mut d = Vec::new();
        if self.config_text != now.config_text {
            d.push(format!(
                "the base config's text changed (recorded {} with crc32 {}, now {} with crc32 {})",
                self.config, self.config_crc32, now.config, now.config_crc32
            ));
        }
        if self.data != now.data {
            d.push(format!(
                "--data: recorded {}, now {}",
                show_opt(&self.data),
                show_opt(&now.data)
            ));
        }
        if self.sets != now.sets {
            d.push(format!(
                "--set: recorded [{}], now [{}]",
                self.sets.join(" "),
                now.sets.join(" ")
            ));
        }
        let keys = |g: &[GridAxis]| g.iter().map(|a| a.key.clone()).collect::<Vec<_>>();
        if keys(&self.grid) != keys(&now.grid) {
            d.push(format!(
                "--grid keys: recorded [{}], now [{}]",
                keys(&self.grid).join(", "),
                keys(&now.grid).join(", ")
            ));
        } else {
            for (a, b) in self.grid.iter().zip(&now.grid) {
                if a.values != b.values {
                    d.push(format!(
                        "--grid {}: recorded values {}, now {}",
                        a.key,
                        a.values.join(","),
                        b.values.join(",")
                    ));
                }
            }
        }
        if self.random != now.random {
            let show = |r: &Option<Random>| match r {
                Some(r) => format!("--random {} --seed {}", r.n, r.seed),
                None => "the whole grid".to_string(),
            };
            d.push(format!(
                "recorded {}, now {}",
                show(&self.random),
                show(&now.random)
            ));
        }
        d
    }
}

fn show_opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "none".into())
}

/// The layout of [`SPEC_FILE`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SpecFile {
    format: u32,
    spec: SweepSpec,
    /// The trials the spec expands to (for reading; the spec alone decides).
    trials: Vec<Trial>,
}

/// Opens the output directory of a sweep: a new (or empty) directory gets `sweep.json` and
/// `base.toml`; one that holds a `sweep.json` must record the same spec. Returns whether the
/// directory already held this sweep.
///
/// # Errors
/// [`Error::InvalidArgument`] naming every difference when `out` records another sweep, or
/// when `out` is neither empty nor a sweep's directory; [`Error::Corrupt`] for an unreadable
/// `sweep.json`; [`Error::Io`] naming the file that cannot be read or written.
pub fn open_out(out: &Path, spec: &SweepSpec, trials: &[Trial]) -> Result<bool> {
    let file = out.join(SPEC_FILE);
    let base = out.join(BASE_CONFIG);
    let existed = file.exists();
    if existed {
        let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
        let rec: SpecFile = serde_json::from_str(&text).map_err(|e| Error::corrupt(&file, e))?;
        if rec.format != SPEC_FORMAT {
            return Err(Error::corrupt(
                &file,
                format!("format {} (this build writes {SPEC_FORMAT})", rec.format),
            ));
        }
        let diff = rec.spec.differences(spec);
        if !diff.is_empty() {
            return Err(invalid(format!(
                "{} records another sweep: {}; use another --out, or remove {} to start over",
                file.display(),
                diff.join("; "),
                out.display()
            )));
        }
    } else {
        if let Ok(mut entries) = std::fs::read_dir(out) {
            if entries.next().is_some() {
                return Err(invalid(format!(
                    "{} is not empty and holds no {SPEC_FILE}: not a sweep's directory (use another --out)",
                    out.display()
                )));
            }
        }
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let rec = SpecFile {
            format: SPEC_FORMAT,
            spec: spec.clone(),
            trials: trials.to_vec(),
        };
        let json = serde_json::to_string_pretty(&rec).map_err(|e| invalid(e.to_string()))?;
        crate::atomic::atomic_write_bytes(&file, json.as_bytes())?;
    }
    // The text the children train from (rewritten on a rerun if it went missing).
    let same = std::fs::read_to_string(&base).is_ok_and(|t| t == spec.config_text);
    if !same {
        crate::atomic::atomic_write_bytes(&base, spec.config_text.as_bytes())?;
    }
    Ok(existed)
}
