#!/bin/sh
# wasmcell node installer.
#
#   install.sh [install]   put containerd-shim-wasmtime-v1 and wasmcell on the
#                          node and register the CRI runtime handler "wasmtime"
#   install.sh uninstall   remove them again
#
# It is the entrypoint of the node-installer image (see Dockerfile), run in a
# pod that is privileged, has hostPID: true, and mounts the node's / at /host
# (deploy/node-installer/daemonset.yaml). It also runs directly on a node
# with HOST_ROOT=/. Plain POSIX sh; it needs cmp, cksum, sed and, for the
# restart, nsenter (util-linux) and the node's systemctl. containerd's config
# is edited by `wasmcell containerd-config add|remove`, run from WASMCELL_BIN.
#
# Environment:
#   HOST_ROOT           where the node's root filesystem is mounted (default /host;
#                       use / when running on the node itself)
#   CONTAINERD_CONFIG   containerd's config file, as this script sees it
#                       (default $HOST_ROOT/etc/containerd/config.toml)
#   RESTART             true (default): restart containerd if its config changed;
#                       always: restart even if unchanged; false: never restart
#   CONTAINERD_SERVICE  systemd unit to restart (default containerd)
#   WASMCELL_BIN        directory holding the shim and wasmcell to install
#                       (default /opt/wasmcell/bin)
#
# Restarting: with HOST_ROOT=/ this runs `systemctl restart containerd`. With
# the node mounted elsewhere it runs
#   nsenter -t 1 -m -u -i -n -p -- systemctl restart containerd
# i.e. systemctl of the node, entered through PID 1's namespaces; that needs
# hostPID: true and a privileged container. Running containers survive a
# containerd restart (each has its own shim process). If the restart fails,
# $HOST_ROOT/run/wasmcell-restart-pending remembers it, and the next run
# restarts even though the config is then unchanged.
#
# What it changes on the node:
#   - /usr/local/bin/containerd-shim-wasmtime-v1 and /usr/local/bin/wasmcell
#     (each replaced atomically, only when it differs from the one to install)
#   - containerd's config, through `wasmcell containerd-config add`: one block
#     between the lines
#       # wasmcell runtime handler
#       # end wasmcell runtime handler
#     for the file's schema (no `version` line: 1; or 2, 3): the handler
#     `wasmtime`, listing pod_annotations and container_annotations
#     ["wasmcell.dev/*"] (wasmcell's grants), with runc too if
#     the file does not register runc, its default runtime (containerd 1.x
#     keeps only the runtimes a file lists); the file before is kept as
#     <config>.wasmcell-backup; no file: it is created (`version = 2`). See
#     `wasmcell containerd-config add --help` and docs/install.md.
#   The config is checked (`add --check`) before anything is changed.
#
# Uninstall runs `wasmcell containerd-config remove` (the backup is restored
# byte for byte if the config is otherwise unchanged since install; a file
# that install created is deleted; otherwise only the block goes), then
# removes both binaries.
set -eu

SHIM=containerd-shim-wasmtime-v1
CLI_NAME=wasmcell

HOST_ROOT=${HOST_ROOT:-/host}
# "/" becomes "", so "$ROOT/usr/local/bin" is "/usr/local/bin".
ROOT=${HOST_ROOT%/}
CONFIG=${CONTAINERD_CONFIG:-$ROOT/etc/containerd/config.toml}
RESTART=${RESTART:-true}
SERVICE=${CONTAINERD_SERVICE:-containerd}
SRC_DIR=${WASMCELL_BIN:-/opt/wasmcell/bin}
BIN_DIR=$ROOT/usr/local/bin
PENDING=$ROOT/run/wasmcell-restart-pending

