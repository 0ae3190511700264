#!/usr/bin/env bash
# Installs the real protocol peers the tests and the lab talk to, when they are missing:
# sipp (Debian sip-tester), coturn (turnserver, turnutils_uclient), tshark, iproute2 (ip netns),
# stunnel4: Debian's SIPp is built without TLS (no `-t l1`), so TLS scenarios run SIPp over
# TCP through stunnel, which does the (mutual) TLS with the lab certificates.
set -euo pipefail
need=()
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
command -v turnutils_uclient >/dev/null 2>&1 || need+=(coturn)
command -v tshark >/dev/null 2>&1 || need+=(tshark)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v stunnel4 >/dev/null 2>&1 || command -v stunnel >/dev/null 2>&1 || need+=(stunnel4)
# baresip, a real SIP UA without SRTP (tests/gateway/test_best_effort_baresip.py).
command -v baresip >/dev/null 2>&1 || need+=(baresip-core)
# libnice through GObject introspection (system python3): the [MS-ICE2] and MS-TURN peer.
/usr/bin/python3 -c 'import gi; gi.require_version("Nice", "0.1")' >/dev/null 2>&1 \
  || need+=(gir1.2-nice-0.1 python3-gi)
# chromium + its driver: the operator's page is tested in a headless browser (selenium).
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
# pidgin-sipe, the real Microsoft client (tests/lab/test_real_client.py): headless pidgin and
# its D-Bus, GStreamer media (plugins-bad: srtpenc; nice: libnice), and what the test's
# libpurple plugin and libxml2 shim are compiled against (tests/peers/pidgin_plugin/).
for pkg in pidgin pidgin-sipe xvfb xauth dbus-x11 libnss3-tools gstreamer1.0-plugins-base \
    gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-nice libpurple-dev \
    libxml2-dev pkg-config gcc; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
# The Docker lab test (tests/lab/test_docker.py): an engine, compose 1.29, and mmdebstrap for
# a local base image where no registry can be reached; iptables to clean up after dockerd.
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
# rtpengine (userspace forwarding only): bench/relay_vs_rtpengine.py runs it beside our relay.
command -v rtpengine >/dev/null 2>&1 || need+=(rtpengine-daemon)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "installing peers: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
