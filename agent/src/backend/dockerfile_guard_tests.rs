use super::*;

/// No context on disk: bind sources are not resolved.
fn nowhere() -> &'static Path {
    Path::new("/nonexistent/archfarm-guard-context")
}

fn refused(dockerfile: &str) -> Refusal {
    match check(dockerfile, nowhere()) {
        Err(r) => r,
        Ok(()) => panic!("not refused:\n{dockerfile}"),
    }
}

fn allowed(dockerfile: &str) {
    if let Err(r) = check(dockerfile, nowhere()) {
        panic!("refused: {r}\n{dockerfile}");
    }
}

const REPRODUCTION: &str = r#"FROM scratch AS base
COPY busybox /bin/busybox
RUN ["/bin/busybox","ln","-s","/","/rootlink"]
FROM scratch
COPY busybox /bin/busybox
RUN --mount=type=bind,from=base,source=/rootlink,target=/mnt ["/bin/busybox","ls","/mnt"]
"#;

#[test]
fn the_cve_2024_1753_reproduction_is_refused_naming_line_option_and_why() {
    let r = refused(REPRODUCTION);
    assert_eq!(r.line, 6);
    assert_eq!(
        r.to_string(),
        "Dockerfile line 6: RUN --mount=type=bind,from=base is refused: buildah 1.28 follows \
         symbolic links of a mount source outside the build (CVE-2024-1753); copy the files with \
         COPY --from=base instead"
    );
}

#[test]
fn instructions_in_any_case_and_onbuild() {
    for df in [
        "FROM x\nrun --mount=type=bind,from=base,target=/m ls",
        "FROM x\nRuN --mount=type=bind,from=base,target=/m ls",
        "FROM x\nONBUILD RUN --mount=type=bind,from=base,target=/m ls",
        "FROM x\nonbuild   run --mount=type=bind,from=base,target=/m ls",
        "FROM x\n   RUN\t--mount=type=bind,from=base,target=/m ls",
    ] {
        let r = refused(df);
        assert_eq!(r.line, 2, "{df}");
        assert!(r.reason.contains("CVE-2024-1753"), "{r}");
    }
}

#[test]
fn continuations_comments_and_the_escape_directive() {
    let r = refused(
        "FROM x\n\nRUN \\\n  # a comment in the middle\n\n  --mount=type=cache,target=/c \\\n  \
         --mount=type=bind,from=base,target=/m \\  \n  ls /m\n",
    );
    assert_eq!(r.line, 3);
    assert!(r.reason.contains("from=base"), "{r}");
    // The escape directive makes ` the continuation character.
    let r =
        refused("# escape=`\nFROM x\nRUN `\n  --mount=type=bind,from=base,target=/m `\n  dir\n");
    assert_eq!(r.line, 3);
    // Read with the other escape too: a misread directive cannot hide a mount.
    let r = refused("#escape=`\nFROM x\nRUN \\\n  --mount=type=bind,from=base,target=/m ls\n");
    assert_eq!(r.line, 3);
    let r = refused("# syntax=docker/dockerfile:1\n# escape=\\\nFROM x\nRUN `\n--mount=type=bind,from=b,target=/m ls\n");
    assert_eq!(r.line, 4);
    // CRLF line endings and a byte order mark.
    let r = refused("\u{feff}FROM x\r\nRUN \\\r\n --mount=type=bind,from=base,target=/m ls\r\n");
    assert_eq!(r.line, 2);
}

#[test]
fn several_mounts_any_order_and_quotes() {
    for df in [
        "FROM x\nRUN --mount=type=secret,id=a --mount=type=bind,from=base,target=/m ls",
        "FROM x\nRUN --mount=target=/m,from=base,type=bind ls",
        "FROM x\nRUN --mount=type=bind,from=base,target=/m",
        // No type is a bind mount.
        "FROM x\nRUN --mount=from=base,target=/m ls",
    ] {
        let r = refused(df);
        assert_eq!(r.line, 2, "{df}");
        assert!(r.reason.contains("CVE-2024-1753"), "{df}: {r}");
    }
    // Quotes, backslashes and variables in a flag word: buildah takes them out, or expands them,
    // before it reads the name, so they are refused whatever the name looks like here.
    for df in [
        "FROM x\nRUN --mount=type=\"bind\",fr\"om\"=base,target=/m ls",
        "FROM x\nARG M=mount\nRUN --${M}=type=bind,from=X,target=/x true",
        "FROM x\nRUN --\"mo'u'nt\"=type=bind,from=X,target=/x true",
        "FROM x\nRUN --mo\\unt=type=bind,from=X,target=/x true",
        "FROM x\nRUN --mount=\"type=bind,from=base,target=/m\" ls",
        "FROM x\nRUN --mount='type=cache,target=/m' ls",
    ] {
        let r = refused(df);
        assert!(r.reason.contains("not allowed in RUN flags"), "{df}: {r}");
    }
    // A blank buildah does not split on (U+3000) hides no second flag.
    let r = refused(
        "FROM x\nRUN --mount=type=tmpfs,target=/a\u{3000}b --mount=type=bind,from=X,target=/x true",
    );
    assert!(
        r.reason.contains("blank other than a space or a tab"),
        "{r}"
    );
    // Any other RUN flag is refused: buildah 1.28 has only --mount.
    let r = refused("FROM x\nRUN --network=none true");
    assert!(r.reason.contains("takes only --mount"), "{r}");
    // The flag name in another case is checked too (buildah refuses it anyway).
    assert!(refused("FROM x\nRUN --MOUNT=type=bind,from=b,target=/m ls")
        .reason
        .contains("CVE-2024-1753"));
    let r = refused("FROM x\nRUN --mount ls");
    assert!(r.reason.contains("without a value"), "{r}");
    // A flag starts with -- unquoted, as buildkit's parser has it: a quoted one is the command.
    allowed("FROM x\nRUN \"--mount=type=bind,from=base,target=/m\" ls");
    let r = refused("FROM x\nRUN --mount");
    assert!(r.reason.contains("without a value"), "{r}");
}

