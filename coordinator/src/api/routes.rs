//! Registering a route together with what it needs: [`Routes`] adds the handler to the axum
//! router and the rule to the [`RouteTable`] in one call, so neither can be added without the
//! other and the gate never meets a route it does not know.

use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{on, MethodFilter};
use axum::Router;

use super::access::{Access, RouteTable};
use crate::AppState;

/// A router under construction and the access table of its routes.
#[derive(Debug, Default)]
pub struct Routes {
    router: Router<AppState>,
    table: RouteTable,
}

impl Routes {
    /// No routes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// `GET path` (and `HEAD`, unless a `HEAD` route of its own is added), needing `access`.
    pub fn get<H, T>(self, path: &str, access: Access, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.on(Method::GET, path, access, handler)
    }

    /// `HEAD path`, needing `access`.
    pub fn head<H, T>(self, path: &str, access: Access, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.on(Method::HEAD, path, access, handler)
    }

    /// `POST path`, needing `access`.
    pub fn post<H, T>(self, path: &str, access: Access, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.on(Method::POST, path, access, handler)
    }

    /// `PUT path`, needing `access`.
    pub fn put<H, T>(self, path: &str, access: Access, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.on(Method::PUT, path, access, handler)
    }

    /// `DELETE path`, needing `access`.
    pub fn delete<H, T>(self, path: &str, access: Access, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.on(Method::DELETE, path, access, handler)
    }

    fn on<H, T>(mut self, method: Method, path: &str, access: Access, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone())
            .unwrap_or_else(|_| panic!("axum cannot route {method}"));
        self.table.add(method, path, access);
        // axum merges handlers for other methods of one path into that path's route.
        self.router = self.router.route(path, on(filter, handler));
        self
    }

    /// Adds `other`'s routes beside these.
    pub fn merge(mut self, other: Routes) -> Self {
        self.router = self.router.merge(other.router);
        self.table.merge(other.table);
        self
    }

    /// Adds `other`'s routes under `prefix` (e.g. `/api/v1`).
    pub fn nest(mut self, prefix: &str, other: Routes) -> Self {
        self.router = self.router.nest(prefix, other.router);
        self.table.nest(prefix, other.table);
        self
    }

    /// Limits the bodies of the routes added so far to `bytes`, unless a route sets its own.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.router = self.router.layer(DefaultBodyLimit::max(bytes));
        self
    }

    /// The router and the table of its routes.
    pub fn into_parts(self) -> (Router<AppState>, RouteTable) {
        (self.router, self.table)
    }
}
