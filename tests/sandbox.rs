//! A hostile `RUN` step against the agent's isolation, end to end (issue 15). A static C program,
//! compiled here with gcc, does the classic chroot escape (`mkdir("/j")`, `chroot("/j")`, `chdir("..")`
//! 64 times, `chroot(".")`), then tries to read the agent's own token file by its path on the host
//! and counts the processes it can see in `/proc`, looking for the agent. It prints what it got;
//! the assertions read the step's own output from the build log.
//!
//! An agent whose OCI runtime does not run refuses to start, naming what to install.
//!
//! The program also asks for the coordinator's health endpoint on the host's loopback: the agents'
//! default network (the host's) reaches it, `--network none` does not.
//!
//! With the agents' default `--isolation oci` (a runc container per step) the escape leads nowhere:
//! the token cannot be opened and only the step's own few processes are visible; the step also
//! shows it runs under a seccomp filter. The same step on
//! an agent started with `--isolation chroot` reads the token and sees the agent: that is why
//! chroot isolation is for trusted single-tenant use only, and it shows the probe would catch a
//! sandbox that let the step out.

use std::time::Duration;

use archfarm_e2e::{
    preflight, wait_until, Agent, AgentOptions, BuildContext, Coordinator, Registry,
};
use archfarm_protocol::api::JobState;

/// How long one single-platform job may take.
const JOB_TIMEOUT: Duration = Duration::from_secs(300);

/// The escape: every line it prints starts with `sandbox:`.
const ESCAPE_C: &str = r#"
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>

/* GET /healthz from 127.0.0.1:port (no name lookup: a static binary has no NSS). */
static void reach(const char *port) {
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(port));
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
        printf("sandbox: coordinator unreachable: %s\n", strerror(errno));
        return;
    }
    const char *req = "GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    write(s, req, strlen(req));
    char buf[512] = {0};
    ssize_t n = read(s, buf, sizeof buf - 1);
    char *eol = strpbrk(buf, "\r\n");
    if (eol) *eol = 0;
    printf("sandbox: coordinator answered: %s\n", n > 0 ? buf : "(nothing)");
    close(s);
}

/* Privileged operations a container must not be allowed. */
static void privileged(const char *agent_pid) {
    mkdir("/mnt-probe", 0700);
    if (mount("none", "/mnt-probe", "tmpfs", 0, "") == 0) printf("sandbox: mount worked\n");
    else printf("sandbox: mount refused: %s\n", strerror(errno));
    if (unshare(CLONE_NEWNS) == 0) printf("sandbox: unshare mount namespace worked\n");
    else printf("sandbox: unshare mount namespace refused: %s\n", strerror(errno));
    /* In a child: a user namespace, if it were made, would change who this process is. */
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        if (unshare(CLONE_NEWUSER) == 0) printf("sandbox: unshare user namespace worked\n");
        else printf("sandbox: unshare user namespace refused: %s\n", strerror(errno));
        long r = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
        if (r == 0) _exit(0);
        if (r > 0) {
            waitpid((pid_t)r, 0, 0);
            printf("sandbox: clone of a user namespace worked\n");
        } else {
            printf("sandbox: clone of a user namespace refused: %s\n", strerror(errno));
        }
        fflush(stdout);
        _exit(0);
    }
    waitpid(child, 0, 0);
    /* PTRACE_SEIZE does not stop its target, and this process's exit detaches it again. */
    if (strcmp(agent_pid, "-") != 0) {
        if (ptrace(PTRACE_SEIZE, atoi(agent_pid), 0, 0) == 0) printf("sandbox: ptrace of the agent worked\n");
        else printf("sandbox: ptrace of the agent refused: %s\n", strerror(errno));
        int attached = 0;
        for (int pid = 2; pid < 65536; pid++) {
            if (pid == getpid() || pid == getppid()) continue;
            if (ptrace(PTRACE_SEIZE, pid, 0, 0) == 0) attached++;
        }
        printf("sandbox: ptrace of other processes: %d attached\n", attached);
    }
}

