#!/usr/bin/env bash
# Build a local Debian bookworm + Python 3.11 base image without any image registry, for sites (and this
# project's own machines) where `docker pull python:3.11-slim-bookworm` cannot work:
#
#   sudo scripts/make-base-image.sh                      # -> local/python:3.11-bookworm
#   docker build --build-arg BASE_IMAGE=local/python:3.11-bookworm -f docker/web.Dockerfile -t digits-web .
#
# It debootstraps bookworm (minbase + python3, python3-venv, ca-certificates) from a Debian mirror, applies
# bookworm-updates/-security, adds the site's extra CA certificates (a TLS-inspecting proxy's CA, so that pip
# inside `docker build` trusts it), and imports the tree with `docker import`. Needs root, debootstrap, docker.
#
# Environment:
#   BASE_TAG      image tag to create                       (default local/python:3.11-bookworm; or 1st argument)
#   MIRROR        Debian mirror                             (default http://deb.debian.org/debian)
#   SECURITY      Debian security mirror                    (default http://deb.debian.org/debian-security)
#   EXTRA_CA_DIR  folder of *.crt files added to the image  (default /usr/local/share/ca-certificates; "" = none)
#   FORCE=1       rebuild even when the tag already exists
set -euo pipefail

BASE_TAG="${1:-${BASE_TAG:-local/python:3.11-bookworm}}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
SECURITY="${SECURITY:-http://deb.debian.org/debian-security}"
EXTRA_CA_DIR="${EXTRA_CA_DIR-/usr/local/share/ca-certificates}"
SUITE=bookworm

die() { echo "make-base-image: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap and chroot need it)"
command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install -y debootstrap"
command -v docker >/dev/null || die "docker is missing"
docker info >/dev/null 2>&1 || die "no Docker engine answers (is dockerd running?)"

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
  echo "make-base-image: $BASE_TAG exists (FORCE=1 rebuilds it)"
  exit 0
fi

work="$(mktemp -d /var/tmp/base-image.XXXXXX)"
root="$work/rootfs"
cleanup() {
  umount "$root/proc" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "make-base-image: debootstrap $SUITE from $MIRROR into $root"
# Quiet unless it fails: the full logs are shown then.
quiet() {  # log-name, command...
  local name="$1"; shift
  local rc=0
  "$@" >"$work/$name.log" 2>&1 || rc=$?
  [ "$rc" = 0 ] || { tail -n 40 "$work/$name.log" >&2; die "$name failed (exit $rc)"; }
}
quiet debootstrap debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,netbase,tzdata \
  "$SUITE" "$root" "$MIRROR"

cat > "$root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY $SUITE-security main
EOF

# Image-style apt settings, as the official Debian images have them: no recommends, no caches left behind.
cat > "$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb || true"; };
EOF

if [ -n "$EXTRA_CA_DIR" ] && compgen -G "$EXTRA_CA_DIR/*.crt" >/dev/null; then
  echo "make-base-image: adding CA certificates from $EXTRA_CA_DIR"
  cp "$EXTRA_CA_DIR"/*.crt "$root/usr/local/share/ca-certificates/"
fi

mount -t proc proc "$root/proc"
echo "make-base-image: applying $SUITE-updates and $SUITE-security, updating the CA store"
quiet upgrade chroot "$root" /bin/sh -euc '
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get -y -qq upgrade
  update-ca-certificates
  apt-get clean
  rm -rf /var/lib/apt/lists/* /var/log/apt/* /var/log/dpkg.log /var/cache/debconf/*-old
'
umount "$root/proc"
# Nothing of the build host may leak into the image.
: > "$root/etc/hostname"
rm -f "$root/etc/resolv.conf"
rm -rf "$root/usr/share/doc/"* "$root/usr/share/man/"* "$root/usr/share/info/"*

echo "make-base-image: importing as $BASE_TAG"
tar --numeric-owner -C "$root" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' \
  --message "debootstrap $SUITE minbase + python3 (scripts/make-base-image.sh)" \
  - "$BASE_TAG" >/dev/null
docker run --rm --network none "$BASE_TAG" python3 -c 'import sys, ssl, venv; print("make-base-image: ok,", sys.version.split()[0])'
docker image ls "$BASE_TAG"
