"""The shell scripts the Modal runtime runs inside a sandbox (POSIX sh + coreutils + util-linux, all in Debian slim).

Each is run as `sh -c SCRIPT NAME ARGS...` (NAME becomes `$0`). Every script is idempotent, so a
call whose answer was lost can be retried whole: a start is guarded by a lock directory, an
unpack records its result, a signal or an unfollow of something already gone is no error.

A process `ID` lives in `DIR` (the config's `procs_dir`) as `ID.lock` (it was started),
`ID.cmd` (its argv, NUL-separated), `ID.pid`, `ID.out`, `ID.err`, `ID.rc` (its exit code, once
it ended) and `ID.f<FOLLOWER>` (the pid of a shell copying its output to an exec's streams).
"""

from __future__ import annotations

__all__ = ["CLEAR_STATE", "DIRS", "KILLER", "LIST", "READ", "RUNNER", "UNFOLLOW", "UNPACK"]

#: `sh -c RUNNER run DIR ID MODE OUT_OFFSET ERR_OFFSET FOLLOWER LIMIT [ARGV...]`. MODE `start`
#: launches ARGV detached (once: the lock directory makes a retried start attach instead); both
#: modes then copy the output files from the offsets to stdout/stderr and exit with `ID.rc`.
#: The copying is one long-lived `tail -F --pid` per file (inotify, no process per poll), which
#: ends once the command has ended and its output is copied, or after LIMIT seconds (the exec's
#: own timeout ends the runner then, and the adapter re-arms it from its offsets). The pids of
#: the runner and its two readers are kept in `ID.f<FOLLOWER>`, so that `UNFOLLOW` ends them all.
RUNNER = r"""d=$1; id=$2; mode=$3; o=$4; e=$5; fw=$6; lim=$7; shift 7
p="$d/$id"
if [ "$mode" = start ]; then
  mkdir -p "$d" || exit 125
  if mkdir "$p.lock" 2>/dev/null; then
    : > "$p.out"; : > "$p.err"; printf '%s\0' "$@" > "$p.cmd"
    sup='setsid "$@" > "$0.out" 2> "$0.err" < /dev/null & c=$!; echo $c > "$0.pid"
      wait $c; echo $? > "$0.rc.tmp"; mv "$0.rc.tmp" "$0.rc"'
    setsid sh -c "$sup" "$p" "$@" < /dev/null > /dev/null 2>&1 &
  fi
fi
[ -d "$p.lock" ] || { echo "qai: no process $id" >&2; exit 125; }
i=0; while [ ! -s "$p.pid" ] && [ ! -e "$p.rc" ]; do i=$((i+1)); [ $i -gt 400 ] && exit 125; sleep 0.05; done
c=$(cat "$p.pid" 2>/dev/null); [ -n "$c" ] || c=1
timeout "$lim" tail -c +$((o+1)) -F -s 1 --pid="$c" "$p.out" 2>/dev/null & a=$!
timeout "$lim" tail -c +$((e+1)) -F -s 1 --pid="$c" "$p.err" >&2 2>/dev/null & b=$!
echo "$$ $a $b" > "$p.f$fw.tmp" && mv "$p.f$fw.tmp" "$p.f$fw"
wait $a; wait $b
i=0; while [ ! -e "$p.rc" ]; do i=$((i+1)); [ $i -gt 200 ] && exit 125; sleep 0.05; done
rm -f "$p.f$fw"; exit "$(cat "$p.rc")"
"""

#: `sh -c KILLER kill DIR/ID SIGNAME`: signal the command's process group (no error if it ended).
KILLER = r"""p=$1; i=0
while [ ! -s "$p.pid" ]; do
  [ -e "$p.rc" ] && exit 0; i=$((i+1)); [ $i -gt 100 ] && exit 0; sleep 0.05
done
[ -e "$p.rc" ] || kill -s "$2" -- "-$(cat "$p.pid")" 2>/dev/null
exit 0
"""

#: `sh -c UNFOLLOW unfollow DIR/ID.fFOLLOWER`: end a runner and its readers (its streams then end).
UNFOLLOW = r"""i=0
while [ ! -s "$1" ]; do i=$((i+1)); [ $i -gt 100 ] && exit 0; sleep 0.05; done
kill $(cat "$1") 2>/dev/null; rm -f "$1"; exit 0
"""

