#!/bin/sh
# wasmcell node installer.
#
#   install.sh [install]   put containerd-shim-wasmtime-v1 on the node and
#                          register the CRI runtime handler "wasmtime"
#   install.sh uninstall   remove both again
#
# It is the entrypoint of the node-installer image (see Dockerfile), run in a
# pod that is privileged, has hostPID: true, and mounts the node's / at /host.
# It also runs directly on a node with HOST_ROOT=/.
#
# Environment:
#   HOST_ROOT           where the node's root filesystem is mounted (default /host;
#                       use / when running on the node itself)
#   CONTAINERD_CONFIG   containerd's config file, as this script sees it
#                       (default $HOST_ROOT/etc/containerd/config.toml)
#   RESTART             true (default): restart containerd if its config changed;
#                       always: restart even if unchanged; false: never restart
#   CONTAINERD_SERVICE  systemd unit to restart (default containerd)
#   WASMCELL_BIN        directory holding the shim to install (default /opt/wasmcell/bin)
#
# Restarting: with HOST_ROOT=/ this runs `systemctl restart containerd`. With
# the node mounted elsewhere it runs
#   nsenter -t 1 -m -u -i -n -p -- systemctl restart containerd
# i.e. systemctl of the node, entered through PID 1's namespaces; that needs
# hostPID: true and a privileged container. Running containers survive a
# containerd restart (each has its own shim process).
#
# What it changes on the node:
#   - /usr/local/bin/containerd-shim-wasmtime-v1 (replaced atomically)
#   - containerd's config: a block between the lines
#       # wasmcell runtime handler
#       # end wasmcell runtime handler
#     appended once (never twice); a copy of the previous file is kept as
#     <config>.wasmcell-backup
set -eu

MARK_BEGIN='# wasmcell runtime handler'
MARK_END='# end wasmcell runtime handler'
SHIM=containerd-shim-wasmtime-v1
RUNTIME_TYPE=io.containerd.wasmtime.v1

HOST_ROOT=${HOST_ROOT:-/host}
# "/" becomes "", so "$ROOT/usr/local/bin" is "/usr/local/bin".
ROOT=${HOST_ROOT%/}
CONFIG=${CONTAINERD_CONFIG:-$ROOT/etc/containerd/config.toml}
RESTART=${RESTART:-true}
SERVICE=${CONTAINERD_SERVICE:-containerd}
SRC_DIR=${WASMCELL_BIN:-/opt/wasmcell/bin}
BIN_DIR=$ROOT/usr/local/bin

TMP=
cleanup() { if [ -n "$TMP" ]; then rm -f "$TMP"; fi; }
trap cleanup EXIT
trap 'exit 1' HUP INT TERM

say() { printf 'wasmcell-installer: %s\n' "$*"; }
die() { printf 'wasmcell-installer: error: %s\n' "$*" >&2; exit 1; }

# Prints the config's schema version: the top-level `version = N` (top-level
# keys come before the first [table]); no such line means 1.
config_version() {
    v=$(awk '
        /^[[:space:]]*\[/ { exit }
        /^[[:space:]]*version[[:space:]]*=/ {
            sub(/^[^=]*=[[:space:]]*["\047]?/, "")
            sub(/[^0-9].*$/, "")
            print
            exit
        }' "$1")
    echo "${v:-1}"
}

# The runtime table name for a config schema.
handler_table() {
    case $1 in
        3) echo '[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.wasmtime]' ;;
        2) echo '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmtime]' ;;
        1) echo '[plugins.cri.containerd.runtimes.wasmtime]' ;;
        *) die "$CONFIG: unknown config version '$1' (expected 1, 2 or 3)" ;;
    esac
}

has_line() { grep -qx "[[:space:]]*$2[[:space:]]*" "$1"; }

# Replaces $CONFIG with the file $TMP, keeping a backup. Writes through a
# symlink instead of replacing it.
commit_config() {
    cp -p "$CONFIG" "$CONFIG.wasmcell-backup"
    say "previous config saved as $CONFIG.wasmcell-backup"
    if [ -L "$CONFIG" ]; then
        cat "$TMP" > "$CONFIG"
        rm -f "$TMP"
    else
        mv -f "$TMP" "$CONFIG"
    fi
    TMP=
}

restart_containerd() {
    changed=$1
    case $RESTART in
        false)
            if [ "$changed" = yes ]; then
                say "RESTART=false: not restarting containerd; restart it for the config change to take effect"
            fi
            return 0 ;;
        always) ;;
        true) if [ "$changed" = no ]; then say "containerd config unchanged: not restarting containerd"; return 0; fi ;;
    esac
    if [ -z "$ROOT" ]; then
        set -- systemctl restart "$SERVICE"
    else
        set -- nsenter -t 1 -m -u -i -n -p -- systemctl restart "$SERVICE"
    fi
    say "restarting containerd: $*"
    "$@" || die "restart failed; run 'systemctl restart $SERVICE' on the node"
    say "containerd restarted"
}

install_shim() {
    version=$("$SRC" -v 2>/dev/null | sed -n 's/^[[:space:]]*Version:[[:space:]]*//p' || true)
    mkdir -p "$BIN_DIR"
    TMP=$BIN_DIR/.$SHIM.wasmcell-tmp.$$
    cp "$SRC" "$TMP"
    chmod 0755 "$TMP"
    mv -f "$TMP" "$BIN_DIR/$SHIM"
    TMP=
    say "installed $SHIM ${version:+$version }at $BIN_DIR/$SHIM"
}