/* A concurrent build's directory, and its secret's file, by their paths on the host. */
static void sibling(const char *dir, const char *secret) {
    if (strcmp(secret, "-") != 0) {
        char buf[128] = {0};
        int fd = open(secret, O_RDONLY);
        if (fd < 0) printf("sandbox: sibling secret blocked: %s\n", strerror(errno));
        else printf("sandbox: sibling secret read: %.*s\n", (int)read(fd, buf, sizeof buf - 1), buf);
    }
    if (strcmp(dir, "-") == 0) return;
    DIR *d = opendir(dir);
    if (!d) {
        printf("sandbox: sibling build blocked: %s\n", strerror(errno));
        return;
    }
    int n = 0;
    while (readdir(d)) n++;
    printf("sandbox: sibling build listed: %d entries\n", n);
    closedir(d);
}

int main(int argc, char **argv) {
    if (argc < 6) return 2;
    reach(argv[2]);
    privileged(argv[4]);
    mkdir("/j", 0700);
    if (chroot("/j") != 0) printf("sandbox: chroot refused: %s\n", strerror(errno));
    for (int i = 0; i < 64; i++) chdir("..");
    chroot(".");
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) {
        printf("sandbox: token blocked: %s\n", strerror(errno));
    } else {
        char buf[256] = {0};
        ssize_t n = read(fd, buf, sizeof buf - 1);
        printf("sandbox: token read: %.*s\n", n > 0 ? (int)n : 0, buf);
    }
    sibling(argv[3], argv[5]);
    int procs = 0, agent = 0, sleeper = 0;
    DIR *d = opendir("/proc");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        procs++;
        char path[300], comm[64] = {0};
        snprintf(path, sizeof path, "/proc/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (f) {
            if (fgets(comm, sizeof comm, f)) {
                if (strstr(comm, "archfarm-agent")) agent = 1;
                if (strncmp(comm, "sleep", 5) == 0) sleeper = 1;
            }
            fclose(f);
        }
    }
    printf("sandbox: processes visible: %d, agent visible: %s\n", procs, agent ? "yes" : "no");
    printf("sandbox: sibling step visible: %s\n", sleeper ? "yes" : "no");
    return 0;
}
"#;

const DOCKERFILE: &str = "FROM scratch
COPY rootfs/amd64/ /
RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]
ENV PATH=/bin
COPY escape /escape
ARG TOKEN_PATH
ARG COORDINATOR_PORT
ARG SIBLING_DIR=-
ARG AGENT_PID=-
ARG SIBLING_SECRET=-
RUN /escape \"$TOKEN_PATH\" \"$COORDINATOR_PORT\" \"$SIBLING_DIR\" \"$AGENT_PID\" \"$SIBLING_SECRET\" \\
 && grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status | sed 's/^/sandbox: /'
";

/// The context: the example's amd64 busybox, the escape compiled statically, the Dockerfile.
fn hostile_context() -> BuildContext {
    let context = BuildContext::hello();
    context.compile_static("escape", ESCAPE_C);
    context.write("Dockerfile", DOCKERFILE);
    context
}

/// Runs the escape on `agent` (the only agent of `coordinator`) and returns its `sandbox:` lines and
/// the agent's token.
fn escape_on(
    coordinator: &Coordinator,
    registry: &Registry,
    agent: &Agent,
    tag: &str,
    build_args: &[String],
) -> (Vec<String>, String) {
    let token_path = agent.work_dir().join("agent-token");
    // The coordinator lists an agent as soon as it registered; the agent keeps its token a moment
    // later.
    wait_until(
        Duration::from_secs(30),
        "the agent to keep its token",
        || token_path.is_file(),
    );
    let token = std::fs::read_to_string(&token_path)
        .unwrap_or_else(|e| panic!("read {}: {e}", token_path.display()));
    assert!(!token.trim().is_empty(), "the agent keeps its token");
    let context = hostile_context();
    let image = format!("{}/sandbox:{tag}", registry.host());
    let token_arg = format!("TOKEN_PATH={}", token_path.display());
    let coordinator_arg = format!("COORDINATOR_PORT={}", coordinator.port());
    let context_arg = context.arg();
    let mut args = vec![
        "--platform",
        "linux/amd64",
        "--build-arg",
        &token_arg,
        "--build-arg",
        &coordinator_arg,
        "-t",
        &image,
    ];
    for a in build_args {
        args.extend(["--build-arg", a.as_str()]);
    }
    args.push(&context_arg);
    let id = coordinator.submit(&args);
    let job = coordinator.wait_terminal(id, JOB_TIMEOUT);
    let log = coordinator.build_log(job.builds[0].id);
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}\n{log}");
    let said: Vec<String> = log
        .lines()
        .filter(|l| l.starts_with("sandbox:"))
        .map(str::to_string)
        .collect();
    eprintln!("{tag} isolation, the step said:\n  {}", said.join("\n  "));
    (said, token.trim().to_string())
}

