//! A small scoring service: imports the crate, loads a checkpoint and its encodings, and answers
//! JSON scoring requests over HTTP (tiny_http), from several worker threads sharing one `Scorer`.
//!
//! ```text
//! cargo run --release --example serve -- --checkpoint runs/sdim --encodings encodings/sdim
//! curl -s localhost:8080/health
//! curl -s localhost:8080/score -d '{"user": 42, "candidates": [17, 4, {"item": 9, "cate": 3}]}'
//! ```
//!
//! | endpoint | request | response |
//! |---|---|---|
//! | `GET /health` | | 200 `{"status": "ok", "users": N, "checkpoint": "…", "encodings": "…", "fingerprint": "…"}` |
//! | `POST /score` | `{"user": ID, "candidates": [ITEM \| {"item": ITEM, "cate": CATE}, …]}`, or `"history": {"items": […], "cates": […]}` for a user without an encoding | 200 `{"scores": [p, …]}`; 400 / 404 `{"error": "…"}` |
//! | `POST /reload` | `{"encodings": "DIR"}` | 200 `{"users": N}` (scoring goes on meanwhile); 400 on error, the old encodings stay |
//!
//! Bodies above `--max-body` bytes get 413; other paths 404. A bad request gets its error and
//! the other requests are served as before.

use clap::Parser;
use lifelong::serving::Scorer;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use tiny_http::{Header, Method, Response, Server};

#[derive(Parser, Debug)]
struct Args {
    /// Run directory (its best checkpoint) or a checkpoint file.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Encodings directory written by `lifelong encode` for this checkpoint.
    #[arg(long)]
    encodings: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_body: usize,
}

fn json(status: u16, body: String) -> Response<std::io::Cursor<Vec<u8>>> {
    let header = Header::from_bytes("Content-Type", "application/json").expect("static header");
    Response::from_string(body)
        .with_status_code(status)
        .with_header(header)
}

fn error(status: u16, msg: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    json(status, serde_json::json!({ "error": msg }).to_string())
}

fn handle(
    scorer: &Scorer,
    max_body: usize,
    req: &mut tiny_http::Request,
) -> Response<std::io::Cursor<Vec<u8>>> {
    let path = req.url().split('?').next().unwrap_or("").to_string();
    match (req.method(), path.as_str()) {
        (Method::Get, "/health") => json(
            200,
            serde_json::json!({
                "status": "ok",
                "users": scorer.num_users(),
                "checkpoint": scorer.checkpoint().display().to_string(),
                "encodings": scorer.encodings_dir().display().to_string(),
                "fingerprint": scorer.fingerprint(),
            })
            .to_string(),
        ),
        (Method::Post, "/score") | (Method::Post, "/reload") => {
            if req.body_length().is_some_and(|n| n > max_body) {
                return error(413, &format!("request body over {max_body} bytes"));
            }
            let mut body = Vec::new();
            let read = req
                .as_reader()
                .take(max_body as u64 + 1)
                .read_to_end(&mut body);
            if let Err(e) = read {
                return error(400, &format!("reading the request: {e}"));
            }
            if body.len() > max_body {
                return error(413, &format!("request body over {max_body} bytes"));
            }
            if path == "/score" {
                let (status, out) = scorer.handle_json(&body);
                json(status, out)
            } else {
                let dir = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("encodings")?.as_str().map(PathBuf::from));
                match dir.map(|d| scorer.reload(&d)) {
                    Some(Ok(n)) => json(200, serde_json::json!({ "users": n }).to_string()),
                    Some(Err(e)) => error(400, &e.to_string()),
                    None => error(400, "expected {\"encodings\": \"DIR\"}"),
                }
            }
        }
        _ => error(404, &format!("no endpoint {} {path}", req.method())),
    }
}

/// A listening socket with TCP_NODELAY, which the accepted connections inherit: tiny_http writes
/// a response in 1 KB pieces, and Nagle's algorithm with the client's delayed ACK would hold
/// each later piece for 40 ms.
fn listener(addr: &str) -> anyhow::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| anyhow::anyhow!("--addr {addr}: {e}"))?;
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_tcp_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let scorer = Scorer::open(&args.checkpoint, &args.encodings)?;
    let server = Arc::new(
        Server::from_listener(listener(&args.addr)?, None)
            .map_err(|e| anyhow::anyhow!("listening on {}: {e}", args.addr))?,
    );
    eprintln!(
        "serving {} users of {} on http://{} with {} threads",
        scorer.num_users(),
        scorer.checkpoint().display(),
        server.server_addr(),
        args.threads
    );
    let workers: Vec<_> = (0..args.threads.max(1))
        .map(|_| {
            let (server, scorer) = (server.clone(), scorer.clone());
            let max_body = args.max_body;
            std::thread::spawn(move || {
                for mut req in server.incoming_requests() {
                    let resp = handle(&scorer, max_body, &mut req);
                    let _ = req.respond(resp); // a client that went away is not our error
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}
