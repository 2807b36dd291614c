#!/usr/bin/env bash
# Builds the Debian package: target/debian/aquatic_VERSION-1_ARCH.deb.
#
# What the package holds that is generated here, into target/deb-assets/:
#   config.toml      exactly what `aquatic -p` prints (installed as the
#                    conffile /etc/aquatic/config.toml)
#   aquatic.service  deploy/aquatic.service with the packaged binary's path
#                    (/usr/bin/aquatic instead of /usr/local/bin/aquatic)
# Installs cargo-deb when it is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --release --locked -p aquatic
assets=target/deb-assets
rm -rf "$assets"
mkdir -p "$assets"
target/release/aquatic -p > "$assets/config.toml"
sed 's|/usr/local/bin/aquatic|/usr/bin/aquatic|g' deploy/aquatic.service > "$assets/aquatic.service"
if grep -q /usr/local/ "$assets/aquatic.service"; then
    echo "the packaged unit still names /usr/local" >&2
    exit 1
fi
command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked --quiet
# (cargo-deb warns that the generated assets are not under target/release/:
# they need no building, so that is as meant.)
cargo deb -p aquatic --no-build --locked
