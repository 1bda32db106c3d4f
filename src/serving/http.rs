//! `lifelong serve`: the [`Scorer`] as an HTTP service (axum on tokio).
//!
//! | endpoint | answer |
//! |---|---|
//! | `POST /score` | the JSON of [`crate::serving::json`]: 200 `{"scores": […]}`; 400 / 404 `{"error": …}`; 413 for a body over `max_body`, 408 for one not received within the deadline; 503 with `Retry-After` beyond `max_in_flight` requests; 504 past the deadline |
//! | `POST /reload` | `{"encodings": "DIR"}` (or an empty body: the directory served) → 200 `{"users": N}`; 400 and the old encodings stay |
//! | `GET /health` | 200 while the process runs (liveness) |
//! | `GET /ready` | 200 once the checkpoint and encodings are loaded, 503 before (readiness) |
//! | `GET /metrics` | Prometheus' (OpenMetrics) text: requests by endpoint and status, latency histogram, candidates scored, users loaded, requests in flight, reloads, the model fingerprint |
//!
//! Scoring runs on its own thread pool (`threads`), never on the async workers; a request holds
//! one of `max_in_flight` permits until its scoring ends, so work never queues beyond that
//! bound. SIGTERM or Ctrl-C stops accepting connections and finishes the requests in flight.
//! Each request logs one line at debug level (`RUST_LOG=lifelong=debug`).

use super::scorer::{Scorer, StoreOptions};
use crate::{Error, Result};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Semaphore};

/// How `lifelong serve` runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Run directory (its best checkpoint) or checkpoint file.
    pub checkpoint: PathBuf,
    /// Encodings directory written by `lifelong encode` for it.
    pub encodings: PathBuf,
    /// Address to listen on (`127.0.0.1:0`: any free port; the bound address is printed).
    pub addr: String,
    /// Threads of the scoring pool.
    pub threads: usize,
    /// Requests scored or waiting to be at once; beyond, 503.
    pub max_in_flight: usize,
    /// A request not answered by then gets 504.
    pub deadline: Duration,
    /// Largest request body, bytes; beyond, 413.
    pub max_body: usize,
    /// The users served (a shard) and how their encodings are held.
    pub store: StoreOptions,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms to about 4 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<EndpointLabels, Histogram>,
    candidates: Counter,
    users: Gauge,
    in_flight: Gauge,
    reloads: Family<OutcomeLabels, Counter>,
}

impl Metrics {
    fn new() -> Self {
        let mut r = Registry::with_prefix("lifelong");
        let requests = Family::<RequestLabels, Counter>::default();
        r.register(
            "requests",
            "HTTP requests by endpoint and status",
            requests.clone(),
        );
        let latency = Family::<EndpointLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        r.register(
            "request_duration_seconds",
            "Time from a request's arrival to its answer",
            latency.clone(),
        );
        let candidates = Counter::default();
        r.register(
            "candidates_scored",
            "Candidates scored in answers of status 200",
            candidates.clone(),
        );
        let users = Gauge::default();
        r.register(
            "users_loaded",
            "Users with an encoding in memory",
            users.clone(),
        );
        let in_flight = Gauge::default();
        r.register(
            "requests_in_flight",
            "Scoring requests holding a permit",
            in_flight.clone(),
        );
        let reloads = Family::<OutcomeLabels, Counter>::default();
        r.register("reloads", "Encodings reloads by outcome", reloads.clone());
        Self {
            registry: Mutex::new(r),
            requests,
            latency,
            candidates,
            users,
            in_flight,
            reloads,
        }
    }

    fn observe(&self, endpoint: &str, status: u16, since: Instant) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.into(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.into(),
            })
            .observe(since.elapsed().as_secs_f64());
        tracing::debug!(
            endpoint,
            status,
            ms = since.elapsed().as_secs_f64() * 1e3,
            "request"
        );
    }
}

struct App {
    cfg: ServeConfig,
    /// Set once the checkpoint and encodings are loaded.
    scorer: OnceLock<Scorer>,
    pool: rayon::ThreadPool,
    permits: Arc<Semaphore>,
    metrics: Metrics,
}

type Shared = Arc<App>;

fn json(status: u16, body: String) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn error(status: u16, msg: &str) -> Response {
    json(status, serde_json::json!({ "error": msg }).to_string())
}

