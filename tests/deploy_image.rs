//! `deploy/Dockerfile`, played without a registry (none is reachable from CI): the
//! build stage's commands run as written on a copy of exactly what the stage copies
//! (with `PROFILE=dev`, a build argument the Dockerfile offers, to save CI time), and
//! each final stage's filesystem is assembled from its `COPY` lines over a stand-in
//! for its base image (the C runtime the binary links, plus, for Istio's proxyv2, the
//! files pilot-agent's image carries). Then the binary runs from that filesystem as the
//! image would run it: `chroot`, as uid 1337 — the minimal image's entrypoint serving
//! its embedded default in a network namespace, and Istio's image's
//! `/usr/local/bin/envoy` validating Istio's rendered bootstrap under pilot-agent's
//! command line.
mod common;

use std::{
    collections::HashMap,
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{istio::*, netns::Netns, *};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// One `FROM … AS name` stage and its instructions (keyword, arguments).
#[derive(Debug)]
struct Stage {
    name: String,
    from: String,
    steps: Vec<(String, String)>,
}

/// The Dockerfile's global `ARG`s (with their defaults) and stages, continuation lines
/// joined and comments dropped.
fn parse(text: &str) -> (HashMap<String, String>, Vec<Stage>) {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        lines.push(std::mem::take(&mut cur));
    }
    let mut globals = HashMap::new();
    let mut stages: Vec<Stage> = Vec::new();
    for line in lines.into_iter().filter(|l| !l.is_empty()) {
        let (kw, args) = line.split_once(' ').unwrap_or((&line, ""));
        let (kw, args) = (kw.to_ascii_uppercase(), args.trim().to_owned());
        match (kw.as_str(), stages.last_mut()) {
            ("FROM", _) => {
                let (from, name) = args.split_once(" AS ").expect("every stage is named");
                stages.push(Stage {
                    name: name.trim().into(),
                    from: expand(from.trim(), &globals),
                    steps: Vec::new(),
                });
            }
            ("ARG", None) => {
                let (k, v) = args.split_once('=').unwrap_or((&args, ""));
                globals.insert(k.into(), v.into());
            }
            (_, Some(stage)) => stage.steps.push((kw, args)),
            (other, None) => panic!("{other} before the first FROM"),
        }
    }
    (globals, stages)
}

/// `${NAME}` replaced from `vars`.
fn expand(s: &str, vars: &HashMap<String, String>) -> String {
    let mut out = s.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("${{{k}}}"), v);
    }
    assert!(!out.contains("${"), "unexpanded variable in {out}");
    out
}

/// Docker's `COPY src… dest` for one source: a directory's contents go into `dest`, a
/// file to `dest` (or into it when it ends with `/` or names a directory).
fn copy_into(src: &Path, dest: &Path) {
    if src.is_dir() {
        std::fs::create_dir_all(dest).unwrap();
        for e in std::fs::read_dir(src).unwrap() {
            let e = e.unwrap();
            copy_into(&e.path(), &dest.join(e.file_name()));
        }
        return;
    }
    let dest = if dest.is_dir() {
        dest.join(src.file_name().unwrap())
    } else {
        dest.to_owned()
    };
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(src, &dest)
        .unwrap_or_else(|e| panic!("{} -> {}: {e}", src.display(), dest.display()));
}

/// `path` inside a stage's filesystem at `root`, relative paths from `workdir`.
fn inside(root: &Path, workdir: &str, path: &str) -> PathBuf {
    let abs = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{workdir}/{path}")
    };
    root.join(abs.trim_start_matches('/'))
}

