#!/bin/bash
# A real OpenStack Cinder (block storage API v3) on loopback, for the cinder driver's tests.
#
#   scripts/services/cinder.sh start DIR   install what is missing, start the stack, wait until the API
#                                          answers and the scheduler sees every pool, print env lines:
#                                            ELARA_TEST_CINDER=http://127.0.0.1:8776/v3/<project>
#                                            ELARA_TEST_CINDER_PROJECT=<project>
#                                            ELARA_TEST_CINDER_TOKEN=admin:<project>
#                                            ELARA_TEST_CINDER_KEYSTONE=http://127.0.0.1:8777/v3
#                                            ELARA_TEST_KEYSTONE=http://127.0.0.1:5000/v3
#                                            ELARA_TEST_KEYSTONE_USER=elara  ..._PASSWORD=...
#                                            ELARA_TEST_KEYSTONE_MEMBER_USER=elara-member (same password)
#                                            ELARA_TEST_KEYSTONE_PROJECT=elara ..._PROJECT_ID=<id>
#                                            ELARA_TEST_KEYSTONE_APPCRED_ID=... ..._APPCRED_SECRET=...
#                                            ELARA_TEST_KEYSTONE_ADMIN_PASSWORD=... (user `admin`)
#                                            ELARA_TEST_CINDER_LUN_TYPE=elara-test-lun
#                                            ELARA_TEST_TGT_PORTAL=127.0.0.1:3260
#                                            ELARA_TEST_TGT_SERVICE=DIR/tgt  ELARA_TEST_TGT_LUNS=DIR/tgt/luns
#                                          (a no-op that prints the same lines when already running,
#                                          but for starting tgt again if it was stopped)
#   scripts/services/cinder.sh stop DIR    stop what `start` started in DIR, by the recorded pids
#   scripts/services/cinder.sh status DIR  exit 0 and print the env lines if the stack is up
#
# The stack: cinder==29.0.0 from PyPI in a venv (api + scheduler + volume), RabbitMQ and MariaDB
# from Debian, each on 127.0.0.1, with auth_strategy=noauth (the token `admin:<project>` is an
# admin of <project>). Three Cinder backends. Two fake ones (scripts/services/cinder/multipool_driver.py):
# `fake` (one pool of infinite capacity) and `multi` (the pools in DIR/pools.json, copied from
# scripts/services/cinder/pools.json on the first start). Both are Cinder's FakeLoggingVolumeDriver
# below the API: volumes exist in Cinder's database only, and initialize_connection answers
# complete iSCSI details (portal 127.0.0.1:3260, iqn, lun 0, CHAP) that no target serves.
# And `lun` (scripts/services/cinder/tgt_driver.py), whose volumes are real: each a sparse file in
# DIR/tgt/luns served over iSCSI with CHAP by the tgtd of scripts/services/tgt.sh (started first,
# as `tgt.sh start DIR/tgt`; tests stop and start it with that script, and its targets come back);
# one pool `elara-test@lun#lun` with the file system's capacity, reached through the public
# volume type `elara-test-lun` (volume_backend_name=lun, made at start if missing).
# scripts/services/cinder/check_lun.py checks that data path end to end. Everything above the
# drivers (API, scheduler, RPC, DB, states, attachments, user messages) is the real Cinder.
#
# Keystone too: keystone==30.0.0 (a venv of its own, fernet tokens) on 127.0.0.1:5000, its
# database `keystone` in the same MariaDB (not SQLite: concurrent logins that write the user's
# failed-login count made SQLite answer "database is locked", which Keystone turned into a 500),
# bootstrapped with an `admin` user, plus a project `elara` whose user `elara` (password, and an
# application credential) has the admin role there and whose user `elara-member` has the member
# role only; and a second cinder-api on 127.0.0.1:8777
# with auth_strategy=keystone over the same database and services, for Keystone-authenticated
# drivers. Volumes made through it belong to the `elara` project, which the noauth API on 8776
# also shows (token admin:<project id>).
#
# Installs only what is missing: Debian packages rabbitmq-server, mariadb-server, python3-venv,
# curl, and through tgt.sh tgt, libiscsi-bin and qemu-block-extra (bookworm-backports); the venvs
# ($ELARA_CINDER_VENV, default <repo>/.work/cinder-stack-venv, and $ELARA_KEYSTONE_VENV, default
# <repo>/.work/keystone-venv; kept across stops).
# Every wait is a readiness poll with a deadline; on failure the relevant log is printed and the
# half-started stack is stopped. Each service is started with setsid, so its pid is its process
# group, and `stop` ends exactly those groups (TERM, then KILL after a deadline); never by name.
#
# Env: CINDER_PORT (8776), CINDER_KEYSTONE_PORT (8777), KEYSTONE_PORT (5000), MYSQL_PORT (3306), RABBIT_PORT (5672), RABBIT_DIST_PORT (25672),
#      EPMD_PORT (4369), CINDER_READY_TIMEOUT (seconds, 180), CINDER_DEBUG (false).
# Files in DIR: pids/*.pid, logs/ (api, scheduler, volume, rabbit, mysql), etc/cinder.conf,
#               pools.json, endpoint, keystone/ (keystone.conf, keys, env), tgt/ (tgt.sh's DIR:
#               luns/ the volumes' and snapshots' files, targets/ their targets' definitions).
# Timings on 2 cores: ~70-115 s from nothing (tgt's packages and the backports suite add ~15 s),
# ~13-25 s with packages and venvs present; tgt.sh stop/start take ~0.15/0.25 s.
set -euo pipefail

