#!/usr/bin/env bash
# Debian packages needed to build PostgreSQL 17, the extension and Garage.
source "$(dirname "$0")/common.sh"

PKGS=(bison flex libclang-dev clang libzstd-dev liblz4-dev libreadline-dev zlib1g-dev
      libssl-dev pkg-config make gcc perl dpkg-dev libipc-run-perl util-linux iproute2 python3-venv)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The servers cannot run as root; make sure their OS user exists.
if [ "$(id -u)" = 0 ] && ! id "$YZ_OS_USER" >/dev/null 2>&1; then
    log "creating OS user $YZ_OS_USER"
    useradd --system --create-home --shell /bin/bash "$YZ_OS_USER"
fi
