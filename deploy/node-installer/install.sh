#!/bin/sh
# wasmcell node installer.
#
#   install.sh [install]   put containerd-shim-wasmtime-v1 on the node and
#                          register the CRI runtime handler "wasmtime"
#   install.sh uninstall   remove both again
#
# It is the entrypoint of the node-installer image (see Dockerfile), run in a
# pod that is privileged, has hostPID: true, and mounts the node's / at /host
# (deploy/node-installer/daemonset.yaml). It also runs directly on a node
# with HOST_ROOT=/. Plain POSIX sh; it needs awk, grep, sed, cmp, mktemp and,
# for the restart, nsenter (util-linux) and the node's systemctl.
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
# containerd restart (each has its own shim process). If the restart fails,
# $HOST_ROOT/run/wasmcell-restart-pending remembers it, and the next run
# restarts even though the config is then unchanged.
#
# What it changes on the node:
#   - /usr/local/bin/containerd-shim-wasmtime-v1 (replaced atomically, only
#     when it differs from the one to install)
#   - containerd's config: one block between the lines
#       # wasmcell runtime handler
#       # end wasmcell runtime handler
#     appended once, for the file's schema (no `version` line: 1; or 2, 3), and
#     rewritten in place if a later run would write it differently. If the
#     file registers no CRI runtime of its own, the block also registers
#     containerd's default runtime, runc, explicitly: containerd 1.x replaces
#     its built-in runtime list with the file's, and without runc there its
#     CRI plugin refuses to load. The file before the block was added is kept
#     as <config>.wasmcell-backup.
#   - no config file at all (containerd runs on its defaults): it is created,
#     `version = 2` (read by containerd 1.6 to 2.x), holding only the block.
#     The directory must exist.
#   A `wasmtime` runtime that is already registered without the markers is
#   left alone if its runtime_type is io.containerd.wasmtime.v1, and is an
#   error otherwise; the config is never given a second `wasmtime` table.
#
# Uninstall removes the shim and the block. A config that is unchanged since
# install is restored byte for byte from the backup (which is then deleted);
# a file that install created is deleted; otherwise only the block goes.
set -eu

MARK_BEGIN='# wasmcell runtime handler'
MARK_END='# end wasmcell runtime handler'
SHIM=containerd-shim-wasmtime-v1
RUNTIME_TYPE=io.containerd.wasmtime.v1
RUNC_TYPE=io.containerd.runc.v2
# The first lines of a config file that install created.
CREATED_1='# Created by the wasmcell node installer: there was no containerd config'
CREATED_2="# file, containerd ran on its built-in defaults. 'install.sh uninstall'"
CREATED_3='# deletes this file again as long as it holds nothing else.'

HOST_ROOT=${HOST_ROOT:-/host}
# "/" becomes "", so "$ROOT/usr/local/bin" is "/usr/local/bin".
ROOT=${HOST_ROOT%/}
CONFIG=${CONTAINERD_CONFIG:-$ROOT/etc/containerd/config.toml}
BACKUP=$CONFIG.wasmcell-backup
RESTART=${RESTART:-true}
SERVICE=${CONTAINERD_SERVICE:-containerd}
SRC_DIR=${WASMCELL_BIN:-/opt/wasmcell/bin}
BIN_DIR=$ROOT/usr/local/bin
PENDING=$ROOT/run/wasmcell-restart-pending

TMP=
WORK=
cleanup() {
    if [ -n "$TMP" ]; then rm -f "$TMP"; fi
    if [ -n "$WORK" ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 1' HUP INT TERM

say() { printf 'wasmcell-installer: %s\n' "$*"; }
warn() { printf 'wasmcell-installer: warning: %s\n' "$*" >&2; }
die() { printf 'wasmcell-installer: error: %s\n' "$*" >&2; exit 1; }

# --- reading a config ---------------------------------------------------------

# The CRI plugin section that holds `containerd.runtimes` for each schema, as
# the scanner below spells table paths (bare keys bare, others double-quoted).
plugin_path() {
    case $1 in
        1) echo 'plugins.cri' ;;
        2) echo 'plugins."io.containerd.grpc.v1.cri"' ;;
        3) echo 'plugins."io.containerd.cri.v1.runtime"' ;;
    esac
}

