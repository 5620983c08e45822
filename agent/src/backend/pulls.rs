//! How buildah pulls a build's base images: from a registries configuration of the build's own
//! (`--registries-conf`, an empty `--registries-conf-dir`, a private `--short-name-alias-conf`),
//! so the host's `/etc/containers` files (Debian's short-name aliases to quay.io and the like)
//! do not change what a Dockerfile means. Short names resolve as Docker resolves them
//! (`golang:1.22` is `docker.io/library/golang:1.22`, never a prompt); the farm's mirrors and its
//! plain-HTTP registries, as the lease names them, apply.

use std::ffi::OsString;
use std::io;
use std::path::Path;

use archfarm_protocol::pull::PullSettings;
use archfarm_protocol::RegistryCredential;

use super::BuildSpec;

/// The directory under the build's directory that holds the files; removed with it.
const DIR: &str = "pulls";

/// The `registries.conf` text for `settings`. Entries whose names hold a control character are
/// left out (they cannot name a registry, and must not break the file).
pub fn registries_conf(settings: &PullSettings) -> String {
    // One entry per prefix: containers/image refuses a prefix defined twice.
    struct Entry {
        prefix: String,
        insecure: bool,
        mirrors: Vec<(String, bool)>,
    }
    let mut entries: Vec<Entry> = Vec::new();
    fn entry<'a>(entries: &'a mut Vec<Entry>, prefix: &str) -> &'a mut Entry {
        match entries.iter().position(|e| e.prefix == prefix) {
            Some(i) => &mut entries[i],
            None => {
                entries.push(Entry {
                    prefix: prefix.to_string(),
                    insecure: false,
                    mirrors: Vec::new(),
                });
                entries.last_mut().expect("just pushed")
            }
        }
    }
    let ok = |s: &str| !s.is_empty() && !s.chars().any(char::is_control);
    for mirror in &settings.mirrors {
        if ok(&mirror.prefix) && ok(&mirror.location) {
            entry(&mut entries, &mirror.prefix)
                .mirrors
                .push((mirror.location.clone(), mirror.insecure));
        }
    }
    for registry in settings.insecure_registries.iter().filter(|r| ok(r)) {
        entry(&mut entries, registry).insecure = true;
    }
    let mut out = String::from(
        "# Written by archfarm for one build: Docker's short names, the farm's mirrors and\n\
         # plain-HTTP registries.\n\
         unqualified-search-registries = [\"docker.io\"]\n\
         short-name-mode = \"disabled\"\n",
    );
    for e in entries {
        out.push_str(&format!(
            "\n[[registry]]\nprefix = {}\nlocation = {}\ninsecure = {}\n",
            quote(&e.prefix),
            quote(&e.prefix),
            e.insecure
        ));
        for (location, insecure) in e.mirrors {
            out.push_str(&format!(
                "\n[[registry.mirror]]\nlocation = {}\ninsecure = {insecure}\n",
                quote(&location)
            ));
        }
    }
    out
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Writes the build's registries configuration under `build_dir` and returns buildah's global
/// options that use it.
pub fn write(build_dir: &Path, settings: &PullSettings) -> io::Result<Vec<OsString>> {
    let dir = build_dir.join(DIR);
    let drop_ins = dir.join("registries.conf.d");
    std::fs::create_dir_all(&drop_ins)?;
    let conf = dir.join("registries.conf");
    std::fs::write(&conf, registries_conf(settings))?;
    // Where buildah would record aliases; nothing is read from it in "disabled" mode.
    let aliases = dir.join("shortnames.conf");
    std::fs::write(&aliases, "")?;
    Ok(vec![
        "--registries-conf".into(),
        conf.into_os_string(),
        "--registries-conf-dir".into(),
        drop_ins.into_os_string(),
        "--short-name-alias-conf".into(),
        aliases.into_os_string(),
    ])
}

/// The credentials for the build's auth file (read by buildah only: archfarm pushes with the
/// lease's credential itself), keyed as it keys them; the first entry for a key wins. The push
/// registry's comes first, except that a bearer token (a scoped push token, which buildah 1.28
/// ignores in an auth file) yields to a password the lease carries for the same registry, so that
/// base images and caches there are still read and written.
pub fn auth_entries(spec: &BuildSpec) -> Vec<(&str, &RegistryCredential)> {
    let pulls = spec
        .pull
        .credentials
        .iter()
        .map(|c| (c.scope.as_str(), &c.credential));
    let push = spec
        .registry_auth
        .iter()
        .map(|c| (spec.registry.as_str(), c));
    let token_yields = matches!(
        spec.registry_auth,
        Some(RegistryCredential::RegistryToken(_))
    ) && spec
        .pull
        .credentials
        .iter()
        .any(|c| c.scope == spec.registry);
    if token_yields {
        pulls.chain(push).collect()
    } else {
        push.chain(pulls).collect()
    }
}

