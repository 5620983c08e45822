//! Who may build, with real processes: a coordinator with an admin `--api-token`, tokens made with
//! `archfarm tokens create`, real agents registering with a one-use join token (and a second one
//! refused), a `read` token refused a build that a `submit` token then runs with buildah, and
//! `archfarm agents revoke` cutting a running agent off.

use std::time::Duration;

use archfarm_e2e::{
    last_line, preflight, run_cli, wait_until, Agent, AgentOptions, BuildContext, Coordinator,
    CoordinatorOptions, Registry,
};
use archfarm_protocol::api::AgentState;

const ADMIN: &str = "afu-admin-bootstrap-secret";
/// Long enough for an agent to notice and exit; nothing here waits for a build under QEMU.
const EXIT_WITHIN: Duration = Duration::from_secs(60);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `archfarm ARGS` as the admin; must succeed; returns stdout.
fn admin_stdout(c: &Coordinator, args: &[&str]) -> String {
    let out = c.cli_timeout(args, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "archfarm {args:?} failed: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `archfarm ARGS` as the admin; must succeed; returns stdout's last line.
fn admin(c: &Coordinator, args: &[&str]) -> String {
    last_line(admin_stdout(c, args).as_bytes())
}

fn native(name: &str) -> AgentOptions {
    AgentOptions::new(name)
        .platform("linux/amd64")
        .emulate("none")
}

#[test]
fn tokens_decide_who_builds_registers_and_stays() {
    preflight();
    let registry = Registry::start();
    // Lease polls of 2 s instead of 25: an idle agent learns of its revocation when its poll
    // ends, and the test would otherwise wait most of a poll for that.
    let coordinator = Coordinator::start_with(
        CoordinatorOptions {
            api_token: Some(ADMIN.into()),
            ..CoordinatorOptions::default()
        }
        .arg("--lease-wait-secs")
        .arg("2"),
    );
    let url = coordinator.url().to_string();
    let quick = Duration::from_secs(60);

    // No token: nothing but a refusal, exit 2, saying what is missing.
    let out = run_cli(&url, None, &["jobs"], quick);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("needs an API token"),
        "{}",
        text(&out.stderr)
    );
    let page = archfarm_e2e::http_client()
        .get(format!("{url}/agents"))
        .send()
        .unwrap();
    assert_eq!(
        page.url().path(),
        "/login",
        "the dashboard asks strangers to sign in"
    );

    // A join token for one agent: the first registers, the second is refused and exits 2.
    let join = admin(
        &coordinator,
        &[
            "tokens", "create", "--join", "--uses", "1", "--name", "rack-1",
        ],
    );
    assert!(join.starts_with("afj_"), "{join}");
    let mut first = Agent::start(&coordinator, native("first").join_token(&join));
    let mut second = Agent::spawn(&coordinator, native("second").join_token(&join));
    let status = second.wait_exit(EXIT_WITHIN);
    assert_eq!(status.code(), Some(2), "{}", second.log_tail(20));
    assert!(
        second
            .log()
            .contains("registered as many agents as it allows"),
        "{}",
        second.log_tail(20)
    );
    // The first comes back after a crash with its own token: the spent join token is not needed.
    first.kill();
    first.restart();
    wait_until(EXIT_WITHIN, "the restarted agent to register again", || {
        assert!(first.is_running(), "{}", first.log_tail(20));
        first.log().contains("registered") && first.log().contains("again=true")
    });
    first.wait_online(&coordinator);

    // An expired join token is refused with that reason.
    let short = admin(
        &coordinator,
        &["tokens", "create", "--join", "--expires", "1s"],
    );
    wait_until(
        Duration::from_secs(30),
        "the short join token to expire",
        || admin_stdout(&coordinator, &["tokens", "list"]).contains("expired"),
    );
    let mut late = Agent::spawn(&coordinator, native("late").join_token(&short));
    assert_eq!(late.wait_exit(EXIT_WITHIN).code(), Some(2));
    assert!(late.log().contains("expired"), "{}", late.log_tail(20));

    // A read token may look but not build; a submit token builds for real.
    let read = admin(
        &coordinator,
        &["tokens", "create", "--scope", "read", "--name", "dash"],
    );
    let submit = admin(
        &coordinator,
        &["tokens", "create", "--scope", "submit", "--name", "ci"],
    );
    assert!(read.starts_with("afu_") && submit.starts_with("afu_"));
    let ok = run_cli(&url, Some(&read), &["agents"], quick);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(text(&ok.stdout).contains("first"));
    let context = BuildContext::hello();
    let tag = format!("{}/tokens:1", registry.host());
    let build = [
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64",
        "-t",
        &tag,
        &context.arg(),
    ];
    let out = run_cli(&url, Some(&read), &build, quick);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("scope is read") && text(&out.stderr).contains("--scope submit"),
        "{}",
        text(&out.stderr)
    );
    let out = run_cli(&url, Some(&submit), &build, Duration::from_secs(15 * 60));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let digest = last_line(&out.stdout);
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert!(registry.tags("tokens").contains(&"1".to_string()));
    // ...but a submit token manages no agents.
    let out = run_cli(&url, Some(&submit), &["agents", "revoke", "first"], quick);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // Listings never show a token, only its first characters.
    let listing = admin_stdout(&coordinator, &["tokens", "list", "--json"]);
    for secret in [&join, &short, &read, &submit] {
        assert!(
            !listing.contains(secret.as_str()),
            "a token leaked into the listing"
        );
    }
    assert!(listing.contains(&read[..8]));
    // Nor does the coordinator keep one: its database and files, read byte by byte.
    for secret in [&join, &short, &read, &submit] {
        let found = coordinator.stored_containing(secret);
        assert!(found.is_empty(), "a token is stored in {found:?}");
    }

    // Revoking the running agent cuts it off by its next lease poll: it exits 2 saying so.
    let said = admin(&coordinator, &["agents", "revoke", "first"]);
    assert!(said.contains("revoked"), "{said}");
    assert_eq!(
        first.wait_exit(EXIT_WITHIN).code(),
        Some(2),
        "{}",
        first.log_tail(20)
    );
    // Its own token is void (and its one-use join token spent); what it is told is the revocation.
    let log = first.log();
    assert!(
        log.contains("no longer knows this agent") && log.contains("was revoked by an admin"),
        "{}",
        first.log_tail(20)
    );
    let agents = coordinator.agents();
    let shown = agents.iter().find(|a| a.name == "first").unwrap();
    assert_eq!(shown.state, AgentState::Revoked);
    // Forgotten, the name is free again for a new registration with the static join token.
    admin(&coordinator, &["agents", "forget", "first"]);
    let mut again = Agent::start(&coordinator, native("first"));
    again.stop();
}

