#!/usr/bin/env bash
# Take images/browser.png: a real screenshot of http://localhost:9000/ping in
# headless Chromium while `make local` (the one-process demo) runs.
# `make screenshot` calls this from the repository root.
#
# Needs Chromium (Debian: apt-get install chromium). Runs as root too, which is
# why the sandbox is off. The demo is started in a process group of its own and
# stopped with SIGINT to that group when this script exits, whether the
# screenshot worked or not.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

URL=http://localhost:9000/ping
OUT=images/browser.png
WAIT=180 # seconds for the demo to answer; the first `make local` also creates .venv

browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
if [ -z "$browser" ]; then
	echo "make screenshot needs Chromium: apt-get install chromium (Debian/Ubuntu)" >&2
	exit 1
fi

# urllib, not curl: python3 is there wherever the demo runs.
answers() {
	python3 - "$URL" <<-'EOF' 2>/dev/null
		import sys, urllib.request
		with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
		    sys.exit(0 if r.read().strip() == b"pong" else 1)
	EOF
}

# The demo needs ports 9000, 9001 and 8080 on 127.0.0.1.
for port in 9000 9001 8080; do
	if python3 -c "import socket, sys; socket.create_connection(('127.0.0.1', $port), 2)" 2>/dev/null; then
		echo "port $port is in use: stop what listens there, so the picture shows this demo" >&2
		exit 1
	fi
done

log="$(mktemp)"
profile="$(mktemp -d)"
demo=""

stop_demo() {
	if [ -n "$demo" ] && kill -0 "$demo" 2>/dev/null; then
		kill -INT -- "-$demo" 2>/dev/null || true
		# Every role stops within 2 s of SIGINT; allow 10 s, then insist.
		for _ in $(seq 100); do
			kill -0 "$demo" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL -- "-$demo" 2>/dev/null || true
		wait "$demo" 2>/dev/null || true
	fi
	rm -rf "$profile" "$log"
}
trap stop_demo EXIT
trap 'exit 130' INT TERM

# With job control on, a background job gets its own process group, whose id is
# its pid: `kill -- -$demo` reaches make and the demo it execs.
set -m
make --no-print-directory local >"$log" 2>&1 </dev/null &
demo=$!
set +m

# Bounded poll of an external process: is the demo answering yet?
deadline=$((SECONDS + WAIT))
until answers; do
	if ! kill -0 "$demo" 2>/dev/null; then
		echo "make local exited before $URL answered; its output:" >&2
		cat "$log" >&2
		exit 1
	fi
	if [ "$SECONDS" -ge "$deadline" ]; then
		echo "$URL did not answer pong within $WAIT s; the demo's output:" >&2
		cat "$log" >&2
		exit 1
	fi
	sleep 0.5
done

rm -f "$OUT"
timeout --kill-after=5 60 "$browser" --headless --no-sandbox --disable-gpu --disable-quic \
	--no-first-run --disable-background-networking --disable-component-update --disable-sync \
	--user-data-dir="$profile" --window-size=800,400 --screenshot="$OUT" "$URL" \
	>"$profile/chromium.log" 2>&1 || true
if [ ! -s "$OUT" ]; then
	echo "Chromium wrote no $OUT; its output:" >&2
	cat "$profile/chromium.log" >&2
	exit 1
fi
echo "$OUT: $URL in headless Chromium"

# The gateway's live status page (admin listener, :9002), once the producer has
# sent a few requests; the virtual-time budget lets the page's script fetch
# /api/tunnels before the picture is taken.
STATUS_URL=http://localhost:9002/
STATUS_OUT=images/status.png
sleep 3  # not readiness: let a few requests flow, so the page has numbers to show
rm -f "$STATUS_OUT"
timeout --kill-after=5 60 "$browser" --headless --no-sandbox --disable-gpu --disable-quic \
	--no-first-run --disable-background-networking --disable-component-update --disable-sync \
	--user-data-dir="$profile" --window-size=1000,640 --virtual-time-budget=3000 \
	--screenshot="$STATUS_OUT" "$STATUS_URL" >"$profile/chromium.log" 2>&1 || true
if [ ! -s "$STATUS_OUT" ]; then
	echo "Chromium wrote no $STATUS_OUT; its output:" >&2
	cat "$profile/chromium.log" >&2
	exit 1
fi
echo "$STATUS_OUT: $STATUS_URL in headless Chromium"
