//! Running a sweep: trials as child `lifelong train` processes, N at a time.

use super::*;

/// What `lifelong sweep` was asked.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// The base config (TOML).
    pub config: PathBuf,
    /// `--data`: the prepared dataset (overrides the config's `data.dir`).
    pub data: Option<PathBuf>,
    /// `--device`, passed to every trial (not part of the spec).
    pub device: Option<DeviceSpec>,
    /// `--set` overrides, applied to every trial before its own.
    pub sets: Vec<String>,
    /// `--grid KEY=V1,V2,...` arguments.
    pub grid: Vec<String>,
    /// `--random N`: sample N trials of the grid.
    pub random: Option<usize>,
    /// `--seed` of the sample (default 0).
    pub seed: Option<u64>,
    /// Trials run at a time (at least 1; not part of the spec).
    pub jobs: usize,
    /// The sweep's directory.
    pub out: PathBuf,
    /// The `lifelong` executable the trials run (`std::env::current_exe()` for the CLI).
    pub exe: PathBuf,
}

/// What a sweep did.
#[derive(Debug, Clone)]
pub struct SweepReport {
    /// The sweep's directory.
    pub out: PathBuf,
    /// The grid.
    pub axes: Vec<GridAxis>,
    /// One row per trial, in trial order.
    pub rows: Vec<TrialRow>,
    /// Trials run by this call (resumed ones included).
    pub ran: usize,
    /// Of them, continued with `train --resume`.
    pub resumed: usize,
    /// Trials skipped because they were complete.
    pub skipped: usize,
    /// The results table.
    pub table: PathBuf,
    /// The curves chart, when some trial logged a validation.
    pub curves: Option<PathBuf>,
}

impl SweepReport {
    /// The best trial ([`best`]).
    pub fn best(&self) -> Option<&TrialRow> {
        best(&self.rows)
    }
    /// Trials that failed.
    pub fn failed(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| r.status == TrialStatus::Failed)
            .count()
    }
}

/// Checks every trial's config up front: the base text with `sets` and the trial's overrides
/// must parse and validate, and its dataset (`data`, else its `data.dir`) must be a prepared
/// one.
///
/// # Errors
/// [`Error::InvalidArgument`] naming the first bad trial, its overrides, and the key or the
/// directory.
pub fn validate_trials(
    config_text: &str,
    data: Option<&Path>,
    sets: &[String],
    trials: &[Trial],
) -> Result<()> {
    for t in trials {
        let name = || format!("{} ({})", t.name, t.overrides.join(" "));
        let all: Vec<String> = sets.iter().chain(&t.overrides).cloned().collect();
        let cfg = Config::from_toml_with(config_text, &all)
            .map_err(|e| invalid(format!("{}: {e}", name())))?;
        let dir = data.map_or(cfg.data.dir.clone(), Path::to_path_buf);
        if !dir.join("meta.json").is_file() {
            return Err(invalid(format!(
                "{}: {}: not a prepared dataset (no meta.json; run `lifelong prepare`, or pass --data)",
                name(),
                dir.display()
            )));
        }
    }
    Ok(())
}

