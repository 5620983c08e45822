//! The web dashboard in a real browser (headless Chromium over WebDriver) watching a real
//! multi-arch job: queued with no agents, then building natively and under QEMU as agents arrive,
//! its log lines appearing live, and the pushed index, all without reloading the page. Then the
//! agents page, the jobs list, and the pages at phone width.
//!
//! Screenshots are kept in `target/artifacts/` (`dashboard-*.png`). Needs what scripts/setup.sh
//! installs (chromium and chromium-driver besides the end-to-end tools) and root.

use std::collections::BTreeSet;
use std::time::Duration;

use archfarm_e2e::{preflight, Agent, AgentOptions, Browser, BuildContext, Coordinator, Registry};
use archfarm_protocol::api::{AgentState, Job, JobState};
use serde_json::json;

/// The platforms of the job: amd64 built natively, arm64 under QEMU.
const PLATFORMS: [&str; 2] = ["linux/amd64", "linux/arm64"];

/// The start of the line the RUN step prints; the rest (`x86_64 42`) is computed by the shell, so
/// the `STEP ...: RUN` line that echoes the command never contains the printed line.
const PRINTED: &str = "archfarm-dashboard: hello from";

/// What the amd64 build prints.
const PRINTED_AMD64: &str = "archfarm-dashboard: hello from x86_64 42";

/// The example's base file system, then a RUN step that prints [`PRINTED`] and stays in
/// `building` for a few seconds so the page can be seen in that state.
const DOCKERFILE: &str = r#"FROM scratch
ARG TARGETARCH
COPY rootfs/${TARGETARCH}/ /
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/bin
ARG TARGETPLATFORM
RUN mkdir -p /etc/archfarm && uname -m > /etc/archfarm/arch && echo "$TARGETPLATFORM" > /etc/archfarm/platform && echo "archfarm-dashboard: hello from $(uname -m) $((6*7))" && sleep 4 && echo "step done"
"#;

/// How long the page may take to show something the coordinator already knows.
const SHOWN: Duration = Duration::from_secs(30);
/// How long a build (arm64 under QEMU on two cores) may take.
const BUILT: Duration = Duration::from_secs(15 * 60);

