#!/bin/bash
# Entrypoint of harness-local/mariadb (a tag of the base image): the container backend writes it into the container and runs it.
#
# Environment (same meaning as in the official mariadb image; each MARIADB_* also as MYSQL_*):
#   MARIADB_ROOT_PASSWORD              password of root (root@localhost and root@MARIADB_ROOT_HOST)
#   MARIADB_ALLOW_EMPTY_ROOT_PASSWORD  1 = root has no password
#   MARIADB_RANDOM_ROOT_PASSWORD       1 = a random root password, printed to the log
#                                      (one of these three is required at first start)
#   MARIADB_ROOT_HOST                  host part of the remote root account (default: %)
#   MARIADB_DATABASE                   database created at first start
#   MARIADB_USER, MARIADB_PASSWORD     user created at first start (host %), with every
#                                      privilege on MARIADB_DATABASE; not root
# Data directory /var/lib/mysql, socket /run/mysqld/mysqld.sock, port 3306 on all interfaces.
# Scripts in /docker-entrypoint-initdb.d (*.sql, *.sql.gz) run once, in MARIADB_DATABASE, at
# first start; *.sh scripts are not supported (there is no set-up server to run them against).
#
#   docker run IMAGE                     the server, in the foreground, as user mysql
#   docker run IMAGE --option=value ...  the server with extra options (later ones win)
#   docker run IMAGE --version           (or --help) answered by mariadbd, nothing initialised
#   docker run IMAGE bash                any other command is executed as is
#
# Sourced (not run) it only defines its settings and functions; the native backend's recipe
# (fixtures/images/mariadb-native-recipe.sh) uses them, so both make servers alike.
set -Eeuo pipefail

# How a data directory is made:
#   --no-defaults     no /etc/mysql/my.cnf (the package's settings: 127.0.0.1 only, and more)
#   --auth-root-authentication-method=socket
#                     root@localhost logs in over the Unix socket as the OS user root, without
#                     a password (unix_socket plugin); the password is added at first start
#   --skip-test-db    no `test` database, no anonymous users
#   --skip-name-resolve grant rows by IP, no DNS look-up of the host's name
MARIADB_INSTALL_ARGS=(
  --no-defaults
  --auth-root-authentication-method=socket
  --auth-root-socket-user=root
  --skip-test-db
  --skip-name-resolve
)

# Server settings, also given to mariadb-install-db (its bootstrap server makes the InnoDB files
# with them). Test data only: durability is traded for speed.
MARIADB_SETTINGS=(
  # The redo log is made at 8 MB instead of 96 MB: a smaller data directory to make and copy.
  --innodb-log-file-size=8M
  # No fsync of the redo log at commit (written and flushed about once a second).
  --innodb-flush-log-at-trx-commit=0
  # No doublewrite buffer: every page is written once.
  --innodb-doublewrite=0
  # The temporary tablespace, written in full at every start: 1 MB instead of 12 MB.
  --innodb-temp-data-file-path=ibtmp1:1M:autoextend
  # No dump of the buffer pool's page list at shutdown and no reload at start.
  --innodb-buffer-pool-dump-at-shutdown=0
  --innodb-buffer-pool-load-at-startup=0
  --innodb-buffer-pool-size=64M
  # As Debian's packaged configuration and the official image: the compiled-in default is latin1.
  --character-set-server=utf8mb4
  --collation-server=utf8mb4_general_ci
  # Clients are matched by IP: no reverse DNS look-up per connection.
  --skip-name-resolve
  # No binary log (the compiled-in default, stated so that a change of it is seen).
  --skip-log-bin
  --max-connections=200
)

# A string literal for the init file: \ and ' are escaped with a backslash (the default sql_mode
# has no NO_BACKSLASH_ESCAPES), line breaks as \n and \r, since the file is read a line at a
# time. Any password or name, quotes and newlines included, survives.
sql_string() {
  local s="$1"
  s="${s//\\/\\\\}"
  s="${s//\'/\\\'}"
  s="${s//$'\n'/\\n}"
  s="${s//$'\r'/\\r}"
  printf "'%s'" "$s"
}

