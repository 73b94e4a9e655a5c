#!/usr/bin/env bash
# Fetches ONNX Runtime's C/C++ headers from Debian trixie's libonnxruntime-dev (bookworm ships none) into
# build/ort/include, with a private apt configuration: the machine's own Debian mirror, suite trixie, signatures
# checked against the machine's Debian keyring. The system's sources and package state are not touched.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out="$here/build/ort"
[ -f "$out/include/onnxruntime_cxx_api.h" ] && exit 0

# The first Debian mirror this machine's apt uses (deb822 .sources or one-line .list files); never a fixed host.
mirror=$(
  { cat /etc/apt/sources.list.d/*.sources 2>/dev/null; } | awk '
    /^URIs:/ {uri=$2} /^Suites:/ {suites=$0}
    /^$/ {if (uri ~ /debian\/?$/ && suites !~ /security/) {print uri; exit} uri=""; suites=""}
    END {if (uri ~ /debian\/?$/ && suites !~ /security/) print uri}' | head -1
)
if [ -z "$mirror" ]; then
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file):/) {print $i; exit}}' | head -1)
fi
[ -n "$mirror" ] || { echo "fetch-ort-headers: no Debian mirror found in this machine's apt configuration" >&2; exit 1; }

apt_dir="$here/build/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs" "$out"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
echo "deb [signed-by=$keyring] $mirror trixie main" > "$apt_dir/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
          -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o "Debug::NoLocking=1"
          -o "APT::Sandbox::User=root")
echo "fetch-ort-headers: libonnxruntime-dev from $mirror (trixie)"
apt-get "${apt_opts[@]}" update -qq
(cd "$apt_dir/debs" && apt-get "${apt_opts[@]}" download libonnxruntime-dev)
rm -rf "$apt_dir/extract" && dpkg-deb -x "$apt_dir"/debs/libonnxruntime-dev_*.deb "$apt_dir/extract"
headers=$(dirname "$(find "$apt_dir/extract" -name onnxruntime_cxx_api.h | head -1)")
rm -rf "$out/include" && cp -r "$headers" "$out/include"
grep -m1 -o 'ORT_API_VERSION [0-9]*' "$out/include/onnxruntime_c_api.h"
