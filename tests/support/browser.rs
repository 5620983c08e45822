//! Headless Chromium driven over WebDriver: Debian's `chromedriver` as a child process and the
//! `fantoccini` client, behind a blocking API so a test can mix it with the other helpers.
//!
//! Page contents are read as the DOM's `textContent` (trimmed) through small scripts, so what a
//! test checks is what the page holds whether or not it is scrolled into view. Screenshots go to
//! [`artifacts_dir`] under stable names, and every wait that times out saves one there too.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder};
use rustix::process::{kill_process, Pid, Signal};
use serde_json::{json, Value};

use crate::context::repo_root;
use crate::process::{clean_env, free_port, processes_of, wait_until, Daemon, Scratch};

/// Debian's Chromium (package `chromium`).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's ChromeDriver (package `chromium-driver`).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How often the waits look at the page again.
const POLL: Duration = Duration::from_millis(200);
/// How long chromedriver may take to answer `/status` with `ready: true`.
const DRIVER_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one WebDriver command may take before the test gives up on the browser.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// `target/artifacts/` under the workspace root, created if missing: where screenshots go.
pub fn artifacts_dir() -> PathBuf {
    let dir = repo_root().join("target").join("artifacts");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// A headless Chromium session; the browser and chromedriver are stopped on drop.
pub struct Browser {
    // Field order is drop order (after Drop::drop closed the session): the runtime, then the
    // driver's process group, then its scratch directory (Chromium's profile, the driver's log).
    client: Option<Client>,
    rt: tokio::runtime::Runtime,
    driver: Daemon,
    dir: Scratch,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("driver", &self.driver)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Browser {
    /// Starts chromedriver on a free port, waits until it is ready, and opens a headless Chromium
    /// session with a fresh profile and a 1280×900 window.
    pub fn start() -> Browser {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(tool).is_file(),
                "{tool} is missing: run scripts/setup.sh as root (it installs chromium and chromium-driver)"
            );
        }
        let dir = Scratch::new("browser");
        let profile = dir.join("profile");
        fs::create_dir_all(&profile).expect("create the Chromium profile directory");
        let (driver, url) = start_driver(&dir);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("build a tokio runtime");
        let mut caps = Capabilities::new();
        caps.insert(
            "goog:chromeOptions".to_string(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    // Without these Chromium keeps trying to reach Google over a closed network.
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.display()),
                    "--window-size=1280,900",
                ],
            }),
        );
        let connected = rt.block_on(async {
            let mut builder = ClientBuilder::rustls().expect("rustls connector");
            builder.capabilities(caps);
            tokio::time::timeout(COMMAND_TIMEOUT, builder.connect(&url)).await
        });
        let client = match connected {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => panic!(
                "cannot open a Chromium session through {url}: {e}\nchromedriver said:\n{}",
                driver.log_tail(40)
            ),
            Err(_) => panic!(
                "opening a Chromium session through {url} took over {COMMAND_TIMEOUT:?}\n\
                 chromedriver said:\n{}",
                driver.log_tail(40)
            ),
        };
        Browser {
            client: Some(client),
            rt,
            driver,
            dir,
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("the session is open")
    }

    /// Runs one WebDriver command to completion, panicking on an error or after
    /// [`COMMAND_TIMEOUT`].
    fn run<T, E: std::fmt::Display>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, E>>,
    ) -> T {
        match self
            .rt
            .block_on(async { tokio::time::timeout(COMMAND_TIMEOUT, fut).await })
        {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => panic!("browser: {what}: {e}"),
            Err(_) => panic!("browser: {what} took over {COMMAND_TIMEOUT:?}"),
        }
    }

    /// Navigates to `url` and waits for the page to load.
    pub fn goto(&self, url: &str) {
        self.run(&format!("open {url}"), self.client().goto(url));
    }

    /// The page's URL.
    pub fn url(&self) -> String {
        self.run("current URL", self.client().current_url())
            .to_string()
    }

    /// Runs `script` (a function body: `return` gives the result) with `args` as `arguments`.
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.run(
            &format!("execute {script:?}"),
            self.client().execute(script, args),
        )
    }

    /// The trimmed `textContent` of every element matching the CSS `selector`, in document order.
    pub fn texts(&self, selector: &str) -> Vec<String> {
        let found = self.execute(
            "return Array.from(document.querySelectorAll(arguments[0]), e => e.textContent);",
            vec![json!(selector)],
        );
        found
            .as_array()
            .unwrap_or_else(|| panic!("texts of {selector:?}: not an array: {found}"))
            .iter()
            .map(|v| v.as_str().unwrap_or_default().trim().to_string())
            .collect()
    }

    /// The trimmed `textContent` of the first element matching `selector`, if there is one.
    pub fn text(&self, selector: &str) -> Option<String> {
        self.texts(selector).into_iter().next()
    }

    /// Polls (every 200 ms) the texts of every element matching `selector` until `ready` holds
    /// for them, and returns them. After `timeout` it saves a screenshot and panics with what it
    /// saw last.
    pub fn wait_texts(
        &self,
        selector: &str,
        timeout: Duration,
        what: &str,
        mut ready: impl FnMut(&[String]) -> bool,
    ) -> Vec<String> {
        let start = Instant::now();
        loop {
            let texts = self.texts(selector);
            if ready(&texts) {
                return texts;
            }
            if start.elapsed() >= timeout {
                let shot = self.screenshot(&format!("timeout-{}.png", slug(what)));
                panic!(
                    "timed out after {timeout:?} waiting for {what} ({selector:?}) on {}; \
                     last seen: {texts:?}; screenshot: {}",
                    self.url(),
                    shot.display()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Like [`Browser::wait_texts`] for the first element matching `selector`, which must exist.
    pub fn wait_text(
        &self,
        selector: &str,
        timeout: Duration,
        what: &str,
        mut ready: impl FnMut(&str) -> bool,
    ) -> String {
        self.wait_texts(selector, timeout, what, |t| {
            t.first().is_some_and(|first| ready(first))
        })
        .remove(0)
    }

    /// Waits until some element matches `selector`.
    pub fn wait_present(&self, selector: &str, timeout: Duration, what: &str) {
        self.wait_texts(selector, timeout, what, |t| !t.is_empty());
    }

    /// Resizes the browser window (the outer size; the viewport is what the page sees).
    pub fn set_window_size(&self, width: u32, height: u32) {
        self.run(
            &format!("resize to {width}x{height}"),
            self.client().set_window_size(width, height),
        );
    }

    /// Saves a PNG of the viewport as `target/artifacts/NAME` and returns its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.run(&format!("screenshot {name}"), self.client().screenshot());
        let path = artifacts_dir().join(name);
        fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        eprintln!("screenshot: {}", path.display());
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium and its helpers: children of the driver, or carrying our profile directory.
        let leftovers = processes_of(self.driver.pid(), self.dir.path());
        if let Some(client) = self.client.take() {
            let _ = self.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(20), client.close()).await
            });
        }
        self.driver.stop();
        for p in leftovers {
            if let Some(pid) = Pid::from_raw(p.pid as i32).filter(|_| p.pid > 1) {
                let _ = kill_process(pid, Signal::KILL);
            }
        }
    }
}