# An identifier (a database name): ` doubled.
sql_ident() { printf '`%s`' "${1//\`/\`\`}"; }

# mariadb_init_sql USER PASSWORD DATABASE ROOT_PASSWORD ROOT_HOST ROOT_EMPTY
# The statements that give a fresh or copied data directory its accounts and database, run by
# the server itself at start (--init-file): after the system tables are open and before the
# first client is accepted, so no client ever sees other credentials. Idempotent, so one
# data directory made for all serves every run.
#   USER (not root): USER@'%' with every privilege on DATABASE (as the official image).
#   ROOT_PASSWORD or ROOT_EMPTY=1: root@ROOT_HOST with every privilege, and root@localhost
#   also by password (over the socket the OS user root still needs none).
# '%' and not 'localhost': with --skip-name-resolve a TCP client from 127.0.0.1 is matched by
# IP, and 'localhost' only ever matches the Unix socket. The init file stops at its first failed
# statement, so only statements the bootstrap session may run are here (not GRANT PROXY, which
# the official image also gives root@'%': the session holds no proxy privilege to grant).
mariadb_init_sql() {
  local user="$1" password="$2" db="$3" root_password="$4" root_host="$5" root_empty="$6"
  local pw
  if [[ -n "$root_password" || "$root_empty" == 1 ]]; then
    pw="$(sql_string "$root_password")"
    local remote
    remote="'root'@$(sql_string "$root_host")"
    printf "ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD(%s);\n" "$pw"
    if [[ "$root_host" != localhost ]]; then
      printf 'CREATE USER IF NOT EXISTS %s;\n' "$remote"
      printf 'ALTER USER %s IDENTIFIED BY %s;\n' "$remote" "$pw"
      printf 'GRANT ALL PRIVILEGES ON *.* TO %s WITH GRANT OPTION;\n' "$remote"
    fi
  fi
  if [[ -n "$db" ]]; then
    printf 'CREATE DATABASE IF NOT EXISTS %s;\n' "$(sql_ident "$db")"
  fi
  if [[ -n "$user" ]]; then
    local account
    account="$(sql_string "$user")@'%'"
    printf 'CREATE USER IF NOT EXISTS %s;\n' "$account"
    printf 'ALTER USER %s IDENTIFIED BY %s;\n' "$account" "$(sql_string "$password")"
    if [[ -n "$db" ]]; then
      printf 'GRANT ALL PRIVILEGES ON %s.* TO %s;\n' "$(sql_ident "$db")" "$account"
    fi
  fi
}

# ------------------------------------------------------------------ the container's start