/// The number in `sandbox: processes visible: N, …`.
fn processes_seen(said: &[String]) -> usize {
    said.iter()
        .find_map(|l| l.strip_prefix("sandbox: processes visible: "))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("the step did not count processes: {said:?}"))
}

#[test]
fn a_chroot_escape_reaches_nothing_of_the_agent() {
    preflight();
    let registry = Registry::start();
    let coordinator = Coordinator::start();

    // An agent whose runtime does not run refuses to start, and says what to install.
    let mut broken = Agent::spawn(
        &coordinator,
        AgentOptions::new("no-runtime")
            .emulate("none")
            .arg("--oci-runtime")
            .arg("/nonexistent/runc"),
    );
    let status = broken.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "{}", broken.log_tail(20));
    assert!(
        broken.log().contains("apt-get install runc"),
        "{}",
        broken.log_tail(20)
    );

    // The default: each step in its own runc container.
    let mut boxed = Agent::start(
        &coordinator,
        AgentOptions::new("boxed").emulate("none").capacity(2),
    );
    assert!(
        boxed
            .log()
            .contains("each RUN step runs in its own runc container"),
        "{}",
        boxed.log_tail(20)
    );
    // An honest build runs beside the hostile one: its directory and its step are what the
    // hostile step looks for.
    let honest = BuildContext::hello();
    honest.write(
        "Dockerfile",
        "FROM scratch\nCOPY rootfs/amd64/ /\nRUN --mount=type=secret,id=tok [\"/bin/busybox\", \
         \"sh\", \"-c\", \"/bin/busybox sleep 30 && echo honest-done\"]\n",
    );
    let secret_value = "sibling-secret-4f1c9e";
    let secret_file = tempfile::NamedTempFile::new().expect("a temporary file");
    std::fs::write(secret_file.path(), secret_value).expect("write the secret");
    let secret_arg = format!("id=tok,src={}", secret_file.path().display());
    let honest_image = format!("{}/honest:sibling", registry.host());
    let honest_id = coordinator.submit(&[
        "--platform",
        "linux/amd64",
        "--secret",
        &secret_arg,
        "-t",
        &honest_image,
        &honest.arg(),
    ]);
    let sibling_build = coordinator.job(honest_id).builds[0].id;
    let sibling_dir = boxed
        .work_dir()
        .join("builds")
        .join(sibling_build.to_string());
    // The honest build's secret, as the agent keeps it for buildah while the build runs.
    let sibling_secret = || -> Option<std::path::PathBuf> {
        std::fs::read_dir(&sibling_dir)
            .ok()?
            .flatten()
            .map(|e| e.path().join("0"))
            .find(|p| {
                p.parent()
                    .and_then(|d| d.file_name())
                    .is_some_and(|n| n.to_string_lossy().starts_with("secrets-"))
                    && p.is_file()
            })
    };
    wait_until(
        Duration::from_secs(120),
        "the honest build to start on the agent with its secret",
        || sibling_dir.join("context").is_dir() && sibling_secret().is_some(),
    );
    let secret_path = sibling_secret().expect("the secret file");
    assert_eq!(
        std::fs::read_to_string(&secret_path).unwrap(),
        secret_value,
        "the agent keeps the value there"
    );
    let (said, token) = escape_on(
        &coordinator,
        &registry,
        &boxed,
        "oci",
        &[
            format!("SIBLING_DIR={}", sibling_dir.display()),
            format!("AGENT_PID={}", boxed.pid()),
            format!("SIBLING_SECRET={}", secret_path.display()),
        ],
    );
    // The secret file still existed when the hostile step ran: the honest build was still going.
    assert!(
        coordinator.job(honest_id).state != JobState::Succeeded,
        "the honest build ended before the hostile step ran"
    );
    let sibling_job = coordinator.wait_terminal(honest_id, JOB_TIMEOUT);
    let sibling_log = coordinator.build_log(sibling_build);
    assert_eq!(sibling_job.state, JobState::Succeeded, "{sibling_log}");
    assert!(
        sibling_log.lines().any(|l| l.trim() == "honest-done"),
        "{sibling_log}"
    );
    assert!(
        said.iter()
            .any(|l| l.starts_with("sandbox: token blocked:")),
        "{said:?}"
    );
    assert!(
        !said.iter().any(|l| l.contains(&token)),
        "the step read the agent token"
    );
    assert!(
        said.iter().any(|l| l.ends_with("agent visible: no")),
        "{said:?}"
    );
    // The default seccomp filter, and no-new-privileges (set by the agent's runtime shim).
    assert!(said.iter().any(|l| l == "sandbox: Seccomp:\t2"), "{said:?}");
    assert!(
        said.iter().any(|l| l == "sandbox: NoNewPrivs:\t1"),
        "{said:?}"
    );
    // The concurrent build: neither its directory nor its step is in view.
    assert!(
        !said.iter().any(|l| l.contains(secret_value)),
        "the step read the sibling's secret: {said:?}"
    );
    for expected in [
        "sandbox: sibling build blocked: No such file or directory",
        "sandbox: sibling secret blocked: No such file or directory",
        "sandbox: sibling step visible: no",
    ] {
        assert!(said.iter().any(|l| l == expected), "{expected}: {said:?}");
    }
    // Privileged operations: no mounts, no new namespaces, no tracing of anything outside.
    for refused in [
        "sandbox: mount refused:",
        "sandbox: unshare mount namespace refused:",
        "sandbox: unshare user namespace refused:",
        "sandbox: clone of a user namespace refused",
        "sandbox: ptrace of the agent refused:",
    ] {
        assert!(
            said.iter().any(|l| l.starts_with(refused)),
            "{refused}: {said:?}"
        );
    }
    assert!(
        said.iter()
            .any(|l| l == "sandbox: ptrace of other processes: 0 attached"),
        "{said:?}"
    );
    let seen = processes_seen(&said);
    assert!(
        seen < 10,
        "the step saw {seen} processes: not a PID namespace of its own"
    );
    // The default network is the host's: the step reaches the coordinator on the host's loopback.
    assert!(
        said.iter()
            .any(|l| l.starts_with("sandbox: coordinator answered: HTTP/1.")
                && l.ends_with(" 200 OK")),
        "{said:?}"
    );
    boxed.stop();

    // `--network none`: the same container, and nothing to reach.
    let mut cut_off = Agent::start(
        &coordinator,
        AgentOptions::new("cut-off")
            .emulate("none")
            .arg("--network")
            .arg("none"),
    );
    let (said, token) = escape_on(&coordinator, &registry, &cut_off, "oci-network-none", &[]);
    assert!(
        said.iter()
            .any(|l| l.starts_with("sandbox: coordinator unreachable")),
        "{said:?}"
    );
    assert!(
        said.iter()
            .any(|l| l.starts_with("sandbox: token blocked:"))
            && !said.iter().any(|l| l.contains(&token)),
        "{said:?}"
    );
    cut_off.stop();

    // The same step with chroot isolation gets out: the probe does catch an open sandbox.
    let open = Agent::start(
        &coordinator,
        AgentOptions::new("chrooted")
            .emulate("none")
            .arg("--isolation")
            .arg("chroot"),
    );
    assert!(
        open.log().contains("for trusted single-tenant use only"),
        "{}",
        open.log_tail(20)
    );
    // No ptrace probe here: under chroot it would reach real host processes.
    let (said, token) = escape_on(
        &coordinator,
        &registry,
        &open,
        "chroot",
        &[format!("SIBLING_DIR={}", open.work_dir().display())],
    );
    assert!(
        said.iter()
            .any(|l| l == &format!("sandbox: token read: {token}")),
        "under chroot isolation the escape should reach the token: {said:?}"
    );
    assert!(
        said.iter().any(|l| l.ends_with("agent visible: yes")),
        "{said:?}"
    );
    assert!(processes_seen(&said) > seen, "{said:?}");
    assert!(
        said.iter()
            .any(|l| l.starts_with("sandbox: sibling build listed:")),
        "{said:?}"
    );
}