/// One line for the build's log on what applies to its pulls, or None when nothing does
/// beyond Docker's short names. Names scopes of credentials, never a secret.
pub fn summary(settings: &PullSettings) -> Option<String> {
    let mut parts = Vec::new();
    if !settings.mirrors.is_empty() {
        let m: Vec<String> = settings.mirrors.iter().map(ToString::to_string).collect();
        parts.push(format!("mirrors {}", m.join(", ")));
    }
    if !settings.insecure_registries.is_empty() {
        parts.push(format!(
            "plain HTTP for {}",
            settings.insecure_registries.join(", ")
        ));
    }
    if !settings.credentials.is_empty() {
        let c: Vec<&str> = settings
            .credentials
            .iter()
            .map(|c| c.scope.as_str())
            .collect();
        parts.push(format!("pull credentials for {}", c.join(", ")));
    }
    (!parts.is_empty()).then(|| format!("base image pulls: {}", parts.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use archfarm_protocol::pull::{PullCredential, RegistryMirror};
    use archfarm_protocol::Secret;

    fn settings() -> PullSettings {
        PullSettings {
            insecure_registries: vec!["127.0.0.1:5000".into(), "docker.io".into(), "bad\n".into()],
            mirrors: vec![
                RegistryMirror {
                    prefix: "docker.io".into(),
                    location: "127.0.0.1:5000".into(),
                    insecure: true,
                },
                RegistryMirror {
                    prefix: "docker.io".into(),
                    location: "harbor.lan/hub\"x".into(),
                    insecure: false,
                },
            ],
            credentials: vec![PullCredential {
                scope: "reg.lan/team/base".into(),
                credential: RegistryCredential::RegistryToken(Secret::new("s3cret")),
            }],
        }
    }

    #[test]
    fn registries_conf_has_docker_short_names_mirrors_and_plain_http() {
        assert_eq!(
            registries_conf(&settings()),
            "# Written by archfarm for one build: Docker's short names, the farm's mirrors and\n\
             # plain-HTTP registries.\n\
             unqualified-search-registries = [\"docker.io\"]\n\
             short-name-mode = \"disabled\"\n\
             \n[[registry]]\nprefix = \"docker.io\"\nlocation = \"docker.io\"\ninsecure = true\n\
             \n[[registry.mirror]]\nlocation = \"127.0.0.1:5000\"\ninsecure = true\n\
             \n[[registry.mirror]]\nlocation = \"harbor.lan/hub\\\"x\"\ninsecure = false\n\
             \n[[registry]]\nprefix = \"127.0.0.1:5000\"\nlocation = \"127.0.0.1:5000\"\ninsecure = true\n"
        );
        let plain = registries_conf(&PullSettings::default());
        assert!(
            plain.ends_with("short-name-mode = \"disabled\"\n"),
            "{plain}"
        );
    }

    #[test]
    fn files_are_written_and_named_to_buildah() {
        let dir = tempfile::tempdir().unwrap();
        let args = write(dir.path(), &settings()).unwrap();
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let root = dir.path().join("pulls").display().to_string();
        assert_eq!(
            args.join(" "),
            format!(
                "--registries-conf {root}/registries.conf --registries-conf-dir \
                 {root}/registries.conf.d --short-name-alias-conf {root}/shortnames.conf"
            )
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("pulls/registries.conf.d"))
                .unwrap()
                .count(),
            0
        );
        let conf = std::fs::read_to_string(dir.path().join("pulls/registries.conf")).unwrap();
        assert!(conf.contains("unqualified-search-registries"), "{conf}");
        let line = summary(&settings()).unwrap();
        assert!(
            line.contains("pull credentials for reg.lan/team/base") && !line.contains("s3cret"),
            "{line}"
        );
        assert_eq!(summary(&PullSettings::default()), None);
    }

    #[test]
    fn a_password_for_the_push_registry_wins_over_a_scoped_token_in_the_auth_file() {
        let password = RegistryCredential::Basic {
            username: "farm".into(),
            password: Secret::new("pw"),
        };
        let mut spec = BuildSpec {
            build_id: uuid::Uuid::nil(),
            platform: "linux/amd64".parse().unwrap(),
            build_dir: "/w/b".into(),
            context_dir: "/w/b/context".into(),
            dockerfile: "Dockerfile".into(),
            build_args: Default::default(),
            target: None,
            registry: "reg.lan".into(),
            repository: "team/app".into(),
            insecure_registry: false,
            registry_auth: Some(RegistryCredential::RegistryToken(Secret::new("tok"))),
            refresh_auth: None,
            secrets: vec![],
            network: archfarm_protocol::Network::Host,
            pull: PullSettings {
                credentials: vec![PullCredential {
                    scope: "reg.lan".into(),
                    credential: password.clone(),
                }],
                ..Default::default()
            },
            cache: Default::default(),
            image_meta: Default::default(),
            allow_foreign_binary: Vec::new(),
            smoke_test: None,
        };
        // buildah ignores the token: the password for the same registry comes first.
        let entries = auth_entries(&spec);
        assert_eq!(entries[0], ("reg.lan", &password));
        // A password for the push registry stays first, as before.
        spec.registry_auth = Some(password.clone());
        spec.pull.credentials[0].credential =
            RegistryCredential::RegistryToken(Secret::new("other"));
        assert_eq!(auth_entries(&spec)[0], ("reg.lan", &password));
    }
}
