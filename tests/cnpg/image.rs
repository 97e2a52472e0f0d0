//! Offline check of the spock extension image that scripts/build-image.sh writes, as an
//! OCI layout directory or an oci-archive: index.json -> manifest -> config -> layer,
//! every blob against its descriptor's sha256 and size, the layer's diff_id against the
//! uncompressed tar, the layer's entries (paths inside the image, no OS files, modes,
//! no link leaving the image), the control file, the libraries' ELF headers and their
//! `Pg_magic_func`, and the config (os, architecture, user). Errors are returned as
//! text naming the object at fault.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use object::{Object, ObjectSymbol};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// The files of an OCI layout, from its directory or an oci-archive (a tar of it).
pub enum Source {
    Dir(PathBuf),
    Archive(BTreeMap<String, Vec<u8>>),
}

impl Source {
    pub fn open(path: &Path) -> Result<Source, String> {
        if path.is_dir() {
            return Ok(Source::Dir(path.to_path_buf()));
        }
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut files = BTreeMap::new();
        let mut archive = tar::Archive::new(bytes.as_slice());
        for entry in archive.entries().map_err(|e| format!("{}: {e}", path.display()))? {
            let mut entry = entry.map_err(|e| format!("{}: {e}", path.display()))?;
            let name = entry.path().map_err(|e| format!("{}: {e}", path.display()))?.display().to_string();
            let name = name.trim_start_matches("./").trim_end_matches('/').to_string();
            match entry.header().entry_type() {
                tar::EntryType::Directory => {}
                tar::EntryType::Regular => {
                    let mut data = Vec::new();
                    entry.read_to_end(&mut data).map_err(|e| format!("{}: {name}: {e}", path.display()))?;
                    files.insert(name, data);
                }
                other => return Err(format!("{}: {name} is a {other:?}, not a file of an OCI layout", path.display())),
            }
        }
        Ok(Source::Archive(files))
    }

    fn read(&self, rel: &str) -> Result<Vec<u8>, String> {
        match self {
            Source::Dir(dir) => std::fs::read(dir.join(rel)).map_err(|e| format!("{rel}: {e}")),
            Source::Archive(files) => files.get(rel).cloned().ok_or_else(|| format!("{rel} is not in the archive")),
        }
    }

    /// The blob of `desc`, checked against its digest and size, and its media type.
    fn blob(&self, desc: &Json, media_type: &str) -> Result<Vec<u8>, String> {
        let digest = desc["digest"].as_str().ok_or_else(|| format!("descriptor without digest: {desc}"))?;
        let hex = digest.strip_prefix("sha256:").ok_or_else(|| format!("{digest}: not a sha256 digest"))?;
        if desc["mediaType"] != media_type {
            return Err(format!("{digest}: media type {} instead of {media_type}", desc["mediaType"]));
        }
        let data = self.read(&format!("blobs/sha256/{hex}"))?;
        let actual = sha256_hex(&data);
        if actual != hex {
            return Err(format!("blob {digest} has sha256 {actual}"));
        }
        if desc["size"].as_u64() != Some(data.len() as u64) {
            return Err(format!("blob {digest} has {} bytes, its descriptor says {}", data.len(), desc["size"]));
        }
        Ok(data)
    }
}

fn json(data: &[u8], what: &str) -> Result<Json, String> {
    serde_json::from_slice(data).map_err(|e| format!("{what}: not JSON: {e}"))
}

/// A file of the image's layer.
#[derive(Debug, Clone, PartialEq)]
pub struct File {
    pub mode: u32,
    pub data: Vec<u8>,
}

#[derive(Debug)]
pub struct Image {
    pub manifest_digest: String,
    pub config: Json,
    pub compressed_layer_bytes: u64,
    /// Regular files of the layer by path (`lib/spock.so`, ...).
    pub files: BTreeMap<String, File>,
}

impl Image {
    pub fn user(&self) -> &str {
        self.config["config"]["User"].as_str().unwrap_or_default()
    }

    pub fn labels(&self) -> BTreeMap<String, String> {
        let labels = self.config["config"]["Labels"].as_object().cloned().unwrap_or_default();
        labels.into_iter().map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string())).collect()
    }

    /// Writes the layer's files under `dest` (which must not exist), world-readable,
    /// like the read-only volume CloudNativePG mounts at `/extensions/<name>`.
    pub fn unpack(&self, dest: &Path) {
        use std::os::unix::fs::PermissionsExt;
        assert!(!dest.exists(), "{} exists", dest.display());
        for (path, file) in &self.files {
            let to = dest.join(path);
            let mut dir = to.parent().expect("a file has a parent").to_path_buf();
            std::fs::create_dir_all(&dir).unwrap();
            while dir.starts_with(dest) {
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
                dir.pop();
            }
            std::fs::write(&to, &file.data).unwrap();
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(file.mode & 0o755)).unwrap();
        }
    }
}

