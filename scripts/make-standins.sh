#!/usr/bin/env bash
# Stand-ins for the mariadb and redis images, for hosts without an image registry (docs/deployment.md). One
# command gives docker-compose.yml every image it would otherwise pull:
#
#   scripts/make-standins.sh >> .env      # then: docker compose up --build
#
# It reuses what exists and builds what is missing:
#   - BASE_IMAGE (default local/python:3.11-bookworm), by scripts/make-base-image.sh when it is missing (root,
#     debootstrap, a Debian mirror: run this script with sudo the first time);
#   - the stand-ins local/mariadb-standin:latest and local/redis-standin:latest, FROM that base with Debian's
#     mariadb-server and redis-server (apt, so a Debian mirror is needed), behind the part of the official
#     images' interface docker-compose.yml uses (the MARIADB_* variables, healthcheck.sh, /var/lib/mysql, /data).
#     A stand-in is rebuilt when its recipe (this script's Dockerfiles, with the base's name) has changed.
#
# Prints the lines for .env on stdout, everything else on stderr:
#   BASE_IMAGE=local/python:3.11-bookworm
#   MYSQL_IMAGE=local/mariadb-standin:latest
#   REDIS_IMAGE=local/redis-standin:latest
# scripts/compose-smoke.sh runs it when BASE_IMAGE=local/...
#
# Environment:
#   BASE_IMAGE     the base both stand-ins (and the app's images) are built from  (default local/python:3.11-bookworm)
#   MYSQL_STANDIN  tag of the MariaDB stand-in                                    (default local/mariadb-standin:latest)
#   REDIS_STANDIN  tag of the Redis stand-in                                      (default local/redis-standin:latest)
#   FORCE=1        rebuild the stand-ins even when they are up to date (the base: FORCE=1 scripts/make-base-image.sh)
set -euo pipefail

cd "$(dirname "$0")/.."

BASE_IMAGE="${BASE_IMAGE:-local/python:3.11-bookworm}"
MYSQL_STANDIN="${MYSQL_STANDIN:-local/mariadb-standin:latest}"
REDIS_STANDIN="${REDIS_STANDIN:-local/redis-standin:latest}"
RECIPE_LABEL=org.digits.standin.recipe

say() { echo "make-standins: $*" >&2; }
die() { say "$*"; exit 1; }

command -v docker >/dev/null || die "docker is missing"
docker info >/dev/null 2>&1 || die "no Docker engine answers (is dockerd running? are you in the docker group?)"

