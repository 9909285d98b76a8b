//! The client side of the control API, for the `tierfs` commands: finds a
//! mount's socket and sends it one request.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

use crate::engine::xattrs::CONTROL;

/// The root of the tierfs mount holding `path`, and the key of `path` below it.
pub fn find_mount(path: &Path) -> Result<(PathBuf, String), String> {
    let full = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for root in full.ancestors() {
        if matches!(xattr::get(root, CONTROL), Ok(Some(_))) {
            let key = full
                .strip_prefix(root)
                .map_err(|e| e.to_string())?
                .to_string_lossy()
                .into_owned();
            return Ok((root.to_path_buf(), key));
        }
    }
    Err(format!("{} is not on a tierfs mount", path.display()))
}

/// The control socket of the mount at `root`.
pub fn socket_of(root: &Path) -> Result<PathBuf, String> {
    match xattr::get(root, CONTROL) {
        Ok(Some(bytes)) => Ok(PathBuf::from(String::from_utf8_lossy(&bytes).into_owned())),
        _ => Err(format!("{} is not a tierfs mount", root.display())),
    }
}

/// Mountpoints of the tierfs mounts this process can see.
pub fn mounts() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            (fields.get(dash + 1) == Some(&"fuse.tierfs")).then(|| {
                // mountinfo escapes spaces and the like as octal.
                PathBuf::from(fields[4].replace("\\040", " "))
            })
        })
        .collect()
}

/// Sends one request and returns the answer's status and body.
pub async fn request(
    socket: &Path,
    method: Method,
    uri: &str,
    body: Option<serde_json::Value>,
) -> Result<(StatusCode, Bytes), String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("cannot reach the control socket {}: {e}", socket.display()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("control socket: {e}"))?;
    tokio::spawn(connection);
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(hyper::header::HOST, "tierfs")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(payload)))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("control socket: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("control socket: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// A request whose answer must be a success with a JSON body.
pub async fn request_json<T: serde::de::DeserializeOwned>(
    socket: &Path,
    method: Method,
    uri: &str,
    body: Option<serde_json::Value>,
) -> Result<T, String> {
    let (status, bytes) = request(socket, method, uri, body).await?;
    if !status.is_success() {
        let why = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        return Err(format!("{status}: {why}"));
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("unexpected answer: {e}"))
}