# scan FILE: reads a containerd config as TOML far enough to answer what
# install needs, and prints one fact per line, fields separated by tabs:
#   version  V        the top-level `version` (absent: not printed)
#   handler  N  TYPE  a runtime `wasmtime` is defined under schema N's CRI
#                     section; TYPE is its runtime_type ("" if none is set)
#   runtimes N        some other runtime is defined under schema N's section
#   inline   N  PATH  PATH, a prefix of schema N's runtimes.wasmtime table, is
#                     given as a value (an inline table), so no [table] can be
#                     added below it
#   disabled VALUE    the top-level disabled_plugins value
# Key paths are normalised: `a . "b" . 'c.d'` and `a.b."c.d"` are the same.
# Comments, multi-line arrays and multi-line strings are skipped over.
scan() {
    awk -v p1="$(plugin_path 1)" -v p2="$(plugin_path 2)" -v p3="$(plugin_path 3)" '
    function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t\r]+$/, "", s); return s }
    # position of the first c outside quoted strings, 0 if none
    function uidx(s, c,   i, ch, q) {
        q = ""
        for (i = 1; i <= length(s); i++) {
            ch = substr(s, i, 1)
            if (q != "") {
                if (q == "\"" && ch == "\\") { i++; continue }
                if (ch == q) q = ""
                continue
            }
            if (ch == "\"" || ch == "\047") { q = ch; continue }
            if (ch == c) return i
        }
        return 0
    }
    # one key, unquoted, then double-quoted again unless it is a bare key
    function canon(k,   c) {
        k = trim(k)
        c = substr(k, 1, 1)
        if ((c == "\"" || c == "\047") && length(k) >= 2 && substr(k, length(k), 1) == c)
            k = substr(k, 2, length(k) - 2)
        if (k ~ /^[A-Za-z0-9_-]+$/) return k
        return "\"" k "\""
    }
    function dotted(s,   out, i) {
        out = ""
        while ((i = uidx(s, ".")) > 0) {
            out = out canon(substr(s, 1, i - 1)) "."
            s = substr(s, i + 1)
        }
        return out canon(s)
    }
    function unquote(v,   c) {
        v = trim(v)
        c = substr(v, 1, 1)
        if ((c == "\"" || c == "\047") && length(v) >= 2) v = substr(v, 2, length(v) - 2)
        return v
    }
    function strip_comment(v,   i) {
        i = uidx(v, "#")
        if (i > 0) v = substr(v, 1, i - 1)
        return trim(v)
    }
    # [ minus ] outside strings and comments
    function brackets(s,   i, ch, q, n) {
        q = ""; n = 0
        for (i = 1; i <= length(s); i++) {
            ch = substr(s, i, 1)
            if (q != "") {
                if (q == "\"" && ch == "\\") { i++; continue }
                if (ch == q) q = ""
                continue
            }
            if (ch == "\"" || ch == "\047") { q = ch; continue }
            if (ch == "#") break
            if (ch == "[") n++
            if (ch == "]") n--
        }
        return n
    }
    function starts(s, prefix) { return substr(s, 1, length(prefix)) == prefix }
    # kind: "table" or "key"; path: full normalised path; val: raw value
    function note(kind, path, val,   n, r, h, m) {
        if (kind == "key" && path == "version") version = unquote(val)
        if (kind == "key" && path == "disabled_plugins") disabled = val
        for (n = 1; n <= 3; n++) {
            r = P[n] ".containerd.runtimes"
            h = r ".wasmtime"
            if (path == h || starts(path, h ".")) {
                handler[n] = 1
                if (kind == "key" && path == h ".runtime_type") rtype[n] = unquote(val)
                if (kind == "key" && path == h && match(val, /runtime_type[ \t]*=[ \t]*("[^"]*"|\047[^\047]*\047)/)) {
                    m = substr(val, RSTART, RLENGTH)
                    sub(/^runtime_type[ \t]*=[ \t]*/, "", m)
                    rtype[n] = unquote(m)
                }
            } else if (starts(path, r ".")) {
                others[n] = 1
            }
            if (kind == "key" && (path == r || starts(h, path "."))) inline[n] = path
        }
    }
    BEGIN { P[1] = p1; P[2] = p2; P[3] = p3; table = ""; skip = ""; depth = 0; version = ""; disabled = "" }
    skip == "array" { depth += brackets($0); if (depth <= 0) skip = ""; next }
    skip != "" { if (index($0, skip) > 0) skip = ""; next }
    {
        line = trim($0)
        if (line == "" || substr(line, 1, 1) == "#") next
        if (substr(line, 1, 1) == "[") {
            inner = substr(line, 2)
            if (substr(inner, 1, 1) == "[") inner = substr(inner, 2)
            e = uidx(inner, "]")
            if (e == 0) next
            table = dotted(substr(inner, 1, e - 1))
            note("table", table, "")
            next
        }
        e = uidx(line, "=")
        if (e == 0) next
        key = dotted(substr(line, 1, e - 1))
        val = strip_comment(substr(line, e + 1))
        note("key", (table == "" ? key : table "." key), val)
        q3 = substr(val, 1, 3)
        if (q3 == "\"\"\"" || q3 == "\047\047\047") {
            if (index(substr(val, 4), q3) == 0) skip = q3
        } else if (substr(val, 1, 1) == "[") {
            depth = brackets(val)
            if (depth > 0) skip = "array"
        }
    }
    END {
        if (version != "") printf "version\t%s\n", version
        for (n = 1; n <= 3; n++) {
            if (n in handler) printf "handler\t%d\t%s\n", n, rtype[n]
            if (n in others) printf "runtimes\t%d\n", n
            if (n in inline) printf "inline\t%d\t%s\n", n, inline[n]
        }
        if (disabled != "") printf "disabled\t%s\n", disabled
    }' "$1"
}

