//! The admin subcommands: `archfarm tokens create|list|revoke`, `archfarm agents revoke|forget`
//! and `archfarm admin retention`.

use archfarm_protocol::api::Agent;
use archfarm_protocol::duration::format_duration;
use archfarm_protocol::tokens::{CreateTokenRequest, TokenInfo, TokenKind};
use chrono::{DateTime, Utc};

use crate::args::{AdminAction, CreateTokenArgs, TokensAction};
use crate::client::Client;
use crate::output::{self, table};
use crate::validate::UsageError;
use crate::Error;

/// `archfarm tokens ...`.
pub async fn tokens(client: &Client, action: &TokensAction) -> Result<u8, Error> {
    match action {
        TokensAction::Create(args) => create(client, args).await,
        TokensAction::List { json } => {
            let list = client.tokens().await?;
            if *json {
                output::stdout(&format!("{}\n", to_json(&list)?));
            } else {
                output::stdout(&tokens_table(&list.tokens, Utc::now()));
            }
            Ok(0)
        }
        TokensAction::Revoke { id } => {
            let t = client.revoke_token(*id).await?;
            output::stdout(&format!(
                "{} token {} ({}) revoked\n",
                t.kind, t.name, t.hint
            ));
            Ok(0)
        }
    }
}

/// `archfarm admin ...`.
pub async fn admin(client: &Client, action: &AdminAction) -> Result<u8, Error> {
    match action {
        AdminAction::Retention { json } => {
            let status = client.retention().await?;
            if *json {
                output::stdout(&format!("{}\n", to_json(&status)?));
            } else {
                output::stdout(&retention_summary(&status));
            }
            Ok(0)
        }
    }
}

/// `archfarm admin retention`: the setting, the last sweep and the totals, one per line.
pub fn retention_summary(s: &archfarm_protocol::retention::RetentionStatus) -> String {
    let counts = |m: &std::collections::BTreeMap<String, u64>| {
        if m.is_empty() {
            return "nothing".to_string();
        }
        m.iter()
            .map(|(kind, n)| format!("{n} {kind}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let keep = match s.retention_secs {
        Some(secs) => format!(
            "ended jobs and unused contexts are kept {}",
            // `30d` as it was given, not `720h`.
            if secs > 0 && secs % 86_400 == 0 {
                format!("{}d", secs / 86_400)
            } else {
                format_duration(std::time::Duration::from_secs(secs))
            }
        ),
        None => "off: everything is kept".to_string(),
    };
    let last = match s.last_sweep_at {
        Some(at) => format!(
            "{}: deleted {}",
            at.format("%Y-%m-%d %H:%M:%S UTC"),
            counts(&s.last)
        ),
        None => "none yet".to_string(),
    };
    format!(
        "retention:    {keep} (swept every {})\n\
         cache:        {} of {} bytes of context archives on disk\n\
         last sweep:   {last}\n\
         since start:  {} sweep{} on {}, deleted {}\n",
        format_duration(std::time::Duration::from_secs(s.interval_secs)),
        s.context_cache_bytes,
        s.context_cache_max_bytes,
        s.sweeps,
        if s.sweeps == 1 { "" } else { "s" },
        s.replica,
        counts(&s.total)
    )
}

async fn create(client: &Client, args: &CreateTokenArgs) -> Result<u8, Error> {
    if let Some(name) = &args.name {
        if !archfarm_protocol::tokens::valid_token_name(name) {
            return Err(UsageError(format!(
                "token name '{name}' must be 1 to {} of A-Z a-z 0-9 - _ . @",
                archfarm_protocol::tokens::MAX_TOKEN_NAME
            ))
            .into());
        }
    }
    let req = CreateTokenRequest {
        kind: if args.join {
            TokenKind::Join
        } else {
            TokenKind::Api
        },
        scope: args.scope,
        name: args.name.clone(),
        expires_in_secs: args.expires.map(|d| d.as_secs()),
        max_uses: args.uses,
        repositories: args.repositories.clone(),
    };
    let created = client.create_token(&req).await?;
    if args.json {
        output::stdout(&format!("{}\n", to_json(&created)?));
    } else {
        // stdout gets the token alone, so `TOKEN=$(archfarm tokens create ...)` works.
        eprintln!("{}", describe(&created.info));
        output::stdout(&format!("{}\n", created.token));
    }
    Ok(0)
}

fn to_json(value: &impl serde::Serialize) -> Result<String, Error> {
    serde_json::to_string_pretty(value).map_err(|e| Error::Other(format!("printing JSON: {e}")))
}

/// The line `tokens create` prints on stderr: what was made, and that it is shown only now.
pub fn describe(t: &TokenInfo) -> String {
    let what = match (t.kind, t.scope) {
        (TokenKind::Join, _) => "join token".to_string(),
        (TokenKind::Api, Some(s)) => format!("API token with scope {s}"),
        (TokenKind::Api, None) => "API token".to_string(),
    };
    let uses = match t.max_uses {
        Some(1) => ", 1 registration".to_string(),
        Some(n) => format!(", {n} registrations"),
        None => String::new(),
    };
    let expires = t
        .expires_at
        .map(|e| format!(", expires {}", e.format("%Y-%m-%d %H:%M:%S UTC")))
        .unwrap_or_default();
    let repositories = if t.repositories.is_empty() {
        String::new()
    } else {
        format!(", pushes only to {}", t.repositories.join(" "))
    };
    format!(
        "created {what} '{}' (id {}{uses}{expires}{repositories}); it is shown only now, keep it safe",
        t.name, t.id
    )
}

/// `archfarm tokens list`.
pub fn tokens_table(tokens: &[TokenInfo], now: DateTime<Utc>) -> String {
    if tokens.is_empty() {
        return "no tokens created (the coordinator's --api-token and --join-token are not listed)\n"
            .into();
    }
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                t.kind.to_string(),
                t.scope.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                t.name.clone(),
                t.hint.clone(),
                t.state.to_string(),
                match (t.kind, t.max_uses) {
                    (TokenKind::Api, _) => "-".into(),
                    (TokenKind::Join, Some(m)) => format!("{}/{m}", t.uses),
                    (TokenKind::Join, None) => t.uses.to_string(),
                },
                match t.expires_at {
                    Some(e) if e > now => format!(
                        "in {}",
                        format_duration(std::time::Duration::from_secs(
                            (e - now).num_seconds().max(0) as u64
                        ))
                    ),
                    Some(_) => "past".into(),
                    None => "never".into(),
                },
                match t.repositories.as_slice() {
                    [] => "-".into(),
                    patterns => patterns.join(" "),
                },
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "KIND",
            "SCOPE",
            "NAME",
            "TOKEN",
            "STATE",
            "USES",
            "EXPIRES",
            "REPOSITORIES",
        ],
        &rows,
    )
}

