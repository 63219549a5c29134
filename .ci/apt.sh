# Sourced by the CI modules that need Debian packages: aptInstall PKG...
# installs them quietly as root, updating the package lists once if the
# first try fails (a fresh machine has none); returns non-zero without apt.
aptInstall() {
  command -v apt-get >/dev/null || return 1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null \
    || { apt-get update -q >/dev/null && \
         DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null; }
}
