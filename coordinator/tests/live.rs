//! What people watch, in process: the job and farm event streams, followed logs, and `/metrics`.

mod common;

use archfarm_protocol::api::{Job, JobState};
use archfarm_protocol::events::{AgentsEvent, JobEnd, LogChunk};
use common::{next_event, sse_events, Coordinator, Sse};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::json;

/// Submits a one-platform job and returns it.
async fn submit(c: &Coordinator, platform: &str) -> Job {
    let ctx = c.upload(&[("Dockerfile", "FROM scratch\n")]).await;
    c.submit(json!({"context": ctx, "platforms": [platform], "tags": ["localhost:5000/app:1"]}))
        .await
}

/// Events until one named `name`; the others are returned too, in order.
async fn until_event(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Sse>,
    name: &str,
    seen: &mut Vec<Sse>,
) -> Sse {
    loop {
        let ev = next_event(rx)
            .await
            .unwrap_or_else(|| panic!("stream ended before a {name} event; saw {seen:?}"));
        seen.push(ev.clone());
        if ev.event == name {
            return ev;
        }
    }
}

#[tokio::test]
async fn a_jobs_stream_carries_its_states_and_log_lines_then_ends() {
    let c = Coordinator::start(&[]).await;
    let job = submit(&c, "linux/s390x").await;
    let res = c
        .http
        .get(c.url(&format!("/jobs/{}/events", job.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut rx = sse_events(res);
    let mut seen = Vec::new();

    let first = next_event(&mut rx).await.unwrap();
    assert_eq!(first.event, "job", "the current state comes first");
    let snapshot: Job = serde_json::from_str(&first.data).unwrap();
    assert_eq!(snapshot.state, JobState::Queued);

    let agent = c.register("z15", &["linux/s390x"], &[]).await;
    let lease = c.lease(&agent).await.expect("leased");
    // Registering the agent may change the queued job's waiting reason first (its own `job` event).
    let building = loop {
        let ev = until_event(&mut rx, "job", &mut seen).await;
        let job: Job = serde_json::from_str(&ev.data).unwrap();
        if job.state != JobState::Queued {
            break job;
        }
    };
    assert_eq!(building.state, JobState::Building);
    assert_eq!(building.builds[0].agent.as_deref(), Some("z15"));

    for batch in [["compiling", "linking"], ["testing", "packing"]] {
        let res = c
            .report(
                &agent,
                lease.build_id,
                "log",
                json!({"lease_token": lease.lease_token, "lines": batch}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        let answer: serde_json::Value = res.json().await.unwrap();
        assert_eq!(answer, json!({"truncated": false}));
    }
    let res = c
        .report(
            &agent,
            lease.build_id,
            "fail",
            json!({"lease_token": lease.lease_token, "error": "exit status 2"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);

    let end = until_event(&mut rx, "end", &mut seen).await;
    let end: JobEnd = serde_json::from_str(&end.data).unwrap();
    assert_eq!((end.job_id, end.state), (job.id, JobState::Failed));
    assert!(
        next_event(&mut rx).await.is_none(),
        "the stream closes after end"
    );

    let lines: Vec<String> = seen
        .iter()
        .filter(|e| e.event == "log")
        .flat_map(|e| serde_json::from_str::<LogChunk>(&e.data).unwrap().lines)
        .collect();
    let expected = [
        "compiling",
        "linking",
        "testing",
        "packing",
        "[archfarm] failed: exit status 2",
    ];
    assert_eq!(&lines[lines.len() - 5..], expected, "{lines:?}");
    assert!(lines[0].starts_with("[archfarm] attempt 1 on agent z15"));
    let last_job: Job = seen
        .iter()
        .rev()
        .find(|e| e.event == "job")
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .unwrap();
    assert_eq!(last_job.state, JobState::Failed);

    // A client that connects after the end gets the whole story at once, then the end.
    let res = c
        .http
        .get(c.url(&format!("/jobs/{}/events", job.id)))
        .send()
        .await
        .unwrap();
    let mut rx = sse_events(res);
    let mut replay = Vec::new();
    until_event(&mut rx, "end", &mut replay).await;
    let names: Vec<&str> = replay.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["job", "log", "end"], "{replay:?}");
    let chunk: LogChunk = serde_json::from_str(&replay[1].data).unwrap();
    assert_eq!(chunk.offset, 0);
    assert_eq!(chunk.lines.len(), 6);

    // A client that already shows part of the log asks for the rest only.
    let shown = chunk.lines[..5]
        .iter()
        .map(|l| l.len() as u64 + 1)
        .sum::<u64>();
    let res = c
        .http
        .get(c.url(&format!(
            "/jobs/{}/events?from={}:{shown}",
            job.id, lease.build_id
        )))
        .send()
        .await
        .unwrap();
    let mut rx = sse_events(res);
    let mut rest = Vec::new();
    until_event(&mut rx, "end", &mut rest).await;
    let chunk: LogChunk = serde_json::from_str(&rest[1].data).unwrap();
    assert_eq!(
        (chunk.offset, chunk.lines),
        (shown, vec!["[archfarm] failed: exit status 2".to_string()])
    );
    let res = c
        .http
        .get(c.url(&format!("/jobs/{}/events?from=nonsense", job.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);

    let res = c
        .http
        .get(c.url(&format!("/jobs/{}/events", uuid::Uuid::new_v4())))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    c.stop().await;
}

#[tokio::test]
async fn the_farm_stream_shows_agents_and_new_jobs() {
    let c = Coordinator::start(&[]).await;
    let res = c.http.get(c.url("/events")).send().await.unwrap();
    let mut rx = sse_events(res);
    let mut seen = Vec::new();
    let agents = until_event(&mut rx, "agents", &mut seen).await;
    let agents: AgentsEvent = serde_json::from_str(&agents.data).unwrap();
    assert!(agents.agents.is_empty());

    c.register("pi-4", &["linux/arm64"], &[]).await;
    let agents = until_event(&mut rx, "agents", &mut seen).await;
    let agents: AgentsEvent = serde_json::from_str(&agents.data).unwrap();
    assert_eq!(agents.agents[0].name, "pi-4");

    let job = submit(&c, "linux/arm64").await;
    let ev = until_event(&mut rx, "job", &mut seen).await;
    let shown: Job = serde_json::from_str(&ev.data).unwrap();
    assert_eq!((shown.id, shown.state), (job.id, JobState::Queued));
    c.stop().await;
}

#[tokio::test]
async fn a_followed_log_streams_until_the_build_ends() {
    let c = Coordinator::start(&[]).await;
    let job = submit(&c, "linux/arm64").await;
    let agent = c.register("pi-4", &["linux/arm64"], &[]).await;
    let lease = c.lease(&agent).await.expect("leased");
    let res = c
        .http
        .get(c.url(&format!("/builds/{}/log?follow=true", job.builds[0].id)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.bytes_stream();
    let mut text = String::new();
    // The attempt header is there before any report; the response is still open.
    while !text.contains("attempt 1") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(20), body.next())
            .await
            .expect("the log so far")
            .expect("still open")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let res = c
        .report(
            &agent,
            lease.build_id,
            "log",
            json!({"lease_token": lease.lease_token, "lines": ["step 1/2", "step 2/2"]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let digest = format!("sha256:{}", "d".repeat(64));
    let res = c
        .report(&agent, lease.build_id, "complete", json!({"lease_token": lease.lease_token, "digest": digest, "media_type": "application/vnd.oci.image.manifest.v1+json", "size": 10}))
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    // The body ends by itself once the build has ended and its last lines were sent.
    let rest = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        let mut rest = String::new();
        while let Some(chunk) = body.next().await {
            rest.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
        rest
    })
    .await
    .expect("the followed log ends with the build");
    text.push_str(&rest);
    assert!(text.contains("step 1/2\nstep 2/2\n"), "{text}");
    assert!(
        text.ends_with(&format!("[archfarm] pushed {digest}\n")),
        "{text}"
    );

    // From an offset, without following: the rest at once.
    let offset = text.find("step 2/2").unwrap();
    let tail = c
        .http
        .get(c.url(&format!("/builds/{}/log?offset={offset}", job.builds[0].id)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(tail, format!("step 2/2\n[archfarm] pushed {digest}\n"));
    c.stop().await;
}

/// `name{labels} value` lines of a scrape.
async fn scrape(c: &Coordinator) -> String {
    let res = c
        .http
        .get(format!("{}/metrics", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    res.text().await.unwrap()
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_follow_jobs_builds_queues_and_routes() {
    let c = Coordinator::start(&[]).await;
    let job = submit(&c, "linux/ppc64le").await;
    let text = scrape(&c).await;
    assert_eq!(
        value(&text, "archfarm_jobs_total{state=\"queued\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "archfarm_queued_builds{platform=\"linux/ppc64le\"}"),
        Some(1.0)
    );
    assert!(value(
        &text,
        "archfarm_oldest_queued_build_age_seconds{platform=\"linux/ppc64le\"}"
    )
    .is_some());

    let agent = c
        .register("power9", &["linux/ppc64le"], &["linux/s390x"])
        .await;
    let lease = c.lease(&agent).await.expect("leased");
    let res = c
        .report(
            &agent,
            lease.build_id,
            "fail",
            json!({"lease_token": lease.lease_token, "error": "boom"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let got = c.job(job.id).await;
    assert_eq!(got.state, JobState::Failed);

    let text = scrape(&c).await;
    assert_eq!(
        value(&text, "archfarm_jobs_total{state=\"failed\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "archfarm_builds_total{mode=\"native\",outcome=\"failed\",platform=\"linux/ppc64le\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "archfarm_queued_builds{platform=\"linux/ppc64le\"}"),
        Some(0.0),
        "an empty queue of a platform agents serve reads 0"
    );
    for series in [
        "archfarm_agents{mode=\"native\",platform=\"linux/ppc64le\",state=\"online\"}",
        "archfarm_agents{mode=\"emulated\",platform=\"linux/s390x\",state=\"online\"}",
    ] {
        assert_eq!(value(&text, series), Some(1.0), "{series}\n{text}");
    }
    assert_eq!(
        value(
            &text,
            "archfarm_http_requests_total{method=\"GET\",route=\"/api/v1/jobs/{id}\",status=\"200\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(value(&text, "archfarm_lease_expiries_total").is_some());
    // Label values are templates and names, never ids.
    for id in [job.id, lease.build_id, agent.agent_id] {
        assert!(!text.contains(&id.to_string()), "{id} in a label");
    }
    // Any token is a method to HTTP; none may become a label value of its own.
    let brew = reqwest::Method::from_bytes(b"BREW").unwrap();
    c.http
        .request(brew, format!("{}/healthz", c.base))
        .send()
        .await
        .unwrap();
    let res = c
        .http
        .get(format!("{}/no/such/{}", c.base, job.id))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let text = scrape(&c).await;
    assert!(text.contains("route=\"unmatched\""), "{text}");
    assert!(
        text.contains("method=\"other\"") && !text.contains("BREW"),
        "{text}"
    );
    assert!(!text.contains(&job.id.to_string()));
    c.stop().await;
}