#[test]
fn heredoc_bodies_are_instructions_to_buildah_1_28_and_checked() {
    let r = refused("FROM x\nRUN <<EOF\nRUN --mount=type=bind,from=base,target=/m ls\nEOF\n");
    assert_eq!(r.line, 3);
}

#[test]
fn variables_in_mount_options_are_refused() {
    for df in [
        "FROM x\nARG S=base\nRUN --mount=type=bind,from=$S,target=/m ls",
        "FROM x\nARG T=bind\nRUN --mount=type=${T},target=/m ls",
        "FROM x\nARG C=x\nRUN --mount=type=cache,id=${C},target=/m ls",
    ] {
        let r = refused(df);
        assert_eq!(r.line, 3);
        assert!(r.reason.contains("expands build arguments"), "{r}");
    }
}

#[test]
fn cache_from_and_source_are_refused() {
    for opt in ["from=base", "source=/x", "src=/x"] {
        let r = refused(&format!(
            "FROM x\nRUN --mount=type=cache,target=/c,{opt} ls"
        ));
        assert!(r.reason.contains("CVE-2024-9675"), "{r}");
        assert!(
            r.reason
                .starts_with(&format!("RUN --mount=type=cache,{opt} is refused")),
            "{r}"
        );
    }
}

#[test]
fn caches_may_not_nest_or_leave_the_cache_directory() {
    let r = refused(
        "FROM x\nRUN --mount=type=cache,target=/c ln -s / /c/x\n\
         FROM y\nRUN --mount=type=cache,target=/c/x/etc ls\n",
    );
    assert_eq!(r.line, 4);
    assert!(
        r.reason.contains("line 2") && r.reason.contains("CVE-2024-9675"),
        "{r}"
    );
    let r = refused("FROM x\nRUN --mount=type=cache,id=a/b,target=/x ls\nRUN --mount=type=cache,id=a,target=/y ls");
    assert_eq!(r.line, 3);
    for key in [
        "id=../../..",
        "id=a/../../b",
        "id=.",
        "id=buildah-cache-lockfiles/x",
        "target=/",
        "target=/buildah-cache-lockfiles",
    ] {
        let df = format!("FROM x\nRUN --mount=type=cache,target=/t,{key} ls");
        let df = df.replace(",target=/t,target=", ",target=");
        let r = refused(&df);
        assert!(r.reason.contains("cache"), "{key}: {r}");
    }
    let r = refused("FROM x\nRUN --mount=type=cache,target=rel ls");
    assert!(r.reason.contains("relative target"), "{r}");
    // The same cache twice, or side by side, is fine.
    allowed(
        "FROM x\nRUN --mount=type=cache,target=/root/.cache ls\n\
         RUN --mount=type=cache,target=/root/.cache ls\n\
         RUN --mount=type=cache,id=root/.cache,target=/other ls\n\
         RUN --mount=type=cache,target=/root/.cachex ls\n\
         RUN --mount=type=cache,id=go,target=rel ls\n",
    );
}

#[test]
fn propagation_relabel_and_writable_binds_are_refused() {
    for (m, why) in [
        (
            "type=bind,target=/m,bind-propagation=shared",
            "CVE-2024-9407",
        ),
        (
            "type=cache,target=/m,bind-propagation=rshared",
            "CVE-2024-9407",
        ),
        ("type=bind,target=/m,rshared", "CVE-2024-9407"),
        ("type=cache,target=/m,private", "CVE-2024-9407"),
        ("type=bind,target=/m,slave", "CVE-2024-9407"),
        ("type=bind,target=/m,z", "relabels"),
        ("type=cache,target=/m,Z", "relabels"),
        ("type=bind,target=/m,U", "owner"),
        ("type=bind,target=/m,rw", "CVE-2024-11218"),
        ("type=bind,readwrite,target=/m", "CVE-2024-11218"),
    ] {
        let r = refused(&format!("FROM x\nRUN --mount={m} ls"));
        assert!(r.reason.contains(why), "{m}: {r}");
    }
}