/// Finds the agent named `name`, or a usage error listing the names there are.
pub async fn agent_named(client: &Client, name: &str) -> Result<Agent, Error> {
    let list = client.agents().await?;
    list.agents
        .iter()
        .find(|a| a.name == name)
        .cloned()
        .ok_or_else(|| UsageError(output::unknown_agent(name, &list.agents)).into())
}

/// `archfarm agents revoke NAME`.
pub async fn revoke_agent(client: &Client, name: &str) -> Result<u8, Error> {
    let agent = agent_named(client, name).await?;
    client.revoke_agent(agent.id).await?;
    output::stdout(&format!(
        "agent {name} revoked: its token no longer works and its builds went back to the queue; \
         `archfarm agents forget {name}` lets the name register again\n"
    ));
    Ok(0)
}

/// `archfarm agents forget NAME`.
pub async fn forget_agent(client: &Client, name: &str) -> Result<u8, Error> {
    let agent = agent_named(client, name).await?;
    client.forget_agent(agent.id).await?;
    output::stdout(&format!("agent {name} forgotten\n"));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use archfarm_protocol::tokens::{Scope, TokenState};
    use chrono::TimeZone;

    fn info(kind: TokenKind, scope: Option<Scope>) -> TokenInfo {
        TokenInfo {
            id: uuid::Uuid::nil(),
            kind,
            scope,
            name: "ci".into(),
            hint: "afu_ab12…".into(),
            state: TokenState::Active,
            created_at: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
            expires_at: Some(Utc.timestamp_opt(1_700_003_600, 0).unwrap()),
            max_uses: None,
            uses: 4,
            last_used_at: None,
            revoked_at: None,
            repositories: Vec::new(),
        }
    }

    #[test]
    fn created_tokens_are_described_without_the_token() {
        let mut t = info(TokenKind::Join, None);
        t.max_uses = Some(1);
        let d = describe(&t);
        assert!(d.starts_with("created join token 'ci'"), "{d}");
        assert!(
            d.contains("1 registration") && d.contains("expires 2023-11-14 23:13:20 UTC"),
            "{d}"
        );
        assert!(describe(&info(TokenKind::Api, Some(Scope::Submit))).contains("scope submit"));
    }

    #[test]
    fn listing_shows_state_uses_and_expiry() {
        let now = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let mut join = info(TokenKind::Join, None);
        join.max_uses = Some(5);
        let t = tokens_table(&[info(TokenKind::Api, Some(Scope::Read)), join], now);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ID") && lines[0].contains("EXPIRES"));
        assert!(
            lines[1].contains("api") && lines[1].contains("read") && lines[1].contains("in 1h"),
            "{t}"
        );
        assert!(lines[2].contains("join") && lines[2].contains("4/5"), "{t}");
        let mut limited = info(TokenKind::Api, Some(Scope::Submit));
        limited.repositories = vec!["r.io/team-a/*".into(), "r.io/b".into()];
        let t = tokens_table(&[limited.clone()], now);
        assert!(t.lines().next().unwrap().ends_with("REPOSITORIES"), "{t}");
        assert!(t.contains("r.io/team-a/* r.io/b"), "{t}");
        assert!(describe(&limited).contains("pushes only to r.io/team-a/* r.io/b"));
        assert!(tokens_table(&[], now).starts_with("no tokens"));
    }

    #[test]
    fn the_retention_summary_names_the_setting_the_last_sweep_and_the_totals() {
        use archfarm_protocol::retention::RetentionStatus;
        let mut s = RetentionStatus {
            replica: "coord-0".into(),
            retention_secs: Some(30 * 86_400),
            interval_secs: 300,
            context_cache_max_bytes: 8 << 30,
            context_cache_bytes: 1024,
            last_sweep_at: None,
            last: Default::default(),
            total: Default::default(),
            sweeps: 0,
        };
        let text = retention_summary(&s);
        assert!(text.contains("kept 30d (swept every 5m)"), "{text}");
        assert!(text.contains("last sweep:   none yet"), "{text}");
        s.last_sweep_at = Some("2026-12-05T17:00:00Z".parse().unwrap());
        s.last = [("jobs".to_string(), 2), ("builds".to_string(), 4)].into();
        s.total = [("jobs".to_string(), 5)].into();
        s.sweeps = 3;
        s.retention_secs = None;
        let text = retention_summary(&s);
        assert!(text.contains("off: everything is kept"), "{text}");
        assert!(
            text.contains("2026-12-05 17:00:00 UTC: deleted 4 builds, 2 jobs"),
            "{text}"
        );
        assert!(
            text.contains("3 sweeps on coord-0, deleted 5 jobs"),
            "{text}"
        );
    }
}