TMP=
cleanup() {
    if [ -n "$TMP" ]; then rm -f "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 1' HUP INT TERM

say() { printf 'wasmcell-installer: %s\n' "$*"; }
die() { printf 'wasmcell-installer: error: %s\n' "$*" >&2; exit 1; }

# The config's checksum, or "absent": tells whether add/remove changed it.
config_state() {
    if [ -e "$CONFIG" ]; then cksum < "$CONFIG"; else echo absent; fi
}

# The wasmcell CLI that edits the config: the one to install; for uninstall
# on the node itself (HOST_ROOT=/) also the one install put there.
find_cli() {
    CLI=$SRC_DIR/$CLI_NAME
    if [ ! -x "$CLI" ] && [ "$1" = uninstall ] && [ -z "$ROOT" ] && [ -x "$BIN_DIR/$CLI_NAME" ]; then
        CLI=$BIN_DIR/$CLI_NAME
    fi
    [ -x "$CLI" ] || die "$SRC_DIR/$CLI_NAME not found (set WASMCELL_BIN to the directory holding $SHIM and $CLI_NAME)"
}

# containerd-config SUBCOMMAND [ARGS]: runs the CLI on the config; a refusal
# ends the script with a hint about where it looked.
containerd_config() {
    "$CLI" containerd-config "$@" --config "$CONFIG" ||
        die "wasmcell containerd-config $* refused $CONFIG (see above); nothing was changed. The node's / is expected at HOST_ROOT ($HOST_ROOT); set CONTAINERD_CONFIG if containerd reads another file."
}

# --- install --------------------------------------------------------------------

# install_bin NAME: copies $SRC_DIR/NAME to $BIN_DIR/NAME, through a temporary
# name and mv (a running shim keeps its binary busy), unless identical.
install_bin() {
    src=$SRC_DIR/$1
    dest=$BIN_DIR/$1
    if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
        say "$dest is already this build: left as is"
        return 0
    fi
    version=
    if [ "$1" = "$SHIM" ]; then
        version=$("$src" -v 2>/dev/null | sed -n 's/^[[:space:]]*Version:[[:space:]]*//p' || true)
    fi
    mkdir -p "$BIN_DIR"
    TMP=$BIN_DIR/.$1.wasmcell-tmp.$$
    cp "$src" "$TMP"
    chmod 0755 "$TMP"
    mv -f "$TMP" "$dest"
    TMP=
    say "installed $1 ${version:+$version }at $dest"
}

do_install() {
    say "installing into ${ROOT:-/} (containerd config $CONFIG)"
    [ -f "$SRC_DIR/$SHIM" ] || die "$SRC_DIR/$SHIM not found (set WASMCELL_BIN to the directory holding $SHIM)"
    find_cli install
    # Everything that can refuse is checked before anything changes.
    containerd_config add --check
    install_bin "$SHIM"
    install_bin "$CLI_NAME"
    before=$(config_state)
    containerd_config add
    changed=no
    if [ "$(config_state)" != "$before" ]; then changed=yes; fi
    restart_containerd "$changed"
    say "done. Check on the node: containerd config dump | grep -A1 runtimes.wasmtime"
}

# --- uninstall ------------------------------------------------------------------

do_uninstall() {
    say "uninstalling from ${ROOT:-/} (containerd config $CONFIG)"
    find_cli uninstall
    before=$(config_state)
    containerd_config remove
    changed=no
    if [ "$(config_state)" != "$before" ]; then changed=yes; fi
    for name in "$SHIM" "$CLI_NAME"; do
        if [ -e "$BIN_DIR/$name" ]; then
            rm -f "$BIN_DIR/$name"
            say "removed $BIN_DIR/$name"
        else
            say "$BIN_DIR/$name not present"
        fi
    done
    say "shims already running keep running until their containers end"
    restart_containerd "$changed"
    say "done"
}

# --- restart --------------------------------------------------------------------

restart_containerd() {
    changed=$1
    case $RESTART in
        false)
            if [ "$changed" = yes ]; then
                say "RESTART=false: not restarting containerd; restart it for the config change to take effect"
            fi
            return 0 ;;
        always) ;;
        true)
            if [ "$changed" = no ]; then
                if [ ! -e "$PENDING" ]; then
                    say "containerd config unchanged: not restarting containerd"
                    return 0
                fi
                say "an earlier run changed containerd's config but could not restart containerd: restarting now"
            fi ;;
    esac
    if [ -d "$ROOT/run" ]; then : > "$PENDING" || true; fi
    if [ -z "$ROOT" ]; then
        set -- systemctl restart "$SERVICE"
    else
        set -- nsenter -t 1 -m -u -i -n -p -- systemctl restart "$SERVICE"
    fi
    say "restarting containerd: $*"
    "$@" || die "restart failed; run 'systemctl restart $SERVICE' on the node (the next run of the installer tries again)"
    rm -f "$PENDING"
    say "containerd restarted"
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