#[test]
fn unknown_types_and_options_are_refused() {
    for (m, why) in [
        ("type=volume,target=/m", "only bind"),
        ("type=ssh", "SSH agent"),
        ("type=Bind,target=/m", "only bind"),
        ("type=tmpfs,target=/t,foo=1", "'foo' is not an option"),
        (
            "type=secret,id=a,source=/etc/shadow",
            "'source' is not an option",
        ),
        ("Type=bind,from=x,target=/m", "'Type' is not an option"),
        // A space ends the flag: what follows is the command, and the trailing comma is refused.
        ("type=bind, from=x,target=/m", "'' is not an option"),
        ("type=bind,target=/m,", "'' is not an option"),
        ("type=bind,type=cache,target=/m", "more than one type"),
        ("type=cache,target", "needs a value"),
        ("type=bind,target=/m,source=a\\,b", "backslashes"),
        ("\"type=bind,target=/m,source=a\\\\b\"", "backslashes"),
    ] {
        let r = refused(&format!("FROM x\nRUN --mount={m} ls"));
        assert!(r.reason.contains(why), "{m}: {r}");
    }
}

#[test]
fn ordinary_dockerfiles_pass() {
    allowed(REPRODUCTION.split("RUN --mount").next().unwrap());
    allowed(
        "# syntax=docker/dockerfile:1.4\nFROM debian:12 AS build\n\
         RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \\\n\
             --mount=type=cache,target=/var/lib/apt,sharing=locked \\\n\
             apt-get update && apt-get install -y gcc\n\
         RUN --mount=type=cache,id=pip,target=/root/.cache/pip,mode=0755,uid=0,gid=0 pip install x\n\
         RUN --mount=type=secret,id=token,target=/run/secrets/token,required=true,mode=0400,uid=0,gid=0 cat /run/secrets/token\n\
         RUN --mount=type=secret,id=npmrc,dst=/root/.npmrc,required npm ci\n\
         RUN --mount=type=tmpfs,target=/tmp,size=64m ls\n\
         RUN --mount=type=tmpfs,tmpfs-size=1000,tmpfs-mode=1777,target=/scratch ls\n\
         RUN --mount=type=bind,target=/src make -C /src\n\
         RUN --mount=type=bind,source=go.sum,target=/go.sum,ro go mod download\n\
         RUN --mount=source=src,target=/src,readonly,nosuid ls\n\
         RUN --mount=type=cache,target=/c,ro,nosuid,nodev,noexec ls\n\
         RUN echo --mount=type=bind,from=base,target=/m\n\
         RUN [\"sh\", \"-c\", \"echo --mount=type=bind,from=x\"]\n\
         RUN -- --mount=type=bind,from=base,target=/m\n\
         COPY --from=build /out /out\n\
         ONBUILD RUN --mount=type=secret,id=a ls\n",
    );
}

#[test]
fn bind_sources_may_not_leave_the_context_through_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path();
    std::fs::create_dir(ctx.join("src")).unwrap();
    std::fs::write(ctx.join("src/a"), "a").unwrap();
    std::os::unix::fs::symlink("/", ctx.join("rootlink")).unwrap();
    std::os::unix::fs::symlink("src", ctx.join("inner")).unwrap();
    std::os::unix::fs::symlink("../..", ctx.join("src/up")).unwrap();
    std::os::unix::fs::symlink("/nowhere-at-all", ctx.join("dangling")).unwrap();
    for source in [
        "rootlink",
        "/rootlink/etc",
        "src/up",
        "src/../rootlink",
        "dangling",
    ] {
        let df = format!("FROM x\nRUN --mount=type=bind,source={source},target=/mnt ls");
        let r = check(&df, ctx).unwrap_err();
        assert!(
            r.reason.contains("leads out of the build context"),
            "{source}: {r}"
        );
    }
    for source in ["src", "inner", "inner/a", "../../src", "", "missing/file"] {
        let df = format!("FROM x\nRUN --mount=type=bind,source={source},target=/mnt ls");
        assert!(check(&df, ctx).is_ok(), "{source}");
    }
    assert!(check("FROM x\nRUN --mount=type=bind,target=/mnt ls", ctx).is_ok());
}

#[test]
fn cache_keys_are_the_cleaned_ids_or_targets_once_each() {
    let keys = cache_keys(
        "FROM scratch\n\
         RUN --mount=type=cache,id=./go//mod/,target=/x true\n\
         RUN --mount=type=cache,target=/var/cache/apt --mount=type=cache,id=go/mod,target=/y true\n\
         RUN --mount=type=tmpfs,target=/t true\n",
        nowhere(),
    )
    .unwrap();
    assert_eq!(keys, ["go/mod", "var/cache/apt"]);
    assert!(cache_keys("FROM scratch\nRUN --mount=type=cache,id=a,target=/a --mount=type=cache,id=a/b,target=/b true\n", nowhere()).is_err());
}
