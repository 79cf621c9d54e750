#!/bin/sh
# Stand-ins for the container images' two base images, made from Debian packages and this
# machine's Rust toolchain, for checking docker/*.Dockerfile on a machine that reaches
# Debian's mirror but not Docker Hub or gcr.io. They take the base images' names in the local
# engine only: never push them, and remove them (`docker image rm` both tags) to build
# against the real ones.
#
#   scripts/stand-in-base-images.sh [work-dir]
#
# Needs: a running Docker engine, debootstrap, and the Rust 1.95 toolchain installed with
# rustup. The build stage's stand-in trusts this machine's CA bundle, so that cargo inside it
# reaches crates.io through the same TLS-inspecting proxy, if any, as the host does.
set -eu

work=${1:-/tmp/dsf-stand-in-images}
toolchain=
for candidate in $(rustup toolchain list -v | awk '{ print $NF }'); do
    if "$candidate/bin/rustc" --version 2>/dev/null | grep -q '^rustc 1\.95\.'; then
        toolchain=$candidate
        break
    fi
done
[ -n "$toolchain" ] || { echo "no Rust 1.95 toolchain installed with rustup" >&2; exit 1; }
mkdir -p "$work"

# docker.io/library/rust:1.95-bookworm: Debian bookworm with gcc (for the C in SQLite, ring
# and mimalloc) and the toolchain, cargo on PATH as in the official image.
build_root=$work/build-root
if [ ! -e "$build_root/usr/bin/gcc" ]; then
    debootstrap --variant=minbase --include=gcc,libc6-dev,ca-certificates,make \
        bookworm "$build_root" http://deb.debian.org/debian
fi
rm -rf "$build_root/usr/local/rust"
cp -a "$toolchain" "$build_root/usr/local/rust"
rm -rf "$build_root/usr/local/rust/share/doc"
cp /etc/ssl/certs/ca-certificates.crt "$build_root/etc/ssl/certs/ca-certificates.crt"
tar -C "$build_root" -c . | docker import \
    --change 'ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --message 'stand-in for rust:1.95-bookworm (Debian minbase, gcc, rustup toolchain)' \
    - docker.io/library/rust:1.95-bookworm

# gcr.io/distroless/cc-debian12:nonroot: glibc, libgcc, CA certificates and the user 65532;
# no shell, no package manager.
runtime_root=$work/runtime-root
rm -rf "$runtime_root"
mkdir -p "$runtime_root/etc" "$runtime_root/tmp" "$runtime_root/lib/x86_64-linux-gnu" \
    "$runtime_root/lib64" "$runtime_root/usr/share" "$runtime_root/home/nonroot"
chmod 1777 "$runtime_root/tmp"
for library in libc.so.6 libm.so.6 libgcc_s.so.1 libpthread.so.0 libdl.so.2 librt.so.1 \
    ld-linux-x86-64.so.2; do
    cp -L "$build_root/lib/x86_64-linux-gnu/$library" "$runtime_root/lib/x86_64-linux-gnu/"
done
cp -L "$build_root/lib64/ld-linux-x86-64.so.2" "$runtime_root/lib64/"
cp -a "$build_root/etc/ssl" "$runtime_root/etc/"
cp -a "$build_root/usr/share/ca-certificates" "$runtime_root/usr/share/"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
    > "$runtime_root/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' > "$runtime_root/etc/group"
chown 65532:65532 "$runtime_root/home/nonroot"
tar -C "$runtime_root" -c . | docker import \
    --change 'USER 65532' --change 'WORKDIR /home/nonroot' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --message 'stand-in for distroless cc-debian12:nonroot' \
    - gcr.io/distroless/cc-debian12:nonroot

echo "stand-in base images in place; build with: docker build -f docker/fhir-server.Dockerfile -t dsf-rs/fhir-server ."
