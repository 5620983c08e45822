//! `/admin/...`: what the coordinator does on its own, for admins (`archfarm admin retention`).

use archfarm_protocol::retention::RetentionStatus;
use axum::extract::State;
use axum::Json;

use super::access::Access;
use super::routes::Routes;
use crate::AppState;

/// Routes of this resource.
pub fn routes() -> Routes {
    Routes::new().get("/admin/retention", Access::Admin, retention)
}

/// The retention setting and what this replica's sweeps deleted.
async fn retention(State(state): State<AppState>) -> Json<RetentionStatus> {
    Json(state.retention.status(&state))
}
