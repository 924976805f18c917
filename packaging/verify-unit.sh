#!/bin/sh
# Checks packaging/gupwatch.service with `systemd-analyze verify` and prints
# its `systemd-analyze security` exposure score, without installing it.
#
# Works without a running systemd (containers, CI): the unit is verified
# under a throwaway --root holding the host's unit files (for sysinit.target
# and friends), a placeholder /usr/bin/gupwatch (verify only checks that
# ExecStart is executable) and /bin/kill (ExecReload); --man=no skips the
# man: Documentation= lookups, which fail where the pages are not installed.
# Needs the `systemd` package (apt-get install systemd).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
command -v systemd-analyze >/dev/null || { echo "systemd-analyze missing: apt-get install systemd" >&2; exit 2; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/bin" "$root/bin" "$root/etc/systemd/system" "$root/usr/lib/systemd"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
printf '#!/bin/sh\n' > "$root/usr/bin/gupwatch"
chmod 755 "$root/usr/bin/gupwatch"
cp "$(PATH=/usr/bin:/bin which kill)" "$root/bin/kill"
cp "$here/gupwatch.service" "$root/etc/systemd/system/"
unit="$root/etc/systemd/system/gupwatch.service"
systemd-analyze verify --man=no --root="$root" "$unit"
echo "systemd-analyze verify: ok"
# --offline appeared in systemd 250; older ones skip the score.
systemd-analyze security --offline=true --root="$root" --man=no "$unit" 2>/dev/null | tail -n 1 || true