/// The last non-empty line of a file's text (at most its last 64 KiB are read).
fn last_line(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(65536))).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// Runs one trial's `train` process to its end and records the outcome in its `trial.json`.
fn run_trial(
    opts: &SweepOptions,
    trial: &Trial,
    resume: bool,
    threads: Option<usize>,
) -> TrialRecord {
    let dir = opts.out.join(&trial.name);
    let prev = read_record(&dir).ok().flatten();
    let mut rec = TrialRecord {
        trial: trial.name.clone(),
        overrides: trial.overrides.clone(),
        status: TrialStatus::Running,
        reason: None,
        wall_secs: None,
        attempts: prev.map_or(0, |p| p.attempts) + 1,
        resumed: resume,
    };
    let t0 = Instant::now();
    let outcome = (|| -> std::result::Result<(), String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        write_record(&dir, &rec).map_err(|e| e.to_string())?;
        let log_path = dir.join(LOG_FILE);
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let mut cmd = std::process::Command::new(&opts.exe);
        cmd.arg("train")
            .arg("--config")
            .arg(opts.out.join(BASE_CONFIG))
            .arg("--out")
            .arg(&dir);
        if let Some(d) = &opts.data {
            cmd.arg("--data").arg(d);
        }
        if let Some(d) = &opts.device {
            cmd.arg("--device").arg(d.to_string());
        }
        for s in opts.sets.iter().chain(&trial.overrides) {
            cmd.arg("--set").arg(s);
        }
        if resume {
            cmd.arg("--resume");
        }
        if let Some(n) = threads {
            cmd.env("RAYON_NUM_THREADS", n.to_string());
        }
        {
            use std::io::Write;
            let _ = writeln!(log, "# lifelong sweep, attempt {}: {cmd:?}", rec.attempts);
        }
        let err_log = log
            .try_clone()
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let status = cmd
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .status()
            .map_err(|e| format!("starting {}: {e}", opts.exe.display()))?;
        if status.success() {
            return Ok(());
        }
        let how = match status.code() {
            Some(c) => format!("exit status {c}"),
            None => format!("killed ({status})"),
        };
        Err(match last_line(&log_path) {
            Some(l) if !l.starts_with("# lifelong sweep") => format!("{l} ({how})"),
            _ => how,
        })
    })();
    rec.wall_secs = Some(t0.elapsed().as_secs_f64());
    match outcome {
        Ok(()) => rec.status = TrialStatus::Done,
        Err(why) => {
            rec.status = TrialStatus::Failed;
            rec.reason = Some(why);
        }
    }
    if let Err(e) = write_record(&dir, &rec) {
        // The sweep's table still shows the outcome; a rerun runs the trial again.
        eprintln!("warning: {}: {e}", trial.name);
    }
    rec
}

/// A label for a trial's curves: its name and short `key=value` pairs.
fn curve_label(axes: &[GridAxis], t: &Trial) -> String {
    let mut s = t.name.clone();
    for (a, v) in axes.iter().zip(&t.values) {
        s.push_str(&format!(" {}={v}", a.short_key()));
    }
    s
}

