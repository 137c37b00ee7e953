#!/usr/bin/env bash
# Prepare a Debian 12 machine to run the compose demo without any container registry.
#
#   sudo cmd/prepare-docker.sh          # then: REVGW_BASE_IMAGE=revgw-base:bookworm make
#
# CI runs it (.ci/run) before `make test`, so that tests/test_compose_demo.py has an
# engine and a base image. It is also the recipe for a network that reaches a Debian
# mirror but no registry (an air-gapped site with its own mirror): each step below
# says what it does and why, so that it can be followed by hand too.
#
# It is idempotent: every step checks first and skips what is already there, so a
# second run takes a second or two. It needs root, apt-get and a Debian mirror.
#
# Settings (environment):
#   REVGW_BASE_IMAGE     the base image to build         (default revgw-base:bookworm)
#   REVGW_DEBIAN_MIRROR  where debootstrap and apt fetch  (default http://deb.debian.org/debian)
#   REVGW_DEBIAN_SECURITY  its security updates; set it empty where there is no such mirror
#                        (default http://deb.debian.org/debian-security)
#   REVGW_DOCKERD_LOG    dockerd's log, when started here (default /var/log/revgw-dockerd.log)
#
# Nothing it makes belongs in git: the image lives in the engine's storage, the root
# file system is built in a temporary directory and removed, and this machine's CA
# certificates are copied into that image only.
set -euo pipefail

