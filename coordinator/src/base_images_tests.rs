use super::*;

fn amd64() -> Vec<Platform> {
    vec![Platform::parse("linux/amd64").unwrap()]
}

fn names(dockerfile: &str, args: &[(&str, &str)], platforms: &[Platform]) -> Vec<String> {
    let args = args
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    base_images(dockerfile, &args, platforms)
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn short_names_resolve_as_docker_does_and_stages_and_scratch_are_skipped() {
    let df = "\
# syntax=docker/dockerfile:1
FROM --platform=$BUILDPLATFORM golang:1.22 AS Build
RUN go build
from team/tools AS tools
FROM scratch AS empty
FROM build AS again
FROM reg.example.com:5000/base/img@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
COPY --from=BUILD /out /app
COPY --from=0 /x /x
COPY --from=ghcr.io/acme/assets:2 /assets /assets
RUN --mount=type=cache,target=/c --mount=type=bind,from=tools,target=/t \\
    --mount=type=bind,from=quay.io/x/y:3,target=/y true
";
    assert_eq!(
        names(df, &[], &amd64()),
        [
            "docker.io/library/golang:1.22",
            "docker.io/team/tools",
            "reg.example.com:5000/base/img@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "ghcr.io/acme/assets:2",
            "quay.io/x/y:3",
        ]
    );
}

#[test]
fn global_args_expand_with_build_args_winning() {
    let df = "\
ARG REGISTRY=reg.lan:5000
ARG TAG=1 FLAVOUR=\"slim\"
ARG UNSET
FROM ${REGISTRY}/base:${TAG}-$FLAVOUR
ARG TAG=stage-scoped
FROM ${UNSET:-alpine}:${TAG}
FROM reg.lan:5000/x${UNSET:+-never}:1
";
    assert_eq!(
        names(df, &[], &amd64()),
        [
            "reg.lan:5000/base:1-slim",
            "docker.io/library/alpine:1",
            "reg.lan:5000/x:1",
        ]
    );
    assert_eq!(
        names(
            df,
            &[("TAG", "2"), ("UNSET", "busybox"), ("NOT_DECLARED", "x")],
            &amd64()
        ),
        [
            "reg.lan:5000/base:2-slim",
            "docker.io/library/busybox:2",
            "reg.lan:5000/x-never:1",
        ]
    );
}

#[test]
fn target_platform_args_expand_per_platform() {
    let df = "FROM reg.lan/base-${TARGETARCH}:1\nFROM reg.lan/os-$TARGETOS\n";
    let platforms = [
        Platform::parse("linux/amd64").unwrap(),
        Platform::parse("linux/arm64").unwrap(),
    ];
    assert_eq!(
        names(df, &[], &platforms),
        [
            "reg.lan/base-amd64:1",
            "reg.lan/os-linux",
            "reg.lan/base-arm64:1"
        ]
    );
}

#[test]
fn continuations_comments_and_heredocs_do_not_fool_it() {
    let df = "\
# escape=`
FROM `
  # a comment inside the continuation
  alpine:3
RUN <<EOF
FROM not-an-image:1
EOF
COPY <<-\"END\" /etc/x
FROM neither:2
  END
from  debian:12
";
    assert_eq!(
        names(df, &[], &amd64()),
        ["docker.io/library/alpine:3", "docker.io/library/debian:12"]
    );
}

#[test]
fn what_cannot_be_read_is_an_error_naming_the_line() {
    let args = BTreeMap::new();
    let e = base_images("FROM alpine\nFROM\n", &args, &amd64()).unwrap_err();
    assert_eq!(e.to_string(), "line 2: FROM names no image");
    let e = base_images("ARG B\nFROM $B\n", &args, &amd64()).unwrap_err();
    assert_eq!(e.line, 2);
    assert!(e.message.contains("expands to nothing"), "{e}");
    let e = base_images("FROM ${X\n", &args, &amd64()).unwrap_err();
    assert!(e.message.contains("not closed"), "{e}");
    let secret: BTreeMap<String, String> = [("S".to_string(), "Hunter2 x".to_string())].into();
    let e = base_images("ARG S\nFROM $S\n", &secret, &amd64()).unwrap_err();
    assert!(!e.to_string().contains("Hunter2"), "{e}");
    assert_eq!(
        base_images("RUN true\n", &args, &amd64()).unwrap(),
        Vec::<ImageRef>::new()
    );
}
