# fuzz/fuzz.mk — libFuzzer targets and their corpus replay; included at the
# end of the top-level Makefile, whose variables (BUILD, CFLAGS, LDFLAGS,
# LDLIBS, LIB, PROTO_H, DEPS_STAMP) it uses. See fuzz/README.md.
#
#   make fuzz                      every target, clang + libFuzzer + ASan +
#                                  UBSan, into build-fuzz/fuzz-<target>
#   make fuzz-run T=<target> S=<seconds> [FUZZ_ARGS=...]
#                                  run one; new inputs go to
#                                  build-fuzz/corpus/<target>/, crashes to
#                                  fuzz/crashes/<target>/
#   make fuzz-merge T=<target>     add the inputs of build-fuzz/corpus/<target>
#                                  that reach new coverage to fuzz/corpus/<target>
#   make fuzz-replay               replay every committed corpus file through
#                                  every target ($(BUILD)/fuzz/replay-<target>,
#                                  built by `make all`, run by `make test`)
#   fuzz/run-all.sh -s SECONDS     every target in turn, niced, logs kept
#   make fuzz-coverage             engine line coverage reached by the corpora
#   make fuzz-coverage-server      server line coverage reached by the corpora

FUZZ_ENGINE_TARGETS := batch_decode recovery sidecar zlog manifest differential \
                       replica
# The server targets link the server (server/, libevent, OpenSSL, libjwt,
# jansson) and fuzz/srv_harness.c, a real chatd in the fuzz process.
FUZZ_SRV_TARGETS := conn_input frame rest_json jwt
FUZZ_TARGETS := $(FUZZ_ENGINE_TARGETS) $(FUZZ_SRV_TARGETS)
FUZZ_HELPERS := fuzz/common.c
FUZZ_SRV_HELPERS := fuzz/srv_harness.c

# ---- replay: plain build, the build directory's compiler and flags ----
REPLAY_BINS := $(patsubst %,$(BUILD)/fuzz/replay-%,$(FUZZ_TARGETS))
REPLAY_HELPER_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(FUZZ_HELPERS) fuzz/replay_main.c)

all: $(REPLAY_BINS)

# The objects come from the top-level $(BUILD)/%.o rule.
$(BUILD)/fuzz/replay-%: $(BUILD)/fuzz/%.o $(REPLAY_HELPER_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

REPLAY_SRV_BINS := $(patsubst %,$(BUILD)/fuzz/replay-%,$(FUZZ_SRV_TARGETS))
REPLAY_SRV_HELPER_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(FUZZ_SRV_HELPERS))
$(REPLAY_SRV_BINS): $(BUILD)/fuzz/replay-%: $(BUILD)/fuzz/%.o $(REPLAY_SRV_HELPER_OBJ) \
                    $(REPLAY_HELPER_OBJ) $(SERVER_LIB) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(SERVER_LDLIBS) $(LDLIBS)

.PHONY: fuzz fuzz-run fuzz-merge fuzz-replay fuzz-clean
fuzz-replay: $(REPLAY_BINS)
	@fail=0; for t in $(FUZZ_TARGETS); do \
	  $(BUILD)/fuzz/replay-$$t || fail=1; done; exit $$fail

# ---- libFuzzer build: clang, its own objects (never the gcc ones) ----
FUZZ_BUILD ?= build-fuzz
FUZZ_CC ?= clang
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=all
FUZZ_CFLAGS ?= -std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer \
               -Wall -Wextra -Wno-unused-parameter $(FUZZ_SAN) \
               -fsanitize=fuzzer-no-link -Iengine -Irecovery -Iserver \
               -I$(FUZZ_BUILD)/gen -MMD -MP
FUZZ_PROTO_C := $(patsubst proto/%.proto,$(FUZZ_BUILD)/gen/%.pb-c.c,$(PROTO_SRC))
FUZZ_LIB_OBJ := $(patsubst %.c,$(FUZZ_BUILD)/%.o,$(LIB_SRC) $(FUZZ_HELPERS)) \
                $(FUZZ_PROTO_C:.c=.o)