/// The platform names of this machine: (OCI architecture, ELF architecture).
pub fn host_arch() -> (&'static str, object::Architecture) {
    match std::env::consts::ARCH {
        "x86_64" => ("amd64", object::Architecture::X86_64),
        "aarch64" => ("arm64", object::Architecture::Aarch64),
        other => panic!("no OCI architecture for {other}"),
    }
}

/// Top-level directories and files that belong to an operating system, not to an
/// extension image.
const OS_PATHS: &[&str] = &["bin", "sbin", "usr", "etc", "var", "lib64", "tmp", "root", "home", "dev", "proc"];

/// Checks the image tagged `tag` in `source` and returns it. `expected_files` is the
/// exact set of regular files the layer must hold.
pub fn check(source: &Source, tag: &str, expected_files: &[String]) -> Result<Image, String> {
    let layout = json(&source.read("oci-layout")?, "oci-layout")?;
    if layout["imageLayoutVersion"] != "1.0.0" {
        return Err(format!("oci-layout: {layout}"));
    }
    let index = json(&source.read("index.json")?, "index.json")?;
    if index["schemaVersion"] != 2 || index["mediaType"] != MT_INDEX {
        return Err(format!("index.json: schemaVersion/mediaType: {index}"));
    }
    let descs: Vec<&Json> = index["manifests"]
        .as_array()
        .ok_or("index.json without manifests")?
        .iter()
        .filter(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .collect();
    let [desc] = descs[..] else {
        return Err(format!("index.json has {} manifests tagged {tag}, not one", descs.len()));
    };
    let (arch, elf_arch) = host_arch();
    if desc["platform"]["os"] != "linux" || desc["platform"]["architecture"] != arch {
        return Err(format!("index.json: platform {} instead of linux/{arch}", desc["platform"]));
    }
    let manifest_digest = desc["digest"].as_str().unwrap_or_default().to_string();
    let manifest = json(&source.blob(desc, MT_MANIFEST)?, "manifest")?;
    if manifest["schemaVersion"] != 2 || manifest["mediaType"] != MT_MANIFEST {
        return Err(format!("manifest: schemaVersion/mediaType: {manifest}"));
    }
    let config = json(&source.blob(&manifest["config"], MT_CONFIG)?, "config")?;
    if config["os"] != "linux" || config["architecture"] != arch {
        return Err(format!(
            "config: os/architecture {}/{} instead of linux/{arch}",
            config["os"], config["architecture"]
        ));
    }
    let user = config["config"]["User"].as_str().unwrap_or_default();
    if user != "65532:65532" {
        return Err(format!("config: User {user:?} instead of 65532:65532 (non-root, numeric)"));
    }
    let layers = manifest["layers"].as_array().ok_or("manifest without layers")?;
    let diff_ids = config["rootfs"]["diff_ids"].as_array().ok_or("config without rootfs.diff_ids")?;
    if config["rootfs"]["type"] != "layers" || layers.len() != 1 || diff_ids.len() != 1 {
        return Err(format!(
            "one layer and one diff_id expected: {} layer(s), rootfs {}",
            layers.len(),
            config["rootfs"]
        ));
    }
    let compressed = source.blob(&layers[0], MT_LAYER)?;
    let mut tar_bytes = Vec::new();
    flate2::read::GzDecoder::new(compressed.as_slice())
        .read_to_end(&mut tar_bytes)
        .map_err(|e| format!("layer: not gzip: {e}"))?;
    let diff_id = format!("sha256:{}", sha256_hex(&tar_bytes));
    if diff_ids[0] != diff_id.as_str() {
        return Err(format!("layer: uncompressed sha256 is {diff_id}, the config's diff_id {}", diff_ids[0]));
    }
    let files = layer_files(&tar_bytes)?;
    let names: Vec<&String> = files.keys().collect();
    if names != expected_files.iter().collect::<Vec<_>>() {
        return Err(format!("layer: files {names:?} instead of {expected_files:?}"));
    }
    check_control(&files)?;
    for (name, file) in files.iter().filter(|(n, _)| n.ends_with(".so")) {
        check_library(name, &file.data, elf_arch)?;
    }
    Ok(Image { manifest_digest, config, compressed_layer_bytes: compressed.len() as u64, files })
}

/// The regular files of an uncompressed layer, after checking every entry.
fn layer_files(tar_bytes: &[u8]) -> Result<BTreeMap<String, File>, String> {
    let mut files = BTreeMap::new();
    let mut archive = tar::Archive::new(tar_bytes);
    for entry in archive.entries().map_err(|e| format!("layer: {e}"))? {
        let mut entry = entry.map_err(|e| format!("layer: {e}"))?;
        let path = entry.path().map_err(|e| format!("layer: {e}"))?.into_owned();
        let name = path.display().to_string();
        let rel: PathBuf = path.components().filter(|c| *c != Component::CurDir).collect();
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(format!("layer: {name} leaves the image root"));
        }
        let rel_name = rel.display().to_string();
        let top = rel.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
        if OS_PATHS.contains(&top.as_str()) {
            return Err(format!("layer: {name} is an operating system file, not part of an extension image"));
        }
        if rel.file_name().is_some_and(|f| f.to_string_lossy().starts_with(".wh.")) {
            return Err(format!("layer: whiteout {name}"));
        }
        let header = entry.header();
        let mode = header.mode().map_err(|e| format!("layer: {name}: {e}"))?;
        let (uid, gid) = (header.uid().unwrap_or(u64::MAX), header.gid().unwrap_or(u64::MAX));
        if (uid, gid) != (0, 0) {
            return Err(format!("layer: {name} is owned by {uid}:{gid}, not 0:0"));
        }
        match header.entry_type() {
            tar::EntryType::Directory => {
                if mode & 0o005 != 0o005 {
                    return Err(format!(
                        "layer: directory {name} has mode {mode:o}: not world-readable and searchable"
                    ));
                }
            }
            tar::EntryType::Regular => {
                if mode & 0o004 == 0 {
                    return Err(format!("layer: {name} has mode {mode:o}: not world-readable"));
                }
                if mode & 0o7000 != 0 {
                    return Err(format!("layer: {name} has mode {mode:o}: setuid/setgid/sticky"));
                }
                let mut data = Vec::new();
                entry.read_to_end(&mut data).map_err(|e| format!("layer: {name}: {e}"))?;
                files.insert(rel_name, File { mode, data });
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target =
                    entry.link_name().map_err(|e| format!("layer: {name}: {e}"))?.unwrap_or_default().into_owned();
                // Resolved from the link's directory (hard links: from the root), never above the root.
                let mut depth: i64 = if header.entry_type() == tar::EntryType::Symlink {
                    rel.components().count() as i64 - 1
                } else {
                    0
                };
                for c in target.components() {
                    match c {
                        Component::Normal(_) => depth += 1,
                        Component::ParentDir => depth -= 1,
                        Component::CurDir => {}
                        Component::RootDir | Component::Prefix(_) => depth = i64::MIN / 2,
                    }
                    if depth < 0 {
                        return Err(format!("layer: link {name} -> {} leaves the image", target.display()));
                    }
                }
                return Err(format!(
                    "layer: {name} is a link to {}: the image has regular files only",
                    target.display()
                ));
            }
            other => return Err(format!("layer: {name} is a {other:?}")),
        }
    }
    Ok(files)
}

