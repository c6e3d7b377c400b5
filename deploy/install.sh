#!/bin/sh
# Install or upgrade Sensorcast: the app and its venv under PREFIX, the config under
# /etc/sensorcast, the data under /var/lib/sensorcast, the systemd unit. Idempotent: a
# second run with the same sources changes nothing; the operator's config and env file are
# never overwritten. DESTDIR stages everything under another root (packaging, tests).
#
#   sudo deploy/install.sh                 # or: sudo make install
#   DESTDIR=/tmp/stage PREFIX=/opt/sensorcast deploy/install.sh --no-venv
#
# --no-venv: lay out the files only (a package builds its venv in its own postinst).
set -eu

DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/opt/sensorcast}
SYSCONFDIR=${SYSCONFDIR:-/etc/sensorcast}
STATEDIR=${STATEDIR:-/var/lib/sensorcast}
UNITDIR=${UNITDIR:-/etc/systemd/system}
PYTHON=${PYTHON:-python3}
PIP_ARGS=${PIP_ARGS:-}
SERVICE_USER=sensorcast
VENV=1
for arg in "$@"; do
    case $arg in
        --no-venv) VENV=0 ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown option $arg (--no-venv, --help)" >&2; exit 2 ;;
    esac
done

SRC=$(cd "$(dirname "$0")/.." && pwd)
APP=$DESTDIR$PREFIX/app
CHANGED=0
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

say() { echo "install: $*"; }

# Copy $1 to $2 with mode $3 unless $2 already has that content and mode.
put() {
    if [ -f "$2" ] && cmp -s "$1" "$2"; then
        if [ "$(stat -c %a "$2")" != "$3" ]; then chmod "$3" "$2"; CHANGED=1; fi
        return 0
    fi
    mkdir -p "$(dirname "$2")"
    cp "$1" "$2.tmp.$$" && chmod "$3" "$2.tmp.$$" && mv -f "$2.tmp.$$" "$2"
    say "wrote ${2#"$DESTDIR"}"
    CHANGED=1
}

# The app's files: sources only, no caches, no venv, no local data.
app_files() {
    (cd "$SRC" && find server deploy docs setup.cfg pyproject.toml README.md config.yaml \
        -type f ! -name '*.pyc' ! -path '*/__pycache__/*' | LC_ALL=C sort)
}

# 1. The app. Files gone from the sources are removed (an upgrade that drops a module).
mkdir -p "$APP"
app_files > "$WORK/files"
while IFS= read -r f; do
    mode=644
    [ -x "$SRC/$f" ] && mode=755
    put "$SRC/$f" "$APP/$f" "$mode"
done < "$WORK/files"
if [ -f "$APP/.files" ]; then
    LC_ALL=C comm -23 "$APP/.files" "$WORK/files" | while IFS= read -r f; do
        rm -f "$APP/$f" && say "removed ${APP#"$DESTDIR"}/$f"
    done
fi
put "$WORK/files" "$APP/.files" 644

# 2. The venv, (re)installed only when the dependency list changed. Editable, so the
# server finds migrations/ beside its package.
if [ "$VENV" = 1 ]; then
    stamp=$(cat "$APP/setup.cfg" "$APP/pyproject.toml" | sha256sum | cut -d' ' -f1)
    venv=$DESTDIR$PREFIX/venv
    if [ "$(cat "$venv/.sensorcast-deps" 2>/dev/null)" != "$stamp" ]; then
        [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
        # PIP_ARGS: extra pip options (the tests pass --no-deps --no-index: no download).
        # shellcheck disable=SC2086
        "$venv/bin/pip" install --quiet --disable-pip-version-check ${PIP_ARGS:-} -e "$APP"
        echo "$stamp" > "$venv/.sensorcast-deps"
        say "installed the venv in ${venv#"$DESTDIR"}"
        CHANGED=1
    fi
fi

# 3. Config: the shipped config.yaml with the data under STATEDIR and a JWT secret of its
# own, written once; later runs leave the operator's edits alone.
ETC=$DESTDIR$SYSCONFDIR
mkdir -p "$ETC"
if [ ! -f "$ETC/config.yaml" ]; then
    secret=$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(32))')
    sed -e "s|sqlite:///var/sensorcast.db|sqlite:///$STATEDIR/sensorcast.db|" \
        -e "s|jwt_secret: \"\" |jwt_secret: \"$secret\" |" \
        "$SRC/config.yaml" > "$ETC/config.yaml.tmp.$$"
    chmod 640 "$ETC/config.yaml.tmp.$$"
    mv -f "$ETC/config.yaml.tmp.$$" "$ETC/config.yaml"
    say "wrote $SYSCONFDIR/config.yaml (keeps your edits from now on)"
    CHANGED=1
fi
if [ ! -f "$ETC/env" ]; then
    cat > "$ETC/env" <<ENV
# Environment for sensorcast.service: SENSORCAST_<SECTION>_<KEY>=value overrides
# $SYSCONFDIR/config.yaml, e.g.
# SENSORCAST_SERVER_PORT=8000
# SENSORCAST_DATABASE_URL=postgresql://sensorcast:secret@127.0.0.1:5432/sensorcast
ENV
    chmod 640 "$ETC/env"
    say "wrote $SYSCONFDIR/env"
    CHANGED=1
fi

# 4. The data directory (the only place the service may write).
if [ ! -d "$DESTDIR$STATEDIR" ]; then
    mkdir -p "$DESTDIR$STATEDIR"
    chmod 750 "$DESTDIR$STATEDIR"
    say "made $STATEDIR"
    CHANGED=1
fi

# 5. The unit.
sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@SYSCONFDIR@|$SYSCONFDIR|g" -e "s|@STATEDIR@|$STATEDIR|g" \
    "$SRC/deploy/sensorcast.service.in" > "$WORK/unit"
put "$WORK/unit" "$DESTDIR$UNITDIR/sensorcast.service" 644

# 6. On the real system: the service user, ownership, systemd.
if [ -z "$DESTDIR" ] && [ "$(id -u)" = 0 ]; then
    if ! id "$SERVICE_USER" >/dev/null 2>&1; then
        useradd --system --user-group --home-dir "$STATEDIR" --shell /usr/sbin/nologin \
            "$SERVICE_USER"
        say "added system user $SERVICE_USER"
    fi
    chown -R "$SERVICE_USER:$SERVICE_USER" "$STATEDIR"
    chown "root:$SERVICE_USER" "$SYSCONFDIR/config.yaml" "$SYSCONFDIR/env"
    if [ "$CHANGED" = 1 ] && [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        say "systemctl daemon-reload done; start with: systemctl enable --now sensorcast"
    fi
fi
[ "$CHANGED" = 1 ] || say "nothing to change"