# Decides what install will do to the config, before anything is changed:
# ACTION=add (with TABLE set) or ACTION=keep.
plan_add() {
    [ -f "$CONFIG" ] || die "no containerd config at $CONFIG. Create one on the node first (containerd config default > /etc/containerd/config.toml) or set CONTAINERD_CONFIG to its path as seen here."
    ACTION=keep
    if has_line "$CONFIG" "$MARK_BEGIN"; then
        say "$CONFIG already has the wasmcell runtime handler: left as is"
        return 0
    fi
    if grep -Eq '^[[:space:]]*\[.*runtimes\.("wasmtime"|wasmtime)[[:space:]]*\]' "$CONFIG"; then
        grep -Eq "^[[:space:]]*runtime_type[[:space:]]*=[[:space:]]*[\"']$RUNTIME_TYPE[\"']" "$CONFIG" ||
            die "$CONFIG already defines a runtime named wasmtime, not with runtime_type \"$RUNTIME_TYPE\"; fix or remove it by hand"
        say "$CONFIG already registers runtime wasmtime (added by hand, without the wasmcell markers): left as is"
        return 0
    fi
    CONFIG_VERSION=$(config_version "$CONFIG")
    TABLE=$(handler_table "$CONFIG_VERSION")
    ACTION=add
}

add_handler() {
    say "$CONFIG: config version $CONFIG_VERSION"
    if grep -Eq '^[[:space:]]*imports[[:space:]]*=' "$CONFIG"; then
        say "warning: $CONFIG uses 'imports'. If an imported file defines the CRI plugin section, it replaces this block (containerd 1.6); then put the block in that file instead."
    fi
    TMP=$CONFIG.wasmcell-tmp.$$
    cp -p "$CONFIG" "$TMP"
    {
        cat "$CONFIG"
        # Make sure the block starts on a line of its own.
        if [ -s "$CONFIG" ] && [ -n "$(tail -c 1 "$CONFIG")" ]; then echo; fi
        echo
        echo "$MARK_BEGIN"
        echo "$TABLE"
        echo "  runtime_type = \"$RUNTIME_TYPE\""
        echo "$MARK_END"
    } > "$TMP"
    commit_config
    say "added runtime handler 'wasmtime' to $CONFIG:"
    printf '    %s\n    %s\n' "$TABLE" "  runtime_type = \"$RUNTIME_TYPE\""
}

# ACTION=remove or ACTION=keep, decided before anything is changed.
plan_remove() {
    ACTION=keep
    if [ ! -f "$CONFIG" ]; then
        say "no containerd config at $CONFIG: nothing to remove there"
    elif ! has_line "$CONFIG" "$MARK_BEGIN"; then
        say "$CONFIG has no wasmcell runtime handler: nothing to remove there"
    elif ! has_line "$CONFIG" "$MARK_END"; then
        die "$CONFIG has the line '$MARK_BEGIN' but not '$MARK_END'; remove the block by hand"
    else
        ACTION=remove
    fi
}

remove_handler() {
    TMP=$CONFIG.wasmcell-tmp.$$
    cp -p "$CONFIG" "$TMP"
    # Drops the marked block and the blank line install put before it.
    awk -v b="$MARK_BEGIN" -v e="$MARK_END" '
        { line = $0; gsub(/^[[:space:]]+|[[:space:]]+$/, "", line) }
        skip { if (line == e) skip = 0; next }
        line == b { skip = 1; held = 0; next }
        {
            if (held) print ""
            held = 0
            if (line == "") { held = 1; next }
            print
        }
        END { if (held) print "" }
    ' "$CONFIG" > "$TMP"
    commit_config
    say "removed the wasmcell runtime handler from $CONFIG"
}

do_install() {
    say "installing into ${ROOT:-/} (containerd config $CONFIG)"
    SRC=$SRC_DIR/$SHIM
    [ -f "$SRC" ] || die "$SRC not found (set WASMCELL_BIN to the directory holding $SHIM)"
    plan_add
    install_shim
    changed=no
    if [ "$ACTION" = add ]; then
        add_handler
        changed=yes
    fi
    restart_containerd "$changed"
    say "done. Check on the node: containerd config dump | grep -A1 runtimes.wasmtime"
}

do_uninstall() {
    say "uninstalling from ${ROOT:-/} (containerd config $CONFIG)"
    plan_remove
    if [ -e "$BIN_DIR/$SHIM" ]; then
        rm -f "$BIN_DIR/$SHIM"
        say "removed $BIN_DIR/$SHIM (shims already running keep running until their containers end)"
    else
        say "$BIN_DIR/$SHIM not present"
    fi
    changed=no
    if [ "$ACTION" = remove ]; then
        remove_handler
        changed=yes
    fi
    restart_containerd "$changed"
    say "done"
}

case $RESTART in
    true|always|false) ;;
    *) die "RESTART must be true, always or false (got '$RESTART')" ;;
esac

case ${1:-install} in
    install) do_install ;;
    uninstall) do_uninstall ;;
    -h|--help|help) sed -n '2,/^set -eu$/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' ;;
    *) die "unknown command '$1' (use install or uninstall)" ;;
esac