impl App {
    /// Runs `f` on the scoring pool; `None` when the pool dropped it (never in practice).
    async fn on_pool<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&App) -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let app = self.clone();
        self.pool.spawn(move || {
            let _ = tx.send(f(&app));
        });
        rx.await.ok()
    }
}

/// The request's body; 413 beyond `max_body`, 400 for a body that breaks off, 408 for one not
/// received within the deadline (a client sending byte by byte holds a connection, never a
/// worker, and not for long).
async fn read_body(app: &App, body: Body) -> std::result::Result<Bytes, Response> {
    let limit = app.cfg.max_body;
    match tokio::time::timeout(app.cfg.deadline, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            let mut too_big = false;
            while let Some(c) = cause {
                too_big |= c.is::<http_body_util::LengthLimitError>();
                cause = c.source();
            }
            Err(if too_big {
                error(413, &format!("request body over {limit} bytes"))
            } else {
                error(400, &format!("reading the request body: {e}"))
            })
        }
        Err(_) => Err(error(
            408,
            &format!("request body not received within {:?}", app.cfg.deadline),
        )),
    }
}

async fn score(State(app): State<Shared>, body: Body) -> Response {
    let t0 = Instant::now();
    let answer = match read_body(&app, body).await {
        Ok(body) => score_inner(&app, body).await,
        Err(too_big) => too_big,
    };
    app.metrics.observe("score", answer.status().as_u16(), t0);
    answer
}

async fn score_inner(app: &Shared, body: Bytes) -> Response {
    if app.scorer.get().is_none() {
        return error(503, "loading the checkpoint and encodings");
    }
    let Ok(permit) = app.permits.clone().try_acquire_owned() else {
        let mut r = error(
            503,
            &format!(
                "{} requests in flight (the limit): retry later",
                app.cfg.max_in_flight
            ),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return r;
    };
    app.metrics.in_flight.inc();
    let work = app.on_pool(move |app| {
        // The permit is held until the scoring ends, whether or not anyone still waits for it.
        let _permit = permit;
        let out = match app.scorer.get() {
            Some(s) => s.answer_json(&body),
            None => (503, String::new(), 0),
        };
        app.metrics.in_flight.dec();
        out
    });
    match tokio::time::timeout(app.cfg.deadline, work).await {
        Ok(Some((status, out, n))) => {
            if status == 200 {
                app.metrics.candidates.inc_by(n as u64);
            }
            json(status, out)
        }
        Ok(None) => error(500, "the scoring pool dropped the request"),
        Err(_) => error(
            504,
            &format!("not answered within the deadline of {:?}", app.cfg.deadline),
        ),
    }
}

async fn reload(State(app): State<Shared>, body: Body) -> Response {
    let t0 = Instant::now();
    let body = match read_body(&app, body).await {
        Ok(b) => b,
        Err(too_big) => {
            app.metrics.observe("reload", 413, t0);
            return too_big;
        }
    };
    let answer = if app.scorer.get().is_none() {
        error(503, "loading the checkpoint and encodings")
    } else {
        let dir = if body.iter().all(u8::is_ascii_whitespace) {
            Ok(None)
        } else {
            serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("encodings")?.as_str().map(PathBuf::from))
                .map(Some)
                .ok_or("expected {\"encodings\": \"DIR\"} or an empty body")
        };
        match dir {
            Err(why) => error(400, why),
            Ok(dir) => {
                let done = app
                    .on_pool(move |app| {
                        let s = app.scorer.get()?;
                        let dir = dir.unwrap_or_else(|| s.encodings_dir());
                        let done = s.reload(&dir);
                        crate::cpu::return_freed_memory();
                        Some(done)
                    })
                    .await
                    .flatten();
                let outcome = if matches!(done, Some(Ok(_))) {
                    "ok"
                } else {
                    "error"
                };
                app.metrics
                    .reloads
                    .get_or_create(&OutcomeLabels {
                        outcome: outcome.into(),
                    })
                    .inc();
                match done {
                    Some(Ok(n)) => {
                        app.metrics.users.set(n as i64);
                        json(200, serde_json::json!({ "users": n }).to_string())
                    }
                    Some(Err(e)) => error(400, &e.to_string()),
                    None => error(500, "the scoring pool dropped the reload"),
                }
            }
        }
    };
    app.metrics.observe("reload", answer.status().as_u16(), t0);
    answer
}

