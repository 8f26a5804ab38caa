#!/usr/bin/env bash
# Build PostgreSQL 17 with gp_patches/ applied into $PG_PREFIX (skipped when
# that prefix already holds a finished build of the same patch series). The
# patched, built tree stays in $YZ_CACHE/build for `make installcheck`.
source "$(dirname "$0")/common.sh"

PG_BUILD=$YZ_CACHE/build/$(basename "$PG_PREFIX")
if [ -f "$PG_PREFIX/.yezzey-built" ] && [ -f "$PG_BUILD/.yezzey-built" ]; then
    exit 0
fi
pristine=$(bash "$YZ_ROOT/scripts/fetch-postgres.sh")
log "building patched PostgreSQL from $(basename "$pristine") into $PG_PREFIX (about 4 minutes)"
rm -rf "$PG_BUILD" "$PG_PREFIX"
mkdir -p "$(dirname "$PG_BUILD")"
cp -a "$pristine" "$PG_BUILD"
for p in "$YZ_ROOT"/gp_patches/postgresql-$PG_MAJOR/*.patch; do
    log "applying $(basename "$p")"
    patch -p1 -d "$PG_BUILD" --quiet --forward < "$p"
done
cd "$PG_BUILD"
./configure --prefix="$PG_PREFIX" --without-icu --with-zstd --with-lz4 --enable-debug \
    CFLAGS="-O2 -fno-omit-frame-pointer" >"$PG_BUILD/configure.out" 2>&1 \
    || { tail -30 "$PG_BUILD/configure.out"; die "configure failed"; }
make -s -j"$(nproc)" >"$PG_BUILD/make.out" 2>&1 || { tail -40 "$PG_BUILD/make.out"; die "make failed"; }
make -s install >>"$PG_BUILD/make.out" 2>&1 || { tail -40 "$PG_BUILD/make.out"; die "make install failed"; }
for m in amcheck pageinspect pg_buffercache pg_prewarm; do
    make -s -C contrib/$m install >>"$PG_BUILD/make.out" 2>&1 || die "building contrib/$m failed"
done
# The test suites write into the tree as the server's OS user.
[ "$(id -u)" = 0 ] && chown -R "$YZ_OS_USER" "$PG_BUILD/src/test/regress"
touch "$PG_BUILD/.yezzey-built" "$PG_PREFIX/.yezzey-built"
log "PostgreSQL $("$PG_PREFIX/bin/postgres" --version | awk '{print $3}') ready in $PG_PREFIX"