usage() { echo "usage: $0 start|stop|status DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
ACTION=$1
mkdir -p "$2"
BASE=$(cd "$2" && pwd)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
FILES=$ROOT/scripts/services/cinder
VENV=${ELARA_CINDER_VENV:-$ROOT/.work/cinder-stack-venv}
CINDER_VERSION=29.0.0
MARK="cinder==$CINDER_VERSION fixtures PyMySQL"
KS_VENV=${ELARA_KEYSTONE_VENV:-$ROOT/.work/keystone-venv}
KS_MARK="keystone==30.0.0 PyMySQL"
CINDER_PORT=${CINDER_PORT:-8776} MYSQL_PORT=${MYSQL_PORT:-3306}
CINDER_KEYSTONE_PORT=${CINDER_KEYSTONE_PORT:-8777} KEYSTONE_PORT=${KEYSTONE_PORT:-5000}
KS_URL=http://127.0.0.1:$KEYSTONE_PORT/v3
KS_ADMIN_PASSWORD=elara-admin-secret KS_USER_PASSWORD=elara-user-secret
RABBIT_PORT=${RABBIT_PORT:-5672} RABBIT_DIST_PORT=${RABBIT_DIST_PORT:-25672} EPMD_PORT=${EPMD_PORT:-4369}
READY_TIMEOUT=${CINDER_READY_TIMEOUT:-180}
PROJECT=4f9c8f1ea1b24d0c9a5e0c1f2b3a4d5e
TOKEN=admin:$PROJECT
ENDPOINT=http://127.0.0.1:$CINDER_PORT/v3/$PROJECT
SERVICES=(epmd rabbit mysql keystone api api-keystone scheduler volume)
TGT=$ROOT/scripts/services/tgt.sh TGT_DIR=$BASE/tgt LUN_TYPE=elara-test-lun
declare -A EXPECT=([api]=cinder-api [api-keystone]=cinder-api [scheduler]=cinder-scheduler [volume]=cinder-volume
                   [rabbit]=rabbitmq [mysql]=mariadbd [epmd]=epmd [keystone]=keystone_serve)

T0=$SECONDS
say() { echo "cinder.sh: [$((SECONDS - T0))s] $*" >&2; }
die() { echo "cinder.sh: ERROR: $*" >&2; exit 1; }

source "$(dirname "${BASH_SOURCE[0]}")/../lib/service.sh"   # alive
pid_of() { cat "$BASE/pids/$1.pid" 2>/dev/null || true; }
# The recorded pid of service $1, if alive and still the program we started.
running() {
  local pid; pid=$(pid_of "$1")
  alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "${EXPECT[$1]}"
}
port_busy() { ss -ltnH "sport = :$1" | grep -q .; }
# wait_for SECONDS WHAT CMD...: retry CMD every 0.2 s until it succeeds or the deadline passes;
# CMD exiting 2 means the process it waits for is gone: fail at once.
wait_for() {
  local limit=$1 what=$2; shift 2
  local end=$((SECONDS + limit)) rc
  while :; do
    rc=0; "$@" >/dev/null 2>&1 || rc=$?
    [ $rc -eq 0 ] && return 0
    [ $rc -eq 2 ] && { say "$what exited during start-up"; return 1; }
    [ "$SECONDS" -ge "$end" ] && { say "timeout (${limit}s) waiting for $what"; return 1; }
    sleep 0.2
  done
}
api_up() { curl -sf -m 2 -o /dev/null "http://127.0.0.1:$CINDER_PORT/"; }
print_env() {
  echo "ELARA_TEST_CINDER=$ENDPOINT"
  echo "ELARA_TEST_CINDER_PROJECT=$PROJECT"
  echo "ELARA_TEST_CINDER_TOKEN=$TOKEN"
  echo "ELARA_TEST_CINDER_KEYSTONE=http://127.0.0.1:$CINDER_KEYSTONE_PORT/v3"
  cat "$BASE/keystone/env"
  echo "ELARA_TEST_KEYSTONE_ADMIN_PASSWORD=$KS_ADMIN_PASSWORD"
  echo "ELARA_TEST_CINDER_LUN_TYPE=$LUN_TYPE"
  cat "$TGT_DIR/tgt.env"
}
stack_up() {
  for s in rabbit mysql keystone api api-keystone scheduler volume; do running "$s" || return 1; done
  [ -f "$BASE/keystone/env" ] && api_up
}

# ---- stop: every recorded process group, cinder first (it talks to the broker and DB on exit)
group_members() { ps -e -o pid=,pgid=,stat= | awk -v g="$1" '$2==g && $3 !~ /^Z/ {print $1}'; }
stop_groups() { # stop_groups TIMEOUT NAME...
  local limit=$1; shift
  local groups=() s pg
  for s in "$@"; do
    [ -f "$BASE/pids/$s.pid" ] || continue
    pg=$(pid_of "$s")
    if alive "$pg" && ! running "$s"; then
      say "pid $pg of $s is another program now; leaving it alone"
    elif [ -n "$(group_members "$pg")" ]; then
      kill -TERM -- "-$pg" 2>/dev/null || true
      groups+=("$s:$pg")
    fi
  done
  local end=$((SECONDS + limit)) left
  while :; do
    left=()
    for g in "${groups[@]}"; do [ -n "$(group_members "${g#*:}")" ] && left+=("$g"); done
    [ ${#left[@]} -eq 0 ] && break
    if [ "$SECONDS" -ge "$end" ]; then
      for g in "${left[@]}"; do say "${g%%:*} (group ${g#*:}) still alive after ${limit}s: KILL"; kill -KILL -- "-${g#*:}" 2>/dev/null || true; done
      break
    fi
    sleep 0.1
  done
  for s in "$@"; do rm -f "$BASE/pids/$s.pid"; done
}
stop() {
  [ -d "$BASE/pids" ] || return 0
  stop_groups 20 api api-keystone scheduler volume keystone
  stop_groups 30 rabbit mysql
  stop_groups 5 epmd
  bash "$TGT" stop "$TGT_DIR" >&2
}

fail_start() { # print the log, stop what was started, fail
  local log=$1; shift
  [ -f "$log" ] && { echo "--- $log (last 30 lines)" >&2; tail -n 30 "$log" >&2; }
  stop
  die "$*"
}

# Keystone: config, schema, keys, bootstrap (first start only), then the server.
start_keystone() {
  local ks=$BASE/keystone manage
  cat >"$ks/keystone.conf" <<EOF
[DEFAULT]
log_file = $BASE/logs/keystone.log
[database]
connection = mysql+pymysql://keystone:keystone@127.0.0.1:$MYSQL_PORT/keystone?charset=utf8
[token]
provider = fernet
[fernet_tokens]
key_repository = $ks/fernet-keys
[credential]
key_repository = $ks/credential-keys
EOF
  manage="$KS_VENV/bin/keystone-manage --config-file $ks/keystone.conf"
  if [ ! -f "$ks/bootstrapped-mariadb" ]; then
    rm -f "$ks/env"   # the users are made again in this database
    mkdir -p "$ks/fernet-keys" "$ks/credential-keys"
    { $manage db_sync && $manage fernet_setup --keystone-user root --keystone-group root \
        && $manage credential_setup --keystone-user root --keystone-group root \
        && $manage bootstrap --bootstrap-password "$KS_ADMIN_PASSWORD" --bootstrap-username admin \
             --bootstrap-project-name admin --bootstrap-role-name admin --bootstrap-service-name keystone \
             --bootstrap-region-id RegionOne --bootstrap-admin-url "$KS_URL" --bootstrap-public-url "$KS_URL" \
             --bootstrap-internal-url "$KS_URL"; } \
      >"$BASE/logs/keystone-setup.log" 2>&1 || fail_start "$BASE/logs/keystone-setup.log" "keystone-manage failed"
    touch "$ks/bootstrapped-mariadb"
  fi
  (OS_KEYSTONE_CONFIG_FILES=$ks/keystone.conf KEYSTONE_LISTEN=127.0.0.1:$KEYSTONE_PORT setsid "$KS_VENV/bin/python" "$FILES/keystone_serve.py" \
     >"$BASE/logs/keystone.stdout" 2>&1 </dev/null & echo $! >"$BASE/pids/keystone.pid")
}

# The `elara` project with two users: `elara` (admin role there; password and an application
# credential) and `elara-member` (member role only: no admin APIs); made once (get-or-create),
# written to keystone/env as ELARA_TEST_KEYSTONE_* lines.
keystone_users() {
  local ks=$BASE/keystone
  grep -qs '^ELARA_TEST_KEYSTONE_MEMBER_USER=' "$ks/env" && return 0
  "$KS_VENV/bin/python" - "$KS_URL" "$KS_ADMIN_PASSWORD" "$KS_USER_PASSWORD" >"$ks/env.tmp" <<'PY' || return 1
import json, sys, time, urllib.request
url, admin_pw, user_pw = sys.argv[1:]
def call(method, path, body=None, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["X-Auth-Token"] = token
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(url + path, method=method, data=data, headers=headers)) as r:
        raw = r.read()
        return r.headers.get("X-Subject-Token"), (json.loads(raw) if raw else None)
def login(user, pw, project):
    return call("POST", "/auth/tokens", {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"id": "default"}, "password": pw}}},
        "scope": {"project": {"name": project, "domain": {"id": "default"}}}}})[0]
admin = login("admin", admin_pw, "admin")
def get_or_create(kind, name, body):
    found = call("GET", "/%s?name=%s" % (kind, name), token=admin)[1][kind]
    return found[0]["id"] if found else call("POST", "/" + kind, body, admin)[1][kind[:-1]]["id"]
pid = get_or_create("projects", "elara", {"project": {"name": "elara", "domain_id": "default"}})
uid = get_or_create("users", "elara", {"user": {"name": "elara", "password": user_pw, "domain_id": "default"}})
mid = get_or_create("users", "elara-member", {"user": {"name": "elara-member", "password": user_pw, "domain_id": "default"}})
role = lambda name: call("GET", "/roles?name=" + name, token=admin)[1]["roles"][0]["id"]
call("PUT", "/projects/%s/users/%s/roles/%s" % (pid, uid, role("admin")), token=admin)
call("PUT", "/projects/%s/users/%s/roles/%s" % (pid, mid, role("member")), token=admin)
user = login("elara", user_pw, "elara")
ac = call("POST", "/users/%s/application_credentials" % uid,
          {"application_credential": {"name": "elara-tests-%d" % time.time()}}, user)[1]["application_credential"]
print("ELARA_TEST_KEYSTONE=" + url)
print("ELARA_TEST_KEYSTONE_USER=elara")
print("ELARA_TEST_KEYSTONE_PASSWORD=" + user_pw)
print("ELARA_TEST_KEYSTONE_MEMBER_USER=elara-member")
print("ELARA_TEST_KEYSTONE_PROJECT=elara")
print("ELARA_TEST_KEYSTONE_PROJECT_ID=" + pid)
print("ELARA_TEST_KEYSTONE_APPCRED_ID=" + ac["id"])
print("ELARA_TEST_KEYSTONE_APPCRED_SECRET=" + ac["secret"])
PY
  mv "$ks/env.tmp" "$ks/env"
}