/// A submit token limited with `--repository` and a coordinator with `--allowed-registry`, through
/// the CLI: the refusal as a CI log shows it, and exit code 2.
#[test]
fn limited_tokens_and_allowed_registries_refuse_through_the_cli() {
    let coordinator = Coordinator::start_with(
        CoordinatorOptions {
            api_token: Some(ADMIN.into()),
            ..CoordinatorOptions::default()
        }
        .arg("--allowed-registry")
        .arg("localhost:5000"),
    );
    let url = coordinator.url().to_string();
    let quick = Duration::from_secs(60);
    let limited = admin(
        &coordinator,
        &[
            "tokens",
            "create",
            "--scope",
            "submit",
            "--repository",
            "localhost:5000/team-a/*",
            "--name",
            "team-a",
        ],
    );
    let listing = admin_stdout(&coordinator, &["tokens", "list"]);
    let row = listing.lines().find(|l| l.contains("team-a")).unwrap();
    assert!(row.ends_with("localhost:5000/team-a/*"), "{listing}");

    // Refused at submission, so no build runs: any context with a Dockerfile will do.
    let context = BuildContext::empty();
    context.write("Dockerfile", "FROM scratch\n");
    let build = |tag: &str| {
        let args = [
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64",
            "-t",
            tag,
            &context.arg(),
        ];
        run_cli(&url, Some(&limited), &args, quick)
    };

    let out = build("localhost:5000/team-b/app:1");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(
            "this job would push to localhost:5000/team-b/app, which is outside this token's \
             repositories: localhost:5000/team-a/* (repository_not_allowed, HTTP 403)"
        ),
        "{}",
        text(&out.stderr)
    );
    let out = build("registry.example.com/team-a/app:1");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(
            "this farm pushes only to localhost:5000; registry.example.com is not among them \
             (registry_not_allowed, HTTP 400)"
        ),
        "{}",
        text(&out.stderr)
    );
    // A pattern that cannot be one is refused before anything is sent.
    let out = coordinator.cli_timeout(
        &[
            "tokens",
            "create",
            "--scope",
            "submit",
            "--repository",
            "local*:5000/x",
        ],
        quick,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("must be exact"),
        "{}",
        text(&out.stderr)
    );
}
