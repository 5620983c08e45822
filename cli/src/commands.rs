//! One function per subcommand. Results go to stdout, progress and errors to stderr, so a pipeline
//! can capture stdout (`DIGEST=$(archfarm build ...)`) while the log still shows what happened.

use std::io::IsTerminal;

use archfarm_protocol::api::{Job, JobRequest, JobState};
use uuid::Uuid;

use crate::args::{AgentsAction, BuildArgs, Connection, LogsArgs, Progress};
use crate::client::{Client, ClientError};
use crate::follow::{self, failure_report, PlainView, QuietView, View};
use crate::logs::{self, LogSet, LogsView};
use crate::output::{self, human_size};
use crate::tty::TtyView;
use crate::validate::{check_coordinator_url, BuildPlan};
use crate::{admin, context, Error};

/// Exit code after Ctrl-C, as shells report a SIGINT death.
pub const EXIT_INTERRUPTED: u8 = 130;

/// How progress is shown once `auto` is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// One live row per platform, redrawn in place.
    Tty,
    /// One line per change plus the build logs.
    Plain,
    /// Only the result.
    Quiet,
}

impl Style {
    /// Resolves `--progress` for a stderr that is or is not a terminal able to redraw (see
    /// [`stderr_can_redraw`]). An explicit `tty` is obeyed even when it is not.
    pub fn resolve(progress: Progress, stderr_can_redraw: bool) -> Style {
        match progress {
            Progress::Quiet => Style::Quiet,
            Progress::Plain => Style::Plain,
            Progress::Tty => Style::Tty,
            Progress::Auto if stderr_can_redraw => Style::Tty,
            Progress::Auto => Style::Plain,
        }
    }

    /// The view that shows a followed job in this style.
    fn view(self) -> Box<dyn View> {
        match self {
            Style::Tty => Box::<TtyView>::default(),
            Style::Plain => Box::<PlainView>::default(),
            Style::Quiet => Box::new(QuietView),
        }
    }
}