FUZZ_BINS := $(patsubst %,$(FUZZ_BUILD)/fuzz-%,$(FUZZ_TARGETS))
FUZZ_SRV_BINS := $(patsubst %,$(FUZZ_BUILD)/fuzz-%,$(FUZZ_SRV_TARGETS))
FUZZ_SRV_OBJ := $(patsubst %.c,$(FUZZ_BUILD)/%.o,$(SERVER_SRC) $(FUZZ_SRV_HELPERS))

fuzz: $(FUZZ_BINS)

# Keep the objects make would otherwise delete as intermediates.
.SECONDARY: $(FUZZ_LIB_OBJ) $(patsubst %,$(FUZZ_BUILD)/fuzz/%.o,$(FUZZ_TARGETS)) \
            $(FUZZ_PROTO_C) $(FUZZ_PROTO_C:.c=.h) $(FUZZ_SRV_OBJ) \
            $(patsubst %,$(BUILD)/fuzz/%.o,$(FUZZ_TARGETS)) $(REPLAY_HELPER_OBJ) \
            $(REPLAY_SRV_HELPER_OBJ)

$(FUZZ_BUILD)/gen/%.pb-c.c $(FUZZ_BUILD)/gen/%.pb-c.h: proto/%.proto | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(PROTOC_C) --proto_path=proto --c_out=$(FUZZ_BUILD)/gen $<

$(FUZZ_BUILD)/%.o: %.c | $(DEPS_STAMP) $(FUZZ_PROTO_C:.c=.h)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c -o $@ $<

$(FUZZ_BUILD)/gen/%.pb-c.o: $(FUZZ_BUILD)/gen/%.pb-c.c
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c -o $@ $<

$(FUZZ_BUILD)/fuzz-%: $(FUZZ_BUILD)/fuzz/%.o $(FUZZ_LIB_OBJ)
	$(FUZZ_CC) -fsanitize=fuzzer $(FUZZ_SAN) -o $@ $^ $(LDLIBS)

$(FUZZ_SRV_BINS): $(FUZZ_BUILD)/fuzz-%: $(FUZZ_BUILD)/fuzz/%.o $(FUZZ_SRV_OBJ) $(FUZZ_LIB_OBJ)
	$(FUZZ_CC) -fsanitize=fuzzer $(FUZZ_SAN) -o $@ $^ $(SERVER_LDLIBS) $(LDLIBS)

# ---- running ----
T ?= batch_decode
S ?= 60
FUZZ_ARGS ?=
# Dictionaries: the format targets share batch.dict.
FUZZ_DICT_batch_decode := fuzz/batch.dict
FUZZ_DICT_zlog := fuzz/batch.dict
FUZZ_DICT_sidecar := fuzz/batch.dict
FUZZ_DICT_recovery := fuzz/batch.dict
FUZZ_DICT_manifest := fuzz/manifest.dict
FUZZ_DICT_replica := fuzz/batch.dict
FUZZ_DICT_conn_input := fuzz/server.dict
FUZZ_DICT_frame := fuzz/server.dict
FUZZ_DICT_rest_json := fuzz/server.dict
FUZZ_DICT_jwt := fuzz/jwt.dict
FUZZ_DICT = $(FUZZ_DICT_$(T))

fuzz-run: $(FUZZ_BUILD)/fuzz-$(T)
	@mkdir -p $(FUZZ_BUILD)/corpus/$(T) fuzz/crashes/$(T)
	$(FUZZ_BUILD)/fuzz-$(T) -max_total_time=$(S) -print_final_stats=1 \
	  -artifact_prefix=fuzz/crashes/$(T)/ $(if $(FUZZ_DICT),-dict=$(FUZZ_DICT)) \
	  $(FUZZ_ARGS) $(FUZZ_BUILD)/corpus/$(T) fuzz/corpus/$(T)

fuzz-merge: $(FUZZ_BUILD)/fuzz-$(T)
	@mkdir -p fuzz/corpus/$(T)
	$(FUZZ_BUILD)/fuzz-$(T) -merge=1 fuzz/corpus/$(T) $(FUZZ_BUILD)/corpus/$(T)

fuzz-clean:
	rm -rf $(FUZZ_BUILD)