# The public volume type of the `lun` backend, made when missing.
lun_type() {
  curl -sf -m 10 -H "X-Auth-Token: $TOKEN" "$ENDPOINT/types?is_public=None" \
    | python3 -c "import json,sys; sys.exit(not any(t['name'] == '$LUN_TYPE' for t in json.load(sys.stdin)['volume_types']))" \
    && return 0
  curl -sf -m 10 -o /dev/null -H "X-Auth-Token: $TOKEN" -H 'Content-Type: application/json' -X POST "$ENDPOINT/types" \
    -d "{\"volume_type\": {\"name\": \"$LUN_TYPE\", \"os-volume-type-access:is_public\": true,
         \"description\": \"Real iSCSI LUNs (tgt) of the backend lun\", \"extra_specs\": {\"volume_backend_name\": \"lun\"}}}"
}

start() {
  # Up: only tgt is (re)started if a test left it stopped (a no-op when it runs).
  if stack_up; then bash "$TGT" start "$TGT_DIR" >/dev/null; print_env; return 0; fi
  # Anything of ours half-running is stopped first.
  for s in "${SERVICES[@]}"; do
    if [ -f "$BASE/pids/$s.pid" ]; then say "stopping a partial stack in $BASE"; stop; break; fi
  done

  # 1. Debian packages, only where missing.
  source "$ROOT/scripts/lib/prereqs.sh"
  elara_apt_install rabbitmq-server mariadb-server python3-venv curl iproute2 >&2
  for p in "$CINDER_PORT" "$CINDER_KEYSTONE_PORT" "$KEYSTONE_PORT" "$MYSQL_PORT" "$RABBIT_PORT" "$RABBIT_DIST_PORT"; do
    port_busy "$p" && die "port 127.0.0.1:$p is already in use by something not started here; stop it or set the *_PORT variables"
  done
  mkdir -p "$BASE"/{rabbit/mnesia,rabbit/log,mysql/data,mysql/run,etc,logs,state,locks,pids,keystone}
  [ -f "$BASE/pools.json" ] || cp "$FILES/pools.json" "$BASE/pools.json"
  say "packages ok"

  # 1b. The iSCSI target of the `lun` backend (installs tgt, libiscsi-bin, qemu-block-extra).
  bash "$TGT" start "$TGT_DIR" >/dev/null 2>"$BASE/logs/tgt-start.log" || fail_start "$BASE/logs/tgt-start.log" "tgt.sh start failed"
  say "tgt ok"

  # 2. epmd (ours, in the foreground, so it stops by pid) and RabbitMQ on loopback.
  local erts_bin
  erts_bin=$(ls -d /usr/lib/erlang/erts-*/bin | head -1)
  cat >"$BASE/rabbit/env.sh" <<EOF
export RABBITMQ_NODENAME=rabbit@localhost RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=$RABBIT_PORT
export ERL_EPMD_ADDRESS=127.0.0.1 ERL_EPMD_PORT=$EPMD_PORT RABBITMQ_DIST_PORT=$RABBIT_DIST_PORT HOME=$BASE/rabbit
export RABBITMQ_MNESIA_BASE=$BASE/rabbit/mnesia RABBITMQ_LOG_BASE=$BASE/rabbit/log
export RABBITMQ_ENABLED_PLUGINS_FILE=$BASE/rabbit/enabled_plugins RABBITMQ_CONFIG_FILE=$BASE/rabbit/rabbitmq
EOF
  echo '[].' >"$BASE/rabbit/enabled_plugins"
  printf 'listeners.tcp.1 = 127.0.0.1:%s\ndistribution.listener.interface = 127.0.0.1\n' "$RABBIT_PORT" >"$BASE/rabbit/rabbitmq.conf"
  if port_busy "$EPMD_PORT"; then
    say "epmd already listens on :$EPMD_PORT (not ours; reused)"
  else
    (setsid "$erts_bin/epmd" -address 127.0.0.1 -port "$EPMD_PORT" >"$BASE/logs/epmd.log" 2>&1 </dev/null & echo $! >"$BASE/pids/epmd.pid")
    wait_for 10 epmd port_busy "$EPMD_PORT" || fail_start "$BASE/logs/epmd.log" "epmd did not listen on :$EPMD_PORT"
  fi
  (. "$BASE/rabbit/env.sh"; setsid /usr/lib/rabbitmq/bin/rabbitmq-server >"$BASE/logs/rabbit.log" 2>&1 </dev/null & echo $! >"$BASE/pids/rabbit.pid")

  # 3. MariaDB on loopback.
  cat >"$BASE/mysql/my.cnf" <<EOF
[mysqld]
user = root
datadir = $BASE/mysql/data
socket = $BASE/mysql/run/mysqld.sock
pid-file = $BASE/mysql/run/mysqld.pid
bind-address = 127.0.0.1
port = $MYSQL_PORT
skip-name-resolve
innodb_buffer_pool_size = 64M
innodb_flush_log_at_trx_commit = 2
performance_schema = OFF
log-error = $BASE/logs/mysql-error.log
EOF
  if [ ! -d "$BASE/mysql/data/mysql" ]; then
    mariadb-install-db --defaults-file="$BASE/mysql/my.cnf" --auth-root-authentication-method=normal \
      >"$BASE/logs/mysql-install.log" 2>&1 || fail_start "$BASE/logs/mysql-install.log" "mariadb-install-db failed"
  fi
  (setsid mariadbd --defaults-file="$BASE/mysql/my.cnf" >"$BASE/logs/mysql.log" 2>&1 </dev/null & echo $! >"$BASE/pids/mysql.pid")

  # 4. The venv (while the broker and the database boot), only when missing.
  if [ "$(cat "$VENV/.elara-installed" 2>/dev/null)" != "$MARK" ] || ! "$VENV/bin/python" -W ignore -c 'import cinder, pymysql, fixtures' 2>/dev/null; then
    say "creating $VENV with $MARK (~40 s)"
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv --clear "$VENV" >&2
    "$VENV/bin/pip" install -q -c "$FILES/constraints-cinder29-py311.txt" "cinder==$CINDER_VERSION" fixtures PyMySQL \
      >"$BASE/logs/pip.log" 2>&1 || fail_start "$BASE/logs/pip.log" "pip install of cinder failed"
    echo "$MARK" >"$VENV/.elara-installed"
  fi
  if [ "$(cat "$KS_VENV/.elara-installed" 2>/dev/null)" != "$KS_MARK" ] || ! "$KS_VENV/bin/python" -W ignore -c 'import keystone.wsgi, pymysql' 2>/dev/null; then
    say "creating $KS_VENV with $KS_MARK (~30 s)"
    python3 -m venv --clear "$KS_VENV" >&2
    "$KS_VENV/bin/pip" install -q -c "$FILES/constraints-cinder29-py311.txt" $KS_MARK \
      >"$BASE/logs/pip-keystone.log" 2>&1 || fail_start "$BASE/logs/pip-keystone.log" "pip install of keystone failed"
    echo "$KS_MARK" >"$KS_VENV/.elara-installed"
  fi
  say "venvs ok ($VENV, $KS_VENV)"

  mysql_up() { running mysql || return 2; mariadb-admin --socket="$BASE/mysql/run/mysqld.sock" -uroot ping; }
  wait_for 60 mariadb mysql_up || fail_start "$BASE/logs/mysql-error.log" "MariaDB not ready"
  mariadb --socket="$BASE/mysql/run/mysqld.sock" -uroot -e "CREATE DATABASE IF NOT EXISTS cinder;
    CREATE USER IF NOT EXISTS 'cinder'@'127.0.0.1' IDENTIFIED BY 'cinder'; GRANT ALL ON cinder.* TO 'cinder'@'127.0.0.1';
    CREATE DATABASE IF NOT EXISTS keystone;
    CREATE USER IF NOT EXISTS 'keystone'@'127.0.0.1' IDENTIFIED BY 'keystone'; GRANT ALL ON keystone.* TO 'keystone'@'127.0.0.1';"
  say "mariadb ok"
  start_keystone
  rabbit_up() {
    running rabbit || return 2; "$VENV/bin/python" -c "import kombu; c=kombu.Connection('amqp://guest:guest@127.0.0.1:$RABBIT_PORT//', connect_timeout=1); c.connect(); c.release()"
  }
  wait_for 90 rabbitmq rabbit_up || fail_start "$BASE/logs/rabbit.log" "RabbitMQ not ready"
  say "rabbitmq ok"
  keystone_up() { running keystone || return 2; curl -sf -m 2 -o /dev/null "$KS_URL"; }
  wait_for 60 keystone keystone_up || fail_start "$BASE/logs/keystone.stdout" "Keystone not ready"
  keystone_users 2>"$BASE/logs/keystone-users.log" \
    || fail_start "$BASE/logs/keystone-users.log" "making the Keystone project, user and application credential failed"
  say "keystone ok"

  # 5. Cinder's configuration and schema.
  cp -r "$VENV"/etc/cinder/* "$BASE/etc/"
  cat >"$BASE/etc/cinder.conf" <<EOF
[DEFAULT]
auth_strategy = noauth
transport_url = rabbit://guest:guest@127.0.0.1:$RABBIT_PORT/
osapi_volume_listen = 127.0.0.1
osapi_volume_listen_port = $CINDER_PORT
osapi_volume_workers = 1
enabled_backends = fake,multi,lun
state_path = $BASE/state
api_paste_config = $BASE/etc/api-paste.ini
resource_query_filters_file = $BASE/etc/resource_filters.json
my_ip = 127.0.0.1
host = elara-test
log_dir = $BASE/logs
debug = ${CINDER_DEBUG:-false}
report_interval = 5
periodic_interval = 5
backend_stats_polling_interval = 3
scheduler_driver_init_wait_time = 1
periodic_fuzzy_delay = 0
# No quota limits in the test project (tests that check the quota error set a quota on a project
# of their own).
use_default_quota_class = false
quota_volumes = -1
quota_snapshots = -1
quota_gigabytes = -1
quota_backups = -1
quota_backup_gigabytes = -1
[database]
connection = mysql+pymysql://cinder:cinder@127.0.0.1:$MYSQL_PORT/cinder?charset=utf8
[oslo_concurrency]
lock_path = $BASE/locks
[fake]
volume_driver = multipool_driver.IscsiFakeDriver
volume_backend_name = fake
[multi]
volume_driver = multipool_driver.MultiPoolFakeDriver
volume_backend_name = multi
[lun]
volume_driver = tgt_driver.TgtFileDriver
volume_backend_name = lun
EOF
  # The same Cinder behind Keystone: a second API process on its own port.
  sed -e "s/^auth_strategy = noauth/auth_strategy = keystone/" \
      -e "s/^osapi_volume_listen_port = .*/osapi_volume_listen_port = $CINDER_KEYSTONE_PORT/" \
      -e "s/^log_dir = .*/log_dir = $(printf '%s' "$BASE/logs" | sed 's/[\/&]/\\&/g')\nlog_file = cinder-api-keystone.log/" \
      "$BASE/etc/cinder.conf" >"$BASE/etc/cinder-keystone.conf"
  cat >>"$BASE/etc/cinder-keystone.conf" <<EOF
[keystone_authtoken]
www_authenticate_uri = $KS_URL
auth_url = $KS_URL
auth_type = password
username = admin
password = $KS_ADMIN_PASSWORD
project_name = admin
user_domain_id = default
project_domain_id = default
interface = public
# Validate every token with Keystone (no cache), so a revoked token is refused at once.
token_cache_time = -1
EOF
  "$VENV/bin/cinder-manage" --config-file "$BASE/etc/cinder.conf" db sync >"$BASE/logs/db-sync.log" 2>&1 \
    || fail_start "$BASE/logs/db-sync.log" "cinder-manage db sync failed"
  say "schema ok"

  # 6. The Cinder services, each a process-group leader.
  for s in api scheduler volume; do
    (PYTHONPATH=$FILES ELARA_CINDER_POOLS_FILE=$BASE/pools.json ELARA_TGT_LUNS_DIR=$TGT_DIR/luns \
       ELARA_TGT_TARGETS_DIR=$TGT_DIR/targets ELARA_TGT_PORTAL=127.0.0.1:3260 setsid "$VENV/bin/cinder-$s" \
       --config-file "$BASE/etc/cinder.conf" >"$BASE/logs/$s.stdout" 2>&1 </dev/null & echo $! >"$BASE/pids/$s.pid")
  done
  (setsid "$VENV/bin/cinder-api" --config-file "$BASE/etc/cinder-keystone.conf" \
     >"$BASE/logs/api-keystone.stdout" 2>&1 </dev/null & echo $! >"$BASE/pids/api-keystone.pid")
  local want
  # fake's pool, multi's pools, lun's pool.
  want=$((2 + $(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$BASE/pools.json")))
  cinder_up() {
    for s in api api-keystone scheduler volume; do running "$s" || { say "cinder-$s exited"; return 2; }; done
    curl -s -m 2 -o /dev/null "http://127.0.0.1:$CINDER_KEYSTONE_PORT/" || return 1
    curl -sf -m 2 -H "X-Auth-Token: $TOKEN" "$ENDPOINT/scheduler-stats/get_pools" \
      | python3 -c "import json,sys; sys.exit(len(json.load(sys.stdin)['pools']) < $want)"
  }
  local end=$((SECONDS + READY_TIMEOUT)) rc
  while :; do
    rc=0; cinder_up >/dev/null 2>&1 || rc=$?
    [ $rc -eq 0 ] && break
    if [ $rc -eq 2 ] || [ "$SECONDS" -ge "$end" ]; then
      for s in api api-keystone scheduler volume; do running "$s" || fail_start "$BASE/logs/$s.stdout" "cinder-$s exited during start-up"; done
      fail_start "$BASE/logs/cinder-api.log" "Cinder not ready with $want pools after ${READY_TIMEOUT}s"
    fi
    sleep 0.2
  done
  lun_type || fail_start "$BASE/logs/cinder-api.log" "making the volume type $LUN_TYPE failed"
  echo "$ENDPOINT" >"$BASE/endpoint"
  say "cinder ready: $want pools at $ENDPOINT"
  print_env
}

case "$ACTION" in
  start) start ;;
  stop) stop ;;
  status) if stack_up && bash "$TGT" status "$TGT_DIR" >/dev/null; then print_env; else exit 1; fi ;;
  *) usage ;;
esac
