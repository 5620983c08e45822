//! Registered agents.

use archfarm_protocol::api::StorageUse;
use archfarm_protocol::{Network, Platform};
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use super::{json_col, json_list, lifecycle, now_ms, parse_col, parse_opt_col, Store, StoreResult};

/// An agent as stored.
#[derive(Debug, Clone)]
pub struct AgentRow {
    /// Agent id.
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// Platforms built natively.
    pub native: Vec<Platform>,
    /// Platforms built under emulation.
    pub emulated: Vec<Platform>,
    /// Builds at once.
    pub capacity: i64,
    /// Last call, Unix ms.
    pub last_seen: i64,
    /// Taking no new builds: drained (by itself on SIGTERM, or by an admin), or unavailable.
    pub draining: bool,
    /// Drained by itself or an admin: it finishes its builds and deregisters (a lease call is
    /// answered 409 `draining`).
    pub drain_requested: bool,
    /// Why it takes no builds on its own account now (its disk is full), as its last lease call
    /// said; it comes back by itself.
    pub unavailable: Option<String>,
    /// Its image stores' driver, as it registered it.
    pub storage_driver: Option<String>,
    /// Its build storage, as its last lease call reported it.
    pub storage: Option<StorageUse>,
    /// Cut off by an admin; it may not register again under its name.
    pub revoked: bool,
    /// The networks it gives builds, as it declared them.
    pub networks: AgentNetworks,
}

/// The networks an agent declared at registration: its default and what jobs may ask it for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentNetworks {
    /// What a build gets when its job names no network; `None` for agents that did not say.
    pub default: Option<Network>,
    /// What a job may ask for; empty for agents from before per-job networks, which take only
    /// jobs that leave the network to them.
    pub allowed: Vec<Network>,
}

impl AgentNetworks {
    /// Whether a job asking for `wanted` (`None`: the agent's default) may be built here.
    pub fn allows(&self, wanted: Option<Network>) -> bool {
        archfarm_protocol::network::allows(&self.allowed, wanted)
    }
}

#[cfg(test)]
impl AgentRow {
    /// An online agent of capacity 1 for the scheduler's pure tests (platforms as `os/arch`).
    pub(crate) fn for_test(name: &str, native: &[&str], emulated: &[&str]) -> AgentRow {
        let p = |s: &&str| s.parse().expect("test platform");
        AgentRow {
            id: Uuid::new_v4(),
            name: name.into(),
            native: native.iter().map(p).collect(),
            emulated: emulated.iter().map(p).collect(),
            capacity: 1,
            last_seen: 0,
            draining: false,
            drain_requested: false,
            unavailable: None,
            storage_driver: None,
            storage: None,
            revoked: false,
            networks: Default::default(),
        }
    }
}

impl AgentRow {
    pub(super) fn from_row(row: &AnyRow) -> StoreResult<Self> {
        let unavailable: Option<String> = row.try_get("unavailable")?;
        Ok(AgentRow {
            id: parse_col(row, "id")?,
            name: row.try_get("name")?,
            native: json_col(row, "native_platforms")?,
            emulated: json_col(row, "emulated_platforms")?,
            capacity: row.try_get("capacity")?,
            last_seen: row.try_get("last_seen")?,
            draining: row.try_get::<i64, _>("draining")? != 0 || unavailable.is_some(),
            drain_requested: row.try_get::<i64, _>("draining")? != 0,
            storage_driver: row.try_get("storage_driver")?,
            storage: match (
                row.try_get::<Option<i64>, _>("storage_used_bytes")?,
                row.try_get::<Option<i64>, _>("storage_limit_bytes")?,
            ) {
                (Some(used), Some(limit)) => Some(StorageUse {
                    used_bytes: used.max(0) as u64,
                    limit_bytes: limit.max(0) as u64,
                }),
                _ => None,
            },
            unavailable,
            revoked: row.try_get::<Option<i64>, _>("revoked_at")?.is_some(),
            networks: AgentNetworks {
                default: parse_opt_col(row, "default_network")?,
                allowed: json_list(row, "allowed_networks")?,
            },
        })
    }
}