/// `key = 'value'` lines of a control file.
pub fn control_values(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('\'').to_string()))
        .collect()
}

fn check_control(files: &BTreeMap<String, File>) -> Result<(), String> {
    let control = files.get("share/extension/spock.control").ok_or("no share/extension/spock.control")?;
    let values = control_values(&String::from_utf8_lossy(&control.data));
    let version = values.get("default_version").ok_or("spock.control: no default_version")?;
    let script = format!("share/extension/spock--{version}.sql");
    if !files.contains_key(&script) {
        return Err(format!("spock.control: default_version {version} but no {script}"));
    }
    match values.get("module_pathname").map(String::as_str) {
        Some("spock") => Ok(()),
        other => Err(format!(
            "spock.control: module_pathname {other:?} instead of 'spock' (the library is found through dynamic_library_path, not $libdir)"
        )),
    }
}

fn check_library(name: &str, data: &[u8], arch: object::Architecture) -> Result<(), String> {
    let elf = object::File::parse(data).map_err(|e| format!("{name}: not an object file: {e}"))?;
    if elf.format() != object::BinaryFormat::Elf || elf.kind() != object::ObjectKind::Dynamic {
        return Err(format!("{name}: {:?} {:?}, not an ELF shared object", elf.format(), elf.kind()));
    }
    if elf.architecture() != arch {
        return Err(format!("{name}: architecture {:?} instead of {arch:?}", elf.architecture()));
    }
    let exported = elf.dynamic_symbols().any(|s| s.name() == Ok("Pg_magic_func") && !s.is_undefined() && s.is_global());
    if !exported {
        return Err(format!("{name}: does not export Pg_magic_func (PostgreSQL refuses to load it)"));
    }
    Ok(())
}
