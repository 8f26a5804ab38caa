# Sourced by every benchmark after it has read its arguments: the project's
# settings, a run directory of the benchmarks' own (apart from the demo's and
# the tests'), the server's environment, and the helpers the reports share.
# shellcheck shell=bash
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"
export YEZZEY_RUN=$YZ_CACHE/bench-run
YZ_RUN=$YEZZEY_RUN
S=$YZ_ROOT/scripts
mkdir -p "$YZ_RUN"; [ "$(id -u)" = 0 ] && chown "$YZ_OS_USER" "$YZ_RUN"
eval "$(bash "$S/pg.sh" env)"

# median: the median of the numbers on stdin (separated by spaces or lines).
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
now() { date +%s.%N; }
# since T0: seconds elapsed since T0 (a value of now).
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{print b - a}'; }
# busy_ms: the whole machine's busy CPU time so far, in ms (/proc/stat).
busy_ms() { awk -v hz="$(getconf CLK_TCK)" '/^cpu /{print int(($2+$3+$4+$7+$8+$9) * 1000 / hz)}' /proc/stat; }