/// Runs a sweep (see the module docs): checks every trial's config, opens (or continues) the
/// output directory, runs the trials that are not complete, `jobs` at a time, rewriting the
/// results table after each, and draws every trial's curves. Progress goes to stdout, one line
/// per trial started and ended. A failed trial is recorded and the sweep goes on.
///
/// # Errors
/// [`Error::InvalidArgument`] for a malformed `--grid`, `--random`, `jobs` = 0, a bad trial
/// config ([`validate_trials`]) or another sweep recorded in `out` ([`open_out`]); [`Error::Io`]
/// for the config or the results table. Not for a failed trial.
pub fn run(opts: &SweepOptions) -> Result<SweepReport> {
    if opts.jobs == 0 {
        return Err(invalid("--jobs 0: run at least one trial at a time"));
    }
    if opts.seed.is_some() && opts.random.is_none() {
        return Err(invalid(
            "--seed is the seed of --random N: give --random too",
        ));
    }
    let axes = parse_axes(&opts.grid, &opts.sets)?;
    let random = opts.random.map(|n| Random {
        n,
        seed: opts.seed.unwrap_or(0),
    });
    let trials = trials(&axes, random)?;
    let text = std::fs::read_to_string(&opts.config).map_err(|e| Error::io(&opts.config, e))?;
    validate_trials(&text, opts.data.as_deref(), &opts.sets, &trials)?;
    let spec = SweepSpec::new(
        &opts.config,
        &text,
        opts.data.as_deref(),
        &opts.sets,
        axes.clone(),
        random,
    );
    open_out(&opts.out, &spec, &trials)?;

    // What each trial needs: nothing (complete), `train --resume`, or a fresh `train`.
    let mut todo: Vec<(usize, bool)> = Vec::new();
    let mut skipped = Vec::new();
    for (i, t) in trials.iter().enumerate() {
        let dir = opts.out.join(&t.name);
        if let Some(r) = read_record(&dir)? {
            if r.overrides != t.overrides {
                return Err(invalid(format!(
                    "{}: records the overrides [{}], the sweep gives this trial [{}]",
                    dir.join(TRIAL_FILE).display(),
                    r.overrides.join(" "),
                    t.overrides.join(" ")
                )));
            }
        }
        if is_complete(&dir) {
            skipped.push(t.name.clone());
        } else {
            let resumable = read_metadata(&RunDir::new(&dir).last())
                .is_ok_and(|m| m.contains_key(crate::checkpoint::meta::KEY_TRAINER));
            todo.push((i, resumable));
        }
    }
    if !skipped.is_empty() {
        println!(
            "skipped {} finished trials ({})",
            skipped.len(),
            skipped.join(", ")
        );
    }
    let mut rows: Vec<TrialRow> = trials.iter().map(|t| read_row(&opts.out, t)).collect();
    let table = opts.out.join(RESULTS_FILE);
    write_table(&table, &axes, &rows)?;

    let jobs = opts.jobs.min(todo.len()).max(1);
    let threads = match std::env::var_os("RAYON_NUM_THREADS") {
        Some(_) => None, // the caller's choice, inherited
        None => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            Some((cores / opts.jobs).max(1))
        }
    };
    let total = todo.len();
    let resumed = todo.iter().filter(|(_, r)| *r).count();
    if total > 0 {
        println!(
            "running {total} of {} trials, {jobs} at a time{}",
            trials.len(),
            threads.map_or(String::new(), |n| format!(
                " ({n} thread{} each)",
                if n == 1 { "" } else { "s" }
            ))
        );
    }
    enum Msg {
        Started(usize, bool),
        Ended(usize, TrialRecord),
    }
    let next = AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::channel::<Msg>();
    std::thread::scope(|s| {
        for _ in 0..jobs.min(total) {
            let (tx, next, todo, trials) = (tx.clone(), &next, &todo, &trials);
            s.spawn(move || loop {
                let k = next.fetch_add(1, Ordering::SeqCst);
                let Some(&(i, resume)) = todo.get(k) else {
                    break;
                };
                let _ = tx.send(Msg::Started(i, resume));
                let rec = run_trial(opts, &trials[i], resume, threads);
                let _ = tx.send(Msg::Ended(i, rec));
            });
        }
        drop(tx);
        let mut ended = 0;
        for msg in rx {
            match msg {
                Msg::Started(i, resume) => {
                    let t = &trials[i];
                    println!(
                        "{} {}: {}",
                        if resume { "resuming" } else { "starting" },
                        t.name,
                        t.overrides.join(" ")
                    );
                    rows[i].status = TrialStatus::Running;
                }
                Msg::Ended(i, rec) => {
                    ended += 1;
                    rows[i] = read_row(&opts.out, &trials[i]);
                    // The record as this process knows it (its file may be unwritable).
                    rows[i].status = rec.status;
                    rows[i].reason = rec.reason.clone();
                    rows[i].wall_secs = rec.wall_secs;
                    let r = &rows[i];
                    let secs = rec.wall_secs.unwrap_or(0.0);
                    match rec.status {
                        TrialStatus::Done => println!(
                            "[{ended}/{total}] {} done in {secs:.1} s: best valid AUC {} at step {}",
                            r.trial.name,
                            r.best_auc.map_or("n/a".into(), |a| format!("{a:.4}")),
                            r.best_step.map_or("n/a".into(), |s| s.to_string())
                        ),
                        _ => println!(
                            "[{ended}/{total}] {} failed after {secs:.1} s: {} (log: {})",
                            r.trial.name,
                            rec.reason.as_deref().unwrap_or("?"),
                            r.dir.join(LOG_FILE).display()
                        ),
                    }
                    if let Err(e) = write_table(&table, &axes, &rows) {
                        eprintln!("warning: {e}");
                    }
                }
            }
        }
    });
    write_table(&table, &axes, &rows)?;

    let curves: Vec<RunCurves> = rows
        .iter()
        .filter(|r| plot::metrics_file(&r.dir).exists())
        .filter_map(|r| {
            let mut c = plot::read_run(&r.dir).ok()?;
            c.name = curve_label(&axes, &r.trial);
            Some(c)
        })
        .collect();
    let curves_path = opts.out.join(CURVES_FILE);
    let curves = if curves.is_empty() {
        None
    } else {
        match plot::plot_runs(&curves, &curves_path) {
            Ok(()) => Some(curves_path),
            Err(e) => {
                eprintln!("warning: no curves drawn: {e}");
                None
            }
        }
    };
    Ok(SweepReport {
        out: opts.out.clone(),
        axes,
        rows,
        ran: total,
        resumed,
        skipped: skipped.len(),
        table,
        curves,
    })
}