BASE_IMAGE="${REVGW_BASE_IMAGE:-revgw-base:bookworm}"
MIRROR="${REVGW_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY="${REVGW_DEBIAN_SECURITY-http://deb.debian.org/debian-security}"
DOCKERD_LOG="${REVGW_DOCKERD_LOG:-/var/log/revgw-dockerd.log}"
DOCKERD_PID=/run/revgw-dockerd.pid
SUITE=bookworm
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins

step() { printf -- '--> %s\n' "$*"; }
fail() {
	printf 'prepare-docker: %s\n' "$*" >&2
	exit 1
}
# Run a command with its output kept in a file; show the end of it only if it fails.
quietly() {
	local out rc=0
	out="$(mktemp)"
	"$@" >"$out" 2>&1 || rc=$?
	[ "$rc" -eq 0 ] || { tail -n 20 "$out" >&2; printf 'prepare-docker: failed (exit %s): %s\n' "$rc" "$*" >&2; }
	rm -f "$out"
	return "$rc"
}

[ "$(id -u)" -eq 0 ] || fail "run me as root (I install packages and start dockerd)"
command -v apt-get >/dev/null || fail "I need apt-get (Debian 12 or alike)"

# 1. Packages, all from Debian (no registry, no curl | sh):
#    docker.io       dockerd 20.10 with containerd, runc and tini (for `init: true`)
#    docker-compose  Compose v1 (1.29.2); `docker compose` (v2 syntax) is step 2
#    debootstrap     builds a Debian root file system from the mirror (step 4)
install_packages() {
	local missing=() pkg
	for pkg in docker.io docker-compose debootstrap; do
		dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
	done
	if [ "${#missing[@]}" -eq 0 ]; then
		step "packages: already installed"
		return
	fi
	step "packages: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	# Wait for a concurrent apt/dpkg run to finish rather than fail at once.
	local apt=(apt-get -q -o DPkg::Lock::Timeout=300)
	quietly "${apt[@]}" update
	quietly "${apt[@]}" install -y --no-install-recommends "${missing[@]}"
}

# 2. `docker compose` for the Compose v1 binary. The docker CLI runs a plugin
#    named docker-<cmd> from its plugin directories; this one answers the CLI's
#    metadata query and hands everything else to docker-compose. Where a real
#    Compose v2 plugin is installed, it is left alone.
install_compose_shim() {
	if docker compose version >/dev/null 2>&1; then
		step "docker compose: $(docker compose version --short 2>/dev/null || echo present)"
		return
	fi
	step "docker compose: installing a shim in $PLUGIN_DIR that runs docker-compose"
	mkdir -p "$PLUGIN_DIR"
	cat >"$PLUGIN_DIR/docker-compose" <<'EOF'
#!/bin/sh
# `docker compose ...` runs Debian's docker-compose (v1), installed by revgw's cmd/prepare-docker.sh.
if [ "$1" = docker-cli-plugin-metadata ]; then
	printf '{"SchemaVersion":"0.1.0","Vendor":"revgw","Version":"v1","ShortDescription":"Compose v1 (docker-compose) shim"}\n'
	exit 0
fi
shift # the CLI passes the plugin's name ("compose") first
exec docker-compose "$@"
EOF
	chmod 755 "$PLUGIN_DIR/docker-compose"
}

# 3. The engine. Without systemd nobody starts dockerd, so start it in the
#    background when no engine answers: log to a file, record the PID, and poll
#    `docker info` for a bounded time (it is ready in about a second). overlay2 is
#    the fast storage driver; where the file system cannot carry it (overlay on
#    overlay, some container hosts), fall back to vfs, which always works but
#    copies every layer in full.
engine_answers() { docker info >/dev/null 2>&1; }

start_dockerd() {
	local driver=$1 i
	step "engine: starting dockerd --storage-driver=$driver (log: $DOCKERD_LOG)"
	# setsid: dockerd outlives this script and CI's shell, and a Ctrl-C here does not reach it.
	setsid dockerd --storage-driver="$driver" >>"$DOCKERD_LOG" 2>&1 </dev/null &
	echo $! >"$DOCKERD_PID"
	for i in $(seq 60); do # at most 30 s
		if engine_answers; then
			step "engine: ready after $((i / 2)) s, pid $(cat "$DOCKERD_PID")"
			return 0
		fi
		kill -0 "$(cat "$DOCKERD_PID")" 2>/dev/null || break # it exited: see the log
		sleep 0.5
	done
	kill "$(cat "$DOCKERD_PID")" 2>/dev/null || true
	wait "$(cat "$DOCKERD_PID")" 2>/dev/null || true
	rm -f "$DOCKERD_PID"
	printf 'dockerd with %s did not come up; the end of %s:\n' "$driver" "$DOCKERD_LOG" >&2
	tail -n 5 "$DOCKERD_LOG" >&2
	return 1
}

start_engine() {
	if engine_answers; then
		step "engine: already running ($(docker version -f '{{.Server.Version}}' 2>/dev/null))"
		return
	fi
	start_dockerd overlay2 || start_dockerd vfs || fail "no Docker engine could be started"
}

# 4. The base image, built from Debian packages instead of pulled from a registry:
#    a. debootstrap a minimal bookworm (minbase: dpkg, apt and the required packages);
#    b. in a chroot, install Python 3.11 with venv and pip, and ca-certificates;
#    c. copy this machine's extra CA certificates in and rebuild the trust store, so
#       that pip inside `docker build` trusts whatever re-signs TLS here (a proxy, a
#       local PyPI mirror);
#    d. drop apt's caches, then `docker import` the tree as $BASE_IMAGE, with the
#       PATH and locale an image from a registry would carry.
#    About a minute and 190 MB. The Dockerfiles use it through the build argument
#    BASE_IMAGE, which docker-compose.yml takes from $REVGW_BASE_IMAGE.
build_base_image() {
	if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
		step "base image: $BASE_IMAGE already exists"
		return
	fi
	local root
	root="$(mktemp -d /var/tmp/revgw-rootfs.XXXXXX)"
	chmod 755 "$root" # apt in the chroot downloads as the unprivileged user _apt
	# shellcheck disable=SC2064 # expand $root now: it is local
	trap "rm -rf '$root'" EXIT

	step "base image: debootstrap $SUITE from $MIRROR"
	quietly debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR"

	step "base image: installing python3, python3-venv, python3-pip, ca-certificates"
	printf 'deb %s %s main\n' "$MIRROR" "$SUITE" "$MIRROR" "$SUITE-updates" >"$root/etc/apt/sources.list"
	if [ -n "$SECURITY" ]; then
		printf 'deb %s %s main\n' "$SECURITY" "$SUITE-security" >>"$root/etc/apt/sources.list"
	fi
	local in_root=(chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin
		DEBIAN_FRONTEND=noninteractive)
	quietly "${in_root[@]}" apt-get -q update
	quietly "${in_root[@]}" apt-get -q install -y --no-install-recommends \
		python3 python3-venv python3-pip ca-certificates

	step "base image: trusting this machine's extra CA certificates"
	if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
		cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
	fi
	quietly "${in_root[@]}" update-ca-certificates

	"${in_root[@]}" apt-get clean
	rm -rf "$root"/var/lib/apt/lists/* "$root"/tmp/* "$root"/var/tmp/*

	step "base image: docker import as $BASE_IMAGE"
	tar -C "$root" -c . | docker import \
		--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
		--change 'ENV LANG=C.UTF-8' \
		--change 'CMD ["python3"]' \
		- "$BASE_IMAGE" >/dev/null
	rm -rf "$root"
	trap - EXIT
}

install_packages
install_compose_shim
start_engine
build_base_image
step "ready: $(docker compose version --short 2>/dev/null || docker-compose version --short)," \
	"engine $(docker version -f '{{.Server.Version}}'), base image $BASE_IMAGE"