async fn health() -> Response {
    json(200, r#"{"status":"ok"}"#.into())
}

async fn ready(State(app): State<Shared>) -> Response {
    match app.scorer.get() {
        Some(s) => json(
            200,
            serde_json::json!({
                "status": "ready",
                "users": s.num_users(),
                "checkpoint": s.checkpoint().display().to_string(),
                "encodings": s.encodings_dir().display().to_string(),
                "fingerprint": s.fingerprint(),
            })
            .to_string(),
        ),
        None => json(503, r#"{"status":"loading"}"#.into()),
    }
}

async fn metrics(State(app): State<Shared>) -> Response {
    let mut text = String::new();
    let encoded = match app.metrics.registry.lock() {
        Ok(r) => prometheus_client::encoding::text::encode(&mut text, &r).is_ok(),
        Err(_) => false,
    };
    if !encoded {
        return error(500, "could not encode the metrics");
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn not_found() -> Response {
    error(404, "no such endpoint")
}

/// Stops on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("stopping: finishing the requests in flight");
}

/// Runs the service until SIGTERM or Ctrl-C: binds `cfg.addr` (printing `listening on ADDR` on
/// stdout), loads the checkpoint and encodings on the scoring pool (`/ready` answers 503 until
/// then), and serves.
///
/// # Errors
/// [`Error::InvalidArgument`] for a bad address or configuration, [`Error::Io`] when the
/// address cannot be bound, and the errors of [`Scorer::open`] (the process stops then).
pub fn serve(cfg: ServeConfig) -> Result<()> {
    if cfg.threads == 0 || cfg.max_in_flight == 0 {
        return Err(Error::InvalidArgument(
            "--threads and --max-in-flight must be at least 1".into(),
        ));
    }
    // Freed memory goes back to the OS from here on (the transient buffers of loading
    // gigabytes of encodings would otherwise stay resident).
    crate::cpu::return_freed_memory();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.threads)
        .thread_name(|i| format!("score-{i}"))
        .build()
        .map_err(|e| Error::InvalidArgument(format!("scoring pool: {e}")))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("http")
        .enable_all()
        .build()
        .map_err(|e| Error::io("tokio runtime", e))?;
    let app = Arc::new(App {
        permits: Arc::new(Semaphore::new(cfg.max_in_flight)),
        cfg,
        scorer: OnceLock::new(),
        pool,
        metrics: Metrics::new(),
    });
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&app.cfg.addr)
            .await
            .map_err(|e| Error::io(&app.cfg.addr, e))?;
        let bound = listener
            .local_addr()
            .map_err(|e| Error::io(&app.cfg.addr, e))?;
        println!("listening on {bound}");
        tracing::info!(%bound, "listening; loading the checkpoint and encodings");
        let router = Router::new()
            .route("/score", post(score))
            .route("/reload", post(reload))
            .route("/health", get(health))
            .route("/ready", get(ready))
            .route("/metrics", get(metrics))
            .fallback(not_found)
            .with_state(app.clone());
        let server = axum::serve(listener, router).with_graceful_shutdown(shutdown_signal());
        let load = {
            let app = app.clone();
            async move {
                let (ck, enc) = (app.cfg.checkpoint.clone(), app.cfg.encodings.clone());
                let store = app.cfg.store.clone();
                let opened = app
                    .on_pool(move |_| {
                        let s = Scorer::open_with(&ck, &enc, store);
                        crate::cpu::return_freed_memory();
                        s
                    })
                    .await
                    .unwrap_or_else(|| Err(Error::InvalidArgument("loading stopped".into())))?;
                app.metrics.users.set(opened.num_users() as i64);
                if let Ok(mut r) = app.metrics.registry.lock() {
                    r.register(
                        "model",
                        "The model served",
                        Info::new(vec![
                            ("fingerprint".to_string(), opened.fingerprint().to_string()),
                            (
                                "checkpoint".to_string(),
                                opened.checkpoint().display().to_string(),
                            ),
                            ("shard".to_string(), {
                                let s = opened.options().shard;
                                format!("{}/{}", s.index, s.count)
                            }),
                        ]),
                    );
                }
                tracing::info!(users = opened.num_users(), "ready");
                let _ = app.scorer.set(opened);
                Ok::<(), Error>(())
            }
        };
        // The server runs from the start (liveness answers while loading); a failed load stops it.
        let server = tokio::spawn(async move { server.await });
        if let Err(e) = load.await {
            server.abort();
            return Err(e);
        }
        server
            .await
            .map_err(|e| Error::InvalidArgument(format!("the server stopped: {e}")))?
            .map_err(|e| Error::io(&app.cfg.addr, e))
    })
}
