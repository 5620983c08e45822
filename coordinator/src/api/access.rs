//! What each route needs from its caller, and the table of every route with it.
//!
//! The table is filled by [`super::routes::Routes`] while the router is built, so no route exists
//! without an entry; [`super::gate`] looks every request up in it before the handler runs. A leaf
//! module: it knows routes and what they need, not how a token is checked.

use axum::http::Method;

/// What a route needs before its handler may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: the health check, static files, signing in and out of the dashboard.
    Public,
    /// A token of scope `read` or above, the dashboard's cookie, or nothing with `--public-read`.
    Read,
    /// A token of scope `submit` or above.
    Submit,
    /// A token of scope `admin` (or the `--api-token`).
    Admin,
    /// A dashboard page: what [`Access::Read`] needs, but a refusal sends the browser to sign in.
    Page,
    /// A registered agent's own token.
    Agent,
    /// A registered agent's own token, on a route whose `{id}` names that same agent.
    AgentItself,
    /// The agent that `{id}` names, with its own token, or an admin (draining).
    AgentItselfOrAdmin,
    /// A token of scope `submit` or above, or any registered agent's token (context downloads).
    SubmitterOrAgent,
    /// Registering an agent: a join token, or an agent's own token. Which name an agent token
    /// may register is known only from the body, so the handler checks that and takes the
    /// created join token's use.
    Join,
}

impl Access {
    /// Whether only agents call routes needing this (for `--client-ca`; agents also call
    /// [`Access::AgentItselfOrAdmin`] and [`Access::SubmitterOrAgent`] routes, and are known
    /// there by their token).
    pub fn agents_only(self) -> bool {
        matches!(self, Access::Agent | Access::AgentItself | Access::Join)
    }
}

/// One route: its method, its path template as `MatchedPath` shows it, and what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteAccess {
    /// The method (`GET` routes also answer `HEAD`).
    pub method: Method,
    /// The full path template, e.g. `/api/v1/jobs/{id}`.
    pub path: String,
    /// What a caller needs.
    pub access: Access,
}

/// Every route of a router and what it needs.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<RouteAccess>,
}

/// What the table says about a request's method and matched route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The route is registered with this access.
    Found(Access),
    /// The path is registered, but not for this method: these methods are allowed.
    OtherMethods(Vec<Method>),
    /// Nothing is registered under this path: nobody may call it.
    Missing,
}

impl RouteTable {
    /// Every route, in the order they were registered.
    pub fn routes(&self) -> &[RouteAccess] {
        &self.routes
    }

    /// Records a route. Panics on a second entry for the same method and path, as axum does for
    /// a second handler: two rules for one route would leave which one applies to chance.
    pub fn add(&mut self, method: Method, path: &str, access: Access) {
        assert!(
            !self
                .routes
                .iter()
                .any(|r| r.method == method && r.path == path),
            "{method} {path} is registered twice"
        );
        self.routes.push(RouteAccess {
            method,
            path: path.to_string(),
            access,
        });
    }

    /// Adds `other`'s routes as they are (what `Router::merge` does).
    pub fn merge(&mut self, other: RouteTable) {
        for r in other.routes {
            self.add(r.method, &r.path, r.access);
        }
    }

    /// Adds `other`'s routes under `prefix` (what `Router::nest` does).
    pub fn nest(&mut self, prefix: &str, other: RouteTable) {
        for r in other.routes {
            let path = if r.path == "/" {
                prefix.to_string()
            } else {
                format!("{prefix}{}", r.path)
            };
            self.add(r.method, &path, r.access);
        }
    }

    /// What a request with `method` on the route `path` (its template) needs.
    pub fn find(&self, method: &Method, path: &str) -> Lookup {
        let on_path = || self.routes.iter().filter(|r| r.path == path);
        let exact = |m: &Method| on_path().find(|r| r.method == *m).map(|r| r.access);
        // axum answers `HEAD` with the `GET` handler when there is no `HEAD` one.
        let found = exact(method).or_else(|| {
            (*method == Method::HEAD)
                .then(|| exact(&Method::GET))
                .flatten()
        });
        if let Some(access) = found {
            return Lookup::Found(access);
        }
        let mut allowed: Vec<Method> = Vec::new();
        for r in on_path() {
            let head = (r.method == Method::GET).then_some(Method::HEAD);
            for m in std::iter::once(r.method.clone()).chain(head) {
                if !allowed.contains(&m) {
                    allowed.push(m);
                }
            }
        }
        if allowed.is_empty() {
            Lookup::Missing
        } else {
            Lookup::OtherMethods(allowed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let mut inner = RouteTable::default();
        inner.add(Method::GET, "/jobs", Access::Read);
        inner.add(Method::POST, "/jobs", Access::Submit);
        inner.add(Method::HEAD, "/contexts/{digest}", Access::Submit);
        inner.add(Method::GET, "/contexts/{digest}", Access::SubmitterOrAgent);
        let mut t = RouteTable::default();
        t.add(Method::GET, "/healthz", Access::Public);
        t.nest("/api/v1", inner);
        t
    }

    #[test]
    fn routes_are_found_by_method_and_full_template() {
        let t = table();
        assert_eq!(
            t.find(&Method::POST, "/api/v1/jobs"),
            Lookup::Found(Access::Submit)
        );
        assert_eq!(
            t.find(&Method::GET, "/api/v1/jobs"),
            Lookup::Found(Access::Read)
        );
        assert_eq!(
            t.find(&Method::HEAD, "/api/v1/jobs"),
            Lookup::Found(Access::Read),
            "HEAD is answered by GET"
        );
        assert_eq!(
            t.find(&Method::HEAD, "/api/v1/contexts/{digest}"),
            Lookup::Found(Access::Submit),
            "an own HEAD route wins over GET"
        );
        assert_eq!(t.find(&Method::GET, "/jobs"), Lookup::Missing);
        assert_eq!(
            t.find(&Method::DELETE, "/api/v1/jobs"),
            Lookup::OtherMethods(vec![Method::GET, Method::HEAD, Method::POST])
        );
        assert_eq!(t.routes().len(), 5);
    }

    #[test]
    #[should_panic(expected = "registered twice")]
    fn a_route_has_one_rule() {
        let mut t = table();
        t.add(Method::GET, "/healthz", Access::Read);
    }

    #[test]
    fn only_agent_routes_are_agents_only() {
        assert!(Access::AgentItself.agents_only() && Access::Join.agents_only());
        assert!(!Access::AgentItselfOrAdmin.agents_only() && !Access::Read.agents_only());
    }
}