/// Plays one stage's `WORKDIR`, `COPY` and `RUN` lines into `root` (`COPY --from`
/// reads from the stages already played). Returns the stage's `USER` and `ENTRYPOINT`.
fn play(
    stage: &Stage,
    root: &Path,
    built: &HashMap<String, PathBuf>,
    args: &HashMap<&str, String>,
) -> (Option<String>, Option<Vec<String>>) {
    let mut workdir = "/".to_owned();
    let mut vars: HashMap<String, String> = HashMap::new();
    let (mut user, mut entrypoint) = (None, None);
    for (kw, line) in &stage.steps {
        match kw.as_str() {
            "ARG" => {
                let (k, default) = line.split_once('=').unwrap_or((line, ""));
                let v = args.get(k).cloned().unwrap_or_else(|| default.to_owned());
                vars.insert(k.to_owned(), v);
            }
            "WORKDIR" => {
                workdir = line.clone();
                std::fs::create_dir_all(inside(root, "/", &workdir)).unwrap();
            }
            "COPY" => {
                let mut parts: Vec<&str> = line.split_whitespace().collect();
                let from = parts
                    .first()
                    .and_then(|p| p.strip_prefix("--from="))
                    .map(|s| built[s].clone());
                if from.is_some() {
                    parts.remove(0);
                }
                let dest = inside(root, &workdir, parts.pop().unwrap());
                if parts.len() > 1 || line.ends_with('/') {
                    std::fs::create_dir_all(&dest).unwrap();
                }
                for src in parts {
                    let src = match &from {
                        Some(stage_root) => stage_root.join(src.trim_start_matches('/')),
                        None => Path::new(REPO).join(src),
                    };
                    assert!(src.exists(), "COPY source {} is missing", src.display());
                    copy_into(&src, &dest);
                }
            }
            "RUN" => {
                // Absolute paths name the stage's filesystem.
                let cmd = line
                    .split(' ')
                    .map(|w| match w.strip_prefix('/') {
                        Some(rest) => root.join(rest).display().to_string(),
                        None => w.to_owned(),
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
                let out = Command::new("sh")
                    .args(["-c", &cmd])
                    .current_dir(inside(root, "/", &workdir))
                    .envs(&vars)
                    // The toolchain stands in for the rust image; dependencies come from
                    // the local registry cache, built once into a directory of their own.
                    .env(
                        "CARGO_TARGET_DIR",
                        Path::new(REPO).join("target/deploy-image"),
                    )
                    .env("CARGO_NET_OFFLINE", "true")
                    // Kept small: nothing here is debugged, and CI disks are finite.
                    .env("CARGO_INCREMENTAL", "0")
                    .env("CARGO_PROFILE_DEV_DEBUG", "0")
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "RUN {line} failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            "USER" => user = Some(line.clone()),
            "ENTRYPOINT" => entrypoint = Some(serde_json::from_str(line).expect("exec form")),
            "EXPOSE" | "ENV" | "LABEL" => {}
            other => panic!("the Dockerfile uses {other}, which this test does not play"),
        }
    }
    (user, entrypoint)
}

/// A stand-in for a base image that carries the C runtime: the shared objects `binary`
/// loads, at their paths.
fn c_runtime(root: &Path, binary: &Path) {
    let out = Command::new("ldd").arg(binary).output().expect("ldd");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        if let Some(p) = path {
            let real = std::fs::canonicalize(&p).unwrap();
            let dest = root.join(p.strip_prefix("/").unwrap());
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(real, dest).unwrap();
        }
    }
}

/// The newest glibc symbol version `binary` needs (`GLIBC_2.x` → x).
fn glibc_needed(binary: &Path) -> u32 {
    let bytes = std::fs::read(binary).unwrap();
    let needle = b"GLIBC_2.";
    bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .filter_map(|(i, _)| {
            let digits: String = bytes[i + needle.len()..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .map(|b| *b as char)
                .collect();
            digits.parse().ok()
        })
        .max()
        .unwrap_or(0)
}

fn chroot(root: &Path, user: &str, argv: &[&str]) -> Command {
    open_root(root);
    let mut c = Command::new("chroot");
    c.arg(format!("--userspec={user}")).arg(root).args(argv);
    c.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    c
}

/// An image's `/` is world-readable (the temporary directory it sits in is not).
fn open_root(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The `--version` line Envoy prints and tools parse.
fn assert_envoy_version(out: &std::process::Output, sha: &str) {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "--version failed: {text}");
    assert!(
        text.contains(&format!(" version: {sha}/")) && text.contains("/Clean/RELEASE/"),
        "--version: {text}"
    );
}

fn head_sha() -> String {
    let out = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(REPO)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    out.filter(|s| s.len() == 40)
        .unwrap_or_else(|| "1".repeat(40))
}

#[test]
fn dockerfile_stages_assemble_into_working_images() {
    let root_ok = require(
        "root (chroot, network namespaces) for the image layout test",
        netns::available(),
    );
    if !root_ok || !goldens_present() {
        return;
    }
    let text = std::fs::read_to_string(Path::new(REPO).join("deploy/Dockerfile")).unwrap();
    let (globals, stages) = parse(&text);
    let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["build", "pilotfish", "istio-proxyv2"]);
    assert!(stages[0].from.contains("-bullseye"), "{}", stages[0].from);
    assert_eq!(
        stages[2].from,
        format!("docker.io/istio/proxyv2:{}", globals["ISTIO_VERSION"])
    );

    let tmp = tempfile::tempdir().unwrap();
    let sha = head_sha();
    let args = HashMap::from([("PROFILE", "dev".to_owned()), ("GIT_SHA", sha.clone())]);
    let mut built = HashMap::new();
    let build_root = tmp.path().join("build");
    play(&stages[0], &build_root, &built, &args);
    built.insert("build".to_owned(), build_root.clone());

    // The minimal image: its entrypoint, as uid 1337, runs the main job.
    let image = tmp.path().join("pilotfish");
    let (user, entrypoint) = play(&stages[1], &image, &built, &args);
    let (user, entrypoint) = (user.unwrap(), entrypoint.unwrap());
    assert_eq!(user, "1337:1337");
    let binary = image.join(entrypoint[0].trim_start_matches('/'));
    c_runtime(&image, &binary);
    // Runs on Ubuntu 22.04's glibc (2.35), the oldest base of Istio's 1.2x images,
    // even built on this machine (the image builds on Debian 11's 2.31).
    assert!(
        glibc_needed(&binary) <= 35,
        "needs GLIBC_2.{}",
        glibc_needed(&binary)
    );
    let argv: Vec<&str> = entrypoint.iter().map(String::as_str).collect();
    let version = chroot(&image, &user, &[argv.as_slice(), &["--version"]].concat())
        .output()
        .unwrap();
    assert_envoy_version(&version, &sha);
    let ns = Netns::create("pf-image");
    open_root(&image);
    let mut proxy = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "chroot",
            &format!("--userspec={user}"),
        ])
        .arg(&image)
        .args(&argv)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ready = ns
        .run(|| {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let answer = std::net::TcpStream::connect("127.0.0.1:15021")
                    .ok()
                    .and_then(|mut s| {
                        s.write_all(
                            b"GET /healthz/ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
                        )
                        .ok()?;
                        let mut out = String::new();
                        s.read_to_string(&mut out).ok()?;
                        Some(out)
                    });
                match answer {
                    Some(a) if a.starts_with("HTTP/1.1 200") => return a,
                    _ if Instant::now() > deadline => return answer.unwrap_or_default(),
                    _ => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        })
        .join()
        .unwrap();
    let _ = proxy.kill();
    let out = proxy.wait_with_output().unwrap();
    assert!(
        ready.starts_with("HTTP/1.1 200"),
        "the image's entrypoint did not get ready: {ready:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Istio's proxy image with pilotfish as its envoy: pilot-agent stays the
    // entrypoint, and what it starts validates its own rendered bootstrap.
    let proxyv2 = tmp.path().join("istio-proxyv2");
    for (path, what) in [
        ("usr/local/bin/pilot-agent", "pilot-agent"),
        ("var/lib/istio/envoy/envoy_bootstrap_tmpl.json", "{}"),
        ("usr/local/bin/envoy", "Envoy, replaced below"),
    ] {
        let p = proxyv2.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, what).unwrap();
    }
    let (user, entrypoint) = play(&stages[2], &proxyv2, &built, &args);
    assert_eq!(
        (user, entrypoint),
        (None, None),
        "pilot-agent must stay the entrypoint"
    );
    let envoy = proxyv2.join("usr/local/bin/envoy");
    assert_eq!(
        std::fs::read(&envoy).unwrap(),
        std::fs::read(&binary).unwrap()
    );
    c_runtime(&proxyv2, &envoy);
    let rendered = proxyv2.join("etc/istio/proxy/envoy-rev.json");
    std::fs::create_dir_all(rendered.parent().unwrap()).unwrap();
    std::fs::write(&rendered, golden("bootstrap-default-golden-1.30.3.json")).unwrap();
    let version = chroot(
        &proxyv2,
        "1337:1337",
        &["/usr/local/bin/envoy", "--version"],
    )
    .output()
    .unwrap();
    assert_envoy_version(&version, &sha);
    // pilot-agent's working directory is `/` and its `-c` path relative.
    let validated = chroot(
        &proxyv2,
        "1337:1337",
        &[
            &[
                "/usr/local/bin/envoy",
                "-c",
                "etc/istio/proxy/envoy-rev.json",
            ],
            AGENT_FLAGS,
            &["--mode", "validate"],
        ]
        .concat(),
    )
    .output()
    .unwrap();
    assert!(
        validated.status.success(),
        "{}{}",
        String::from_utf8_lossy(&validated.stdout),
        String::from_utf8_lossy(&validated.stderr)
    );
}

/// The Istio recipes in `deploy/istio/` are well-formed and agree: one image reference,
/// the keys Istio reads (`revision`, `global.proxy.image`, the injector's `templates`,
/// the `sidecar.istio.io/proxyImage` annotation), an image name with a `/` (Istio's
/// injector uses such a value as is).
#[test]
fn istio_recipes_name_one_image_where_istio_reads_it() {
    let read = |f: &str| -> serde_yaml::Value {
        let p = Path::new(REPO).join("deploy/istio").join(f);
        serde_yaml::from_str(&std::fs::read_to_string(&p).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let values = read("values-pilotfish.yaml");
    assert_eq!(values["revision"].as_str(), Some("pilotfish"));
    let image = values["global"]["proxy"]["image"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(image.contains('/') && image.contains(':'), "{image}");

    let template = read("injection-template.yaml");
    let patch: serde_yaml::Value = serde_yaml::from_str(
        template["sidecarInjectorWebhook"]["templates"]["pilotfish"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let container = &patch["spec"]["containers"][0];
    assert_eq!(container["name"].as_str(), Some("istio-proxy"));
    assert_eq!(container["image"].as_str(), Some(image.as_str()));

    let deployment = read("workload-annotation.yaml");
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        annotations["sidecar.istio.io/proxyImage"].as_str(),
        Some(image.as_str())
    );
}
