#!/usr/bin/env bash
# The system packages the test suite needs, installed with apt-get (Debian/Ubuntu; sudo unless root):
#   libmypaint-1.5-1 mypaint-brushes   the reference brush engine (tests/test_renderer_libmypaint.py)
#   openssh-server openssh-client rsync  `ray up` on a local-provider cluster (tests/test_cluster_launch.py)
#   chromium                           the run report in a headless browser (tests/test_run_report.py)
#   python3-venv                       where python3 cannot make a virtual environment
# Installs only what is missing. Without apt-get it prints what to install and exits 0: pytest then
# skips the tests that need a missing package and names them in its closing lines.
# Exits non-zero when apt-get fails (CI runs this and must have everything).
set -uo pipefail
packages=(libmypaint-1.5-1 mypaint-brushes openssh-server openssh-client rsync chromium)
python3 -c 'import ensurepip, venv' 2>/dev/null || packages+=(python3-venv)

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_system_packages: no apt-get here; install these (or your system's equivalents) for the" \
       "full test suite: ${packages[*]}" >&2
  exit 0
fi
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install_system_packages: needs root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
echo "install_system_packages: installing ${missing[*]}" >&2
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq || exit 1
core=()
browser=()
for package in "${missing[@]}"; do
  if [ "$package" = chromium ]; then browser+=(chromium); else core+=("$package"); fi
done
install() { "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
status=0
if [ ${#core[@]} -gt 0 ] && ! install "${core[@]}"; then
  echo "install_system_packages: apt-get could not install ${core[*]}" >&2
  status=1
fi
# Chromium on its own: Ubuntu ships it as a snap, so there apt-get fails and the rest must not.
if [ ${#browser[@]} -gt 0 ] && ! install chromium; then
  echo "install_system_packages: apt-get could not install chromium (on Ubuntu: sudo snap install chromium)" >&2
  status=1
fi
exit $status