/// Allocates and touches up to 4 GiB in 64 MiB steps, saying how far it got.
const HOG_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(void) {
    const size_t step = 64u << 20;
    for (size_t total = step; total <= (size_t)4 << 30; total += step) {
        char *p = malloc(step);
        if (!p) { printf("hog: malloc failed at %zu MiB\n", total >> 20); return 1; }
        memset(p, 1, step);
        printf("hog: %zu MiB\n", total >> 20);
        fflush(stdout);
    }
    printf("hog: all 4 GiB\n");
    return 0;
}
"#;

/// A build context of the example's busybox with `dockerfile`, and `hog` compiled statically.
fn limits_context(dockerfile: &str) -> BuildContext {
    let context = BuildContext::hello();
    context.compile_static("hog", HOG_C);
    context.write("Dockerfile", dockerfile);
    context
}

/// A fork bomb, a 4 GiB allocation and a disk filler each fail their own build, saying which
/// limit stopped it, while an honest build on the same agent at the same time succeeds and the
/// agent keeps serving. Each hostile step would otherwise run for minutes or hold the machine;
/// what the step printed shows how far it got.
#[test]
fn limits_stop_only_the_build_that_passes_them() {
    preflight();
    let registry = Registry::start();
    let coordinator = Coordinator::start();
    let mut agent = Agent::start(
        &coordinator,
        AgentOptions::new("limited")
            .emulate("none")
            .capacity(4)
            .arg("--memory-limit=512MiB")
            .arg("--pids-limit=128")
            .arg("--disk-limit=256MiB"),
    );
    assert!(
        agent.log().contains(
            "each build runs within these limits limits=memory 512.0 MiB, cpus none, processes \
             128, disk 256.0 MiB"
        ),
        "{}",
        agent.log_tail(20)
    );
    let base = "FROM scratch\nCOPY rootfs/amd64/ /\nCOPY hog /hog\n";
    let run = |cmd: &str| format!("{base}RUN [\"/bin/busybox\", \"sh\", \"-c\", \"{cmd}\"]\n");
    let jobs = [
        (
            "bomb",
            run("b() { b | b & }; b; /bin/busybox sleep 600; echo bomb-finished"),
        ),
        ("hog", run("/hog")),
        (
            "filler",
            run(
                "i=0; while [ $i -lt 64 ]; do /bin/busybox dd if=/dev/zero of=/fill.$i bs=1M \
                 count=16 2>/dev/null; echo filled $i; /bin/busybox sleep 0.2; i=$((i+1)); \
                 done; echo filler-finished",
            ),
        ),
        (
            "honest",
            run(
                "/bin/busybox dd if=/dev/zero bs=1M count=32 2>/dev/null | /bin/busybox \
                 sha256sum; /bin/busybox sleep 15; echo honest-done",
            ),
        ),
    ];
    let submitted: Vec<(&str, uuid::Uuid)> = jobs
        .iter()
        .map(|(name, dockerfile)| {
            let context = limits_context(dockerfile);
            let image = format!("{}/limits:{name}", registry.host());
            let id =
                coordinator.submit(&["--platform", "linux/amd64", "-t", &image, &context.arg()]);
            (*name, id)
        })
        .collect();
    let mut outcome = std::collections::HashMap::new();
    for (name, id) in &submitted {
        let job = coordinator.wait_terminal(*id, JOB_TIMEOUT);
        let build = &job.builds[0];
        let log = coordinator.build_log(build.id);
        eprintln!(
            "{name}: {:?}, error: {:?}\n  {}",
            job.state,
            build.error,
            log.lines()
                .filter(|l| !l.trim().is_empty())
                .rev()
                .take(4)
                .collect::<Vec<_>>()
                .join("\n  ")
        );
        outcome.insert(
            *name,
            (
                job.state,
                build.error.clone().unwrap_or_default(),
                log,
                build.id,
            ),
        );
    }

    let (state, error, log, _) = &outcome["bomb"];
    assert_eq!(*state, JobState::Failed, "{log}");
    assert!(
        error.contains("the build hit its limit of 128 processes")
            && error.contains("--pids-limit")
            && error.contains("the build was stopped"),
        "{error}"
    );
    // Lines the steps print (buildah echoes each step's command, so whole lines are compared).
    let printed = |log: &str, line: &str| log.lines().any(|l| l.trim() == line);
    assert!(!printed(log, "bomb-finished"), "{log}");

    let (state, error, log, _) = &outcome["hog"];
    assert_eq!(*state, JobState::Failed, "{log}");
    assert!(
        error.contains("the build most likely ran out of memory")
            && error.contains("memory limit of 512.0 MiB (agent --memory-limit)"),
        "{error}"
    );
    // The step itself got going, and stopped well short of its 4 GiB.
    assert!(printed(log, "hog: 64 MiB"), "{log}");
    assert!(
        !printed(log, "hog: 1024 MiB") && !printed(log, "hog: all 4 GiB"),
        "{log}"
    );

    let (state, error, log, _) = &outcome["filler"];
    assert_eq!(*state, JobState::Failed, "{log}");
    assert!(
        error.contains("of disk, more than its limit of 256.0 MiB (agent --disk-limit)"),
        "{error}"
    );
    assert!(printed(log, "filled 1"), "{log}");
    assert!(!printed(log, "filler-finished"), "{log}");

    let (state, error, log, _) = &outcome["honest"];
    assert_eq!(*state, JobState::Succeeded, "{error}\n{log}");
    assert!(printed(log, "honest-done"), "{log}");

    // The agent kept serving, and every build's cgroup is gone again.
    assert!(agent.is_running(), "{}", agent.log_tail(30));
    let online = coordinator
        .agents()
        .into_iter()
        .any(|a| a.name == "limited" && a.state == archfarm_protocol::api::AgentState::Online);
    assert!(online, "{:?}", coordinator.agents());
    for (_, _, _, build) in outcome.values() {
        // archfarm/<agent instance>/<build> in every hierarchy.
        for ctrl in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let Ok(agents) = std::fs::read_dir(ctrl.path().join("archfarm")) else {
                continue;
            };
            for agent in agents.flatten() {
                let cg = agent.path().join(build.to_string());
                assert!(!cg.exists(), "{} was left behind", cg.display());
            }
        }
    }
}

