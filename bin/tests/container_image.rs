//! The container images (`docker/*.Dockerfile`) and the one-organisation compose file, checked
//! the way they are used: the runtime stage runs as a non-root user with the status port as
//! HEALTHCHECK, every setting they pass is one the binary reads, and the binaries need no
//! library beyond what the distroless "cc" runtime holds. Where a Docker engine runs and its
//! base images are at hand (stored or pullable), the images are built; where the compose
//! plugin is installed, the compose file is validated. A part that cannot run says it was
//! skipped and why.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One binary's image: its Dockerfile (relative to the workspace, as the compose file and
/// `docker build -f` name it), its service in the compose file, the
/// binary it runs and the tag a build here gives it.
struct Image {
    dockerfile: &'static str,
    service: &'static str,
    binary_name: &'static str,
    binary: &'static str,
    tag: &'static str,
}

const IMAGES: [Image; 2] = [
    Image {
        dockerfile: "docker/fhir-server.Dockerfile",
        service: "fhir",
        binary_name: "dsf-fhir-server",
        binary: env!("CARGO_BIN_EXE_dsf-fhir-server"),
        tag: "dsf-rs/fhir-server:test",
    },
    Image {
        dockerfile: "docker/bpe.Dockerfile",
        service: "bpe",
        binary_name: "dsf-bpe",
        binary: env!("CARGO_BIN_EXE_dsf-bpe"),
        tag: "dsf-rs/bpe:test",
    },
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_owned()
}

/// The `[env: NAME=…]` names a binary's `--help` lists: every setting it reads.
fn settings_of(binary: &str) -> BTreeSet<String> {
    let output = Command::new(binary)
        .arg("--help")
        .output()
        .expect("--help runs");
    let help = String::from_utf8_lossy(&output.stdout).into_owned();
    help.split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
        .map(str::to_owned)
        .collect()
}

/// The instructions of a Dockerfile's last stage (the runtime image), continuation lines
/// joined.
fn runtime_stage(dockerfile: &str) -> Vec<String> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                joined.push(std::mem::take(&mut current));
            }
        }
    }
    let last_from = joined
        .iter()
        .rposition(|i| i.starts_with("FROM "))
        .expect("a FROM");
    joined.split_off(last_from)
}

