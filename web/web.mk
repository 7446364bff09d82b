# web/web.mk — the web client (web/) as served by chatd --web-root.
# Included by the top-level Makefile; uses its BUILD and DEPS_STAMP.
#
#   $(BUILD)/web/        index.html, app.js, conn.js, store.js, style.css,
#                        protobuf.min.js (from protobufjs, pinned in
#                        web/package-lock.json) and chat.proto (from proto/,
#                        loaded by the page at run time)
#   make web             just that directory
#   make web-test        the browser test (tests/web/run.sh) against $(BUILD)
#   make web-screenshots the same, writing the screenshots into docs/img/
#
# `npm ci` runs in web/ when web/node_modules is missing or older than the
# lockfile, with --ignore-scripts: only files are taken from the package
# (protobufjs's postinstall merely checks the versions of its dependants).
# The directory is assembled next door and moved into place, so a running
# chatd never serves a mix of old and new files.

WEB_DIR := $(BUILD)/web
WEB_SRC := $(wildcard web/*.html web/*.js web/*.css)
WEB_NPM_STAMP := web/node_modules/.package-lock.json

.PHONY: web web-test web-screenshots

web: $(WEB_DIR)

$(WEB_NPM_STAMP): web/package.json web/package-lock.json | $(DEPS_STAMP)
	cd web && npm ci --ignore-scripts --no-audit --no-fund
	@touch $@

$(WEB_DIR): $(WEB_SRC) proto/chat.proto $(WEB_NPM_STAMP) web/web.mk
	@rm -rf $@.tmp && mkdir -p $@.tmp
	cp $(WEB_SRC) $@.tmp/
	cp web/node_modules/protobufjs/dist/protobuf.min.js $@.tmp/
	cp proto/chat.proto $@.tmp/
	@rm -rf $@ && mv $@.tmp $@ && touch $@

web-test: $(CHATD) $(WEB_DIR)
	CHATD=$(CHATD) WEB_ROOT=$(WEB_DIR) bash tests/web/run.sh

web-screenshots: $(CHATD) $(WEB_DIR)
	CHATD=$(CHATD) WEB_ROOT=$(WEB_DIR) WEB_SCREENSHOTS=docs/img bash tests/web/run.sh
