//! Signed OTA artifacts: signers and uploads in the REST API, and the
//! device download `GET /artifacts/{sha256}` authenticated by the device's
//! own client certificate (mTLS on the HTTPS listener).

use crate::api::{Authenticated, JsonBody, Listing, PageParams, Params, listing};
use crate::error::ApiError;
use crate::{AppState, BodyTimeout, ClientChain};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use hyper::body::{Body as HttpBody, Bytes, Frame, SizeHint};
use onramp_domain::Page;
use onramp_domain::artifact::{self, RangeRequest};
use onramp_service::{Artifact, ServiceError, Signer, UploadArtifact};
use serde::Deserialize;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncSeekExt, ReadBuf};
use utoipa::{IntoParams, ToSchema};

/// The header that carries an upload's detached signature (base64).
pub const SIGNATURE_HEADER: &str = "x-onramp-signature";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/signers", get(list_signers).post(add_signer))
        .route("/api/v1/signers/{name}", delete(delete_signer))
        .route(
            "/api/v1/artifacts",
            get(list_artifacts)
                .post(upload_artifact)
                // The upload streams to disk under its own limit
                // (`artifacts.max_upload_bytes`), not the API's 1 MiB.
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/api/v1/artifacts/{sha256}", get(get_artifact))
        .route("/artifacts/{sha256}", get(download))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignerCreate {
    pub name: String,
    /// `-----BEGIN PUBLIC KEY-----` PEM: Ed25519 or ECDSA P-256.
    pub public_key_pem: String,
}

#[utoipa::path(post, path = "/api/v1/signers", request_body = SignerCreate,
    responses((status = 201, description = "The signer"), (status = 400), (status = 409)),
    security(("api_key" = [])))]
pub async fn add_signer(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    JsonBody(body): JsonBody<SignerCreate>,
) -> Result<(StatusCode, Json<Signer>), ApiError> {
    let signer = s
        .onramp
        .add_signer(&caller, &body.name, &body.public_key_pem)
        .await?;
    Ok((StatusCode::CREATED, Json(signer)))
}

#[utoipa::path(get, path = "/api/v1/signers",
    responses((status = 200, description = "Every signer, by name")), security(("api_key" = [])))]
pub async fn list_signers(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<Vec<Signer>>, ApiError> {
    Ok(Json(s.onramp.list_signers(&caller).await?))
}

#[utoipa::path(delete, path = "/api/v1/signers/{name}", params(("name" = String, Path)),
    responses((status = 204, description = "Removed: later uploads naming it are refused"), (status = 404)),
    security(("api_key" = [])))]
pub async fn delete_signer(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.onramp.delete_signer(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadParams {
    /// A name for people (the file name); the id is the SHA-256.
    pub name: String,
    /// The signer whose key made the `X-Onramp-Signature` signature.
    pub signer: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/artifacts", params(UploadParams),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "The artifact's bytes; the detached signature (base64) in `X-Onramp-Signature`"),
    responses((status = 201, description = "The artifact, named by its SHA-256 (the same bytes give the same artifact)"),
        (status = 400, description = "Unknown signer, or a signature that does not verify"), (status = 413)),
    security(("api_key" = [])))]
pub async fn upload_artifact(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Params(p): Params<UploadParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Artifact>), ApiError> {
    // A declared length over the limit is refused before any byte is read.
    let limit = s.onramp.settings().artifacts.max_upload_bytes;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit
    {
        return Err(ApiError(ServiceError::PayloadTooLarge(format!(
            "the artifact exceeds {limit} bytes"
        ))));
    }
    let signature = match headers.get(SIGNATURE_HEADER) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    ApiError(ServiceError::BadRequest(
                        "X-Onramp-Signature is not base64 text".into(),
                    ))
                })?
                .to_string(),
        ),
        None => None,
    };
    let mut reader = BodyReader {
        body,
        pending: Bytes::new(),
    };
    let artifact = s
        .onramp
        .upload_artifact(
            &caller,
            UploadArtifact {
                name: p.name,
                signer: p.signer,
                signature,
            },
            &mut reader,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(artifact)))
}

#[utoipa::path(get, path = "/api/v1/artifacts", params(PageParams),
    responses((status = 200, description = "A page of artifacts in SHA-256 order: {items, next}")),
    security(("api_key" = [])))]
pub async fn list_artifacts(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Params(p): Params<PageParams>,
) -> Result<Json<Listing<Artifact>>, ApiError> {
    let page = Page::new(p.after, p.limit);
    let items = s.onramp.list_artifacts(&caller, &page).await?;
    Ok(Json(listing(items, &page, |a| a.sha256.clone())))
}