/// Starts chromedriver on a free port (another if that one was taken meanwhile) and waits until
/// `GET /status` says it is ready; returns it with its URL.
fn start_driver(dir: &Scratch) -> (Daemon, String) {
    let http = crate::http_client();
    for attempt in 1..=3 {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"));
        clean_env(&mut cmd);
        let log = dir.join(format!("chromedriver-{port}.log"));
        let mut daemon = Daemon::spawn("chromedriver", cmd, log);
        let mut exited = false;
        wait_until(
            DRIVER_READY_TIMEOUT,
            &format!("chromedriver at {url}/status"),
            || {
                if daemon.exited().is_some() {
                    exited = true;
                    return true;
                }
                http.get(format!("{url}/status"))
                    .send()
                    .ok()
                    .and_then(|r| r.json::<Value>().ok())
                    .is_some_and(|v| v["value"]["ready"] == json!(true))
            },
        );
        if !exited {
            return (daemon, url);
        }
        let said = daemon.log().to_lowercase();
        if attempt < 3 && (said.contains("address already in use") || said.contains("bind")) {
            continue;
        }
        daemon.assert_running();
    }
    unreachable!("chromedriver either started or panicked")
}

/// `what` as a file-name fragment.
fn slug(what: &str) -> String {
    let s: String = what
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let s = s
        .split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    s.chars().take(60).collect()
}