# fact FACTS KIND [N]: the first line of FACTS for KIND (and schema N).
fact() {
    printf '%s\n' "$1" | awk -F '\t' -v k="$2" -v n="${3:-}" '$1 == k && (n == "" || $2 == n) { print; exit }'
}

has_line() { grep -qx "[[:space:]]*$2[[:space:]]*" "$1"; }

# strip_block IN OUT: IN without the marked block(s) and the one blank line
# install put before each.
strip_block() {
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
    ' "$1" > "$2"
}

# The marked block for schema $1; $2 = yes also registers runc.
render_block() {
    p=$(plugin_path "$1")
    echo "$MARK_BEGIN"
    if [ "$2" = yes ]; then
        echo "# runc, containerd's default runtime: this file defined no runtimes, and"
        echo "# containerd 1.x keeps only the runtimes a config file lists."
        echo "[$p.containerd.runtimes.runc]"
        echo "  runtime_type = \"$RUNC_TYPE\""
    fi
    echo "[$p.containerd.runtimes.wasmtime]"
    echo "  runtime_type = \"$RUNTIME_TYPE\""
    echo "$MARK_END"
}

# The lines of FILE from the first begin marker to the next end marker.
current_block() {
    awk -v b="$MARK_BEGIN" -v e="$MARK_END" '
        { line = $0; gsub(/^[[:space:]]+|[[:space:]]+$/, "", line) }
        !done && line == b { on = 1 }
        on { print $0 }
        on && line == e { on = 0; done = 1 }
    ' "$1"
}

