//! The dashboard end to end, in process on port 0 with a real SQLite database: pages, escaping of
//! what builds control, the 404 page, static files, signing in, and the emulation comparison.

mod common;

use archfarm_coordinator::store::{NewJob, Store};
use archfarm_protocol::api::{BuildMode, EmulationPolicy, Job, Lease, RegisterResponse};
use archfarm_protocol::Digest;
use common::Coordinator;
use reqwest::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::json;

/// Requests for pages, beside the shared harness's API client: redirects are what some tests look
/// at, so none are followed.
struct Pages {
    base: String,
    http: reqwest::Client,
}

impl Pages {
    fn of(c: &Coordinator) -> Self {
        Pages {
            base: c.base.clone(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str) -> (StatusCode, String) {
        let res = self.http.get(self.url(path)).send().await.unwrap();
        (res.status(), res.text().await.unwrap())
    }
}

/// A second handle on the coordinator's database, for seeding history.
async fn store_of(c: &Coordinator) -> Store {
    c.store().await
}

async fn submit(c: &Coordinator, body: serde_json::Value) -> Job {
    c.submit(body).await
}

async fn leased(c: &Coordinator, agent: &RegisterResponse) -> Lease {
    c.lease(agent).await.expect("a build is leased")
}

async fn report(
    c: &Coordinator,
    agent: &RegisterResponse,
    build: uuid::Uuid,
    what: &str,
    body: serde_json::Value,
) {
    let res = c.report(agent, build, what, body).await;
    assert!(res.status().is_success(), "{what}: {}", res.status());
}

async fn context(c: &Coordinator) -> String {
    c.upload(&[("Dockerfile", "FROM scratch\n")]).await
}

/// The text of the first `[data-field="FIELD"]` after the first occurrence of `anchor`.
fn field_after(html: &str, anchor: &str, field: &str) -> String {
    let start = html
        .find(anchor)
        .unwrap_or_else(|| panic!("{anchor} not in page"));
    let rest = &html[start..];
    let at = rest
        .find(&format!("data-field=\"{field}\""))
        .unwrap_or_else(|| panic!("no {field} after {anchor}"));
    let rest = &rest[at..];
    let open = rest.find('>').unwrap() + 1;
    let close = rest[open..].find('<').unwrap();
    rest[open..open + close].to_string()
}

/// The text of the element with `id`.
fn by_id(html: &str, id: &str) -> String {
    let at = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id}"));
    let open = at + html[at..].find('>').unwrap() + 1;
    let close = html[open..].find('<').unwrap();
    html[open..open + close].to_string()
}

const HOSTILE: &str = "<script>alert('x')</script>";

#[tokio::test]
async fn pages_show_jobs_builds_and_agents_and_escape_what_builds_control() {
    let c = Coordinator::start(&[]).await;
    let web = Pages::of(&c);
    let ctx = context(&c).await;
    let pi = c.register("pi", &["linux/arm64"], &[]).await;
    let first = submit(
        &c,
        json!({"context": ctx, "platforms": ["linux/arm64", "linux/s390x"],
            "tags": ["localhost:5000/app:1"], "build_args": {"NOTE": HOSTILE},
            "submitter": format!("mallory {HOSTILE}")}),
    )
    .await;
    let lease = leased(&c, &pi).await;
    assert_eq!(lease.platform.to_string(), "linux/arm64");
    report(
        &c,
        &pi,
        lease.build_id,
        "log",
        json!({"lease_token": lease.lease_token,
        "lines": ["step 1/2", format!("evil {HOSTILE}")]}),
    )
    .await;
    report(
        &c,
        &pi,
        lease.build_id,
        "fail",
        json!({"lease_token": lease.lease_token,
        "error": "RUN failed <img src=x onerror=alert(1)>"}),
    )
    .await;
    let second = submit(
        &c,
        json!({"context": ctx, "platforms": ["aarch64"], "tags": ["localhost:5000/app:2"]}),
    )
    .await;

    // The jobs list: newest first, each row with its state and its platforms.
    let (status, html) = web.get("/").await;
    assert_eq!(status, StatusCode::OK);
    let (a, b) = (
        html.find(&format!("data-job=\"{}\"", second.id)).unwrap(),
        html.find(&format!("data-job=\"{}\"", first.id)).unwrap(),
    );
    assert!(a < b, "newest first");
    assert_eq!(
        field_after(&html, &format!("data-job=\"{}\"", first.id), "state"),
        "failed"
    );
    assert_eq!(
        field_after(&html, &format!("data-job=\"{}\"", second.id), "state"),
        "queued"
    );
    assert!(html.contains("localhost:5000/app:1"));
    assert!(
        html.contains(r#"data-badge="linux/arm64""#)
            && html.contains(r#"data-mode="native">native<"#)
    );
    assert!(html.contains(r#"data-live="#));
    let shown = field_after(&html, &format!("data-job=\"{}\"", first.id), "submitter");
    assert!(shown.starts_with("by mallory &#60;script&#62;"), "{shown}");
    assert!(!html.contains(&format!("mallory {HOSTILE}")));

    // The job page: per-platform fields, log, timeline, and nothing from the build as markup.
    let (status, html) = web.get(&format!("/jobs/{}", first.id)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(by_id(&html, "job-state"), "failed");
    assert_eq!(by_id(&html, "index-digest"), "");
    let arm = r#"data-platform="linux/arm64""#;
    assert_eq!(field_after(&html, arm, "state"), "failed");
    assert_eq!(field_after(&html, arm, "agent"), "pi");
    assert_eq!(field_after(&html, arm, "mode"), "native");
    assert_eq!(field_after(&html, arm, "digest"), "");
    let s390x = r#"data-platform="linux/s390x""#;
    assert_eq!(field_after(&html, s390x, "state"), "cancelled");
    assert!(html.contains(r#"<pre class="log" data-log="linux/arm64""#));
    assert!(
        html.contains("<span>step 1/2\n</span>"),
        "one line per log line"
    );
    assert!(html.contains(r#"data-timeline="linux/arm64""#) && html.contains("seg-building"));
    // The failing platform's log comes first, and the top of the page links to it.
    assert!(html.find(arm).unwrap() < html.find(s390x).unwrap());
    assert!(html.contains(r##"href="#log-linux-arm64""##));
    for hostile in [HOSTILE, "<img src=x"] {
        assert!(!html.contains(hostile), "{hostile} unescaped");
    }
    assert!(
        html.contains("&#60;script&#62;alert(&#39;x&#39;)&#60;/script&#62;")
            || html.contains("&lt;script&gt;")
    );
    assert!(
        html.contains("&#60;img src=x onerror=alert(1)&#62;") || html.contains("&lt;img src=x")
    );
    let head = web
        .http
        .get(web.url(&format!("/jobs/{}", first.id)))
        .send()
        .await
        .unwrap();
    let csp = head.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");

    // A queued build says why it waits.
    let (_, html) = web.get(&format!("/jobs/{}", second.id)).await;
    assert_eq!(field_after(&html, arm, "state"), "queued");
    assert!(
        field_after(&html, arm, "waiting").contains("native linux/arm64 agent (pi)"),
        "{html}"
    );

    // A succeeded job shows its index digest (stitching needs a registry: set it directly).
    let digest = format!("sha256:{}", "e".repeat(64));
    sqlx::query("UPDATE jobs SET state = 'succeeded', index_digest = $1, finished_at = updated_at WHERE id = $2")
        .bind(&digest)
        .bind(second.id.to_string())
        .execute(store_of(&c).await.pool())
        .await
        .unwrap();
    let (_, html) = web.get(&format!("/jobs/{}", second.id)).await;
    assert_eq!(by_id(&html, "index-digest"), digest);
    assert_eq!(by_id(&html, "job-state"), "succeeded");

    // The agents page: platforms, state, what runs.
    let _emu = c
        .register("emu", &["linux/amd64"], &["linux/s390x", "linux/ppc64le"])
        .await;
    let (status, html) = web.get("/agents").await;
    assert_eq!(status, StatusCode::OK);
    let emu = r#"data-agent="emu""#;
    assert_eq!(field_after(&html, emu, "native"), "linux/amd64");
    assert_eq!(
        field_after(&html, emu, "emulated"),
        "linux/s390x, linux/ppc64le"
    );
    assert_eq!(field_after(&html, emu, "state"), "online");
    assert_eq!(field_after(&html, emu, "running"), "0");
    assert_eq!(field_after(&html, emu, "capacity"), "1");
    assert_eq!(
        field_after(&html, r#"data-agent="pi""#, "native"),
        "linux/arm64"
    );
    c.stop().await;
}

#[tokio::test]
async fn a_running_build_shows_on_its_agent_and_in_the_timeline() {
    let c = Coordinator::start(&[]).await;
    let web = Pages::of(&c);
    let ctx = context(&c).await;
    let pi = c.register("pi", &["linux/arm64"], &[]).await;
    let job = submit(
        &c,
        json!({"context": ctx, "platforms": ["linux/arm64"], "tags": ["localhost:5000/app:1"]}),
    )
    .await;
    let lease = leased(&c, &pi).await;
    let (_, html) = web.get("/agents").await;
    let pi_row = r#"data-agent="pi""#;
    assert_eq!(field_after(&html, pi_row, "running"), "1");
    assert!(html.contains(&format!(r#"data-build="{}""#, lease.build_id)));
    let (_, html) = web.get(&format!("/jobs/{}", job.id)).await;
    assert_eq!(by_id(&html, "job-state"), "building");
    assert_eq!(
        field_after(&html, r#"data-platform="linux/arm64""#, "state"),
        "building"
    );
    // The building segment reaches the end of the axis (now) and no finish marker is drawn yet.
    let seg = &html[html
        .find(r#"class="seg-building" data-mode="native""#)
        .unwrap()..];
    let x: f64 = seg
        .split("x=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let w: f64 = seg
        .split("width=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((x + w - 100.0).abs() < 0.01, "x {x} width {w}");
    assert!(html.contains(r#"visibility="hidden""#));
    c.stop().await;
}

#[tokio::test]
async fn a_job_with_tags_in_several_repositories_lists_them() {
    let c = Coordinator::start(&[]).await;
    let web = Pages::of(&c);
    let ctx = context(&c).await;
    let several = submit(
        &c,
        json!({"context": ctx, "platforms": ["linux/arm64"],
               "tags": ["r.lan/team/app:1", "r.lan/mirror/app:1", "ghcr.io/team/app:1"]}),
    )
    .await;
    let (_, html) = web.get(&format!("/jobs/{}", several.id)).await;
    let list = &html[html
        .find("id=\"job-repositories\"")
        .expect("a repository list")..];
    let list = &list[..list.find("</ul>").unwrap()];
    let items: Vec<&str> = list.split("<li>").skip(1).collect();
    assert_eq!(items.len(), 3, "{list}");
    assert!(
        items[0].contains("<code>r.lan/team/app</code>")
            && items[0].contains("built and pushed here"),
        "{list}"
    );
    assert!(items[1].contains("<code>r.lan/mirror/app</code>"), "{list}");
    assert!(items[2].contains("<code>ghcr.io/team/app</code>"), "{list}");
    // One repository: nothing more to say than the tags.
    let one = submit(
        &c,
        json!({"context": ctx, "platforms": ["linux/arm64"], "tags": ["r.lan/team/app:2"]}),
    )
    .await;
    let (_, html) = web.get(&format!("/jobs/{}", one.id)).await;
    assert!(!html.contains("job-repositories"));
    c.stop().await;
}

#[tokio::test]
async fn an_unknown_or_malformed_job_is_an_html_404() {
    let c = Coordinator::start(&[]).await;
    let web = Pages::of(&c);
    for path in [
        format!("/jobs/{}", uuid::Uuid::new_v4()),
        "/jobs/%3Cscript%3Enope".to_string(),
    ] {
        let res = web.http.get(web.url(&path)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
        assert!(res.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let html = res.text().await.unwrap();
        assert!(html.contains("There is no job with id"), "{html}");
        assert!(!html.contains("<script>nope"), "{html}");
    }
    c.stop().await;
}

#[tokio::test]
async fn static_files_have_their_types_and_a_cache_lifetime() {
    let c = Coordinator::start(&["--api-token", "t0ken"]).await;
    let web = Pages::of(&c);
    for (name, kind) in [
        ("dashboard.js", "text/javascript"),
        ("style.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let res = web
            .http
            .get(web.url(&format!("/static/{name}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{name} needs no sign-in");
        assert!(
            res.headers()[CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with(kind),
            "{name}"
        );
        assert!(res.headers()[CACHE_CONTROL]
            .to_str()
            .unwrap()
            .contains("max-age="));
        assert!(!res.text().await.unwrap().is_empty());
    }
    let js = web
        .http
        .get(web.url("/static/dashboard.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !js.contains("innerHTML"),
        "the script builds the DOM from text only"
    );
    let res = web
        .http
        .get(web.url("/static/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    c.stop().await;
}

#[tokio::test]
async fn pages_ask_for_the_api_token_and_keep_it_in_a_cookie() {
    let c = Coordinator::start(&["--api-token", "t0ken"]).await;
    let web = Pages::of(&c);
    let res = web.http.get(web.url("/agents")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()[LOCATION], "/login?next=/agents");
    let (status, html) = web.get("/login").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains(r#"name="token""#));

    let login = |body: &'static str| {
        web.http
            .post(web.url("/login"))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let res = login("token=wrong&next=%2Fagents").await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res.headers().get(SET_COOKIE).is_none());
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("not a valid token for this coordinator"));

    let res = login("token=t0ken&next=%2Fagents").await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()[LOCATION], "/agents");
    let cookie = res.headers()[SET_COOKIE].to_str().unwrap().to_string();
    let value = cookie
        .strip_prefix("archfarm_token=")
        .and_then(|c| c.strip_suffix("; HttpOnly; SameSite=Strict; Path=/"))
        .unwrap_or_else(|| panic!("{cookie}"))
        .to_string();
    // The cookie is not the token, and it reads but never writes.
    assert!(!value.contains("t0ken") && value.len() == 64, "{value}");
    let res = c
        .http
        .post(c.url(&format!("/jobs/{}/cancel", uuid::Uuid::new_v4())))
        .header(COOKIE, format!("archfarm_token={value}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = c
        .http
        .get(c.url("/jobs"))
        .bearer_auth(&value)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "not usable as a token"
    );
    let res = login("token=t0ken").await.unwrap();
    assert_eq!(res.headers()[LOCATION], "/");
    // Only paths on this site are returned to.
    let res = login("token=t0ken&next=%2F%2Fevil.example%2F")
        .await
        .unwrap();
    assert_eq!(res.headers()[LOCATION], "/");

    let res = web
        .http
        .get(web.url("/agents"))
        .header(COOKIE, format!("archfarm_token={value}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.text().await.unwrap().contains("Sign out"));
    let res = web
        .http
        .get(web.url("/"))
        .header(COOKIE, "archfarm_token=other")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let res = web
        .http
        .get(web.url("/emulation"))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = web.http.post(web.url("/logout")).send().await.unwrap();
    assert!(res.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    c.stop().await;
}

#[tokio::test]
async fn without_a_token_there_is_nothing_to_sign_in_to() {
    let c = Coordinator::start(&[]).await;
    let web = Pages::of(&c);
    let res = web
        .http
        .get(web.url("/login?next=/agents"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()[LOCATION], "/agents");
    let (status, html) = web.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!html.contains("Sign out"));
    assert!(html.contains("No jobs yet"));
    c.stop().await;
}

#[tokio::test]
async fn the_emulation_page_compares_medians_from_history() {
    let c = Coordinator::start(&[]).await;
    let web = Pages::of(&c);
    let (status, html) = web.get("/emulation").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("No succeeded builds yet"));

    let store = store_of(&c).await;
    let digest = Digest::parse(&format!("sha256:{}", "0".repeat(64))).unwrap();
    store.insert_context(digest.as_str(), 1).await.unwrap();
    // (platform, mode, seconds, succeeded)
    let history = [
        ("linux/arm64", BuildMode::Native, 60, true),
        ("linux/arm64", BuildMode::Native, 80, true),
        ("linux/arm64", BuildMode::Native, 70, true),
        ("linux/arm64", BuildMode::Emulated, 280, true),
        ("linux/arm64", BuildMode::Emulated, 300, true),
        ("linux/arm64", BuildMode::Emulated, 9_000, false),
        ("linux/s390x", BuildMode::Emulated, 500, true),
    ];
    for (platform, mode, secs, ok) in history {
        let job = NewJob {
            context: digest.clone(),
            dockerfile: "Dockerfile".into(),
            build_args: Default::default(),
            target: None,
            emulation: EmulationPolicy::Fallback,
            tags: vec!["localhost:5000/a:1".into()],
            platforms: vec![platform.parse().unwrap()],
            registry: "localhost:5000".into(),
            repository: "a".into(),
            optional_platforms: vec![],
            timeout_secs: 7200,
            submitter: None,
            secret_build_args: vec![],
            secrets: vec![],
            network: None,
            base_images: vec![],
            cache: Default::default(),
            image_meta: Default::default(),
            allow_foreign_binary: Vec::new(),
            attest_to: Default::default(),
            smoke_test: None,
        };
        let id = store.insert_job(&job).await.unwrap();
        let build = store.builds_of_job(id).await.unwrap().remove(0);
        let token = uuid::Uuid::new_v4();
        store
            .claim_build(
                build.id,
                uuid::Uuid::new_v4(),
                "x",
                mode,
                token,
                i64::MAX,
                "seeded",
                "replica-a",
            )
            .await
            .unwrap();
        if ok {
            store
                .complete_build(build.id, token, "sha256:x", "m", 1)
                .await
                .unwrap();
        } else {
            store.fail_build(build.id, token, "boom").await.unwrap();
        }
        sqlx::query("UPDATE builds SET started_at = 0, finished_at = $1 WHERE id = $2")
            .bind(secs * 1000)
            .bind(build.id.to_string())
            .execute(store.pool())
            .await
            .unwrap();
    }
    let (status, html) = web.get("/emulation").await;
    assert_eq!(status, StatusCode::OK);
    let arm = r#"data-emulation="linux/arm64""#;
    assert_eq!(field_after(&html, arm, "native-median"), "1m 10s");
    assert_eq!(field_after(&html, arm, "native-count"), "3");
    assert_eq!(
        field_after(&html, arm, "emulated-median"),
        "4m 50s",
        "the failed build is not history"
    );
    assert_eq!(field_after(&html, arm, "emulated-count"), "2");
    assert_eq!(field_after(&html, arm, "ratio"), "emulated is 4.1× slower");
    assert_eq!(field_after(&html, arm, "saved"), "11m 00s");
    let s390x = r#"data-emulation="linux/s390x""#;
    assert_eq!(field_after(&html, s390x, "emulated-median"), "8m 20s");
    assert!(html[html.find(s390x).unwrap()..].contains("needs native and emulated builds"));
    c.stop().await;
}