/// `[data-platform="P"] [data-field="FIELD"]`.
fn field(platform: &str, field: &str) -> String {
    format!(r#"[data-platform="{platform}"] [data-field="{field}"]"#)
}

/// The platform-like words (`os/arch[/variant]`) of a text listing platforms, however separated.
fn platforms_in(text: &str) -> BTreeSet<String> {
    text.split(|c: char| c.is_whitespace() || c == ',' || c == ';')
        .filter(|w| w.starts_with("linux/"))
        .map(str::to_string)
        .collect()
}

/// Asserts the page has no horizontal scroll at the current window size; returns the viewport
/// width and the document's scroll width.
fn assert_no_horizontal_scroll(browser: &Browser, page: &str) -> (u64, u64) {
    let sizes = browser.execute(
        "return [window.innerWidth, document.documentElement.scrollWidth];",
        vec![],
    );
    let width = |i: usize| {
        sizes[i]
            .as_u64()
            .unwrap_or_else(|| panic!("window sizes: {sizes}"))
    };
    let (inner, scroll) = (width(0), width(1));
    assert!(
        inner <= 400,
        "the viewport of {page} is {inner} px wide: the window was not resized to a phone's width"
    );
    assert!(
        scroll <= inner,
        "{page} scrolls sideways on a phone: document.documentElement.scrollWidth = {scroll} > \
         window.innerWidth = {inner}"
    );
    (inner, scroll)
}

#[test]
fn dashboard_follows_a_job_live() {
    preflight();
    let registry = Registry::start();
    let coordinator = Coordinator::start();
    let context = BuildContext::hello();
    context.write("Dockerfile", DOCKERFILE);
    let tag = format!("{}/dashboard:live", registry.host());
    // No agent yet: the job stays queued while the page opens.
    let id = coordinator.submit(&[
        "--platform",
        &PLATFORMS.join(","),
        "-t",
        &tag,
        &context.arg(),
    ]);
    let job_url = format!("{}/jobs/{id}", coordinator.url());

    let browser = Browser::start();
    browser.goto(&job_url);
    browser.wait_present(
        r#"body[data-live="connected"]"#,
        SHOWN,
        "the job page's live connection",
    );
    for platform in PLATFORMS {
        browser.wait_text(
            &field(platform, "state"),
            SHOWN,
            &format!("{platform} queued"),
            |t| t == "queued",
        );
    }
    browser.wait_text("#job-state", SHOWN, "the job queued", |t| t == "queued");
    // Set on this document only: if the page reloads itself to show progress, it is gone.
    browser.execute("window.__noReload = 1; return null;", vec![]);

    // amd64 is this machine's own; emu builds arm64 under QEMU (and could take amd64 too).
    let agents = [
        Agent::start(&coordinator, AgentOptions::new("amd64").emulate("none")),
        Agent::start(
            &coordinator,
            AgentOptions::new("emu").emulate("linux/arm64"),
        ),
    ];

    let states = PLATFORMS.map(|p| field(p, "state"));
    let any_building = format!("{}, {}", states[0], states[1]);
    browser.wait_texts(&any_building, BUILT, "a platform building", |t| {
        t.iter().any(|s| s == "building")
    });
    browser.screenshot("dashboard-job-building.png");

    // The line the amd64 build printed, exactly as the coordinator keeps it, on a line of its own.
    let job = coordinator.job(id);
    let amd64_build = job
        .builds
        .iter()
        .find(|b| b.platform.to_string() == "linux/amd64")
        .expect("an amd64 build")
        .id;
    let mut api_line = String::new();
    coordinator.wait_job(id, BUILT, "the amd64 build printing its line", |_| {
        let log = coordinator.build_log(amd64_build);
        match log.lines().find(|l| l.contains(PRINTED_AMD64)) {
            Some(line) => {
                api_line = line.trim().to_string();
                true
            }
            None => false,
        }
    });
    let shown = browser.wait_text(
        r#"pre[data-log="linux/amd64"]"#,
        SHOWN,
        "the amd64 log line on the page",
        |t| t.lines().any(|l| l.trim() == api_line),
    );
    assert!(
        shown.lines().count() > 1,
        "the amd64 log shows its lines run together: {shown:?}"
    );

    for platform in PLATFORMS {
        browser.wait_text(
            &field(platform, "state"),
            BUILT,
            &format!("{platform} succeeded"),
            |t| t == "succeeded",
        );
    }
    browser.wait_text("#job-state", BUILT, "the job succeeded", |t| {
        t == "succeeded"
    });
    let job: Job = coordinator.job(id);
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    let index = job
        .index_digest
        .clone()
        .expect("a succeeded job has an index digest");
    browser.wait_text("#index-digest", SHOWN, "the index digest", |t| t == index);
    for build in &job.builds {
        let platform = build.platform.to_string();
        let agent = build.agent.clone().expect("a built platform has an agent");
        let mode = build.mode.expect("a built platform has a mode").to_string();
        let digest = build.digest.clone().expect("a built platform has a digest");
        let field_of = |f: &str| browser.text(&field(&platform, f));
        assert_eq!(
            field_of("agent"),
            Some(agent),
            "{platform}: agent on the page"
        );
        assert_eq!(field_of("mode"), Some(mode), "{platform}: mode on the page");
        assert_eq!(
            field_of("digest"),
            Some(digest),
            "{platform}: digest on the page"
        );
    }
    assert_eq!(
        job.builds
            .iter()
            .find(|b| b.platform.to_string() == "linux/arm64")
            .and_then(|b| b.mode)
            .map(|m| m.to_string())
            .as_deref(),
        Some("emulated"),
        "arm64 was built under QEMU: {job:#?}"
    );
    // Both builds' printed lines reached the page.
    let arm64_log = browser
        .text(r#"pre[data-log="linux/arm64"]"#)
        .unwrap_or_default();
    assert!(
        arm64_log
            .lines()
            .any(|l| l.trim() == format!("{PRINTED} aarch64 42")),
        "the arm64 log on the page lacks its printed line: {arm64_log:?}"
    );
    let kept = browser.execute("return window.__noReload === 1;", vec![]);
    assert_eq!(kept, json!(true), "the job page reloaded itself");
    browser.screenshot("dashboard-job-done.png");

    // The agents page: what each agent builds, natively and under QEMU, as the API says.
    browser.goto(&format!("{}/agents", coordinator.url()));
    browser.wait_present(
        r#"body[data-live="connected"]"#,
        SHOWN,
        "the agents page's live connection",
    );
    let listed = coordinator.agents();
    assert_eq!(listed.len(), agents.len(), "{listed:#?}");
    for agent in &listed {
        let sel = |f: &str| format!(r#"[data-agent="{}"] [data-field="{f}"]"#, agent.name);
        let native =
            browser.wait_text(&sel("native"), SHOWN, "an agent's native platforms", |_| {
                true
            });
        let expected: BTreeSet<String> = agent
            .native_platforms
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            platforms_in(&native),
            expected,
            "{}: native {native:?}",
            agent.name
        );
        let emulated = browser
            .text(&sel("emulated"))
            .unwrap_or_else(|| panic!("{}: no emulated field on the agents page", agent.name));
        let expected: BTreeSet<String> = agent
            .emulated_platforms
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            platforms_in(&emulated),
            expected,
            "{}: emulated {emulated:?}",
            agent.name
        );
        assert_eq!(agent.state, AgentState::Online, "{agent:#?}");
        browser.wait_text(&sel("state"), SHOWN, "an agent online", |t| t == "online");
        let number = |f: &str| {
            browser
                .text(&sel(f))
                .and_then(|t| t.parse::<i64>().ok())
                .unwrap_or_else(|| panic!("{}: {f} is not a number on the agents page", agent.name))
        };
        assert_eq!(number("running"), agent.running, "{}: running", agent.name);
        assert_eq!(
            number("capacity"),
            agent.capacity,
            "{}: capacity",
            agent.name
        );
    }
    let emu = listed.iter().find(|a| a.name == "emu").expect("agent emu");
    assert!(
        emu.emulated_platforms
            .iter()
            .any(|p| p.to_string() == "linux/arm64"),
        "{emu:#?}"
    );
    browser.screenshot("dashboard-agents.png");

    // The jobs list.
    browser.goto(&format!("{}/", coordinator.url()));
    browser.wait_present(
        r#"body[data-live="connected"]"#,
        SHOWN,
        "the jobs list's live connection",
    );
    browser.wait_text(
        &format!(r#"[data-job="{id}"] [data-field="state"]"#),
        SHOWN,
        "the job's row succeeded",
        |t| t == "succeeded",
    );

    // On a phone: nothing scrolls sideways, on any of the three pages.
    browser.set_window_size(375, 800);
    let (inner, scroll) = assert_no_horizontal_scroll(&browser, "the jobs list");
    eprintln!("jobs list at phone size: innerWidth {inner}, scrollWidth {scroll}");
    browser.screenshot("dashboard-phone.png");
    for (path, name, shot) in [
        (
            format!("/jobs/{id}"),
            "the job page",
            "dashboard-phone-job.png",
        ),
        (
            "/agents".to_string(),
            "the agents page",
            "dashboard-phone-agents.png",
        ),
    ] {
        browser.goto(&format!("{}{path}", coordinator.url()));
        browser.wait_present(r#"body[data-live="connected"]"#, SHOWN, name);
        let (inner, scroll) = assert_no_horizontal_scroll(&browser, name);
        eprintln!("{name} at phone size: innerWidth {inner}, scrollWidth {scroll}");
        browser.screenshot(shot);
    }
}
