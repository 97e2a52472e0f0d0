#!/usr/bin/env python3
"""Unpacks the file tree of an OCI image the way an image volume presents it.

  oci-unpack.py IMAGE[:TAG] DEST

IMAGE is an OCI layout directory or an oci-archive tarball (as scripts/build-image.sh
writes them); TAG selects an entry of index.json (needed when it has several). Every
blob is checked against its digest and size, and each layer's uncompressed digest
against the config's diff_ids. DEST must not exist; it gets the image root (lib/,
share/, ...), world-readable, like the read-only volume CloudNativePG mounts at
/extensions/<name>. Standard library only.
"""

import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile


def fail(msg):
    sys.exit("oci-unpack: " + msg)


def main():
    if len(sys.argv) != 3:
        fail("usage: oci-unpack.py IMAGE[:TAG] DEST")
    image, dest = sys.argv[1], sys.argv[2]
    tag = None
    if not os.path.exists(image) and ":" in image:
        image, tag = image.rsplit(":", 1)
    if os.path.exists(dest):
        fail("%s exists" % dest)
    with tempfile.TemporaryDirectory() as tmp:
        if os.path.isfile(image):
            with tarfile.open(image) as tf:
                tf.extractall(tmp, filter="data") if hasattr(tarfile, "data_filter") else tf.extractall(tmp)
            layout = tmp
        else:
            layout = image
        unpack(layout, tag, dest)


def blob(layout, desc):
    algo, _, hexd = desc["digest"].partition(":")
    if algo != "sha256":
        fail("unsupported digest %s" % desc["digest"])
    with open(os.path.join(layout, "blobs", algo, hexd), "rb") as fh:
        data = fh.read()
    if hashlib.sha256(data).hexdigest() != hexd or len(data) != desc.get("size", len(data)):
        fail("blob %s is corrupt" % desc["digest"])
    return data


def unpack(layout, tag, dest):
    with open(os.path.join(layout, "index.json")) as fh:
        descs = json.load(fh)["manifests"]
    if tag is not None:
        descs = [d for d in descs if (d.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag]
    if len(descs) != 1:
        fail("index.json must have exactly one image%s" % (" tagged %s" % tag if tag else ""))
    manifest = json.loads(blob(layout, descs[0]))
    config = json.loads(blob(layout, manifest["config"]))
    diff_ids = config["rootfs"]["diff_ids"]
    os.makedirs(dest)
    for i, ldesc in enumerate(manifest["layers"]):
        data = blob(layout, ldesc)
        if ldesc["mediaType"].endswith("+gzip"):
            data = gzip.decompress(data)
        elif not ldesc["mediaType"].endswith(".tar"):
            fail("unsupported layer type %s" % ldesc["mediaType"])
        if "sha256:" + hashlib.sha256(data).hexdigest() != diff_ids[i]:
            fail("layer %d does not match its diff_id" % i)
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            for m in tf.getmembers():
                if os.path.basename(m.name).startswith(".wh."):
                    fail("whiteouts are not supported (%s)" % m.name)
            tf.extractall(dest, filter="data") if hasattr(tarfile, "data_filter") else tf.extractall(dest)
    for root, dirs, files in os.walk(dest):
        os.chmod(root, 0o755)
        for f in files:
            p = os.path.join(root, f)
            os.chmod(p, os.stat(p).st_mode | 0o444)


if __name__ == "__main__":
    main()
