#!/bin/sh
# One-shot start-up step of infra/compose.yaml (runs as root in the server image): creates, once,
# the development secrets and TLS certificate in their volumes, and the owners the other
# containers need. Nothing here is committed: `docker compose -f infra/compose.yaml down -v`
# forgets it all and the next `up` makes new ones.
set -eu
umask 077

SERVER_UID=10001 # the user of the maosic images (infra/Dockerfile)
POSTGRES_UID=999 # the postgres user of the postgres:*-bookworm image

random() { # $1 bytes of randomness as URL- and TOML-safe text
    head -c "$1" /dev/urandom | base64 | tr -d '/+=\n'
}

if [ ! -s /secrets/postgres-password ]; then
    random 32 >/secrets/postgres-password
    echo "init: generated the PostgreSQL password"
fi
if [ ! -s /secrets/maosic.toml ]; then
    password=$(cat /secrets/postgres-password)
    # Every replica reads this file (--config): one database, one JWT key (required with
    # PostgreSQL, at least 32 bytes), one metrics and operator token.
    cat >/secrets/maosic.toml <<TOML
database = "postgres://maosic:${password}@postgres:5432/maosic"
metrics_token = "$(random 48)"
operator_token = "$(random 48)"

[auth]
jwt_secret = "$(random 48)"
TOML
    echo "init: generated /secrets/maosic.toml (database URL, JWT key, metrics and operator tokens)"
fi
chown "$POSTGRES_UID:$POSTGRES_UID" /secrets/postgres-password
chmod 0400 /secrets/postgres-password
chown "$SERVER_UID:$SERVER_UID" /secrets/maosic.toml
chmod 0400 /secrets/maosic.toml

if [ ! -s /tls/server.pem ] || [ ! -s /tls/server-key.pem ]; then
    # "proxy" is the name the agent reaches the reverse proxy by; localhost for the browser.
    maosic-server tls dev-cert --out /tls --host localhost --host 127.0.0.1 --host proxy --days 90
    # Nothing else is ever signed with this CA: its key is not kept.
    rm -f /tls/ca-key.pem
fi
chmod 0444 /tls/ca.pem /tls/server.pem
chmod 0400 /tls/server-key.pem # read by nginx's master process (root)

# The lab credential (written by lab-init) and the development mail outbox belong to the
# server image's user.
chown "$SERVER_UID:$SERVER_UID" /credentials /mail
chmod 0700 /credentials
echo "init: done"
