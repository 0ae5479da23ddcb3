#!/usr/bin/env bash
# Runs every check and test of Passmesh. Installs what the tests need on Debian/Ubuntu first.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: a C toolchain and OpenSSL headers (the webauthn-rs relying party used by the tests);
# libtss2-dev for the daemon's TPM keystore (tss-esapi); swtpm (a software TPM, one per TPM test) and
# tpm2-tools (the tests extend PCRs and list TPM handles with them); chromium and firefox-esr for the
# browser-extension tests;
# dpkg-dev (dpkg-shlibdeps for the .deb's Depends), lintian and systemd (systemd-analyze) for the packaging tests;
# iproute2 (`ip netns`, veth, bridges) for the tests that run daemons in network namespaces; mount and
# util-linux (mount, unshare, nsenter, setpriv) for the overlay install test and the system-mode tests; age (the
# standard tool: a backup must decrypt with it and the identity `passmesh recovery identity` prints).
need=(build-essential pkg-config libssl-dev libtss2-dev swtpm tpm2-tools chromium firefox-esr dpkg-dev lintian
  systemd iproute2 mount util-linux age)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  install=("${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600
    install -y --no-install-recommends "${missing[@]}")
  # chromium's first install has been seen to fail with a transient dpkg error: try once more.
  "${install[@]}" || { sleep 5; "${install[@]}"; }
fi

command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy || true
# cargo-deb builds the .deb in the packaging tests; pinned so the package does not change under us.
cargo_deb_version=3.8.0
cargo deb --version 2>/dev/null | grep -qx "cargo-deb $cargo_deb_version" ||
  cargo install cargo-deb --version "$cargo_deb_version" --locked

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