/// `NAME=value` pairs of the stage's ENV instructions.
fn env_names(stage: &[String]) -> Vec<String> {
    stage
        .iter()
        .filter_map(|i| i.strip_prefix("ENV "))
        .flat_map(|pairs| {
            pairs
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter_map(|pair| pair.split_once('=').map(|(name, _)| name.to_owned()))
        .collect()
}

fn check_dockerfile(image: &Image) {
    let Image {
        dockerfile: file,
        binary_name,
        binary,
        ..
    } = *image;
    let path = workspace().join(file);
    let text = std::fs::read_to_string(&path).expect("Dockerfile");
    let stage = runtime_stage(&text);
    assert!(
        stage[0].contains("distroless/cc"),
        "{file}: a small runtime image: {}",
        stage[0]
    );
    let user = stage
        .iter()
        .rev()
        .find_map(|i| i.strip_prefix("USER "))
        .unwrap_or_else(|| panic!("{file}: no USER in the runtime stage"));
    let uid = user.split(':').next().unwrap_or("");
    assert!(
        uid != "0" && uid != "root" && !uid.is_empty(),
        "{file}: runs as root ({user})"
    );
    let executable = format!("/usr/local/bin/{binary_name}");
    let health = stage
        .iter()
        .find(|i| i.starts_with("HEALTHCHECK"))
        .unwrap_or_else(|| panic!("{file}: no HEALTHCHECK"));
    assert!(
        health.contains(&format!(r#"CMD ["{executable}", "health-check"]"#)),
        "{file}: {health}"
    );
    assert!(
        stage
            .iter()
            .any(|i| i == &format!(r#"ENTRYPOINT ["{executable}"]"#)),
        "{file}: ENTRYPOINT"
    );
    let known = settings_of(binary);
    for name in env_names(&stage) {
        assert!(
            known.contains(&name),
            "{file}: {name} is not a setting of {binary_name}"
        );
    }
    assert!(
        text.contains(&format!("--bin {binary_name}")),
        "{file} builds {binary_name}"
    );
    println!(
        "{file}: runtime stage non-root ({user}), HEALTHCHECK {binary_name} health-check, {} settings known to the binary",
        env_names(&stage).len()
    );
}

fn check_compose() {
    let path = workspace().join("docker").join("compose.yaml");
    let text = std::fs::read_to_string(&path).expect("compose.yaml");
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).expect("compose.yaml is YAML");
    let services = &docs[0]["services"];
    assert!(
        services["postgres"]["image"]
            .as_str()
            .is_some_and(|i| i.contains("postgres")),
        "one PostgreSQL"
    );
    for &Image {
        service,
        binary,
        dockerfile,
        ..
    } in &IMAGES
    {
        let known = settings_of(binary);
        let spec = &services[service];
        assert_eq!(spec["build"]["dockerfile"].as_str(), Some(dockerfile));
        let environment = spec["environment"].as_hash().expect("environment");
        for name in environment.keys() {
            let name = name.as_str().expect("a name");
            assert!(
                known.contains(name),
                "compose.yaml: {service} sets {name}, which the binary does not read"
            );
        }
        let url = environment
            .iter()
            .find(|(k, _)| k.as_str().is_some_and(|k| k.ends_with("_DB_URL")))
            .and_then(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{service}: a database URL"));
        assert!(url.starts_with("postgresql://"), "{service} on PostgreSQL");
    }
    println!("compose.yaml: postgres, fhir and bpe; every setting known to its binary");
}

/// The shared libraries `binary` links: only glibc's and libgcc's, which distroless "cc"
/// holds.
fn check_libraries(binary: &str) {
    let Ok(output) = Command::new("ldd").arg(binary).output() else {
        println!("SKIPPED library check of {binary}: no ldd here");
        return;
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let allowed = [
        "linux-vdso",
        "libc.so",
        "libm.so",
        "libgcc_s.so",
        "ld-linux",
        "libpthread.so",
        "libdl.so",
        "librt.so",
    ];
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        assert!(
            allowed
                .iter()
                .any(|a| line.starts_with(a) || line.contains(&format!("/{a}"))),
            "{binary} needs a library the runtime image lacks: {line}"
        );
    }
    println!(
        "{}: links glibc and libgcc only",
        Path::new(binary)
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
    );
}

/// Builds the images, from `base_images`, when a Docker engine answers; says why not
/// otherwise.
fn build_images(base_images: &BTreeSet<String>) {
    let engine = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    let reason = match &engine {
        Err(e) => Some(format!("no docker command ({e})")),
        Ok(o) if !o.status.success() => Some(format!(
            "no Docker engine answers ({})",
            first_line(&o.stderr, "docker info failed")
        )),
        Ok(_) => None,
    };
    if let Some(reason) = reason {
        println!("SKIPPED container image build and compose validation: {reason}");
        return;
    }
    let root = workspace();
    if let Some(reason) = unavailable_base_image(base_images) {
        println!("SKIPPED container image build: {reason}");
    } else {
        build(&root);
    }
    validate_compose(&root);
}

/// The first line of a command's error output that says something, or `otherwise`.
fn first_line(stderr: &[u8], otherwise: &str) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or(otherwise)
        .to_owned()
}

/// The images a Dockerfile's stages start from (`FROM image [AS name]`), leaving out stages
/// that start from an earlier stage.
fn base_images(dockerfile: &str) -> Vec<String> {
    let mut stages: Vec<&str> = Vec::new();
    let mut images = Vec::new();
    for line in dockerfile.lines() {
        let mut words = line.split_whitespace();
        if !words.next().is_some_and(|w| w.eq_ignore_ascii_case("FROM")) {
            continue;
        }
        let mut words = words.filter(|w| !w.starts_with("--"));
        let Some(image) = words.next() else { continue };
        if !stages.iter().any(|s| image.eq_ignore_ascii_case(s)) {
            images.push(image.to_owned());
        }
        if words.next().is_some_and(|w| w.eq_ignore_ascii_case("AS")) {
            stages.extend(words.next());
        }
    }
    images
}

/// Why one of `images` is not at hand (neither stored by the engine nor pullable from its
/// registry), or `None` when all are.
fn unavailable_base_image(images: &BTreeSet<String>) -> Option<String> {
    for image in images {
        let stored = Command::new("docker")
            .args(["image", "inspect", "--format", "{{.Id}}", image])
            .output()
            .is_ok_and(|o| o.status.success());
        if stored {
            continue;
        }
        match Command::new("docker")
            .args(["pull", "--quiet", image])
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                let why = first_line(&o.stderr, "docker pull failed");
                return Some(format!("base image {image} not available ({why})"));
            }
            Err(e) => return Some(format!("base image {image} not available ({e})")),
        }
    }
    None
}

fn build(root: &Path) {
    for &Image {
        dockerfile: file,
        tag,
        ..
    } in &IMAGES
    {
        let built = Command::new("docker")
            .args(["build", "-f", file, "-t", tag, "."])
            .current_dir(root)
            .status()
            .expect("docker build");
        assert!(built.success(), "docker build -f {file} failed");
        let user = Command::new("docker")
            .args(["image", "inspect", "--format", "{{.Config.User}}", tag])
            .output()
            .expect("docker image inspect");
        let user = String::from_utf8_lossy(&user.stdout).trim().to_owned();
        assert!(
            !user.is_empty() && !user.starts_with('0'),
            "{tag} runs as {user}"
        );
        println!("built {tag} (user {user})");
    }
}

fn validate_compose(root: &Path) {
    let compose = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !compose {
        println!("SKIPPED compose validation: no docker compose plugin");
        return;
    }
    let config = Command::new("docker")
        .args(["compose", "-f", "docker/compose.yaml", "config", "--quiet"])
        .env("DSF_DB_PASSWORD", "check")
        .current_dir(root)
        .status()
        .expect("docker compose config");
    assert!(config.success(), "docker compose config failed");
    println!("docker compose config: valid");
}

fn main() {
    let root = workspace();
    let mut bases = BTreeSet::new();
    for Image {
        dockerfile: file, ..
    } in &IMAGES
    {
        let text = std::fs::read_to_string(root.join(file)).expect("Dockerfile");
        let images = base_images(&text);
        assert_eq!(
            images,
            [
                "docker.io/library/rust:1.95-bookworm",
                "gcr.io/distroless/cc-debian12:nonroot"
            ],
            "{file}: the images its stages start from"
        );
        bases.extend(images);
    }
    assert_eq!(
        base_images("FROM --platform=$BUILDPLATFORM a:1 AS build\nfrom build AS test\nFROM b"),
        ["a:1", "b"]
    );
    for image in &IMAGES {
        check_dockerfile(image);
        check_libraries(image.binary);
    }
    check_compose();
    build_images(&bases);
    println!("container_image: passed");
}
