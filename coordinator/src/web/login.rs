//! Signing in to the dashboard with the API token, kept in an HttpOnly cookie so a browser's
//! `EventSource` (which cannot send headers) carries it too.

use archfarm_protocol::tokens::API_TOKEN_PREFIX;
use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::format::safe_next;
use super::{render, Layout, PageError};
use crate::api::auth::{read_cookie_value, same_secret, token_hash, TOKEN_COOKIE};
use crate::config::Secret;
use crate::AppState;

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    layout: Layout,
    next: String,
    message: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct NextQuery {
    #[serde(default)]
    next: String,
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    next: String,
}

fn page(state: &AppState, next: &str, message: Option<String>) -> LoginPage {
    LoginPage {
        layout: Layout::new(state, "Sign in", "login", false),
        next: safe_next(next).to_string(),
        message,
    }
}

/// `GET /login`: the form; straight back to the dashboard when there is no token to ask for.
pub(crate) async fn form(
    State(state): State<AppState>,
    Query(q): Query<NextQuery>,
) -> Result<Response, PageError> {
    if state.config.api_token.is_none() {
        return Ok(Redirect::to(safe_next(&q.next)).into_response());
    }
    render(StatusCode::OK, &page(&state, &q.next, None))
}

/// `POST /login`: checks the token (the `--api-token`, or a created API token of any scope), sets
/// the cookie and returns to where the reader was going.
pub(crate) async fn submit(
    State(state): State<AppState>,
    Form(f): Form<LoginForm>,
) -> Result<Response, PageError> {
    let next = safe_next(&f.next);
    let Some(admin) = &state.config.api_token else {
        return Ok(Redirect::to(next).into_response());
    };
    let token = f.token.trim();
    let accepted = same_secret(token, admin)
        || (token.starts_with(API_TOKEN_PREFIX)
            && state
                .store
                .use_api_token(&token_hash(token), false)
                .await?
                .is_ok());
    if !accepted {
        tracing::warn!("dashboard sign-in with a wrong, expired or revoked token refused");
        let message = "That is not a valid token for this coordinator: use its --api-token or an \
                       active token from `archfarm tokens create`.";
        return render(
            StatusCode::UNAUTHORIZED,
            &page(&state, next, Some(message.into())),
        );
    }
    // Hex, so any token works; and a leaked cookie is not the token and grants reading only.
    let value = read_cookie_value(&Secret::new(token));
    let cookie = format!(
        "{TOKEN_COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/{}",
        secure(&state)
    );
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, next.to_string()),
        ],
    )
        .into_response())
}

/// `; Secure` when the coordinator serves HTTPS, so a browser never sends the cookie in clear.
fn secure(state: &AppState) -> &'static str {
    if state.config.tls_enabled() {
        "; Secure"
    } else {
        ""
    }
}

/// `POST /logout`: forgets the cookie.
pub(crate) async fn logout(State(state): State<AppState>) -> Response {
    let cookie = format!(
        "{TOKEN_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{}",
        secure(&state)
    );
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, "/login".to_string()),
        ],
    )
        .into_response()
}