# replace_block IN BLOCKFILE OUT: the first marked block of IN replaced by
# BLOCKFILE, later marked blocks dropped.
replace_block() {
    awk -v b="$MARK_BEGIN" -v e="$MARK_END" -v f="$2" '
        { line = $0; gsub(/^[[:space:]]+|[[:space:]]+$/, "", line) }
        skip { if (line == e) skip = 0; next }
        line == b {
            if (!done) { while ((getline l < f) > 0) print l; close(f); done = 1 }
            skip = 1; next
        }
        { print }
    ' "$1" > "$3"
}

# Writes the file $1 over $CONFIG: through a symlink, or by rename so that
# containerd never reads a half-written file.
write_config() {
    if [ -L "$CONFIG" ]; then
        cat "$1" > "$CONFIG"
    else
        TMP=$CONFIG.wasmcell-tmp.$$
        if [ -e "$CONFIG" ]; then cp -p "$CONFIG" "$TMP"; fi
        cat "$1" > "$TMP"
        mv -f "$TMP" "$CONFIG"
        TMP=
    fi
}

# --- install --------------------------------------------------------------------

# Decides what install does to the config before anything is changed. Sets
# ACTION (keep, add, replace or create) and, unless keep, $WORK/new (the
# whole new file) and VERSION.
plan_add() {
    if [ ! -e "$CONFIG" ] && [ ! -L "$CONFIG" ]; then
        dir=$(dirname "$CONFIG")
        [ -d "$dir" ] || die "neither $CONFIG nor its directory exists. Is containerd installed on this node, and is the node's / mounted at HOST_ROOT ($HOST_ROOT)? Set CONTAINERD_CONFIG if containerd reads another file."
        say "$CONFIG does not exist: containerd runs on its built-in defaults; creating it (version = 2)"
        VERSION=2
        ACTION=create
        {
            echo "$CREATED_1"
            echo "$CREATED_2"
            echo "$CREATED_3"
            echo "version = 2"
            echo
            render_block 2 yes
        } > "$WORK/new"
        return 0
    fi
    [ -f "$CONFIG" ] || die "$CONFIG is not a regular file"

    marked=no
    if has_line "$CONFIG" "$MARK_BEGIN"; then
        has_line "$CONFIG" "$MARK_END" || die "$CONFIG has the line '$MARK_BEGIN' but not '$MARK_END'; remove the partial block by hand"
        marked=yes
    fi
    # What the file says apart from the installer's own block.
    strip_block "$CONFIG" "$WORK/base"
    facts=$(scan "$WORK/base")

    VERSION=$(fact "$facts" version | cut -f2)
    VERSION=${VERSION:-1}
    case $VERSION in
        1|2|3) ;;
        *) die "$CONFIG: config version '$VERSION' is not one this installer knows (1, 2 or 3); add the runtime handler by hand (docs/kubernetes.md)" ;;
    esac
    table="[$(plugin_path "$VERSION").containerd.runtimes.wasmtime]"
    if [ "$VERSION" = 1 ]; then
        warn "$CONFIG is a version 1 config (no 'version = 2' line). containerd 1.x reads it, but containerd 2.x ignores the CRI settings of a version 1 file, this handler included; convert it with 'containerd config migrate'."
    fi

    d=$(fact "$facts" disabled)
    case $d in
        *'"cri"'*|*"'cri'"*|*io.containerd.grpc.v1.cri*|*io.containerd.cri.v1.runtime*)
            warn "$CONFIG disables the CRI plugin (disabled_plugins = $(echo "$d" | cut -f2)): Kubernetes cannot use this containerd until it is enabled" ;;
    esac

    inl=$(fact "$facts" inline "$VERSION")
    if [ -n "$inl" ]; then
        die "$CONFIG gives $(echo "$inl" | cut -f3) as a value (an inline table), so the table $table cannot be added to it; add the runtime wasmtime (runtime_type = \"$RUNTIME_TYPE\") there by hand"
    fi

    h=$(fact "$facts" handler "$VERSION")
    if [ -n "$h" ]; then
        t=$(echo "$h" | cut -f3)
        [ "$marked" = no ] || die "$CONFIG defines the runtime wasmtime both inside the wasmcell block and outside it (a duplicate table: containerd refuses such a file); remove one by hand"
        [ "$t" = "$RUNTIME_TYPE" ] || die "$CONFIG already defines a runtime named wasmtime with runtime_type \"$t\", not \"$RUNTIME_TYPE\"; fix or remove it by hand"
        say "$CONFIG already registers runtime wasmtime (added by hand, without the wasmcell markers): left as is"
        if [ "$VERSION" != 3 ] && [ -z "$(fact "$facts" runtimes "$VERSION")" ]; then
            warn "$CONFIG registers no runtime but wasmtime: containerd 1.x then has no runc, and its CRI plugin does not load; add [$(plugin_path "$VERSION").containerd.runtimes.runc] with runtime_type = \"$RUNC_TYPE\""
        fi
        ACTION=keep
        return 0
    fi
    for n in 1 2 3; do
        [ "$n" != "$VERSION" ] || continue
        if [ -n "$(fact "$facts" handler "$n")" ]; then
            warn "$CONFIG also defines a runtime wasmtime in the section of schema $n ($(plugin_path "$n")); a version $VERSION file registers CRI runtimes under $table"
        fi
    done

    # containerd 1.x replaces its built-in runtimes (runc) with the file's:
    # keep runc when the wasmtime table would be the file's first runtime.
    # (containerd 2.x merges them, but also reads version 1 and 2 files.)
    runc=no
    if [ "$VERSION" != 3 ] && [ -z "$(fact "$facts" runtimes "$VERSION")" ]; then
        runc=yes
    fi
    render_block "$VERSION" "$runc" > "$WORK/block"

    if [ "$marked" = yes ]; then
        current_block "$CONFIG" > "$WORK/current"
        if cmp -s "$WORK/current" "$WORK/block" && [ "$(grep -cx "[[:space:]]*${MARK_BEGIN}[[:space:]]*" "$CONFIG")" = 1 ]; then
            say "$CONFIG already has the wasmcell runtime handler: left as is"
            ACTION=keep
            return 0
        fi
        replace_block "$CONFIG" "$WORK/block" "$WORK/new"
        ACTION=replace
        return 0
    fi
    {
        cat "$CONFIG"
        # The block starts on a line of its own, after one blank line.
        if [ -s "$CONFIG" ] && [ -n "$(tail -c 1 "$CONFIG")" ]; then echo; fi
        echo
        cat "$WORK/block"
    } > "$WORK/new"
    ACTION=add
}