/// A context of the example's amd64 busybox as `busybox` at its top, and `dockerfile`.
fn guard_context(dockerfile: &str) -> BuildContext {
    let context = BuildContext::empty();
    let busybox = archfarm_e2e::repo_root().join("examples/hello/rootfs/amd64/bin/busybox");
    std::fs::copy(&busybox, context.path().join("busybox"))
        .unwrap_or_else(|e| panic!("copy {}: {e}", busybox.display()));
    context.write("Dockerfile", dockerfile);
    context
}

/// The `RUN --mount` forms through which buildah 1.28 (Debian 12's) lets a step reach the host
/// are refused by the agent before buildah runs, naming the line, the option and the advisory;
/// a context whose symlink leads out of it is refused at unpacking; and a Dockerfile with cache
/// and secret mounts still builds.
#[test]
fn mounts_that_reach_the_host_are_refused_before_buildah_runs() {
    preflight();
    let registry = Registry::start();
    let coordinator = Coordinator::start();
    let _agent = Agent::start(
        &coordinator,
        AgentOptions::new("guarded").emulate("none").capacity(4),
    );
    // The advisory's reproduction: a stage's symlink to / as a bind mount's source (on buildah
    // 1.28 without the guard, the step listed the host's /).
    let cve_2024_1753 = r#"FROM scratch AS base
COPY busybox /bin/busybox
RUN ["/bin/busybox","ln","-s","/","/rootlink"]
FROM scratch
COPY busybox /bin/busybox
RUN --mount=type=bind,from=base,source=/rootlink,target=/mnt ["/bin/busybox","ls","/mnt"]
"#;
    // A writable bind mount of the context writes the symlink into the agent's copy of it, and the
    // next step's bind mount follows it to the host's / (it did on buildah 1.28 here).
    let context_rw = r#"FROM scratch
COPY busybox /bin/busybox
RUN --mount=type=bind,rw,target=/ctx ["/bin/busybox","ln","-s","/","/ctx/rootlink"]
RUN --mount=type=bind,source=rootlink,target=/mnt ["/bin/busybox","ls","/mnt"]
"#;
    // A cache inside another cache: the outer one's symlink leads the inner mount to the host.
    let nested_cache = r#"FROM scratch
COPY busybox /bin/busybox
RUN --mount=type=cache,target=/c ["/bin/busybox","ln","-s","/","/c/x"]
RUN --mount=type=cache,target=/c/x/etc ["/bin/busybox","ls","/c/x/etc"]
"#;
    // The context itself holding `rootlink -> /`, bind-mounted without `from`.
    let context_link = r#"FROM scratch
COPY busybox /bin/busybox
RUN --mount=type=bind,source=rootlink,target=/mnt ["/bin/busybox","ls","/mnt"]
"#;
    let honest = r#"FROM scratch
COPY busybox /bin/busybox
RUN --mount=type=cache,target=/root/.cache ["/bin/busybox","sh","-c","echo cached > /root/.cache/x"]
RUN --mount=type=cache,target=/root/.cache --mount=type=secret,id=tok,required=true ["/bin/busybox","sh","-c","/bin/busybox cat /root/.cache/x /run/secrets/tok; echo; echo guard-honest-done"]
"#;
    let secret_file = tempfile::NamedTempFile::new().expect("a temporary file");
    std::fs::write(secret_file.path(), "guard-secret-value").expect("write the secret");
    let secret_arg = format!("id=tok,src={}", secret_file.path().display());
    let cases = [
        ("cve-2024-1753", cve_2024_1753),
        ("context-rw", context_rw),
        ("nested-cache", nested_cache),
        ("context-link", context_link),
        ("honest", honest),
    ];
    let submitted: Vec<(&str, uuid::Uuid)> = cases
        .iter()
        .map(|(name, dockerfile)| {
            let context = guard_context(dockerfile);
            if *name == "context-link" {
                std::os::unix::fs::symlink("/", context.path().join("rootlink"))
                    .expect("make the symlink");
            }
            let image = format!("{}/guard:{name}", registry.host());
            let context_arg = context.arg();
            let mut args = vec!["--platform", "linux/amd64", "-t", &image];
            if *name == "honest" {
                args.extend(["--secret", &secret_arg]);
            }
            args.push(&context_arg);
            (*name, coordinator.submit(&args))
        })
        .collect();
    let mut outcome = std::collections::HashMap::new();
    for (name, id) in &submitted {
        let job = coordinator.wait_terminal(*id, JOB_TIMEOUT);
        let build = &job.builds[0];
        let log = coordinator.build_log(build.id);
        let error = build.error.clone().unwrap_or_default();
        eprintln!("{name}: {:?}, error: {error}", job.state);
        outcome.insert(*name, (job.state, error, log));
    }
    // No step of a refused build ran: buildah never started, so it never printed a step.
    let refused = |name: &str, wanted: &[&str]| {
        let (state, error, log) = &outcome[name];
        assert_eq!(*state, JobState::Failed, "{name}: {log}");
        for w in wanted {
            assert!(error.contains(w), "{name}: {error:?} lacks {w:?}");
        }
        assert!(!log.contains("STEP "), "{name}: a step ran:\n{log}");
        assert!(
            !log.contains("etc\n") && !log.contains("passwd"),
            "{name}:\n{log}"
        );
    };
    refused(
        "cve-2024-1753",
        &[
            "Dockerfile line 6: RUN --mount=type=bind,from=base is refused: buildah 1.28 follows \
             symbolic links of a mount source outside the build (CVE-2024-1753); copy the files \
             with COPY --from=base instead",
        ],
    );
    refused(
        "context-rw",
        &[
            "Dockerfile line 3: RUN --mount=type=bind,rw is refused",
            "CVE-2024-11218",
        ],
    );
    refused(
        "nested-cache",
        &[
            "Dockerfile line 4: RUN --mount=type=cache,target=/c/x/etc is refused",
            "CVE-2024-9675",
        ],
    );
    refused(
        "context-link",
        &[
            "context entry 'rootlink' refused: symlink target '/",
            "is absolute",
        ],
    );
    let (state, error, log) = &outcome["honest"];
    assert_eq!(*state, JobState::Succeeded, "{error}\n{log}");
    assert!(
        log.lines().any(|l| l.trim() == "guard-honest-done"),
        "{log}"
    );
    assert!(log.lines().any(|l| l.trim() == "cached"), "{log}");
}
