#!/usr/bin/env bash
# Real Kafka broker (KRaft, single node) and Redis server for tests, benchmarks and CI.
# No Docker: the broker runs from the official Apache Kafka jars resolved with Maven
# (scripts/kafka-pom.xml), Redis from the Debian package. Loopback only, free ports.
#
#   scripts/services.sh install          jars + redis-server + chromium + grpcurl + ghz (idempotent)
#   scripts/services.sh kafka-start DIR  start (or restart, same ports/data) a broker in DIR;
#                                        last stdout line: 127.0.0.1:PORT
#   scripts/services.sh kafka-stop DIR   SIGTERM, 20 s grace, SIGKILL (idempotent)
#   scripts/services.sh redis-start DIR  start (or restart, same port) redis in DIR;
#                                        last stdout line: 127.0.0.1:PORT
#   scripts/services.sh redis-stop DIR   SHUTDOWN NOSAVE, then kill (idempotent)
#   scripts/services.sh redis-cluster-start DIR  a Redis Cluster (3 masters, 3 replicas) in DIR,
#                                        or restart its stopped nodes; last stdout line (and
#                                        DIR/redis.url): redis+cluster://127.0.0.1:P1,...
#   scripts/services.sh redis-cluster-stop DIR   stop every node of it (idempotent)
#                                        (SKEWLESS_REDIS_TLS=1: TLS only, as for redis-start,
#                                        the bus and replication too; rediss+cluster:// URL)
#   scripts/services.sh up DIR           both (DIR/kafka, DIR/redis) + DIR/env
#   scripts/services.sh down DIR         stop both
#   scripts/services.sh status DIR       what runs in DIR
#
# Environment:
#   SKEWLESS_SERVICES_HOME       cache root (default ~/.cache/skewless)
#   SKEWLESS_KAFKA_VERSION       Apache Kafka version (default below; must exist on Maven Central)
#   SKEWLESS_KAFKA_HEAP_OPTS     JVM heap options (default -Xmx512m -Xms256m)
#   SKEWLESS_KAFKA_START_TIMEOUT seconds to wait for the broker (default 90)
#   SKEWLESS_REDIS_START_TIMEOUT seconds to wait for redis (default 20)
#   SKEWLESS_GHZ_VERSION         ghz (gRPC load tool) that install builds (default v0.120.0)
#   SKEWLESS_REDIS_TLS=1         redis-start serves TLS only (a self-signed CA and server
#                                certificate in DIR) with an ACL user `skewless` and a random
#                                password, the default user off; DIR/redis.url holds the
#                                rediss:// URL (ssl_ca_certs=DIR/ca.crt) to connect with
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SELF="$SCRIPT_DIR/services.sh"
SERVICES_HOME="${SKEWLESS_SERVICES_HOME:-$HOME/.cache/skewless}"
KAFKA_VERSION="${SKEWLESS_KAFKA_VERSION:-3.9.1}"
KAFKA_LIBS="$SERVICES_HOME/kafka-libs-$KAFKA_VERSION"
KAFKA_POM="$SCRIPT_DIR/kafka-pom.xml"
KAFKA_HEAP_OPTS="${SKEWLESS_KAFKA_HEAP_OPTS:--Xmx512m -Xms256m}"
KAFKA_START_TIMEOUT="${SKEWLESS_KAFKA_START_TIMEOUT:-90}"
REDIS_START_TIMEOUT="${SKEWLESS_REDIS_START_TIMEOUT:-20}"
# The line KafkaRaftServer logs once the broker is unfenced and serving requests.
KAFKA_READY_LINE="Kafka Server started"

say() { echo "services.sh: $*"; }
err() { echo "services.sh: $*" >&2; }
die() { err "$*"; exit 2; }

# ---------------------------------------------------------------- helpers

# Print N distinct free loopback TCP ports (bound at the same time, so distinct).
free_ports() {
    python3 -c '
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
' "$1"
}

