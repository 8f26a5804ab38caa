#!/usr/bin/env bash
# Fetch and unpack Debian's postgresql-17 source package (from trixie's source
# index) into $YZ_CACHE/src. Prints the unpacked, pristine source directory.
source "$(dirname "$0")/common.sh"

# Used when the mirror cannot serve the version its index names.
PG_FALLBACK_VERSION=17.11
PG_FALLBACK_SHA256=dd27f2b3c59e73ed14aa3324901242bf69a032a6347805f274e6260322d42979

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
    if ! (cd "$dl" && apt-get source --download-only -qq postgresql-$PG_MAJOR >/dev/null); then
        # A mirror's index can name a point release whose files it no longer
        # (or not yet) serves: fall back to the release this project was last
        # tested with, checked against the sha256 its .dsc lists.
        rm -f "$dl"/*
        uri=$(awk '/^URIs:/{u=$2} /^Suites:.*trixie/{print u; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
        [ -n "$uri" ] || die "apt-get source failed and no trixie source entry is configured"
        log "apt-get source failed; downloading the tested release $PG_FALLBACK_VERSION from $uri"
        python3 - "$uri/pool/main/p/postgresql-$PG_MAJOR/postgresql-${PG_MAJOR}_$PG_FALLBACK_VERSION.orig.tar.bz2" \
            "$dl/postgresql-${PG_MAJOR}_$PG_FALLBACK_VERSION.orig.tar.bz2" <<'PY' || die "could not download PostgreSQL's source"
import sys, urllib.request
urllib.request.urlretrieve(sys.argv[1], sys.argv[2])
PY
        echo "$PG_FALLBACK_SHA256  $dl/postgresql-${PG_MAJOR}_$PG_FALLBACK_VERSION.orig.tar.bz2" | sha256sum -c --quiet \
            || die "PostgreSQL's source tarball does not match the expected sha256"
    fi
    orig=$(ls "$dl"/postgresql-${PG_MAJOR}_*.orig.tar.* | head -n1)
    ver=$(basename "$orig" | sed -E "s/postgresql-${PG_MAJOR}_([0-9.]+)\.orig.*/\1/")
    mkdir -p "$SRC/postgresql-$PG_MAJOR-$ver"
    tar -xf "$orig" -C "$SRC/postgresql-$PG_MAJOR-$ver" --strip-components=1
    rm -rf "$dl"
    pristine=$SRC/postgresql-$PG_MAJOR-$ver/
fi
echo "${pristine%/}"