#[utoipa::path(get, path = "/api/v1/artifacts/{sha256}", params(("sha256" = String, Path)),
    responses((status = 200, description = "The artifact's metadata"), (status = 404)),
    security(("api_key" = [])))]
pub async fn get_artifact(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(sha256): Path<String>,
) -> Result<Json<Artifact>, ApiError> {
    Ok(Json(s.onramp.get_artifact(&caller, &sha256).await?))
}

#[derive(Debug, Deserialize)]
pub struct DownloadParams {
    pub token: Option<String>,
}

/// The device download: its client certificate names the thing; a single
/// byte range resumes an interrupted download.
async fn download(
    State(s): State<AppState>,
    Extension(chain): Extension<ClientChain>,
    Path(sha256): Path<String>,
    Params(p): Params<DownloadParams>,
    headers: HeaderMap,
) -> Response {
    match serve_download(&s, &chain, &sha256, p.token.as_deref(), &headers).await {
        Ok(r) => r,
        Err(e) => ApiError(e).into_response(),
    }
}

async fn serve_download(
    s: &AppState,
    chain: &ClientChain,
    sha256: &str,
    token: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, ServiceError> {
    let d = s
        .onramp
        .authorize_artifact_download(&chain.0, sha256, token)
        .await?;
    let etag = format!("\"{}\"", d.sha256);
    // A resumed download whose If-Range no longer matches gets the whole file.
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim() == etag);
    let range_header = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| if_range_ok);
    let range = artifact::parse_range(range_header, d.size);
    let (status, start, len) = match range {
        RangeRequest::Whole => (StatusCode::OK, 0, d.size),
        RangeRequest::Partial(r) => (StatusCode::PARTIAL_CONTENT, r.start, r.len()),
        RangeRequest::Unsatisfiable => {
            let mut resp = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", d.size)) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(resp);
        }
    };
    let mut file = tokio::fs::File::open(&d.path)
        .await
        .map_err(|e| ServiceError::Internal(format!("artifact {sha256}: {e}")))?;
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|e| ServiceError::Internal(format!("artifact {sha256}: {e}")))?;
    }
    let body = FileBody {
        file,
        remaining: len,
        completes: start + len == d.size,
        buf: vec![0u8; 64 * 1024],
        pace: (d.bytes_per_sec > 0).then(|| Pace {
            bytes_per_sec: d.bytes_per_sec,
            started: tokio::time::Instant::now(),
            sent: 0,
            sleep: None,
        }),
    };
    let mut resp = Response::new(Body::new(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) =
            HeaderValue::from_str(&format!("bytes {start}-{}/{}", start + len - 1, d.size))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(resp)
}

/// Bandwidth pacing of one download.
struct Pace {
    bytes_per_sec: u64,
    started: tokio::time::Instant,
    sent: u64,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// A file range streamed from disk in 64 KiB chunks, counted in metrics.
struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    /// The range ends at the end of the file: the device now has it all.
    completes: bool,
    buf: Vec<u8>,
    pace: Option<Pace>,
}

impl HttpBody for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        if let Some(p) = &mut this.pace {
            if let Some(sleep) = &mut p.sleep {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                p.sleep = None;
            }
            let due = p.started
                + std::time::Duration::from_secs_f64(p.sent as f64 / p.bytes_per_sec as f64);
            if due > tokio::time::Instant::now() {
                let mut sleep = Box::pin(tokio::time::sleep_until(due));
                if sleep.as_mut().poll(cx).is_pending() {
                    p.sleep = Some(sleep);
                    return Poll::Pending;
                }
            }
        }
        let want = usize::try_from(this.remaining)
            .unwrap_or(usize::MAX)
            .min(this.buf.len());
        let mut rb = ReadBuf::new(&mut this.buf[..want]);
        match Pin::new(&mut this.file).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the artifact is shorter than recorded",
                    ))));
                }
                let chunk = Bytes::copy_from_slice(rb.filled());
                this.remaining -= n as u64;
                if let Some(p) = &mut this.pace {
                    p.sent += n as u64;
                }
                metrics::counter!("onramp_artifact_download_bytes_total").increment(n as u64);
                if this.remaining == 0 && this.completes {
                    metrics::counter!("onramp_artifact_downloads_completed_total").increment(1);
                }
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// The request body as an `AsyncRead`, so the service streams it to disk.
struct BodyReader {
    body: Body,
    pending: Bytes,
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<BodyTimeout>() {
            return true;
        }
        source = err.source();
    }
    false
}

impl AsyncRead for BodyReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Err(e))) => {
                    let kind = if is_timeout(&e) {
                        std::io::ErrorKind::TimedOut
                    } else {
                        std::io::ErrorKind::Other
                    };
                    return Poll::Ready(Err(std::io::Error::new(kind, e.to_string())));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.pending = data;
                    }
                }
            }
        }
    }
}