port_open() { # port -> 0 if something accepts TCP connections on 127.0.0.1:port
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# pid_matches PIDFILE PATTERN: the pid in PIDFILE is alive and its command line
# contains PATTERN (guards against killing a recycled pid). Prints the pid.
pid_matches() {
    local pidfile="$1" pattern="$2" pid
    [[ -s "$pidfile" ]] || return 1
    pid="$(tr -dc '0-9' <"$pidfile")"
    [[ -n "$pid" ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$pattern" || return 1
    echo "$pid"
}

wait_gone() { # pid seconds -> 0 if the pid exited within the time
    local pid="$1" deadline=$((SECONDS + $2))
    while kill -0 "$pid" 2>/dev/null; do
        # a zombie child of ours counts as gone
        if [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" == "Z" ]]; then return 0; fi
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# report_failure SERVICE LOGFILE REASON HOWTO...: the message a test fixture shows.
report_failure() {
    local service="$1" log="$2" reason="$3"
    shift 3
    {
        echo "services.sh: $service FAILED to start: $reason"
        if [[ -f "$log" ]]; then
            if grep -qE '(ERROR|FATAL|Exception|Error occurred)' "$log"; then
                echo "----- errors in $log (last 10) -----"
                grep -E '(ERROR|FATAL|Exception|Error occurred)' "$log" | tail -n 10 | cut -c1-400
            fi
            echo "----- last 30 lines of $log -----"
            tail -n 30 "$log"
            echo "----- end of $log -----"
        else
            echo "(no log file at $log)"
        fi
        echo "To start it by hand:"
        printf '%s\n' "$@" | sed 's/^/    /'
    } >&2
}

abs_dir() { # create DIR and print its absolute path
    [[ -n "${1:-}" ]] || die "missing DIR argument (usage: $0 help)"
    mkdir -p "$1"
    (cd "$1" && pwd)
}

# ---------------------------------------------------------------- install

install_redis() {
    if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
        say "redis-server: present ($(command -v redis-server))"
        return 0
    fi
    say "redis-server: installing with apt-get (redis-server)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    # the Debian package may start a system instance on 6379; we never use it.
    command -v redis-server >/dev/null 2>&1 || die "redis-server still missing after apt-get install"
    say "redis-server: installed ($(command -v redis-server))"
}

install_java_maven() {
    local pkgs=()
    command -v java >/dev/null 2>&1 || pkgs+=(openjdk-17-jre-headless)
    command -v mvn >/dev/null 2>&1 || pkgs+=(maven)
    if ((${#pkgs[@]} == 0)); then
        say "java + maven: present ($(java -version 2>&1 | head -n1))"
        return 0
    fi
    say "java + maven: installing with apt-get (${pkgs[*]})"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
}

jar_count() { find "$1" -maxdepth 1 -name '*.jar' | wc -l; }

kafka_libs_ready() {
    [[ -f "$KAFKA_LIBS/.complete" ]] && compgen -G "$KAFKA_LIBS/kafka_2.13-*.jar" >/dev/null
}

install_kafka_libs() {
    if kafka_libs_ready; then
        say "kafka $KAFKA_VERSION jars: present ($KAFKA_LIBS, $(jar_count "$KAFKA_LIBS") jars)"
        return 0
    fi
    install_java_maven
    say "kafka $KAFKA_VERSION jars: resolving org.apache.kafka:kafka_2.13 with Maven into $KAFKA_LIBS"
    mkdir -p "$SERVICES_HOME"
    local tmp="$KAFKA_LIBS.tmp.$$"
    rm -rf "$tmp"
    # mvn output goes to a log (Debian's mvn prints stray ANSI codes even with -B -q);
    # shown only when resolution fails.
    local mvnlog="$SERVICES_HOME/mvn-kafka-$KAFKA_VERSION.log"
    if ! (cd "$SCRIPT_DIR" && mvn -B -q -Dstyle.color=never -f "$KAFKA_POM" \
        -Dkafka.version="$KAFKA_VERSION" -DincludeScope=runtime \
        -DoutputDirectory="$tmp" dependency:copy-dependencies) >"$mvnlog" 2>&1; then
        sed 's/\x1b\[[0-9;]*m//g' "$mvnlog" | tail -n 40 >&2
        rm -rf "$tmp"
        die "mvn could not resolve Apache Kafka $KAFKA_VERSION (scripts/kafka-pom.xml); is Maven Central reachable?"
    fi
    compgen -G "$tmp/kafka_2.13-*.jar" >/dev/null || { rm -rf "$tmp"; die "mvn produced no kafka_2.13 jar in $tmp"; }
    touch "$tmp/.complete"
    if kafka_libs_ready; then
        rm -rf "$tmp" # another install finished first
    else
        rm -rf "$KAFKA_LIBS"
        mv -T "$tmp" "$KAFKA_LIBS"
    fi
    say "kafka $KAFKA_VERSION jars: done ($(jar_count "$KAFKA_LIBS") jars)"
}

# Headless Chromium (Debian's package) for the demo report's browser test
# (tests/skewless/test_report_browser.py drives it with Playwright; no browser download).
install_chromium() {
    if command -v chromium >/dev/null 2>&1; then
        say "chromium: present ($(command -v chromium))"
        return 0
    fi
    say "chromium: installing with apt-get (chromium)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    command -v chromium >/dev/null 2>&1 || die "chromium still missing after apt-get install"
    say "chromium: installed ($(command -v chromium))"
}

# grpcurl (the gRPC CLI the reflection tests drive), built with the Go toolchain from the
# Go module proxy. Into /usr/local/bin when writable, else $SERVICES_HOME/bin (the tests
# look there too). SKEWLESS_GRPCURL_VERSION overrides the pinned version.
install_grpcurl() {
    local version="${SKEWLESS_GRPCURL_VERSION:-v1.9.4}" bin=/usr/local/bin
    [[ -w "$bin" ]] || bin="$SERVICES_HOME/bin"
    if command -v grpcurl >/dev/null 2>&1 || [[ -x "$SERVICES_HOME/bin/grpcurl" ]]; then
        say "grpcurl: present ($(command -v grpcurl || echo "$SERVICES_HOME/bin/grpcurl"))"
        return 0
    fi
    local go
    go="$(command -v go || echo /usr/local/go/bin/go)"
    [[ -x "$go" ]] || die "grpcurl: needs the Go toolchain (https://go.dev/dl/) to build it"
    mkdir -p "$bin"
    say "grpcurl: building $version with $("$go" version | cut -d' ' -f3) into $bin"
    GOBIN="$bin" "$go" install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$version"
    say "grpcurl: installed ($bin/grpcurl)"
}

cmd_install() {
    install_ghz
    install_redis
    install_kafka_libs
    install_chromium
    install_grpcurl
    say "install: done"
}

# ---------------------------------------------------------------- ghz

# ghz, the Go gRPC load tool that tests/interop runs against a real `skewless serve`:
# built from the Go module proxy with `go install` (go from PATH, /usr/local/go, or
# Debian's golang-go), into /usr/local/bin, or $SERVICES_HOME/bin when that is not
# writable. Optional: when it cannot be built, the ghz tests are skipped, said loudly.
install_ghz() {
    local version="${SKEWLESS_GHZ_VERSION:-v0.120.0}" found go bindir log
    for found in "$(command -v ghz 2>/dev/null || true)" "$SERVICES_HOME/bin/ghz"; do
        if [[ -n "$found" && -x "$found" ]]; then
            say "ghz: present ($found)"
            return 0
        fi
    done
    go="$(command -v go 2>/dev/null || true)"
    [[ -z "$go" && -x /usr/local/go/bin/go ]] && go=/usr/local/go/bin/go
    if [[ -z "$go" ]]; then
        say "ghz: go missing, installing with apt-get (golang-go)"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go; } \
            >/dev/null 2>&1 || true
        go="$(command -v go 2>/dev/null || true)"
    fi
    if [[ -z "$go" ]]; then
        die "ghz: needs the Go toolchain (apt-get install golang-go, or https://go.dev/dl/)"
    fi
    bindir=/usr/local/bin
    [[ -w "$bindir" ]] || bindir="$SERVICES_HOME/bin"
    mkdir -p "$bindir" "$SERVICES_HOME"
    log="$SERVICES_HOME/ghz-install.log"
    say "ghz: building github.com/bojand/ghz/cmd/ghz@$version with $("$go" version | cut -d' ' -f3) into $bindir (a few minutes the first time)"
    if ! GOBIN="$bindir" "$go" install "github.com/bojand/ghz/cmd/ghz@$version" >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        die "ghz: go install failed (log $log)"
    fi
    say "ghz: installed ($bindir/ghz)"
}

# ---------------------------------------------------------------- kafka

kafka_prop() { # DIR key -> value from DIR/server.properties
    sed -n "s/^$2=//p" "$1/server.properties" | tail -n1
}

kafka_port() { kafka_prop "$1" listeners | sed -n 's#.*PLAINTEXT://127\.0\.0\.1:\([0-9]*\).*#\1#p'; }

write_kafka_config() {
    local dir="$1" port="$2" cport="$3"
    cat >"$dir/server.properties" <<EOF
# written by scripts/services.sh kafka-start (single-node KRaft broker, loopback only)
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
delete.topic.enable=true
num.network.threads=2
num.io.threads=4
log.retention.hours=24
log.segment.bytes=67108864
EOF
    cat >"$dir/log4j.properties" <<'EOF'
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
log4j.logger.org.apache.kafka.common.utils.AppInfoParser=WARN
EOF
}

kafka_java_cmd() { # DIR main-class args... -> sets array JAVA_CMD
    local dir="$1" heap
    shift
    read -r -a heap <<<"$KAFKA_HEAP_OPTS"
    JAVA_CMD=(java "${heap[@]}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true
        "-Dlog4j.configuration=file:$dir/log4j.properties" "-Dkafka.logs.dir=$dir"
        -cp "$KAFKA_LIBS/*" "$@")
}

kafka_manual_howto() {
    local dir="$1"
    echo "scripts/services.sh install   # jars into $KAFKA_LIBS"
    echo "java -cp '$KAFKA_LIBS/*' kafka.tools.StorageTool format -t \$(cat $dir/cluster.id) -c $dir/server.properties --ignore-formatted"
    echo "java -Xmx512m -Dlog4j.configuration=file:$dir/log4j.properties -cp '$KAFKA_LIBS/*' kafka.Kafka $dir/server.properties"
}

cmd_kafka_start() {
    local dir port cport pid
    dir="$(abs_dir "${1:-}")"
    local log="$dir/kafka.log" pidfile="$dir/kafka.pid"

    if [[ -f "$dir/server.properties" ]] && pid="$(pid_matches "$pidfile" kafka.Kafka)"; then
        port="$(kafka_port "$dir")"
        if port_open "$port"; then
            err "kafka: already running in $dir (pid $pid)"
            echo "127.0.0.1:$port"
            return 0
        fi
    fi

    if ! kafka_libs_ready; then
        err "kafka: jars missing, running install first"
        install_kafka_libs >&2 || {
            report_failure "Kafka broker" "$log" "could not install the Kafka $KAFKA_VERSION jars" \
                "scripts/services.sh install"
            exit 1
        }
    fi
    if ! command -v java >/dev/null 2>&1; then
        report_failure "Kafka broker" "$log" "java not found on PATH" "apt-get install -y openjdk-17-jre-headless"
        exit 1
    fi

    if [[ -f "$dir/server.properties" ]]; then
        # restart: same ports, same data
        port="$(kafka_port "$dir")"
        cport="$(kafka_prop "$dir" controller.quorum.voters | sed 's/.*://')"
        [[ -n "$port" && -n "$cport" ]] || die "kafka: cannot read ports from $dir/server.properties"
    else
        read -r port cport < <(free_ports 2)
        [[ -n "$port" && -n "$cport" ]] || die "kafka: could not find free loopback ports (python3 missing?)"
        write_kafka_config "$dir" "$port" "$cport"
    fi
    mkdir -p "$dir/data"

    if [[ ! -f "$dir/data/meta.properties" ]]; then
        local cluster_id
        cluster_id="$(python3 "$SCRIPT_DIR/cluster_id.py")"  # never starts with "-"
        echo "$cluster_id" >"$dir/cluster.id"
        kafka_java_cmd "$dir" kafka.tools.StorageTool format -t "$cluster_id" \
            -c "$dir/server.properties" --ignore-formatted
        if ! "${JAVA_CMD[@]}" </dev/null >>"$log" 2>&1; then
            report_failure "Kafka broker" "$log" "storage format (kafka.tools.StorageTool) failed" \
                "$(kafka_manual_howto "$dir")"
            exit 1
        fi
    fi

    local log_offset=0
    [[ -f "$log" ]] && log_offset="$(stat -c %s "$log")"
    # setsid: detach from the caller's process group (Ctrl-C in pytest must not kill it
    # half-way; the fixtures stop it). The inner shell writes its pid, then execs java.
    kafka_java_cmd "$dir" kafka.Kafka "$dir/server.properties"
    # shellcheck disable=SC2016
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$pidfile" nohup "${JAVA_CMD[@]}" \
        </dev/null >>"$log" 2>&1 &

    local start=$SECONDS deadline=$((SECONDS + KAFKA_START_TIMEOUT)) reason=""
    while :; do
        sleep 0.3
        pid="$(tr -dc '0-9' <"$pidfile" 2>/dev/null || true)"
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
            reason="the broker process (pid $pid) exited"
            break
        fi
        if port_open "$port" && tail -c "+$((log_offset + 1))" "$log" 2>/dev/null | grep -qF "$KAFKA_READY_LINE"; then
            err "kafka: ready on 127.0.0.1:$port after $((SECONDS - start)) s (pid $pid, dir $dir)"
            echo "127.0.0.1:$port"
            return 0
        fi
        if ((SECONDS >= deadline)); then
            reason="not ready after ${KAFKA_START_TIMEOUT} s (port $port open: $(port_open "$port" && echo yes || echo no); '$KAFKA_READY_LINE' not logged)"
            break
        fi
    done
    if [[ -n "$pid" ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
    report_failure "Kafka broker" "$log" "$reason" "$(kafka_manual_howto "$dir")"
    exit 1
}

cmd_kafka_stop() {
    local dir pid
    dir="$(abs_dir "${1:-}")"
    if ! pid="$(pid_matches "$dir/kafka.pid" kafka.Kafka)"; then
        err "kafka: not running in $dir"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    if wait_gone "$pid" 20; then
        err "kafka: stopped (pid $pid)"
    else
        err "kafka: still running 20 s after SIGTERM, sending SIGKILL (pid $pid)"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 10 || die "kafka: pid $pid survived SIGKILL"
    fi
}

# ---------------------------------------------------------------- redis

redis_manual_howto() {
    local dir="$1" port="$2"
    echo "scripts/services.sh install   # apt-get install -y redis-server"
    echo "redis-server --port $port --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --pidfile $dir/redis.pid --logfile $dir/redis.log --dir $dir"
}

redis_cli_args() { # dir -> the redis-cli options that reach the server in dir (TLS + ACL)
    local dir="$1"
    if [[ -f "$dir/redis.pass" ]]; then
        printf '%s\n' --tls --cacert "$dir/ca.crt" --user skewless --pass "$(cat "$dir/redis.pass")"
    fi
}

redis_ping() { # port [dir] -> 0 if PONG
    local -a extra=()
    [[ -n "${2:-}" ]] && mapfile -t extra < <(redis_cli_args "$2")
    [[ "$(timeout 2 redis-cli "${extra[@]}" -h 127.0.0.1 -p "$1" --no-auth-warning ping 2>/dev/null)" == "PONG" ]]
}

redis_tls_files() { # dir -> a CA, a server certificate for 127.0.0.1 and a password, once
    local dir="$1"
    [[ -f "$dir/redis.crt" && -f "$dir/redis.pass" ]] && return 0
    command -v openssl >/dev/null 2>&1 || die "redis: SKEWLESS_REDIS_TLS=1 needs openssl"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$dir/ca.key" -out "$dir/ca.crt" \
        -days 30 -subj "/CN=skewless-test-ca" >/dev/null 2>&1
    openssl req -newkey rsa:2048 -nodes -keyout "$dir/redis.key" -out "$dir/redis.csr" \
        -subj "/CN=127.0.0.1" >/dev/null 2>&1
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$dir/redis.ext"
    openssl x509 -req -in "$dir/redis.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
        -CAcreateserial -out "$dir/redis.crt" -days 30 -extfile "$dir/redis.ext" >/dev/null 2>&1
    python3 -c 'import secrets; print(secrets.token_hex(16))' >"$dir/redis.pass"
    chmod 600 "$dir/ca.key" "$dir/redis.key" "$dir/redis.pass"
}

cmd_redis_start() {
    local dir port pid
    dir="$(abs_dir "${1:-}")"
    local log="$dir/redis.log" pidfile="$dir/redis.pid"

    if [[ -s "$dir/redis.port" ]]; then
        port="$(tr -dc '0-9' <"$dir/redis.port")"
        if pid_matches "$pidfile" redis-server >/dev/null && redis_ping "$port" "$dir"; then
            err "redis: already running in $dir"
            echo "127.0.0.1:$port"
            return 0
        fi
    else
        port="$(free_ports 1)"
        echo "$port" >"$dir/redis.port"
    fi

    if ! command -v redis-server >/dev/null 2>&1; then
        err "redis: redis-server missing, installing"
        install_redis >&2 || {
            report_failure "Redis server" "$log" "redis-server is not installed and apt-get failed" \
                "$(redis_manual_howto "$dir" "$port")"
            exit 1
        }
    fi

    rm -f "$pidfile"
    local log_offset=0
    [[ -f "$log" ]] && log_offset="$(stat -c %s "$log")"
    # shellcheck disable=SC2094  # redis-server and our redirection both append to the log
    # SKEWLESS_REDIS_APPENDONLY=1 keeps data across a stop/start (append-only file, fsync
    # always): used by the outage tests, where a restart must not lose what was written
    local aof=no
    [[ "${SKEWLESS_REDIS_APPENDONLY:-0}" == 1 ]] && aof=yes
    local -a listen=(--port "$port")
    if [[ "${SKEWLESS_REDIS_TLS:-0}" == 1 ]]; then
        redis_tls_files "$dir"
        listen=(--port 0 --tls-port "$port" --tls-cert-file "$dir/redis.crt"
            --tls-key-file "$dir/redis.key" --tls-ca-cert-file "$dir/ca.crt" --tls-auth-clients no
            --user default off --user skewless on ">$(cat "$dir/redis.pass")" '~*' '&*' '+@all')
        echo "rediss://skewless:$(cat "$dir/redis.pass")@127.0.0.1:$port/0?ssl_ca_certs=$dir/ca.crt" \
            >"$dir/redis.url"
    else
        rm -f "$dir/redis.pass" "$dir/redis.url"
    fi
    if ! redis-server "${listen[@]}" --bind 127.0.0.1 --save '' --appendonly "$aof" \
        --appendfsync always \
        --daemonize yes --pidfile "$pidfile" --logfile "$log" --dir "$dir" \
        </dev/null >>"$log" 2>&1; then
        report_failure "Redis server" "$log" "redis-server exited with an error" \
            "$(redis_manual_howto "$dir" "$port")"
        exit 1
    fi

    local start=$SECONDS deadline=$((SECONDS + REDIS_START_TIMEOUT))
    while ! redis_ping "$port" "$dir"; do
        if tail -c "+$((log_offset + 1))" "$log" 2>/dev/null | grep -qE 'aborting|Fatal error|FATAL'; then
            report_failure "Redis server" "$log" "redis-server aborted (see its log)" \
                "$(redis_manual_howto "$dir" "$port")"
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            if pid="$(pid_matches "$pidfile" redis-server)"; then kill -KILL "$pid" 2>/dev/null || true; fi
            report_failure "Redis server" "$log" "no PONG on 127.0.0.1:$port after ${REDIS_START_TIMEOUT} s" \
                "$(redis_manual_howto "$dir" "$port")"
            exit 1
        fi
        sleep 0.1
    done
    err "redis: ready on 127.0.0.1:$port after $((SECONDS - start)) s (dir $dir)"
    echo "127.0.0.1:$port"
}

cmd_redis_stop() {
    local dir pid port
    dir="$(abs_dir "${1:-}")"
    if ! pid="$(pid_matches "$dir/redis.pid" redis-server)"; then
        err "redis: not running in $dir"
        return 0
    fi
    port="$(tr -dc '0-9' <"$dir/redis.port" 2>/dev/null || true)"
    if [[ -n "$port" ]]; then
        local -a extra=()
        mapfile -t extra < <(redis_cli_args "$dir")
        timeout 5 redis-cli "${extra[@]}" -h 127.0.0.1 -p "$port" --no-auth-warning shutdown nosave \
            >/dev/null 2>&1 || true
    fi
    if ! wait_gone "$pid" 5; then
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_gone "$pid" 5; then
            kill -KILL "$pid" 2>/dev/null || true
            wait_gone "$pid" 5 || die "redis: pid $pid survived SIGKILL"
        fi
    fi
    rm -f "$dir/redis.pid"
    err "redis: stopped (pid $pid)"
}

# ---------------------------------------------------------------- redis cluster

# 3 masters + 3 replicas, so a killed master fails over; a short node timeout (ms) makes a
# failover take seconds (SKEWLESS_REDIS_CLUSTER_NODE_TIMEOUT), the wait for a healthy
# cluster is bounded (SKEWLESS_REDIS_CLUSTER_TIMEOUT, seconds)
REDIS_CLUSTER_NODES=6
REDIS_CLUSTER_NODE_TIMEOUT="${SKEWLESS_REDIS_CLUSTER_NODE_TIMEOUT:-2000}"
REDIS_CLUSTER_TIMEOUT="${SKEWLESS_REDIS_CLUSTER_TIMEOUT:-60}"

cluster_ports() { # dir -> "port busport" per node, chosen once (the bus port is explicit:
    local dir="$1"  # port+10000 may be out of range for an ephemeral port)
    if [[ ! -s "$dir/ports" ]]; then
        free_ports $((2 * REDIS_CLUSTER_NODES)) | tr ' ' '\n' | paste -d' ' - - >"$dir/ports"
    fi
    cat "$dir/ports"
}

cluster_node_howto() { # dir i port bus
    echo "redis-server --port $3 --cluster-port $4 --cluster-enabled yes --cluster-config-file $1/n$2/nodes.conf --bind 127.0.0.1 --save '' --daemonize yes --dir $1/n$2"
    echo "redis-cli --cluster create 127.0.0.1:PORT1 ... 127.0.0.1:PORT6 --cluster-replicas 1 --cluster-yes"
}

cluster_healthy() { # dir ports... -> 0 if every node sees a healthy cluster, all slots served
    local dir="$1" port info
    shift
    local -a extra=()
    mapfile -t extra < <(redis_cli_args "$dir")
    for port in "$@"; do
        info="$(timeout 2 redis-cli "${extra[@]}" --no-auth-warning -h 127.0.0.1 -p "$port" \
            cluster info 2>/dev/null | tr -d '\r')" || return 1
        grep -qx 'cluster_state:ok' <<<"$info" || return 1
        grep -qx 'cluster_slots_ok:16384' <<<"$info" || return 1
        grep -qx "cluster_known_nodes:$#" <<<"$info" || return 1
    done
}

cmd_redis_cluster_start() {
    local dir i port bus nd pid
    dir="$(abs_dir "${1:-}")"
    command -v redis-server >/dev/null 2>&1 || install_redis >&2 || die "redis-server is not installed"
    local -a ports=() lines=() tls=() extra=()
    if [[ "${SKEWLESS_REDIS_TLS:-0}" == 1 ]]; then
        redis_tls_files "$dir"
        local pass
        pass="$(cat "$dir/redis.pass")"
        tls=(--tls-cluster yes --tls-replication yes --tls-cert-file "$dir/redis.crt"
            --tls-key-file "$dir/redis.key" --tls-ca-cert-file "$dir/ca.crt" --tls-auth-clients no
            --user default off --user skewless on ">$pass" '~*' '&*' '+@all'
            --masteruser skewless --masterauth "$pass")
    else
        rm -f "$dir/redis.pass"
    fi
    mapfile -t extra < <(redis_cli_args "$dir")
    mapfile -t lines < <(cluster_ports "$dir")
    for i in "${!lines[@]}"; do
        read -r port bus <<<"${lines[$i]}"
        ports+=("$port")
        nd="$dir/n$i"
        mkdir -p "$nd"
        pid_matches "$nd/redis.pid" redis-server >/dev/null && redis_ping "$port" "$dir" && continue
        rm -f "$nd/redis.pid"
        local -a listen=(--port "$port")
        ((${#tls[@]})) && listen=(--port 0 --tls-port "$port" "${tls[@]}")
        # shellcheck disable=SC2094  # redis-server and our redirection both append to the log
        if ! redis-server "${listen[@]}" --cluster-port "$bus" --bind 127.0.0.1 \
            --cluster-enabled yes --cluster-config-file "$nd/nodes.conf" \
            --cluster-node-timeout "$REDIS_CLUSTER_NODE_TIMEOUT" \
            --cluster-replica-validity-factor 0 --save '' --appendonly no \
            --daemonize yes --pidfile "$nd/redis.pid" --logfile "$nd/redis.log" --dir "$nd" \
            </dev/null >>"$nd/redis.log" 2>&1; then
            report_failure "Redis Cluster node $i" "$nd/redis.log" "redis-server exited with an error" \
                "$(cluster_node_howto "$dir" "$i" "$port" "$bus")"
            exit 1
        fi
    done
    local start=$SECONDS deadline=$((SECONDS + REDIS_CLUSTER_TIMEOUT))
    for i in "${!ports[@]}"; do
        while ! redis_ping "${ports[$i]}" "$dir"; do
            if ((SECONDS >= deadline)); then
                report_failure "Redis Cluster node $i" "$dir/n$i/redis.log" \
                    "no PONG on 127.0.0.1:${ports[$i]} after ${REDIS_CLUSTER_TIMEOUT} s" \
                    "$(cluster_node_howto "$dir" "$i" "${ports[$i]}" "?")"
                exit 1
            fi
            sleep 0.1
        done
    done
    if [[ ! -f "$dir/created" ]]; then
        local -a addrs=()
        for port in "${ports[@]}"; do addrs+=("127.0.0.1:$port"); done
        if ! timeout "$REDIS_CLUSTER_TIMEOUT" redis-cli "${extra[@]}" --no-auth-warning \
            --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
            >"$dir/create.log" 2>&1; then
            report_failure "Redis Cluster" "$dir/create.log" "redis-cli --cluster create failed" \
                "$(cluster_node_howto "$dir" 0 "${ports[0]}" "?")"
            exit 1
        fi
        touch "$dir/created"
    fi
    while ! cluster_healthy "$dir" "${ports[@]}"; do
        if ((SECONDS >= deadline)); then
            report_failure "Redis Cluster" "$dir/create.log" \
                "not cluster_state:ok with 16384 slots on every node after ${REDIS_CLUSTER_TIMEOUT} s" \
                "$(cluster_node_howto "$dir" 0 "${ports[0]}" "?")"
            exit 1
        fi
        sleep 0.2
    done
    local url="redis+cluster://" sep="" query=""
    if ((${#tls[@]})); then
        url="rediss+cluster://skewless:$(cat "$dir/redis.pass")@"
        query="?ssl_ca_certs=$dir/ca.crt"
    fi
    for port in "${ports[@]}"; do url+="${sep}127.0.0.1:$port" && sep=","; done
    url+="$query"
    echo "$url" >"$dir/redis.url"
    err "redis cluster: ready on ${#ports[@]} nodes after $((SECONDS - start)) s (dir $dir)"
    echo "$url"
}

cmd_redis_cluster_stop() {
    local dir i port bus pid
    dir="$(abs_dir "${1:-}")"
    [[ -s "$dir/ports" ]] || { err "redis cluster: nothing in $dir"; return 0; }
    local -a lines=() extra=()
    mapfile -t lines <"$dir/ports"
    mapfile -t extra < <(redis_cli_args "$dir")
    for i in "${!lines[@]}"; do
        read -r port bus <<<"${lines[$i]}"
        pid="$(pid_matches "$dir/n$i/redis.pid" redis-server)" || continue
        timeout 5 redis-cli "${extra[@]}" --no-auth-warning -h 127.0.0.1 -p "$port" shutdown nosave \
            >/dev/null 2>&1 || true
        if ! wait_gone "$pid" 5; then
            kill -KILL "$pid" 2>/dev/null || true
            wait_gone "$pid" 5 || die "redis cluster: pid $pid survived SIGKILL"
        fi
        rm -f "$dir/n$i/redis.pid"
    done
    err "redis cluster: stopped ($dir)"
}

# ---------------------------------------------------------------- both

cmd_up() {
    local dir kafka redis
    dir="$(abs_dir "${1:-}")"
    kafka="$(cmd_kafka_start "$dir/kafka" | tail -n1)"
    redis="$(cmd_redis_start "$dir/redis" | tail -n1)"
    cat >"$dir/env" <<EOF
SKEWLESS_KAFKA_BOOTSTRAP=$kafka
SKEWLESS_REDIS_URL=redis://$redis/0
EOF
    cat "$dir/env"
}

cmd_down() {
    local dir
    dir="$(abs_dir "${1:-}")"
    local rc=0
    cmd_kafka_stop "$dir/kafka" || rc=1
    cmd_redis_stop "$dir/redis" || rc=1
    return $rc
}

cmd_status() {
    local dir pid
    dir="$(abs_dir "${1:-}")"
    for sub in "$dir" "$dir/kafka" "$dir/redis"; do
        if [[ -f "$sub/server.properties" ]]; then
            if pid="$(pid_matches "$sub/kafka.pid" kafka.Kafka)"; then
                echo "kafka: running pid $pid on 127.0.0.1:$(kafka_port "$sub") ($sub)"
            else
                echo "kafka: stopped ($sub)"
            fi
        fi
        if [[ -f "$sub/redis.port" ]]; then
            if pid="$(pid_matches "$sub/redis.pid" redis-server)"; then
                echo "redis: running pid $pid on 127.0.0.1:$(cat "$sub/redis.port") ($sub)"
            else
                echo "redis: stopped ($sub)"
            fi
        fi
    done
}

usage() { sed -n '2,/^set -euo/p' "$SELF" | sed '$d' | sed 's/^# \{0,1\}//'; }

main() {
    local cmd="${1:-help}"
    shift || true
    case "$cmd" in
        install) cmd_install ;;
        kafka-start) cmd_kafka_start "$@" ;;
        kafka-stop) cmd_kafka_stop "$@" ;;
        redis-start) cmd_redis_start "$@" ;;
        redis-stop) cmd_redis_stop "$@" ;;
        redis-cluster-start) cmd_redis_cluster_start "$@" ;;
        redis-cluster-stop) cmd_redis_cluster_stop "$@" ;;
        up) cmd_up "$@" ;;
        down) cmd_down "$@" ;;
        status) cmd_status "$@" ;;
        help | -h | --help) usage ;;
        *)
            err "unknown command: $cmd"
            usage >&2
            exit 2
            ;;
    esac
}

main "$@"
