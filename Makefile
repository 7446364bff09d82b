# Chatlog — top-level build.
#
#   make            build everything into build/ (installs Debian deps first)
#   make test       unit, crash and power-loss tests, plain and under
#                   ASan+UBSan; ends with "N passed, N failed"
#   make bench      engine, chatd and cluster benchmarks (figures, not a test)
#   make bench-cluster  only the cluster vs single chatd part
#   make run        demo: write a workload into ./data, print chatlog stats
#   make clean
#
# SANITIZE=address,undefined builds with sanitizers (into build-san/ by
# default); BUILD=dir picks the output directory.

SANITIZE ?=
ifeq ($(SANITIZE),)
BUILD ?= build
OPT ?= -O2
else
BUILD ?= build-san
OPT ?= -O1 -fno-omit-frame-pointer -fsanitize=$(SANITIZE) -fno-sanitize-recover=all
endif

CC ?= cc
PROTOC_C ?= protoc-c
CFLAGS ?=
CFLAGS += -std=c11 -D_GNU_SOURCE -g $(OPT) -Wall -Wextra -Werror -Wshadow \
          -Wstrict-prototypes -Wmissing-prototypes -Wno-unused-parameter -Wno-format-truncation \
          -Iengine -Irecovery -Iserver -Itests/support -I$(BUILD)/gen -MMD -MP
LDFLAGS += $(if $(SANITIZE),-fsanitize=$(SANITIZE))
LDLIBS += -lxxhash -lzstd -lprotobuf-c -lpthread
SERVER_LDLIBS := -levent -levent_pthreads -levent_openssl -lssl -lcrypto -ljwt -ljansson

DEPS_STAMP := build/.deps-installed

PROTO_SRC := $(wildcard proto/*.proto)
PROTO_C := $(patsubst proto/%.proto,$(BUILD)/gen/%.pb-c.c,$(PROTO_SRC))
PROTO_H := $(PROTO_C:.c=.h)

LIB_SRC := $(wildcard engine/*.c) $(wildcard recovery/*.c)
LIB_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(LIB_SRC)) $(PROTO_C:.c=.o)
# server/main.c holds main(); everything else in server/ is a library that
# tests link too.
SERVER_SRC := $(filter-out server/main.c,$(wildcard server/*.c))
SERVER_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(SERVER_SRC))
SERVER_LIB := $(BUILD)/libchatd.a
CHATD := $(BUILD)/chatd
CLI_SRC := $(wildcard cli/*.c)
CLI_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(CLI_SRC))
UNIT_SRC := $(wildcard tests/support/*.c) $(wildcard tests/engine/*.c) \
            $(wildcard tests/recovery/*.c) $(wildcard tests/server/*.c)
UNIT_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(UNIT_SRC))
CRASH_OBJ := $(patsubst tests/crash/%.c,$(BUILD)/tests/crash-obj/%.o,$(wildcard tests/crash/*.c))
BENCH_SRC := $(wildcard bench/*.c)
BENCH_BIN := $(patsubst bench/%.c,$(BUILD)/bench/%,$(BENCH_SRC))

LIB := $(BUILD)/libchatlog.a
CHATLOG := $(BUILD)/chatlog
UNIT := $(BUILD)/tests/unit
CRASH := $(BUILD)/tests/crash

.PHONY: all deps test bench bench-cluster run demo clean cluster-start cluster-stop
all: $(CHATLOG) $(if $(wildcard server/main.c),$(CHATD)) $(UNIT) $(CRASH) $(BENCH_BIN) $(BUILD)/web

deps: $(DEPS_STAMP)
$(DEPS_STAMP): scripts/install-deps.sh
	bash scripts/install-deps.sh
	@mkdir -p $(dir $@) && touch $@

$(BUILD)/gen/%.pb-c.c $(BUILD)/gen/%.pb-c.h: proto/%.proto | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(PROTOC_C) --proto_path=proto --c_out=$(BUILD)/gen $<

$(BUILD)/%.o: %.c | $(DEPS_STAMP) $(PROTO_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/tests/crash-obj/%.o: tests/crash/%.c | $(DEPS_STAMP) $(PROTO_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/gen/%.pb-c.o: $(BUILD)/gen/%.pb-c.c
	$(CC) $(filter-out -Wmissing-prototypes -Wshadow,$(CFLAGS)) -c -o $@ $<

$(LIB): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(SERVER_LIB): $(SERVER_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(CHATLOG): $(CLI_OBJ) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcrypto

$(CHATD): $(BUILD)/server/main.o $(SERVER_LIB) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(SERVER_LDLIBS) $(LDLIBS)

$(UNIT): $(UNIT_OBJ) $(SERVER_LIB) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(SERVER_LDLIBS) $(LDLIBS)

$(CRASH): $(CRASH_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/bench/%: bench/%.c $(LIB) | $(PROTO_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)

# bench/load.c drives chatd over WebSocket: it also needs libevent, and
# libcrypto for the HS256 tokens it mints.
$(BUILD)/bench/load: bench/load.c $(LIB) | $(PROTO_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(LIB) -levent -lcrypto $(LDLIBS)

# The whole suite: plain build, then the same under ASan+UBSan.
test: $(DEPS_STAMP)
	$(MAKE) --no-print-directory all
	$(MAKE) --no-print-directory SANITIZE=address,undefined all
	bash scripts/run-tests.sh build build-san

# The engine and single-node benches, then the cluster one; a missed target
# is reported, not a failure.
bench: all
	bash scripts/bench.sh $(BUILD); s=$$?; bash scripts/bench-cluster.sh $(BUILD) || s=1; exit $$s

# Issue 6: a local three-node cluster beside a single chatd, same load
# generator, same run (scripts/bench-cluster.sh; about 3 minutes).
bench-cluster: $(CHATD) $(BUILD)/bench/load
	bash scripts/bench-cluster.sh $(BUILD)

# The main job: chatd on its embedded defaults (data in ./data, listening on
# 127.0.0.1:8080), with a development secret made on first run.
run: $(CHATD) $(CHATLOG) $(BUILD)/web
	@test -s chatd.secret || (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > chatd.secret)
	$(CHATD) --data ./data --listen 127.0.0.1:8080 --secret-file chatd.secret --web-root $(BUILD)/web

# A local three-node cluster on loopback (docs/cluster.md): HTTP on
# 127.0.0.1:8081..8083, data in ./data-cluster/n1..n3.
cluster-start: $(CHATD) $(CHATLOG) $(BUILD)/web
	BUILD=$(BUILD) bash scripts/cluster.sh start

cluster-stop:
	BUILD=$(BUILD) bash scripts/cluster.sh stop

# The engine on its own: a synthetic workload into ./data-demo and its stats.
demo: $(CHATLOG)
	$(CHATLOG) gen ./data-demo --messages 200000 --conversations 2000 --seed 1
	$(CHATLOG) stats ./data-demo

clean:
	rm -rf build build-san

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# libFuzzer targets and corpus replay (owned by fuzz/fuzz.mk).
-include fuzz/fuzz.mk
# The web client: $(BUILD)/web, make web / web-test / web-screenshots.
include web/web.mk
