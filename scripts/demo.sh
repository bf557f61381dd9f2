#!/usr/bin/env bash
# Isolator end to end, on embedded defaults: `make demo` runs this after `make build`.
#
# It starts a private isolatord (its own socket, state and an empty policy directory, so
# only the policies compiled into the binary apply) in a temporary directory, makes sample
# files that look like downloads (Chromium's user.xdg.origin.url xattr), opens each with
# `isoctl open` and shows what happened: which were trusted, isolated in a micro VM (with
# the handler's output and the files it returned) or denied, then the task list, the
# daemon's status and the audit log. Everything it creates is removed at the end unless
# KEEP=1 is set. Needs root (the daemon reads files with the caller's identity and serves
# /dev/kvm) and busybox-static and poppler-utils (`make deps`).
set -euo pipefail

cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/bin}
ISOCTL=$BIN/isoctl
ISOLATORD=$BIN/isolatord

bold=$'\e[1m' dim=$'\e[2m' off=$'\e[0m'
[ -t 1 ] || bold='' dim='' off=''
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$off"; }
show() { printf '%s$ %s%s\n' "$dim" "$*" "$off"; "$@"; }
die() { echo "demo: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (sudo make demo): isolatord needs /dev/kvm and reads files with the caller's identity"
[ -x "$ISOCTL" ] && [ -x "$ISOLATORD" ] || die "$BIN/isoctl and $BIN/isolatord are missing: run make build"
[ -r /dev/kvm ] || die "/dev/kvm is missing: micro VMs need KVM"
for p in /usr/bin/busybox /usr/bin/pdftotext; do
	[ -x "$p" ] || die "$p is missing: run make deps (busybox-static, poppler-utils)"
done
command -v setfattr >/dev/null || die "setfattr is missing: run make deps (attr)"

DEMO=$(mktemp -d /var/tmp/isolator-demo.XXXXXX)
DAEMON_PID=
cleanup() {
	if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
		kill -TERM "$DAEMON_PID" 2>/dev/null || true
		wait "$DAEMON_PID" 2>/dev/null || true
	fi
	if [ "${KEEP:-0}" = 1 ]; then
		echo "demo: kept $DEMO"
	else
		rm -rf "$DEMO"
	fi
}
trap cleanup EXIT

SOCK=$DEMO/run/isolator.sock
STATE=$DEMO/state
FILES=$DEMO/downloads
RESULTS=$DEMO/Isolated
mkdir -p "$DEMO/run" "$STATE" "$DEMO/policies.d" "$FILES" "$RESULTS"
if ! setfattr -n user.isolator.probe -v 1 "$FILES" 2>/dev/null; then
	die "$FILES is on a file system without user xattrs; set TMPDIR elsewhere"
fi
setfattr -x user.isolator.probe "$FILES"
iso() { "$ISOCTL" --socket "$SOCK" "$@"; }

step "Starting isolatord on embedded defaults in $DEMO"
echo "   (the first start builds the guest images busybox and documents from host programs)"
"$ISOLATORD" --socket "$SOCK" --state-dir "$STATE" --policy-dir "$DEMO/policies.d" \
	--log-level info 2>"$DEMO/isolatord.log" &
DAEMON_PID=$!
for _ in $(seq 1 300); do
	iso status >/dev/null 2>&1 && break
	kill -0 "$DAEMON_PID" 2>/dev/null || { cat "$DEMO/isolatord.log" >&2; die "isolatord exited during start-up"; }
	sleep 0.1
done
iso status >/dev/null 2>&1 || { cat "$DEMO/isolatord.log" >&2; die "isolatord did not become ready within 30 s"; }
show iso status

step "Making sample files that look like downloads"
# download FILE URL: tag FILE with the origin Chromium records for a download.
download() { setfattr -n user.xdg.origin.url -v "$2" "$1"; printf '   %-18s from %s\n' "$(basename "$1")" "$2"; }

# A PDF (a minimal valid one with a correct cross-reference table).
pdf() {
	local text=$1 out=$2 body="" offs=() obj
	local objs=(
		"<< /Type /Catalog /Pages 2 0 R >>"
		"<< /Type /Pages /Kids [3 0 R] /Count 1 >>"
		"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>"
		"<< /Length $((${#text} + 31)) >>
stream
BT /F1 18 Tf 72 700 Td ($text) Tj ET
endstream"
		"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
	)
	body="%PDF-1.4"$'\n'
	for i in "${!objs[@]}"; do
		offs+=("${#body}")
		body+="$((i + 1)) 0 obj"$'\n'"${objs[$i]}"$'\n'"endobj"$'\n'
	done
	local xref=${#body}
	body+="xref"$'\n'"0 $((${#objs[@]} + 1))"$'\n'"0000000000 65535 f "$'\n'
	for o in "${offs[@]}"; do body+=$(printf '%010d 00000 n ' "$o")$'\n'; done
	body+="trailer"$'\n'"<< /Size $((${#objs[@]} + 1)) /Root 1 0 R >>"$'\n'"startxref"$'\n'"$xref"$'\n'"%%EOF"$'\n'
	printf '%s' "$body" >"$out"
}
LC_ALL=C pdf "Quarterly report: isolated in a micro VM" "$FILES/report.pdf"
download "$FILES/report.pdf" "https://unknown-site.example/report.pdf"

mkdir -p "$DEMO/src/photos"
echo "holiday notes" >"$DEMO/src/notes.txt"
printf 'P1\n2 2\n1 0\n0 1\n' >"$DEMO/src/photos/tiny.pbm"
tar -C "$DEMO/src" -cf "$FILES/holiday.tar" notes.txt photos
download "$FILES/holiday.tar" "https://files.example.net/holiday.tar"

cat >"$FILES/install.sh" <<'EOF'
#!/bin/sh
# A script someone sent. It runs with busybox sh in a micro VM that has no /etc/shadow,
# no network and no way to start other programs; only /output comes back.
echo "installing into $PWD"
if read -r line </etc/shadow 2>/dev/null; then echo "read /etc/shadow: $line"; else echo "/etc/shadow: not there"; fi
echo "built" >/output/install.log
echo "done"
EOF
download "$FILES/install.sh" "https://pastebin.example.org/raw/install.sh"

# The EICAR test file: harmless, and on the shipped known-bad list.
printf '%s' 'X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*' >"$FILES/invoice.txt"
download "$FILES/invoice.txt" "https://mail.example.com/attachment/invoice.txt"
printf '   %-18s a system file\n' /etc/hostname

step "Asking the policy first (no daemon needed)"
show "$ISOCTL" policy explain --policy-dir "$DEMO/policies.d" "$FILES/holiday.tar"

failed=0
# open_one FILE WANT: isoctl open FILE, which should exit with status WANT (0 handled,
# 2 denied; see isoctl open --help).
open_one() {
	step "isoctl open $(basename "$1")"
	set +e
	show iso open --no-launch --results-dir "$RESULTS" "$1"
	local rc=$?
	set -e
	if [ "$rc" = "$2" ]; then
		echo "   exit status $rc, as expected"
	else
		echo "   exit status $rc, expected $2" >&2
		failed=1
	fi
}
open_one "$FILES/report.pdf" 0
open_one "$FILES/holiday.tar" 0
open_one "$FILES/install.sh" 0
open_one "$FILES/invoice.txt" 2
open_one /etc/hostname 0

step "What came back (only the owner's results, in per-task directories)"
(cd "$RESULTS" && find . -type f | sort | while read -r f; do
	printf '   %s (%s bytes)\n' "$f" "$(stat -c %s "$f")"
done)
pdftxt=$(find "$RESULTS" -name report.txt | head -n 1)
if [ -n "$pdftxt" ]; then
	echo "   text of the PDF, extracted by pdftotext in a micro VM: $(tr -s ' \n' ' ' <"$pdftxt")"
else
	echo "   the PDF's text did not come back" >&2
	failed=1
fi
if [ -n "$(find "$RESULTS" -name notes.txt)" ] && [ -n "$(find "$RESULTS" -name install.log)" ]; then
	one=$(find "$RESULTS" -name notes.txt | head -n 1)
	show getfattr --absolute-names -d -m '^user.isolator' "$one"
else
	echo "   the archive's or the script's files did not come back" >&2
	failed=1
fi

step "Tasks, daemon status, audit log"
show iso ps
show iso status
echo "$dim\$ tail -n 3 $STATE/audit.log$off"
tail -n 3 "$STATE/audit.log" 2>/dev/null || ls "$STATE"

step "Stopping isolatord (SIGTERM)"
kill -TERM "$DAEMON_PID"
wait "$DAEMON_PID" && echo "   isolatord stopped cleanly" || { echo "   isolatord exited with status $?" >&2; failed=1; }
DAEMON_PID=
if [ "$failed" != 0 ]; then
	echo "demo: something did not work; the daemon log follows" >&2
	cat "$DEMO/isolatord.log" >&2
	exit 1
fi
step "Demo complete"