/// Outcome of a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// Registered; `requeued` builds of an earlier incarnation went back to the queue.
    Ok {
        /// The agent's id (kept across re-registrations).
        id: Uuid,
        /// Builds requeued.
        requeued: u64,
    },
    /// Another online installation holds the name.
    NameTaken,
    /// An admin revoked the agent of that name.
    Revoked,
}

pub(super) const COLUMNS: &str = "id, name, native_platforms, emulated_platforms, capacity, \
    last_seen, draining, revoked_at, default_network, allowed_networks, storage_driver, \
    storage_used_bytes, storage_limit_bytes, unavailable";

/// What a revoked agent's token hash is kept behind; no sha256 in hex starts with it.
const REVOKED_PREFIX: &str = "revoked:";

/// How stale `agents.last_seen` may get before a call refreshes it, ms; far below any
/// `--agent-offline-secs` worth setting.
const TOUCH_EVERY_MS: i64 = 1000;

impl Store {
    /// Registers an agent, or re-registers one under the same name, keeping its id. A re-registering
    /// agent is a new process that holds none of its old builds, so those go back to the queue.
    ///
    /// While the name's holder was seen since `online_since`, only the same installation (the
    /// same `instance`) or a caller that proved it is the holder (`proven`: it presented the
    /// agent's own token) may take it over; anyone else gets `NameTaken` and nothing changes. A
    /// registration that names no installation is someone else as far as anyone can tell: two
    /// machines sharing a host name, or a client that leaves the id out, would otherwise take an
    /// online agent's builds away.
    #[allow(clippy::too_many_arguments)]
    pub async fn upsert_agent(
        &self,
        name: &str,
        token_hash: &str,
        native: &[Platform],
        emulated: &[Platform],
        capacity: i64,
        version: Option<&str>,
        instance: Option<Uuid>,
        proven: bool,
        online_since: i64,
        networks: &AgentNetworks,
    ) -> StoreResult<Registered> {
        let now = now_ms();
        let default_network = networks.default.map(Network::as_str);
        let allowed_networks =
            serde_json::to_string(&networks.allowed).expect("networks serialise");
        let native = serde_json::to_string(native).expect("platforms serialise");
        let emulated = serde_json::to_string(emulated).expect("platforms serialise");
        let mut tx = self.begin().await?;
        let instance_text = instance.map(|i| i.to_string());
        let existing = sqlx::query(
            "SELECT id, instance_id, last_seen, revoked_at FROM agents WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let (id, requeued) = match existing {
            Some(row) => {
                if row.try_get::<Option<i64>, _>("revoked_at")?.is_some() {
                    return Ok(Registered::Revoked);
                }
                let id: String = row.try_get("id")?;
                let held_by: Option<String> = row.try_get("instance_id")?;
                let last_seen: i64 = row.try_get("last_seen")?;
                let same =
                    proven || matches!((&held_by, &instance_text), (Some(a), Some(b)) if a == b);
                if !same && last_seen >= online_since {
                    return Ok(Registered::NameTaken);
                }
                // A registration that names no installation keeps the one on record.
                sqlx::query(
                    "UPDATE agents SET token_hash = $1, native_platforms = $2, emulated_platforms = $3, \
                     capacity = $4, version = $5, last_seen = $6, instance_id = COALESCE($7, instance_id), \
                     draining = 0, default_network = $9, allowed_networks = $10 WHERE id = $8",
                )
                .bind(token_hash)
                .bind(&native)
                .bind(&emulated)
                .bind(capacity)
                .bind(version)
                .bind(now)
                .bind(&instance_text)
                .bind(&id)
                .bind(default_network)
                .bind(&allowed_networks)
                .execute(&mut *tx)
                .await?;
                let requeued = sqlx::query(&format!(
                    "UPDATE builds SET state = $2, agent_id = NULL, agent_name = NULL, mode = NULL, \
                     lease_token = NULL, lease_expires_at = NULL, started_at = NULL \
                     WHERE agent_id = $1 AND {}",
                    lifecycle::REQUEUE_BUILD.guard("state")
                ))
                .bind(&id)
                .bind(lifecycle::REQUEUE_BUILD.to.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
                (id.parse().unwrap_or_default(), requeued)
            }
            None => {
                let id = Uuid::new_v4();
                sqlx::query(
                    "INSERT INTO agents (id, name, token_hash, native_platforms, emulated_platforms, capacity, \
                     version, registered_at, last_seen, instance_id, default_network, allowed_networks) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                )
                .bind(id.to_string())
                .bind(name)
                .bind(token_hash)
                .bind(&native)
                .bind(&emulated)
                .bind(capacity)
                .bind(version)
                .bind(now)
                .bind(now)
                .bind(&instance_text)
                .bind(default_network)
                .bind(&allowed_networks)
                .execute(&mut *tx)
                .await?;
                (id, 0)
            }
        };
        tx.commit().await?;
        Ok(Registered::Ok { id, requeued })
    }

    /// The agent holding this token hash, if any.
    pub async fn agent_by_token_hash(&self, token_hash: &str) -> StoreResult<Option<AgentRow>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM agents WHERE token_hash = $1"
        ))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(AgentRow::from_row).transpose()
    }

    /// The name of the revoked agent whose token (before its revocation) had `token_hash`.
    pub async fn revoked_agent_by_token_hash(
        &self,
        token_hash: &str,
    ) -> StoreResult<Option<String>> {
        let row =
            sqlx::query("SELECT name FROM agents WHERE token_hash = $1 AND revoked_at IS NOT NULL")
                .bind(format!("{REVOKED_PREFIX}{token_hash}"))
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| r.try_get("name"))
            .transpose()
            .map_err(Into::into)
    }

    /// Whether the agent with `id` was revoked (or no longer exists).
    pub async fn agent_cut_off(&self, id: Uuid) -> StoreResult<bool> {
        Ok(self
            .revoked_where("id", &id.to_string())
            .await?
            .unwrap_or(true))
    }

    /// Whether an admin revoked the agent named `name`.
    pub async fn agent_name_revoked(&self, name: &str) -> StoreResult<bool> {
        Ok(self.revoked_where("name", name).await?.unwrap_or(false))
    }

    /// Whether the agent whose `column` (`id` or `name`) is `value` is revoked; `None` if none is.
    async fn revoked_where(&self, column: &str, value: &str) -> StoreResult<Option<bool>> {
        let row = sqlx::query(&format!(
            "SELECT revoked_at FROM agents WHERE {column} = $1"
        ))
        .bind(value)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok(r.try_get::<Option<i64>, _>("revoked_at")?.is_some()))
            .transpose()
    }

    /// Every agent, by name.
    pub async fn list_agents(&self) -> StoreResult<Vec<AgentRow>> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM agents ORDER BY name"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(AgentRow::from_row).collect()
    }

    /// Agents seen since `since_ms` (never revoked ones).
    pub async fn online_agents(&self, since_ms: i64) -> StoreResult<Vec<AgentRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM agents WHERE last_seen >= $1 AND revoked_at IS NULL ORDER BY name"
        ))
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(AgentRow::from_row).collect()
    }

    /// Marks an agent draining: it takes no new builds. Returns false when there is no such agent.
    pub async fn set_draining(&self, id: Uuid) -> StoreResult<bool> {
        let res = sqlx::query("UPDATE agents SET draining = 1 WHERE id = $1")
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Records the storage driver a just-registered agent uses; a new process of it starts out
    /// available (its lease calls say otherwise).
    pub async fn set_agent_storage_driver(
        &self,
        id: Uuid,
        driver: Option<&str>,
    ) -> StoreResult<()> {
        sqlx::query("UPDATE agents SET storage_driver = $1, unavailable = NULL WHERE id = $2")
            .bind(driver)
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records the machine a just-registered agent runs on (`None`: an agent too old to say),
    /// which its completed builds copy for their provenance.
    pub async fn set_agent_host(
        &self,
        id: Uuid,
        host: Option<&archfarm_protocol::provenance::AgentHost>,
    ) -> StoreResult<()> {
        let host = host.map(|h| serde_json::to_string(&h.sanitised()).expect("a host serialises"));
        sqlx::query("UPDATE agents SET host = $1 WHERE id = $2")
            .bind(host)
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records what an agent's lease call reported: its storage (kept when `None`) and why it
    /// takes no builds now (`None`: it takes them). Writes only what changed since `agent` was read.
    pub async fn report_agent_status(
        &self,
        agent: &AgentRow,
        storage: Option<StorageUse>,
        unavailable: Option<&str>,
    ) -> StoreResult<()> {
        let storage = storage.or(agent.storage);
        if storage == agent.storage && unavailable == agent.unavailable.as_deref() {
            return Ok(());
        }
        let bytes = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
        sqlx::query(
            "UPDATE agents SET storage_used_bytes = $1, storage_limit_bytes = $2, unavailable = $3 \
             WHERE id = $4",
        )
        .bind(storage.map(|s| bytes(s.used_bytes)))
        .bind(storage.map(|s| bytes(s.limit_bytes)))
        .bind(unavailable)
        .bind(agent.id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes an agent; any build it still held goes back to the queue.
    pub async fn deregister_agent(&self, id: Uuid) -> StoreResult<u64> {
        let mut tx = self.begin().await?;
        let requeued = requeue_held(&mut tx, id).await?;
        sqlx::query("DELETE FROM agents WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(requeued)
    }

    /// Cuts an agent off: its token stops working at once, its builds go back to the queue, and it
    /// may not register again under its name until an admin forgets it. `None` when there is no
    /// such agent; otherwise the number of builds requeued.
    pub async fn revoke_agent(&self, id: Uuid) -> StoreResult<Option<u64>> {
        let mut tx = self.begin().await?;
        // A value no sha256 can produce, so no token matches it any more; the column stays unique.
        // It keeps the hash behind a prefix so that the revoked agent, calling with its old token,
        // is told it was revoked (see `revoked_agent_by_token_hash`) rather than that its token
        // is unknown. Revoking again keeps that hash.
        let res = sqlx::query(
            "UPDATE agents SET token_hash = CASE WHEN revoked_at IS NULL THEN $1 || token_hash \
             ELSE token_hash END, revoked_at = $2, last_seen = 0, draining = 0 \
             WHERE id = $3",
        )
        .bind(REVOKED_PREFIX)
        .bind(now_ms())
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            return Ok(None);
        }
        let requeued = requeue_held(&mut tx, id).await?;
        tx.commit().await?;
        Ok(Some(requeued))
    }

    /// Shows an agent offline until it calls again (its lease lapsed: it is presumed dead).
    pub async fn mark_agent_offline(&self, id: Uuid) -> StoreResult<()> {
        sqlx::query("UPDATE agents SET last_seen = 0 WHERE id = $1")
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Notes that the agent called in, unless it was noted less than a second ago.
    pub async fn touch_agent_row(&self, agent: &AgentRow) -> StoreResult<()> {
        // `last_seen` only decides "online" (a minute by default): refreshing it on every call
        // was a committed write per lease and per report, and the busiest one in the benchmark.
        if agent.last_seen >= now_ms() - TOUCH_EVERY_MS {
            return Ok(());
        }
        self.touch_agent(agent.id).await
    }

    /// Records that an agent called just now.
    pub async fn touch_agent(&self, id: Uuid) -> StoreResult<()> {
        sqlx::query("UPDATE agents SET last_seen = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// How many builds each agent runs now, by agent id.
    pub async fn running_counts(&self) -> StoreResult<std::collections::HashMap<Uuid, i64>> {
        let rows = sqlx::query(
            "SELECT agent_id, COUNT(*) AS n FROM builds WHERE state = 'building' GROUP BY agent_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = std::collections::HashMap::new();
        for row in &rows {
            let id: Option<String> = row.try_get("agent_id")?;
            if let Some(id) = id.and_then(|s| s.parse().ok()) {
                out.insert(id, row.try_get::<i64, _>("n")?);
            }
        }
        Ok(out)
    }
}

/// Puts every build `agent` holds back in the queue; returns how many.
async fn requeue_held(tx: &mut sqlx::Transaction<'_, sqlx::Any>, agent: Uuid) -> StoreResult<u64> {
    Ok(sqlx::query(&format!(
        "UPDATE builds SET state = $3, agent_id = NULL, agent_name = NULL, mode = NULL, lease_token = NULL, \
         lease_expires_at = NULL, started_at = NULL, queued_at = $2 WHERE agent_id = $1 AND {}",
        lifecycle::REQUEUE_BUILD.guard("state")
    ))
    .bind(agent.to_string())
    .bind(now_ms())
    .bind(lifecycle::REQUEUE_BUILD.to.as_str())
    .execute(&mut **tx)
    .await?
    .rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_store;

    #[tokio::test]
    async fn reregistering_keeps_the_id() {
        let (store, _dir) = test_store().await;
        let arm: Vec<Platform> = vec!["linux/arm64".parse().unwrap()];
        let (one, two) = (Some(Uuid::new_v4()), Some(Uuid::new_v4()));
        let first = store
            .upsert_agent(
                "pi",
                "h1",
                &arm,
                &[],
                1,
                None,
                one,
                false,
                0,
                &AgentNetworks::default(),
            )
            .await
            .unwrap();
        let Registered::Ok { id: a, .. } = first else {
            panic!("first registration refused")
        };
        // Another installation may not take the name while the first is online...
        let taken = store
            .upsert_agent(
                "pi",
                "hx",
                &arm,
                &[],
                1,
                None,
                two,
                false,
                0,
                &AgentNetworks::default(),
            )
            .await
            .unwrap();
        assert_eq!(taken, Registered::NameTaken);
        // ...nor may a registration that names no installation...
        let anonymous = store
            .upsert_agent(
                "pi",
                "hy",
                &arm,
                &[],
                1,
                None,
                None,
                false,
                0,
                &AgentNetworks::default(),
            )
            .await
            .unwrap();
        assert_eq!(anonymous, Registered::NameTaken);
        assert!(store.agent_by_token_hash("hy").await.unwrap().is_none());
        // ...unless it proved it is the holder (it presented the agent's own token).
        let proven = store
            .upsert_agent(
                "pi",
                "hz",
                &arm,
                &[],
                1,
                None,
                None,
                true,
                0,
                &AgentNetworks::default(),
            )
            .await
            .unwrap();
        assert_eq!(proven, Registered::Ok { id: a, requeued: 0 });
        // The same installation re-registers freely, and keeps its id; what it says of its
        // networks replaces what an older version said (nothing: the default only).
        assert_eq!(
            store
                .agent_by_token_hash("hz")
                .await
                .unwrap()
                .unwrap()
                .networks,
            AgentNetworks::default()
        );
        let nets = AgentNetworks {
            default: Some(Network::Host),
            allowed: vec![Network::Host, Network::None],
        };
        let again = store
            .upsert_agent("pi", "h2", &arm, &[], 2, Some("0.1"), one, false, 0, &nets)
            .await
            .unwrap();
        assert_eq!(again, Registered::Ok { id: a, requeued: 0 });
        // Once the first has gone offline, the name is free for another installation.
        let later = store
            .upsert_agent(
                "pi",
                "h3",
                &arm,
                &[],
                2,
                Some("0.1"),
                two,
                false,
                i64::MAX,
                &nets,
            )
            .await
            .unwrap();
        assert_eq!(later, Registered::Ok { id: a, requeued: 0 });
        assert!(store.agent_by_token_hash("h2").await.unwrap().is_none());
        let row = store.agent_by_token_hash("h3").await.unwrap().unwrap();
        assert_eq!((row.name.as_str(), row.capacity), ("pi", 2));
        assert_eq!(row.native, arm);
        assert_eq!(row.networks, nets);
        assert!(
            row.networks.allows(Some(Network::None))
                && !row.networks.allows(Some(Network::Private))
        );
        assert_eq!(store.list_agents().await.unwrap().len(), 1);
    }
}
