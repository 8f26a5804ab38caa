#!/usr/bin/env bash
# Fetch and unpack Debian's postgresql-17 source package (from trixie's source
# index) into $YZ_CACHE/src. Prints the unpacked, pristine source directory.
source "$(dirname "$0")/common.sh"

SRC=$YZ_CACHE/src
mkdir -p "$SRC"
pristine=$(ls -d "$SRC"/postgresql-$PG_MAJOR-*/ 2>/dev/null | head -n1 || true)
if [ -z "$pristine" ]; then
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    list=/etc/apt/sources.list.d/yezzey-trixie-src.sources
    if ! grep -rqs "Suites: trixie" /etc/apt/sources.list.d/ || ! apt-cache showsrc postgresql-$PG_MAJOR >/dev/null 2>&1; then
        # Reuse the mirror this machine already uses for bookworm.
        uri=$(awk '/^URIs:/{u=$2} /^Suites:.*bookworm( |$)/{print u; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
        [ -n "$uri" ] || uri=$(awk '$1=="deb" && $3=="bookworm"{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
        [ -n "$uri" ] || die "cannot find this machine's Debian mirror in /etc/apt"
        log "adding deb-src for trixie from $uri"
        printf 'Types: deb-src\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" | $SUDO tee "$list" >/dev/null
        $SUDO apt-get update -qq
    fi
    log "downloading postgresql-$PG_MAJOR source package"
    dl=$(mktemp -d)
    (cd "$dl" && apt-get source --download-only -qq postgresql-$PG_MAJOR >/dev/null)
    orig=$(ls "$dl"/postgresql-${PG_MAJOR}_*.orig.tar.* | head -n1)
    ver=$(basename "$orig" | sed -E "s/postgresql-${PG_MAJOR}_([0-9.]+)\.orig.*/\1/")
    mkdir -p "$SRC/postgresql-$PG_MAJOR-$ver"
    tar -xf "$orig" -C "$SRC/postgresql-$PG_MAJOR-$ver" --strip-components=1
    rm -rf "$dl"
    pristine=$SRC/postgresql-$PG_MAJOR-$ver/
fi
echo "${pristine%/}"
