//! `docker buildx build`'s flags that `archfarm build` does not take, and what to do instead: a
//! pipeline moved from buildx gets, next to clap's "unexpected argument", the reason and the
//! way out rather than a bare refusal. The README's table of buildx flags is this list plus the
//! flags `archfarm build` takes.

/// The answer for a buildx flag archfarm does not take (`--flag`, `--flag=value` or `-x`).
pub fn advice(arg: &str) -> Option<&'static str> {
    let flag = arg.split('=').next().unwrap_or(arg);
    let answer = match flag {
        "--builder" => "the farm is the builder: name it with --coordinator (ARCHFARM_COORDINATOR)",
        "--add-host" => {
            "not supported: steps resolve names as the building agent's network does; run them \
             with --network host on agents whose hosts file has the name"
        }
        "--allow" => {
            "entitlements are not granted: `network.host` is --network host (where an agent \
             allows it); `security.insecure` is never allowed on a shared farm"
        }
        "--sbom" => {
            "SBOMs are not made yet; provenance is (--provenance, --attest type=provenance)"
        }
        "--build-context" => {
            "additional build contexts are not supported: copy what the build needs into the \
             context directory"
        }
        "--call" | "--check" => "not supported: archfarm always builds",
        "--cgroup-parent" | "--shm-size" | "--ulimit" | "--memory" | "--cpu-quota" => {
            "each build's resources are set by the agent's limits (--memory-limit, --cpu-limit, \
             --pids-limit, --disk-limit on archfarm-agent)"
        }
        "--no-cache-filter" => "not supported: --no-cache runs every step again",
        "--ssh" => "SSH agent forwarding is not supported: use --secret for keys and tokens",
        "--isolation" | "--security-opt" => {
            "every step runs in the agent's sandbox; its isolation is not per job"
        }
        "--squash" => "not supported: the image keeps one layer per step",
        _ => return None,
    };
    Some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildx_flags_get_a_way_out_and_others_none() {
        assert!(advice("--builder=farm").unwrap().contains("--coordinator"));
        assert!(advice("--ssh").unwrap().contains("--secret"));
        assert!(advice("--ulimit").unwrap().contains("--memory-limit"));
        assert_eq!(advice("--nonsense"), None);
        assert_eq!(advice("--push"), None);
    }
}
