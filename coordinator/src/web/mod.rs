//! The dashboard at `/`: server-rendered pages (askama templates in `web/templates/`) that read
//! fine without JavaScript, kept live by `web/static/dashboard.js` over the API's SSE streams.
//!
//! Pages: `/` jobs, `/jobs/{id}` one job, `/agents`, `/emulation`; `/login` and `/logout`; static
//! files under `/static/`. Pages need what a read-only API call needs ([`Access::Page`], checked by
//! the API's gate): without it they redirect to the sign-in form, which keeps a digest of the token
//! in a cookie.

mod assets;
mod format;
mod job;
mod login;
mod pages;
mod stats;

use askama::Template;
use axum::http::{header, HeaderName, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Redirect, Response};

use crate::api::access::Access;
use crate::api::error::ApiError;
use crate::api::routes::Routes;
use crate::store::StoreError;
use crate::AppState;

/// Routes of the dashboard, merged at the root beside `/api/v1`.
pub fn routes() -> Routes {
    Routes::new()
        .get("/", Access::Page, pages::jobs)
        .get("/jobs", Access::Public, || async {
            Redirect::permanent("/")
        })
        .get("/jobs/{id}", Access::Page, job::page)
        .get("/agents", Access::Page, pages::agents)
        .get("/emulation", Access::Page, pages::emulation)
        .get("/login", Access::Public, login::form)
        .post("/login", Access::Public, login::submit)
        .post("/logout", Access::Public, login::logout)
        .get("/static/{file}", Access::Public, assets::serve)
}

/// Headers of every HTML page. The policy allows only this site's own script and style sheet:
/// build logs and error texts are untrusted, and escaping is then not the only line of defence.
const PAGE_HEADERS: [(HeaderName, &str); 4] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "same-origin"),
    // Pages show live state and may be behind the token: never from a cache.
    (header::CACHE_CONTROL, "no-store"),
];

/// What every page's frame (`base.html`) needs.
pub(crate) struct Layout {
    /// The page's title.
    pub title: String,
    /// Which page, for the navigation and the script (`data-page`).
    pub page: &'static str,
    /// Whether the page follows an event stream (`data-live`).
    pub live: bool,
    /// Version of the static files, for their URLs.
    pub version: &'static str,
    /// Whether to offer signing out (only when an API token is configured).
    pub sign_out: bool,
}

impl Layout {
    /// The frame of page `page`.
    pub fn new(state: &AppState, title: impl Into<String>, page: &'static str, live: bool) -> Self {
        Layout {
            title: title.into(),
            page,
            live,
            version: assets::version(),
            sign_out: state.config.api_token.is_some(),
        }
    }
}

/// A page failing: to sign in, not found, or broken.
#[derive(Debug)]
pub(crate) enum PageError {
    /// Not signed in; the path to return to afterwards.
    SignIn(String),
    /// 404 with a sentence saying what is missing.
    NotFound(String),
    /// 500; the cause is logged, never shown.
    Internal(anyhow::Error),
}

impl From<StoreError> for PageError {
    fn from(e: StoreError) -> Self {
        PageError::Internal(e.into())
    }
}

impl From<askama::Error> for PageError {
    fn from(e: askama::Error) -> Self {
        PageError::Internal(e.into())
    }
}

impl From<std::io::Error> for PageError {
    fn from(e: std::io::Error) -> Self {
        PageError::Internal(e.into())
    }
}

/// The 404 and 500 pages; built without the state, which may be what failed.
#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    layout: Layout,
    heading: &'a str,
    message: &'a str,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, heading, message) = match self {
            PageError::SignIn(next) => {
                let to = format!(
                    "/login?next={}",
                    format::url_encode(format::safe_next(&next))
                );
                return Redirect::to(&to).into_response();
            }
            PageError::NotFound(message) => (StatusCode::NOT_FOUND, "Not found", message),
            PageError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "dashboard page failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong",
                    "The page could not be built; the coordinator's log says why.".to_string(),
                )
            }
        };
        let page = ErrorPage {
            layout: Layout {
                title: heading.to_string(),
                page: "error",
                live: false,
                version: assets::version(),
                sign_out: false,
            },
            heading,
            message: &message,
        };
        match page.render() {
            Ok(body) => (status, PAGE_HEADERS, Html(body)).into_response(),
            Err(_) => (status, message).into_response(),
        }
    }
}

/// Renders a page with the dashboard's headers.
pub(crate) fn render(status: StatusCode, page: &impl Template) -> Result<Response, PageError> {
    Ok((status, PAGE_HEADERS, Html(page.render()?)).into_response())
}

/// The answer to a page request the gate refused: the sign-in form, returning to the page
/// afterwards; or the error page when the check itself failed.
pub(crate) fn refused_page(e: ApiError, uri: &Uri) -> Response {
    match e {
        ApiError::Internal(e) => PageError::Internal(e).into_response(),
        _ => PageError::SignIn(uri.path_and_query().map_or("/", |p| p.as_str()).to_string())
            .into_response(),
    }
}