install_shim() {
    dest=$BIN_DIR/$SHIM
    if [ -f "$dest" ] && cmp -s "$SRC" "$dest"; then
        say "$dest is already this build: left as is"
        return 0
    fi
    version=$("$SRC" -v 2>/dev/null | sed -n 's/^[[:space:]]*Version:[[:space:]]*//p' || true)
    mkdir -p "$BIN_DIR"
    TMP=$BIN_DIR/.$SHIM.wasmcell-tmp.$$
    cp "$SRC" "$TMP"
    chmod 0755 "$TMP"
    mv -f "$TMP" "$dest"
    TMP=
    say "installed $SHIM ${version:+$version }at $dest"
}

do_install() {
    say "installing into ${ROOT:-/} (containerd config $CONFIG)"
    SRC=$SRC_DIR/$SHIM
    [ -f "$SRC" ] || die "$SRC not found (set WASMCELL_BIN to the directory holding $SHIM)"
    WORK=$(mktemp -d)
    plan_add
    install_shim
    changed=no
    case $ACTION in
        keep) ;;
        add)
            if grep -Eq '^[[:space:]]*imports[[:space:]]*=' "$CONFIG"; then
                warn "$CONFIG uses 'imports'. On containerd 1.6, an imported file that defines the CRI plugin section replaces this file's CRI section, including the block added here; if so, put the block in that file instead."
            fi
            cp -p "$CONFIG" "$BACKUP"
            say "previous config saved as $BACKUP"
            write_config "$WORK/new"
            changed=yes
            say "added the runtime handler 'wasmtime' to $CONFIG (config version $VERSION):"
            sed 's/^/    /' "$WORK/block" ;;
        replace)
            write_config "$WORK/new"
            changed=yes
            say "rewrote the wasmcell block in $CONFIG (config version $VERSION):"
            sed 's/^/    /' "$WORK/block" ;;
        create)
            write_config "$WORK/new"
            changed=yes
            say "created $CONFIG with the runtime handler 'wasmtime'" ;;
    esac
    restart_containerd "$changed"
    say "done. Check on the node: containerd config dump | grep -A1 runtimes.wasmtime"
}