# ---- line coverage reached by the corpora ----
# make fuzz-coverage [FUZZ_COV_WORK=1]: the replay binaries built with clang
# source-based coverage replay fuzz/corpus/<target>/ (and, with
# FUZZ_COV_WORK=1, the working corpora in build-fuzz/corpus/<target>/ too);
# prints llvm-cov's per-file report for engine/ and recovery/.
# make fuzz-coverage-server: the same for the server targets and server/.
FUZZ_COV := $(FUZZ_BUILD)/cov
LLVM_PROFDATA ?= llvm-profdata-14
LLVM_COV ?= llvm-cov-14
FUZZ_COV_CFLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -fprofile-instr-generate \
                   -fcoverage-mapping -Iengine -Irecovery -Iserver -I$(FUZZ_BUILD)/gen -MMD -MP
FUZZ_COV_LIB_OBJ := $(patsubst %.c,$(FUZZ_COV)/%.o,$(LIB_SRC) $(FUZZ_HELPERS) fuzz/replay_main.c)
FUZZ_COV_BINS := $(patsubst %,$(FUZZ_COV)/replay-%,$(FUZZ_ENGINE_TARGETS))
FUZZ_COV_SRV_BINS := $(patsubst %,$(FUZZ_COV)/replay-%,$(FUZZ_SRV_TARGETS))
FUZZ_COV_SRV_OBJ := $(patsubst %.c,$(FUZZ_COV)/%.o,$(SERVER_SRC) $(FUZZ_SRV_HELPERS)) \
                    $(patsubst $(FUZZ_BUILD)/gen/%.c,$(FUZZ_COV)/gen/%.o,$(FUZZ_PROTO_C))
.SECONDARY: $(FUZZ_COV_LIB_OBJ) $(patsubst %,$(FUZZ_COV)/fuzz/%.o,$(FUZZ_TARGETS)) \
            $(FUZZ_COV_SRV_OBJ)

$(FUZZ_COV)/%.o: %.c | $(DEPS_STAMP) $(FUZZ_PROTO_C:.c=.h)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_COV_CFLAGS) -c -o $@ $<

$(FUZZ_COV)/gen/%.pb-c.o: $(FUZZ_BUILD)/gen/%.pb-c.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_COV_CFLAGS) -c -o $@ $<

$(FUZZ_COV)/replay-%: $(FUZZ_COV)/fuzz/%.o $(FUZZ_COV_LIB_OBJ)
	$(FUZZ_CC) -fprofile-instr-generate -o $@ $^ $(LDLIBS)

$(FUZZ_COV_SRV_BINS): $(FUZZ_COV)/replay-%: $(FUZZ_COV)/fuzz/%.o $(FUZZ_COV_SRV_OBJ) $(FUZZ_COV_LIB_OBJ)
	$(FUZZ_CC) -fprofile-instr-generate -o $@ $^ $(SERVER_LDLIBS) $(LDLIBS)

# $(1): the replay binaries, $(2): the sources to report on.
define fuzz_cov_report
	@rm -rf $(FUZZ_COV)/prof && mkdir -p $(FUZZ_COV)/prof
	@for b in $(1); do t=$${b##*/replay-}; \
	  LLVM_PROFILE_FILE=$(FUZZ_COV)/prof/$$t-%p.profraw $$b \
	    fuzz/corpus/$$t $(if $(FUZZ_COV_WORK),$(FUZZ_BUILD)/corpus/$$t) | tail -n 1; done
	$(LLVM_PROFDATA) merge -o $(FUZZ_COV)/all.profdata $(FUZZ_COV)/prof/*.profraw
	$(LLVM_COV) report $(firstword $(1)) \
	  $(patsubst %,-object %,$(wordlist 2,99,$(1))) \
	  -instr-profile=$(FUZZ_COV)/all.profdata $(2)
endef

.PHONY: fuzz-coverage fuzz-coverage-server
fuzz-coverage: $(FUZZ_COV_BINS)
	$(call fuzz_cov_report,$(FUZZ_COV_BINS),$(LIB_SRC))

fuzz-coverage-server: $(FUZZ_COV_SRV_BINS)
	$(call fuzz_cov_report,$(FUZZ_COV_SRV_BINS),$(SERVER_SRC))

-include $(shell find $(FUZZ_BUILD) -name '*.d' 2>/dev/null)
