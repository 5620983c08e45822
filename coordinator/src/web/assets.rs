//! The dashboard's script, style sheet and icon, compiled into the binary and served under
//! `/static/`. Pages link them with `?v=VERSION` (a hash of their contents), so a long cache
//! lifetime never serves a stale script after an upgrade.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest as _, Sha256};

/// `(name, content type, body)` of every static file.
const FILES: &[(&str, &str, &str)] = &[
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web/static/dashboard.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../../web/static/style.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../../../web/static/favicon.svg"),
    ),
];

/// How long browsers may keep a file without asking again: a day (URLs change with the content).
const CACHE_CONTROL: &str = "public, max-age=86400";

/// A short hash of every static file, appended to their URLs.
pub fn version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        let mut h = Sha256::new();
        for (name, _, body) in FILES {
            h.update(name.as_bytes());
            h.update(body.as_bytes());
        }
        hex::encode(&h.finalize()[..6])
    })
}

/// `GET /static/{file}`: no authentication, nothing secret in here.
pub async fn serve(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, CACHE_CONTROL),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            *body,
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "no such file",
        )
            .into_response(),
    }
}