# --- uninstall ------------------------------------------------------------------

# Sets ACTION: keep, delete (the file install created), restore (the backup,
# byte for byte) or strip (only the block; $WORK/new holds the result).
plan_remove() {
    ACTION=keep
    if [ ! -e "$CONFIG" ]; then
        say "no containerd config at $CONFIG: nothing to remove there"
        return 0
    fi
    [ -f "$CONFIG" ] || die "$CONFIG is not a regular file"
    if ! has_line "$CONFIG" "$MARK_BEGIN"; then
        if [ -n "$(fact "$(scan "$CONFIG")" handler)" ]; then
            say "$CONFIG registers a runtime wasmtime that the installer did not add: left as is"
        else
            say "$CONFIG has no wasmcell runtime handler: nothing to remove there"
        fi
        return 0
    fi
    has_line "$CONFIG" "$MARK_END" || die "$CONFIG has the line '$MARK_BEGIN' but not '$MARK_END'; remove the block by hand"
    strip_block "$CONFIG" "$WORK/new"
    printf '%s\n%s\n%s\nversion = 2\n' "$CREATED_1" "$CREATED_2" "$CREATED_3" > "$WORK/created"
    if cmp -s "$WORK/new" "$WORK/created"; then
        ACTION=delete
        return 0
    fi
    if [ -f "$BACKUP" ]; then
        # Install appended a newline to a last line that had none.
        { cat "$BACKUP"; if [ -s "$BACKUP" ] && [ -n "$(tail -c 1 "$BACKUP")" ]; then echo; fi; } > "$WORK/backup-nl"
        if cmp -s "$WORK/new" "$WORK/backup-nl"; then
            ACTION=restore
            return 0
        fi
    fi
    ACTION='strip'
}

do_uninstall() {
    say "uninstalling from ${ROOT:-/} (containerd config $CONFIG)"
    WORK=$(mktemp -d)
    plan_remove
    if [ -e "$BIN_DIR/$SHIM" ]; then
        rm -f "$BIN_DIR/$SHIM"
        say "removed $BIN_DIR/$SHIM (shims already running keep running until their containers end)"
    else
        say "$BIN_DIR/$SHIM not present"
    fi
    changed=yes
    case $ACTION in
        keep) changed=no ;;
        delete)
            rm -f "$CONFIG"
            say "deleted $CONFIG, which the installer had created" ;;
        restore)
            write_config "$BACKUP"
            rm -f "$BACKUP"
            say "restored $CONFIG as it was before install (and deleted $BACKUP)" ;;
        strip)
            write_config "$WORK/new"
            say "removed the wasmcell runtime handler from $CONFIG"
            if [ -f "$BACKUP" ]; then
                say "$CONFIG was edited after install, so it was not replaced by $BACKUP (the file before install); delete that when no longer needed"
            fi ;;
    esac
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