#: `sh -c UNPACK unpack WORKDIR TARBALL`: check every path, then move the files into place.
#: Prints one `A`/`M` per manifest line (added/modified). Exit 91/92: a path conflict (nothing
#: written). Idempotent: a retried run prints the recorded result.
UNPACK = r"""w=$1; t=$2; s="$t.d"
[ -e "$t.done" ] && { cat "$t.done"; exit 0; }
rm -rf "$s"; mkdir -p "$s" && tar -xzf "$t" -C "$s" || exit 90
while IFS= read -r f; do
  if [ -d "$w/$f" ] && [ ! -L "$w/$f" ]; then echo "dir $f" >&2; exit 91; fi
  q=$(dirname "$f")
  while [ "$q" != . ]; do
    if [ -e "$w/$q" ] || [ -L "$w/$q" ]; then [ -d "$w/$q" ] || { echo "parent $q" >&2; exit 92; }; fi
    q=$(dirname "$q")
  done
done < "$s/manifest"
i=0; : > "$t.res"
while IFS= read -r f; do
  if [ -e "$w/$f" ] || [ -L "$w/$f" ]; then echo M >> "$t.res"; else echo A >> "$t.res"; fi
  mkdir -p "$w/$(dirname "$f")" && mv -fT "$s/files/$i" "$w/$f" || exit 93
  i=$((i+1))
done < "$s/manifest"
mv "$t.res" "$t.done"; rm -rf "$s" "$t"; cat "$t.done"
"""

#: `sh -c DIRS dirs WORKDIR (+|=)REL...`: print `D <position>` for each path that is a directory
#: (not a symlink) and, for those marked `+` (just created), `F <ctime> <path>` for every file below
#: it: files created in a new directory before the watcher covered it raise no event of their own.
#: Then `C <ctime> ./<path>` for each path that exists (ctimes as `find -printf %C@`: what the
#: watch compares to tell a change from the same change seen twice).
DIRS = r"""cd "$1" || exit 0; shift; i=0
for a; do
  r=${a#?}
  if [ -d "$r" ] && [ ! -L "$r" ]; then
    echo "D $i"
    if [ "${a%"$r"}" = + ]; then
      find "$r" \( -name node_modules -o -name .next -o -name .git \) -prune -o -type f -printf 'F %C@ %p\n'
    fi
  fi
  i=$((i+1))
done
for a; do printf './%s\0' "${a#?}"; done |
  xargs -0 -r sh -c 'find "$@" -maxdepth 0 -printf "C %C@ %p\n" 2>/dev/null' ctimes
exit 0"""

#: `sh -c LIST list WORKDIR`: the sandbox's clock (`%s.%N`, a line), then `<ctime> <path>` for every
#: file of the workspace outside node_modules, .next and .git, each ended by a NUL: the catch-up
#: after a watcher failed (`changes.ChangeWindow.apply_listing`).
LIST = r"""cd "$1" || exit 93
date +%s.%N
find . \( -name node_modules -o -name .next -o -name .git \) -prune -o -type f -printf '%C@ %P\0'
"""

#: `sh -c READ read WORKDIR REL OFFSET COUNT (whole|range)`: at most COUNT bytes of the regular file
#: REL from OFFSET on stdout, its size on stderr. Only a regular file (after symlinks) is read:
#: exit 94 for a directory or anything else (`[ -f ]` is a stat: a FIFO is never opened), 93
#: when there is nothing. `whole`: exit 95 when the size is over COUNT - 1 (nothing read). The read
#: opens non-blocking (a FIFO put in its place meanwhile reads as empty) and seeks to OFFSET.
READ = r"""cd "$1" || exit 93; f=$2; o=$3; n=$4
if [ ! -f "$f" ]; then
  if [ -d "$f" ]; then echo directory >&2; exit 94; fi
  if [ -e "$f" ]; then echo other >&2; exit 94; fi
  exit 93
fi
s=$(stat -L -c %s -- "$f") || exit 93
echo "$s" >&2
if [ "$5" = whole ] && [ "$s" -ge "$n" ]; then exit 95; fi
if [ "$o" -ge "$s" ] || [ "$n" -eq 0 ]; then exit 0; fi
exec dd if="$f" iflag=nonblock,skip_bytes,count_bytes skip="$o" count="$n" bs=65536 status=none
"""

#: `sh -c CLEAR_STATE clear STATE_DIR`: after a resume, remove the state of processes that ran in
#: the snapshotted sandbox (their locks, logs, the dev server record): none of them runs here.
CLEAR_STATE = r"""rm -rf "$1" && mkdir -p "$1"
"""