/// Whether stderr is a terminal that understands cursor movement: a CI log file, a pipe or
/// `TERM=dumb` (Emacs shells) get plain lines instead of escapes.
pub fn stderr_can_redraw() -> bool {
    std::io::stderr().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

pub(crate) fn client(conn: &Connection) -> Result<Client, Error> {
    check_coordinator_url(&conn.coordinator)?;
    Ok(Client::with_ca_cert(
        &conn.coordinator,
        conn.token.clone(),
        conn.ca_cert.as_deref(),
    )?)
}

/// `archfarm build`: validate, pack, upload, submit, follow.
pub async fn build(conn: &Connection, args: &BuildArgs) -> Result<u8, Error> {
    // Everything local first: a typo must never cost an upload.
    let plan = BuildPlan::from_args(args, |name| std::env::var(name).ok())?;
    let client = client(conn)?;
    let style = Style::resolve(plan.progress, stderr_can_redraw());
    let verbose = style != Style::Quiet;
    let say = |msg: String| {
        if verbose {
            eprintln!("{msg}");
        }
    };
    // Nothing secret crosses plain HTTP to another host unless the pipeline says a proxy
    // encrypts the connection: the coordinator refuses such a job anyway.
    let mut secret_kinds = Vec::new();
    if !plan.secrets.is_empty() {
        let ids: Vec<&str> = plan.secrets.iter().map(|s| s.id.as_str()).collect();
        secret_kinds.push(format!("the build secrets {}", ids.join(", ")));
    }
    if !plan.secret_build_args.is_empty() {
        secret_kinds.push(format!(
            "the secret build arguments {}",
            plan.secret_build_args.join(", ")
        ));
    }
    let (mode, warning) = crate::registry_credentials::over_plain_http(
        &conn.coordinator,
        args.insecure_credentials_over_http,
        args.registry_credentials,
        &secret_kinds,
    )?;
    if let Some(w) = warning {
        eprintln!("warning: {w}");
    }
    // The pipeline's own registry credentials, read (helpers run) before anything is uploaded.
    let own = crate::registry_credentials::collect(mode, &pushed_registries(&plan), &|name| {
        std::env::var(name).ok()
    })
    .await?;
    for note in &own.notes {
        say(format!("registry credentials: {note}"));
    }
    if let Some(file) = &own.file {
        let names: Vec<&str> = own.credentials.keys().map(String::as_str).collect();
        say(format!(
            "registry credentials: {} (from {}; `--registry-credentials none` sends none)",
            if names.is_empty() {
                "none sent, the farm's own are used".to_string()
            } else {
                format!("sent for {}", names.join(", "))
            },
            file.display()
        ));
    }

    say(format!("context: packing {}", plan.context.display()));
    let (dir, dockerfile) = (plan.context.clone(), plan.dockerfile.clone());
    let packed = tokio::task::spawn_blocking(move || context::pack(&dir, &dockerfile))
        .await
        .map_err(|e| Error::Other(format!("packing the context stopped: {e}")))??;
    for w in &packed.warnings {
        eprintln!("warning: {w}");
    }
    say(format!(
        "context: {} {}, {} compressed, {}",
        packed.entries,
        if packed.entries == 1 {
            "entry"
        } else {
            "entries"
        },
        human_size(packed.size),
        packed.digest
    ));
    if client.context_exists(&packed.digest).await? {
        say("context: already on the coordinator".into());
    } else {
        let size = packed.size;
        let file = tokio::fs::File::from_std(packed.file);
        client.upload_context(&packed.digest, file, size).await?;
        say(format!("context: {} uploaded", human_size(size)));
    }

    let request = JobRequest {
        context: packed.digest,
        platforms: plan.platforms.iter().map(|p| p.to_string()).collect(),
        tags: plan.tags.clone(),
        dockerfile: plan.dockerfile.clone(),
        build_args: plan.build_args.clone(),
        target: plan.target.clone(),
        emulation: plan.emulation,
        optional_platforms: plan
            .optional_platforms
            .iter()
            .map(|p| p.to_string())
            .collect(),
        timeout_secs: plan.timeout.map(|t| t.as_secs()),
        submitter: plan.submitter.clone(),
        secret_build_args: plan.secret_build_args.clone(),
        secrets: plan.secrets.clone(),
        network: plan.network.map(|n| n.to_string()),
        labels: plan.labels.clone(),
        annotations: plan.annotations.clone(),
        allow_foreign_binary: plan.allow_foreign_binary.clone(),
        attest_to: Some(plan.attest_to),
        smoke_test: plan.smoke_test.clone(),
        cache_to: plan.cache_to.iter().map(ToString::to_string).collect(),
        cache_from: plan.cache_from.iter().map(ToString::to_string).collect(),
        no_cache: plan.no_cache,
        pull: plan.pull,
        registry_credentials: own.credentials,
    };
    let job = client.submit_job(&request).await?;
    let id = job.id;
    let optional = if request.optional_platforms.is_empty() {
        String::new()
    } else {
        format!(" (optional: {})", request.optional_platforms.join(", "))
    };
    let network = job
        .network
        .map(|n| format!(" (network {n})"))
        .unwrap_or_default();
    say(format!(
        "job {id} submitted: {}{optional}{network} -> {}",
        request.platforms.join(", "),
        request.tags.join(", ")
    ));
    if plan.detach {
        print_warnings(&job);
        output::stdout(&format!("{id}\n"));
        return Ok(0);
    }

    let interrupted = async {
        // If the handler cannot be installed, Ctrl-C keeps its default effect; never fire here.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let mut view = style.view();
    let finished = tokio::select! {
        result = follow::follow(&client, job, view.as_mut()) => {
            result.map_err(|last| Error::LostJob { id, last })?
        }
        () = interrupted => {
            eprintln!(
                "\ninterrupted: job {id} keeps running on the coordinator; \
                 follow it with `archfarm job {id}` or cancel it with `archfarm cancel {id}`"
            );
            return Ok(EXIT_INTERRUPTED);
        }
    };
    let code = outcome(&client, &finished).await?;
    if code == 0 {
        write_result_files(&plan, &finished)?;
    }
    Ok(code)
}

/// The registries a job pushes to: its tags' and its caches', normalised, distinct, in order.
fn pushed_registries(plan: &BuildPlan) -> Vec<String> {
    let tags = plan
        .tags
        .iter()
        .filter_map(|t| archfarm_protocol::ImageRef::parse(t).ok())
        .map(|r| r.registry);
    let caches = plan
        .cache_to
        .iter()
        .chain(&plan.cache_from)
        .map(|c| c.registry.clone());
    let mut out: Vec<String> = Vec::new();
    for r in tags.chain(caches) {
        let r = archfarm_protocol::registry_auth::normalise_registry(&r).unwrap_or(r);
        if !out.contains(&r) {
            out.push(r);
        }
    }
    out
}

/// `--iidfile` and `--metadata-file`, once the index is pushed. A file that cannot be written
/// fails the command (the image is pushed; a pipeline step would read nothing), naming it.
fn write_result_files(plan: &BuildPlan, job: &Job) -> Result<(), Error> {
    let fail = |path: &std::path::Path, e: std::io::Error| {
        Error::Other(format!(
            "the index was pushed, but {} could not be written: {e}",
            path.display()
        ))
    };
    if let (Some(path), Some(digest)) = (&plan.iidfile, &job.index_digest) {
        crate::metadata::write(path, digest).map_err(|e| fail(path, e))?;
    }
    if let Some(path) = &plan.metadata_file {
        let text = serde_json::to_string_pretty(&crate::metadata::of(job))
            .expect("metadata serialises")
            + "\n";
        crate::metadata::write(path, &text).map_err(|e| fail(path, e))?;
    }
    Ok(())
}

/// The job's warnings (e.g. an optional platform left out), on stderr whatever `--progress` says.
fn print_warnings(job: &Job) {
    for w in &job.warnings {
        eprintln!("warning: {w}");
    }
}

/// Prints a finished job's result and picks the exit code. Warnings come first, so that the
/// digest stays the last thing printed.
async fn outcome(client: &Client, job: &Job) -> Result<u8, Error> {
    print_warnings(job);
    match job.state {
        JobState::Succeeded => match &job.index_digest {
            Some(d) => {
                output::stdout(&format!("{d}\n"));
                Ok(0)
            }
            None => Err(Error::Other(format!(
                "job {} succeeded but the coordinator reported no index digest",
                job.id
            ))),
        },
        JobState::Failed => {
            eprint!("{}", failure_report(client, job).await);
            Ok(1)
        }
        JobState::Cancelled => {
            eprintln!(
                "error: job {} was cancelled: {}",
                job.id,
                job.error.as_deref().unwrap_or("cancelled by a user")
            );
            Ok(1)
        }
        other => Err(Error::Other(format!(
            "job {} stopped being followed in state {other}",
            job.id
        ))),
    }
}

/// `archfarm jobs`.
pub async fn jobs(conn: &Connection, limit: u32) -> Result<u8, Error> {
    let list = client(conn)?.list_jobs(limit).await?;
    output::stdout(&output::jobs_table(&list.jobs, chrono::Utc::now()));
    Ok(0)
}

/// `archfarm job ID [--json]`.
pub async fn job(conn: &Connection, id: Uuid, json: bool, provenance: bool) -> Result<u8, Error> {
    let client = client(conn)?;
    if provenance {
        let p = client.job_provenance(id).await?;
        if p.statements.is_empty() {
            eprintln!(
                "job {id} has no provenance (it goes to: {}; none is stored before the index is pushed)",
                p.attest_to
            );
        }
        let text = serde_json::to_string_pretty(&p.statements)
            .map_err(|e| Error::Other(format!("printing the provenance: {e}")))?;
        output::stdout(&format!("{text}\n"));
    } else if json {
        let value = client.job_json(id).await?;
        let text = serde_json::to_string_pretty(&value)
            .map_err(|e| Error::Other(format!("printing the job's JSON: {e}")))?;
        output::stdout(&format!("{text}\n"));
    } else {
        let job = client.job(id).await?;
        output::stdout(&output::job_summary(&job, chrono::Utc::now()));
    }
    Ok(0)
}

/// `archfarm agents [drain|revoke|forget NAME]`.
pub async fn agents(conn: &Connection, action: Option<&AgentsAction>) -> Result<u8, Error> {
    let client = client(conn)?;
    match action {
        None => {
            let list = client.agents().await?;
            output::stdout(&output::agents_table(&list.agents, chrono::Utc::now()));
            Ok(0)
        }
        Some(AgentsAction::Drain { name }) => {
            let agent = admin::agent_named(&client, name).await?;
            let drained = client.drain_agent(agent.id).await?;
            output::stdout(&output::draining(&drained));
            Ok(0)
        }
        Some(AgentsAction::Revoke { name }) => admin::revoke_agent(&client, name).await,
        Some(AgentsAction::Forget { name }) => admin::forget_agent(&client, name).await,
    }
}

/// `archfarm cancel ID`: succeeds when the job is cancelled (stitching included) or had already
/// ended; exits 1 when a coordinator from before cancelling while stitching refuses because it is
/// pushing the job's index.
pub async fn cancel(conn: &Connection, id: Uuid) -> Result<u8, Error> {
    let job = match client(conn)?.cancel_job(id).await {
        Ok(job) => job,
        // Nothing was wrong with the request: the job is just past the point of cancelling.
        Err(ClientError::Api {
            status: 409,
            code,
            message,
        }) if code == "job_stitching" => {
            eprintln!("{message}");
            return Ok(1);
        }
        Err(e) => return Err(e.into()),
    };
    let text = match job.state {
        JobState::Cancelled => format!("job {id} cancelled\n"),
        s if s.is_terminal() => format!("job {id} had already ended: {s}\n"),
        s => format!("job {id}: cancel requested (now {s})\n"),
    };
    output::stdout(&text);
    Ok(0)
}

/// `archfarm logs JOB [--platform P] [--follow]`: the logs on stdout; exit 0 once printed (with
/// `--follow`, once the job ended and every log was read), whatever the job's outcome.
pub async fn logs(conn: &Connection, args: &LogsArgs) -> Result<u8, Error> {
    // A misspelt platform must not cost a request.
    let platform = args
        .platform
        .as_deref()
        .map(logs::parse_platform)
        .transpose()?;
    let client = client(conn)?;
    let job = client.job(args.id).await?;
    let mut view = LogsView::new(&job, platform.as_ref())?;
    if args.follow {
        let id = job.id;
        follow::follow(&client, job, &mut view)
            .await
            .map_err(|last| Error::LostJob { id, last })?;
    } else {
        follow::round(&client, &job, &mut LogSet::default(), &mut view).await?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_progress_is_tty_on_a_terminal() {
        assert_eq!(Style::resolve(Progress::Auto, false), Style::Plain);
        assert_eq!(Style::resolve(Progress::Auto, true), Style::Tty);
        assert_eq!(Style::resolve(Progress::Tty, false), Style::Tty);
        assert_eq!(Style::resolve(Progress::Quiet, true), Style::Quiet);
        assert_eq!(Style::resolve(Progress::Plain, true), Style::Plain);
        assert_eq!(Style::resolve(Progress::Plain, false), Style::Plain);
    }
}
