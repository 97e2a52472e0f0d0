#!/usr/bin/env python3
"""Writes a single-layer OCI image (layout directory and oci-archive) from a directory
tree, without a container daemon, byte-for-byte reproducibly.

Used by scripts/build-image.sh. Only the Python standard library is needed.

Reproducibility: entries are sorted; every entry has uid/gid 0, no user/group names,
mtime = --epoch, and a normalised mode (directories and *.so 0755, other files 0644);
the layer is gzip'ed with a zero timestamp and no file name; JSON documents are written
with sorted keys and no whitespace; the archive is an uncompressed tar with the same
fixed metadata. Same tree + same arguments = same manifest digest.

Prints the manifest digest on stdout.
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import sys
import tarfile

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tree_entries(root):
    """Relative paths of every directory and file under root, sorted (parents first)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        if rel != ".":
            out.append(rel)
        for f in filenames:
            out.append(os.path.normpath(os.path.join(rel, f)))
    return sorted(out)


def tar_info(name, mode, epoch, size=0, kind=tarfile.REGTYPE):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.size = size
    ti.mtime = epoch
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def layer_tar(root, epoch):
    """Uncompressed layer tar of root."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for rel in tree_entries(root):
            path = os.path.join(root, rel)
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                tf.addfile(tar_info(rel + "/", 0o755, epoch, kind=tarfile.DIRTYPE))
            elif stat.S_ISREG(st.st_mode):
                mode = 0o755 if rel.endswith(".so") else 0o644
                with open(path, "rb") as fh:
                    tf.addfile(tar_info(rel, mode, epoch, size=st.st_size), fh)
            else:
                raise SystemExit("oci-build: %s is neither a file nor a directory" % path)
    return buf.getvalue()


def gzip_bytes(data):
    buf = io.BytesIO()
    # mtime=0 and no file name in the header; compression level fixed.
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


def rfc3339(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_blob(layout, data):
    digest = sha256(data)
    path = os.path.join(layout, "blobs", "sha256", digest.split(":", 1)[1])
    with open(path, "wb") as fh:
        fh.write(data)
    return {"digest": digest, "size": len(data)}


def archive(layout, dest, epoch):
    """oci-archive: a plain tar of the layout directory."""
    tmp = dest + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for rel in tree_entries(layout):
            path = os.path.join(layout, rel)
            if os.path.isdir(path):
                tf.addfile(tar_info(rel + "/", 0o755, epoch, kind=tarfile.DIRTYPE))
            else:
                with open(path, "rb") as fh:
                    tf.addfile(tar_info(rel, 0o644, epoch, size=os.path.getsize(path)), fh)
    os.replace(tmp, dest)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rootfs", required=True, help="the image's file tree")
    ap.add_argument("--layout", required=True, help="OCI layout directory to (re)create")
    ap.add_argument("--archive", help="oci-archive tarball to write")
    ap.add_argument("--tag", required=True, help="org.opencontainers.image.ref.name in index.json")
    ap.add_argument("--arch", default="amd64")
    ap.add_argument("--epoch", type=int, required=True, help="SOURCE_DATE_EPOCH: mtimes and 'created'")
    ap.add_argument("--user", default="65532:65532")
    ap.add_argument("--label", action="append", default=[], help="KEY=VALUE (repeat)")
    ap.add_argument("--created-by", default="scripts/build-image.sh")
    args = ap.parse_args()

    labels = {}
    for kv in args.label:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            raise SystemExit("oci-build: --label needs KEY=VALUE, got %r" % kv)
        labels[k] = v

    layer = layer_tar(args.rootfs, args.epoch)
    layer_gz = gzip_bytes(layer)
    created = rfc3339(args.epoch)
    config = {
        "architecture": args.arch,
        "os": "linux",
        "created": created,
        "config": {"User": args.user, "Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]},
        "history": [{"created": created, "created_by": args.created_by}],
    }

    if os.path.isdir(args.layout):
        shutil.rmtree(args.layout)
    os.makedirs(os.path.join(args.layout, "blobs", "sha256"))
    cfg_desc = dict(mediaType=MT_CONFIG, **write_blob(args.layout, canonical_json(config)))
    layer_desc = dict(mediaType=MT_LAYER, **write_blob(args.layout, layer_gz))
    manifest = {"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": cfg_desc, "layers": [layer_desc]}
    man_desc = dict(mediaType=MT_MANIFEST, **write_blob(args.layout, canonical_json(manifest)))
    man_desc["platform"] = {"architecture": args.arch, "os": "linux"}
    man_desc["annotations"] = {"org.opencontainers.image.ref.name": args.tag}
    index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [man_desc]}
    with open(os.path.join(args.layout, "index.json"), "wb") as fh:
        fh.write(canonical_json(index))
    with open(os.path.join(args.layout, "oci-layout"), "wb") as fh:
        fh.write(canonical_json({"imageLayoutVersion": "1.0.0"}))
    for dirpath, _, filenames in os.walk(args.layout):
        for f in filenames + [""]:
            os.utime(os.path.join(dirpath, f), (args.epoch, args.epoch))
    if args.archive:
        archive(args.layout, args.archive, args.epoch)
    print(man_desc["digest"])


if __name__ == "__main__":
    sys.exit(main())
