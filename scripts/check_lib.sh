# Shared by scripts/arm_check.sh and scripts/windows_check.sh (sourced, with CHECK set
# to the check's name): what they need is installed where it can be, else they skip.

# Says why the check is skipped, and ends it successfully.
skip() {
    echo "$CHECK: SKIPPED ($*)"
    exit 0
}

# Whether apt-get is here and runs as root.
can_apt() {
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null
}

# apt-get install "$@", refreshing the package lists once if the first try fails;
# fails without root or apt-get.
apt_install() {
    can_apt || return 1
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "$@" >/dev/null 2>&1 && return 0
    apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "$@" >/dev/null 2>&1
}

# The Rust target $1, added by rustup where it is missing; else the check is skipped.
need_target() {
    rustup target list --installed 2>/dev/null | grep -qx "$1" ||
        rustup target add "$1" >/dev/null 2>&1 || skip "rustup could not add $1"
}
