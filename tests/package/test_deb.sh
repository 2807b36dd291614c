#!/usr/bin/env bash
# The Debian package on this machine, as root: build it, `dpkg -i`, check
# the installed files, `systemd-analyze verify` the installed unit, check
# the installed config with the installed binary, `dpkg --purge`, and check
# that the machine is as it was. Needs no running systemd (the maintainer
# scripts must cope without one, as in a container or a chroot).
#
#   bash tests/package/test_deb.sh [PACKAGE.deb]   (default: build one)
set -euo pipefail
cd "$(dirname "$0")/../.."

fail() { echo "test_deb: FAIL: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (dpkg -i); run it with sudo"
if dpkg-query -W -f='${Status}' aquatic 2>/dev/null | grep -q 'ok installed'; then
    fail "a package named aquatic is already installed here: not replacing it"
fi

if [ $# -ge 1 ]; then
    deb=$1
else
    bash deploy/debian/build.sh
    deb=$(ls -t target/debian/aquatic_*.deb | head -n 1)
fi
echo "== package: $deb"
dpkg-deb --info "$deb" | sed 's/^/   /'

# Everything a package could leave behind: the paths under these
# directories, and the contents of systemd's and deb-systemd-helper's state.
snapshot() {
    find /etc /usr/bin /usr/share/doc /usr/lib/systemd /lib/systemd /var/lib/systemd \
        -xdev 2>/dev/null | LC_ALL=C sort
    find /etc/systemd /var/lib/systemd -xdev -type f 2>/dev/null | LC_ALL=C sort | xargs -r sha256sum
}
before=$(mktemp)
after=$(mktemp)
snapshot > "$before"

installed=0
cleanup() {
    if [ "$installed" = 1 ]; then dpkg --purge aquatic >/dev/null 2>&1 || true; fi
    rm -f "$before" "$after"
}
trap cleanup EXIT

echo "== dpkg -i"
dpkg -i "$deb"
installed=1

echo "== installed files"
[ -x /usr/bin/aquatic ] || fail "/usr/bin/aquatic missing or not executable"
/usr/bin/aquatic -p | cmp -s - /etc/aquatic/config.toml \
    || fail "/etc/aquatic/config.toml is not what aquatic -p prints"
dpkg-query -W -f='${Conffiles}\n' aquatic | grep -q '^ /etc/aquatic/config.toml ' \
    || fail "/etc/aquatic/config.toml is not a conffile"
unit=$(dpkg -L aquatic | grep '/systemd/system/aquatic\.service$' || true)
[ -n "$unit" ] && [ -f "$unit" ] || fail "no aquatic.service installed"
echo "   unit: $unit"
grep -qx 'ExecStart=/usr/bin/aquatic -c /etc/aquatic/config.toml' "$unit" \
    || fail "ExecStart= does not run the packaged binary"
grep -qx 'ExecStartPre=/usr/bin/aquatic --check-config /etc/aquatic/config.toml' "$unit" \
    || fail "ExecStartPre= does not check the config"
grep -qx 'ExecReload=/bin/kill -HUP $MAINPID' "$unit" || fail "ExecReload= does not send SIGHUP"
if grep -q /usr/local "$unit"; then fail "the packaged unit names /usr/local"; fi
for doc in README.md examples/sysctl.d/90-aquatic.conf examples/access-list.example copyright; do
    [ -f "/usr/share/doc/aquatic/$doc" ] || fail "/usr/share/doc/aquatic/$doc missing"
done
# The sysctl advice is an example, not applied.
[ ! -e /etc/sysctl.d/90-aquatic.conf ] || fail "the sysctl settings were installed under /etc"
# Installing neither enables nor starts the service (see deploy/README.md).
[ ! -e /etc/systemd/system/multi-user.target.wants/aquatic.service ] \
    || fail "installing enabled the service"

echo "== systemd-analyze verify $unit"
verify_out=$(systemd-analyze verify "$unit" 2>&1) || fail "verify failed: $verify_out"
# verify exits 0 on unknown keys and bad values ("ignoring"): any line
# about the unit is a failure too.
if grep -q 'aquatic\.service' <<<"$verify_out"; then fail "verify complained: $verify_out"; fi

echo "== /usr/bin/aquatic --check-config /etc/aquatic/config.toml"
/usr/bin/aquatic --check-config /etc/aquatic/config.toml || fail "the installed config does not check"
# The check catches an edited file's mistakes before a restart or reload.
broken=$(mktemp)
sed 's/^workers = 0$/wrokers = 0/' /etc/aquatic/config.toml > "$broken"
if /usr/bin/aquatic --check-config "$broken" 2>/dev/null; then
    rm -f "$broken"
    fail "a misspelled key passed the check"
fi
rm -f "$broken"

echo "== dpkg --purge aquatic"
dpkg --purge aquatic
installed=0
if dpkg-query -W -f='${Status}' aquatic 2>/dev/null | grep -q 'installed'; then
    fail "still installed after purge"
fi
snapshot > "$after"
if ! diff -u "$before" "$after"; then fail "the machine is not as it was before the install"; fi
echo "test_deb: OK"
