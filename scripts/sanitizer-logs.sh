#!/usr/bin/env bash
# Usage: scripts/sanitizer-logs.sh EXE LOGDIR LABEL
# After a sanitizer test run: wait (up to 30 s) for background processes
# running EXE to exit, since a leak report is written at exit, then print
# every report in LOGDIR. Exits 1 if there is any.
set -u
exe=$1 logdir=$2 label=$3
busy=""
for _ in $(seq 1 150); do
	busy=""
	for p in /proc/[0-9]*; do
		[ "$(readlink "$p/exe" 2>/dev/null)" = "$exe" ] && busy="$busy ${p#/proc/}"
	done
	[ -z "$busy" ] && break
	sleep 0.2
done
[ -n "$busy" ] && echo "warning: $exe still running (pids$busy)"
# An empty log is a process killed (SIGKILL, by a crash test) just as
# the sanitizer opened its file: nothing was reported, but say so.
for f in "$logdir"/*; do
	[ -f "$f" ] && [ ! -s "$f" ] && echo "warning: empty $label log $f (process killed while opening it)"
done
# LeakSanitizer checks at exit by stopping every thread with ptrace; a
# process SIGKILLed by a crash test in that instant leaves only this line
# (no check was made, nothing was found): a warning too.
interrupted='^==[0-9]+==Unable to get registers from thread [0-9]+\.$'
reports=""
for f in $(find "$logdir" -type f -size +0c); do
	if ! grep -Evq "$interrupted" "$f"; then
		echo "warning: $label leak check interrupted in $f (process killed as it exited)"
	else
		reports="$reports $f"
	fi
done
if [ -n "$reports" ]; then
	echo "$label reports found in $logdir:"
	for f in $reports; do
		echo "==== $f"
		cat "$f"
	done
	exit 1
fi
echo "no $label reports"
