//! The control API: HTTP/JSON on a Unix socket in `cache_dir` that only the
//! mount's owner may open, and `/metrics` for Prometheus (also on a TCP address
//! when `metrics_addr` is given; that one serves nothing else).
//!
//! - `GET /status`: per-tier budget, use, pins and hit ratios; the mover; uploads.
//! - `POST /placement` `{"paths": [...], "tier": "ram", "deadline_secs": 60}`:
//!   fetch files (or everything below directories) into a tier before a
//!   deadline; answers `{"job": N}`. `POST /promote` takes `"path"` or `"paths"`
//!   the same way; `POST /demote` drops the copies in a tier.
//! - `GET /jobs/N`, `GET /jobs`: a job's progress, or all jobs kept.
//! - `GET /metrics`: Prometheus text format.

use crate::model::clock::now_secs;
use crate::namespace::object_path;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tierfs_policy::Priority;

use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::control::metrics::render;
use crate::engine::EngineCore;
use crate::tier_manager::job_queue::JobAction;

use crate::model::paths;
use crate::model::tier::{Tier, parse_tier};

type Core = Arc<EngineCore>;

/// An answer with a status and `{"error": why}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn bad_request(why: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, why.to_string())
}

/// A request to move files.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveRequest {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    paths: Vec<String>,
    tier: String,
    /// Seconds from now by which the files should be in place.
    #[serde(default)]
    deadline_secs: Option<u64>,
}

impl MoveRequest {
    /// The object keys named, checked; a leading `/` is the mount's root.
    fn keys(&self) -> Result<Vec<String>, ApiError> {
        let all: Vec<&String> = self.path.iter().chain(&self.paths).collect();
        if all.is_empty() {
            return Err(bad_request("name at least one path"));
        }
        all.into_iter()
            .map(|p| {
                let key = p.trim_matches('/').to_string();
                if !key.is_empty() {
                    object_path(&key).map_err(|e| bad_request(format!("path '{p}': {e}")))?;
                }
                Ok(key)
            })
            .collect()
    }

    fn tier(&self) -> Result<Tier, ApiError> {
        parse_tier("tier", self.tier.as_bytes()).map_err(bad_request)
    }
}

async fn status(State(core): State<Core>) -> impl IntoResponse {
    Json(core.status())
}

async fn metrics(State(core): State<Core>) -> impl IntoResponse {
    let text = render(
        &core.status(),
        &core.stats.fuse_latency,
        &core.reader().fetch_latency,
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

type JobAnswer = Result<Json<serde_json::Value>, ApiError>;

/// A handler that queues an explicit job doing `action` in the request's tier
/// to the request's paths; it answers `{"job": N}`.
fn mover_job(
    action: fn(Tier) -> JobAction,
    reason: &'static str,
) -> impl Fn(State<Core>, Json<MoveRequest>) -> std::future::Ready<JobAnswer> + Clone {
    move |State(core), Json(request)| std::future::ready(queue_job(&core, &request, action, reason))
}

fn queue_job(
    core: &Core,
    request: &MoveRequest,
    action: fn(Tier) -> JobAction,
    reason: &str,
) -> JobAnswer {
    let action = action(request.tier()?);
    let paths = request.keys()?;
    let deadline = request.deadline_secs.map(|s| now_secs() + s);
    let id = core
        .manager()
        .jobs
        .submit(Priority::Explicit, action, paths, deadline, reason);
    Ok(Json(json!({ "job": id })))
}

async fn job(
    State(core): State<Core>,
    UrlPath(id): UrlPath<u64>,
) -> Result<impl IntoResponse, ApiError> {
    core.manager()
        .jobs
        .job(id)
        .map(Json)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no job {id}")))
}

async fn jobs(State(core): State<Core>) -> impl IntoResponse {
    Json(core.manager().jobs.jobs())
}

pub fn router(core: Core) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/placement", post(mover_job(JobAction::Fetch, "placement")))
        .route("/promote", post(mover_job(JobAction::Fetch, "placement")))
        .route("/demote", post(mover_job(JobAction::Drop, "demotion")))
        .route("/jobs", get(jobs))
        .route("/jobs/{id}", get(job))
        .with_state(core)
}

/// Starts the control socket (and the TCP metrics listener when asked for) on
/// the current runtime.
pub async fn start(core: Core, cache_dir: &Path) -> std::io::Result<PathBuf> {
    let path = paths::socket_path(cache_dir);
    let dir = paths::control_dir(cache_dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    // A socket left by a mount that died; a live mount holds its cache_dir's lock.
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let app = router(core.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("control socket stopped: {e}");
        }
    });
    if let Some(addr) = core.options().metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let app = Router::new()
            .route("/metrics", get(metrics))
            .with_state(core.clone());
        tracing::info!(%addr, "serving /metrics");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("metrics listener stopped: {e}");
            }
        });
    }
    Ok(path)
}