if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  say "base $BASE_IMAGE exists"
elif [[ "$BASE_IMAGE" == local/* ]]; then
  say "base $BASE_IMAGE is missing: building it with scripts/make-base-image.sh (needs root)"
  BASE_TAG="$BASE_IMAGE" scripts/make-base-image.sh >&2
else
  die "base $BASE_IMAGE is missing (scripts/make-base-image.sh builds local/... bases; pull others)"
fi

ctx="$(mktemp -d /tmp/make-standins.XXXXXX)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/mariadb" "$ctx/redis"

# The subset of the official mariadb image's interface that docker-compose.yml uses: MARIADB_DATABASE,
# MARIADB_USER, MARIADB_PASSWORD, MARIADB_ROOT_PASSWORD, /var/lib/mysql, port 3306, healthcheck.sh.
cat > "$ctx/mariadb/Dockerfile" <<EOF
FROM $BASE_IMAGE
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \\
 && apt-get update -qq && apt-get install -y -qq --no-install-recommends mariadb-server mariadb-client >/dev/null \\
 && rm -rf /var/lib/apt/lists/* /var/lib/mysql/* /usr/sbin/policy-rc.d \\
 && install -d -o mysql -g mysql /run/mysqld /var/lib/mysql
COPY docker-entrypoint.sh healthcheck.sh /usr/local/bin/
EXPOSE 3306
ENTRYPOINT ["docker-entrypoint.sh"]
EOF
cat > "$ctx/mariadb/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
set -eu
: "${MARIADB_DATABASE:?}" "${MARIADB_USER:?}" "${MARIADB_PASSWORD:?}" "${MARIADB_ROOT_PASSWORD:?}"
chown mysql:mysql /var/lib/mysql
if [ ! -d /var/lib/mysql/mysql ]; then
  echo "stand-in: initialising /var/lib/mysql"
  mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db \
    --auth-root-authentication-method=normal >/dev/null
  sock=/run/mysqld/init.sock
  mariadbd --user=mysql --datadir=/var/lib/mysql --skip-networking --socket="$sock" &
  pid=$!
  i=0
  until mariadb-admin --socket="$sock" -uroot ping >/dev/null 2>&1; do
    i=$((i + 1)); [ "$i" -le 120 ] || { echo "stand-in: mariadbd did not start" >&2; exit 1; }; sleep 0.5
  done
  mariadb --socket="$sock" -uroot <<SQL
CREATE DATABASE \`$MARIADB_DATABASE\`;
CREATE USER '$MARIADB_USER'@'%' IDENTIFIED BY '$MARIADB_PASSWORD';
GRANT ALL PRIVILEGES ON \`$MARIADB_DATABASE\`.* TO '$MARIADB_USER'@'%';
ALTER USER 'root'@'localhost' IDENTIFIED BY '$MARIADB_ROOT_PASSWORD';
SQL
  mariadb-admin --socket="$sock" -uroot -p"$MARIADB_ROOT_PASSWORD" shutdown
  wait "$pid"
fi
exec mariadbd --user=mysql --datadir=/var/lib/mysql --bind-address=0.0.0.0 --port=3306 "$@"
EOF
cat > "$ctx/mariadb/healthcheck.sh" <<'EOF'
#!/bin/sh
# Stand-in for the official image's `healthcheck.sh --connect --innodb_initialized`: the app's own login over TCP.
MYSQL_PWD="$MARIADB_PASSWORD" exec mariadb -h127.0.0.1 -P3306 -u"$MARIADB_USER" -e 'SELECT 1' "$MARIADB_DATABASE" >/dev/null
EOF
cat > "$ctx/redis/Dockerfile" <<EOF
FROM $BASE_IMAGE
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null \\
 && rm -rf /var/lib/apt/lists/* && install -d -o redis -g redis /data
# As the official image: no protected mode (the compose network is the boundary), data in /data.
RUN printf '#!/bin/sh\nif [ "\$1" = redis-server ]; then shift; set -- redis-server --protected-mode no "\$@"; fi\nexec "\$@"\n' \\
    > /usr/local/bin/docker-entrypoint.sh && chmod +x /usr/local/bin/docker-entrypoint.sh
WORKDIR /data
USER redis
EXPOSE 6379
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]
EOF
chmod +x "$ctx/mariadb/"*.sh

# Build one stand-in unless an image of that tag was built from the same recipe (files, base's name included).
standin() {  # folder, tag
  local dir="$ctx/$1" tag="$2" recipe have
  recipe="$( (cd "$dir" && find . -type f -print | LC_ALL=C sort | xargs cat) | sha256sum | cut -c1-16)"
  have="$(docker image inspect -f "{{ index .Config.Labels \"$RECIPE_LABEL\" }}" "$tag" 2>/dev/null || true)"
  if [ "${FORCE:-0}" != 1 ] && [ "$have" = "$recipe" ]; then
    say "$tag exists (recipe $recipe): reused"
    return
  fi
  if [ "${FORCE:-0}" = 1 ]; then
    say "$tag: FORCE=1, rebuilding"
  elif [ -n "$have" ]; then
    say "$tag: its recipe changed ($have -> $recipe), rebuilding"
  fi
  say "building $tag from $BASE_IMAGE (apt: $1 from Debian's packages)"
  # The host's network: apt reaches the mirror even on a daemon without a default bridge (dockerd --bridge=none).
  docker build -q --network host --label "$RECIPE_LABEL=$recipe" -t "$tag" "$dir" >"$ctx/$1.log" 2>&1 \
    || { cat "$ctx/$1.log" >&2; die "building the $1 stand-in $tag failed"; }
}
standin mariadb "$MYSQL_STANDIN"
standin redis "$REDIS_STANDIN"

say "done; for .env (or the environment of docker compose):"
printf 'BASE_IMAGE=%s\nMYSQL_IMAGE=%s\nREDIS_IMAGE=%s\n' "$BASE_IMAGE" "$MYSQL_STANDIN" "$REDIS_STANDIN"
