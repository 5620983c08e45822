//! Where the build's sources come from, for the index's `org.opencontainers.image.source` and
//! `org.opencontainers.image.revision`, read from the git checkout of the context as buildx does
//! (`BUILDX_GIT_INFO=0` turns it off, as with buildx). Nothing secret leaves this machine: a
//! remote URL's user name and password (`https://user:token@host/…`) are cut out.

use std::path::Path;
use std::process::Command;

/// The OCI annotation of the sources' URL.
pub const SOURCE: &str = "org.opencontainers.image.source";
/// The OCI annotation of the sources' revision.
pub const REVISION: &str = "org.opencontainers.image.revision";

/// `index:KEY=VALUE` annotations for the source and revision of `context`'s checkout, leaving
/// out any the job's own `index:` annotations already set (those win). Empty when git is
/// missing or the context is not in a checkout.
pub fn index_annotations(
    context: &Path,
    explicit: &archfarm_protocol::image_meta::ImageMeta,
    env: impl Fn(&str) -> Option<String>,
) -> Vec<String> {
    if env("BUILDX_GIT_INFO").is_some_and(|v| matches!(v.trim(), "0" | "false")) {
        return Vec::new();
    }
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(context)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let Some(commit) = git(&["rev-parse", "HEAD"]).filter(|c| !c.is_empty()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if !explicit.index_annotations.contains_key(REVISION) {
        // As buildx marks it: the commit alone does not say what was built.
        let dirty = git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
        let suffix = if dirty { "-dirty" } else { "" };
        out.push(format!("index:{REVISION}={commit}{suffix}"));
    }
    if !explicit.index_annotations.contains_key(SOURCE) {
        if let Some(url) = git(&["remote", "get-url", "origin"])
            .map(|u| without_credentials(&u))
            .filter(|u| !u.is_empty() && !u.chars().any(char::is_control))
        {
            out.push(format!("index:{SOURCE}={url}"));
        }
    }
    out
}

/// `url` without the user name and password of a `scheme://user:password@host/…` URL. An
/// scp-like `git@host:path` keeps its user, which is the SSH account name and never a secret.
pub fn without_credentials(url: &str) -> String {
    let url = url.trim();
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_leave() {
        assert_eq!(
            without_credentials("https://ci:ghp_s3cret@github.com/team/app.git"),
            "https://github.com/team/app.git"
        );
        assert_eq!(
            without_credentials("https://oauth2:glpat-x@gitlab.lan:8443/a/b"),
            "https://gitlab.lan:8443/a/b"
        );
        assert_eq!(
            without_credentials("https://github.com/team/app"),
            "https://github.com/team/app"
        );
        assert_eq!(
            without_credentials("ssh://git@host/a/b@c"),
            "ssh://host/a/b@c"
        );
        assert_eq!(
            without_credentials("git@github.com:team/app.git"),
            "git@github.com:team/app.git"
        );
    }

    fn git(dir: &Path, args: &[&str]) {
        let ok = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    }

    #[test]
    fn a_checkout_gives_source_and_revision_unless_given() {
        let dir = tempfile::tempdir().unwrap();
        let none = archfarm_protocol::image_meta::ImageMeta::default();
        assert!(index_annotations(dir.path(), &none, |_| None).is_empty());
        git(dir.path(), &["init", "-q"]);
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        git(dir.path(), &["add", "Dockerfile"]);
        git(dir.path(), &["commit", "-q", "-m", "one"]);
        git(
            dir.path(),
            &[
                "remote",
                "add",
                "origin",
                "https://u:tok@git.lan/team/app.git",
            ],
        );
        let got = index_annotations(dir.path(), &none, |_| None);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].starts_with(&format!("index:{REVISION}=")) && !got[0].ends_with("-dirty"));
        assert_eq!(
            got[1],
            format!("index:{SOURCE}=https://git.lan/team/app.git")
        );
        std::fs::write(dir.path().join("new"), "x").unwrap();
        let got = index_annotations(dir.path(), &none, |_| None);
        assert!(got[0].ends_with("-dirty"), "{got:?}");
        let mine = archfarm_protocol::image_meta::ImageMeta::parse(
            &[],
            &[format!("index:{SOURCE}=https://elsewhere")],
        )
        .unwrap();
        let got = index_annotations(dir.path(), &mine, |_| None);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(index_annotations(dir.path(), &none, |k| {
            (k == "BUILDX_GIT_INFO").then(|| "0".to_string())
        })
        .is_empty());
    }
}