mariadb_entrypoint() {
  if [[ $# -eq 0 || "$1" == -* ]]; then
    set -- mariadbd "$@"
  fi
  if [[ "$1" != mariadbd && "$1" != mysqld ]]; then
    exec "$@"
  fi
  # A question to the server (its version, its options) needs no data directory.
  local arg
  for arg in "$@"; do
    case "$arg" in
      -'?' | --help | -V | --version) exec "$@" ;;
    esac
  done
  shift

  local datadir=/var/lib/mysql rundir=/run/mysqld
  if [[ $EUID -eq 0 ]]; then
    mkdir -p "$datadir" "$rundir"
    find "$datadir" "$rundir" \! -user mysql -exec chown mysql:mysql '{}' +
    # Everything else runs as mysql: re-exec this script under that user.
    export HOME="$datadir"
    exec setpriv --reuid=mysql --regid=mysql --init-groups /bin/bash "${BASH_SOURCE[0]}" mariadbd "$@"
  fi

  local extra=()
  if [[ ! -d "$datadir/mysql" ]]; then
    mariadb_init "$datadir" "$rundir"
    extra=(--init-file="$rundir/init.sql")
  fi

  # exec: mariadbd replaces this shell and receives the container's signals as PID 1 (SIGTERM is
  # a clean shutdown). Its log goes to stderr, sent to stdout with everything else.
  exec 2>&1
  exec mariadbd --no-defaults \
    --datadir="$datadir" \
    --socket="$rundir/mysqld.sock" \
    --pid-file="$rundir/mysqld.pid" \
    --port=3306 \
    "${MARIADB_SETTINGS[@]}" \
    "${extra[@]+"${extra[@]}"}" \
    "$@"
}

log() { printf 'entrypoint: %s\n' "$*" >&2; }

# The first value of the given variables that is set (MARIADB_X before its alias MYSQL_X).
first_set() {
  local v
  for v in "$@"; do
    if [[ -n "${!v+set}" ]]; then
      printf '%s' "${!v}"
      return 0
    fi
  done
}

truthy() { [[ -n "$1" && "$1" != 0 && "$1" != no && "$1" != false ]]; }

# Makes the data directory and writes the SQL of the first start to RUNDIR/init.sql.
mariadb_init() {
  local datadir="$1" rundir="$2"
  local user password db root_password root_host root_empty=0
  user="$(first_set MARIADB_USER MYSQL_USER)"
  password="$(first_set MARIADB_PASSWORD MYSQL_PASSWORD)"
  db="$(first_set MARIADB_DATABASE MYSQL_DATABASE)"
  root_password="$(first_set MARIADB_ROOT_PASSWORD MYSQL_ROOT_PASSWORD)"
  root_host="$(first_set MARIADB_ROOT_HOST MYSQL_ROOT_HOST)"
  root_host="${root_host:-%}"

  if [[ -z "$root_password" ]]; then
    if truthy "$(first_set MARIADB_ALLOW_EMPTY_ROOT_PASSWORD MYSQL_ALLOW_EMPTY_PASSWORD)"; then
      root_empty=1
    elif truthy "$(first_set MARIADB_RANDOM_ROOT_PASSWORD MYSQL_RANDOM_ROOT_PASSWORD)"; then
      # od reads exactly 16 bytes: no pipe closed early (that fails under pipefail).
      root_password="$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
      log "GENERATED ROOT PASSWORD: $root_password"
    else
      cat >&2 <<'MSG'
Error: Database is uninitialized and password option is not specified
       You need to specify one of MARIADB_ROOT_PASSWORD, MARIADB_ALLOW_EMPTY_ROOT_PASSWORD
       and MARIADB_RANDOM_ROOT_PASSWORD
MSG
      exit 1
    fi
  fi
  if [[ "$user" == root ]]; then
    log "error: MARIADB_USER=root: MARIADB_USER and MARIADB_PASSWORD are for a user other than root; set MARIADB_ROOT_PASSWORD"
    exit 1
  fi
  if [[ -n "$user" && -z "$password" ]]; then
    log "error: MARIADB_USER is set but MARIADB_PASSWORD is not"
    exit 1
  fi

  local tmplog
  tmplog="$(mktemp)"
  if ! mariadb-install-db "${MARIADB_INSTALL_ARGS[@]}" --datadir="$datadir" \
      "${MARIADB_SETTINGS[@]}" >"$tmplog" 2>&1; then
    cat "$tmplog" >&2
    exit 1
  fi
  rm -f "$tmplog"

  local init="$rundir/init.sql" f
  (
    umask 077
    mariadb_init_sql "$user" "$password" "$db" "$root_password" "$root_host" "$root_empty" >"$init"
    for f in /docker-entrypoint-initdb.d/*; do
      [[ -e "$f" ]] || continue
      [[ -z "$db" ]] || printf 'USE %s;\n' "$(sql_ident "$db")"
      case "$f" in
        *.sql) log "running $f"; cat "$f"; echo ;;
        *.sql.gz) log "running $f"; gunzip -c "$f"; echo ;;
        *) log "ignoring $f" ;;
      esac
    done >>"$init"
  )
  log "initialised $datadir (user \"${user:-}\", database \"${db:-}\", root@$root_host)"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  mariadb_entrypoint "$@"
fi
