# tally: `make` builds libtally.so, libtally.a and the tally CLI; `make test`, `make demo`,
# `make bench`; `make install PREFIX=/usr/local`. SAN=asan (ASan+UBSan) or SAN=tsan builds into
# build/asan or build/tsan so sanitizer and plain objects never mix.

VERSION    := 0.1.0
SOVERSION  := 0
PREFIX     ?= /usr/local
SAN        ?=
CC         ?= gcc

ifeq ($(SAN),asan)
  BUILD    := build/asan
  SANFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
  OPT      := -O1 -g
else ifeq ($(SAN),tsan)
  BUILD    := build/tsan
  SANFLAGS := -fsanitize=thread
  OPT      := -O1 -g
  # The embedded Lua is not instrumented under TSan: its errors are longjmps, and a script that
  # raises millions of them (the sandbox tests do) overflows TSan's shadow call stack. The Lua
  # state is confined to the processor thread by design, so there is nothing for TSan to see there.
  LUA_SANFLAGS :=
else
  BUILD    := build/release
  SANFLAGS :=
  OPT      ?= -O2 -g
  # assert() checks invariants in the sanitizer builds (which CI runs on every suite) and with
  # DEBUG=1; the release build leaves them out of the hot paths.
  ifneq ($(DEBUG),1)
    SANFLAGS += -DNDEBUG
  endif
endif

LUA_SANFLAGS ?= $(SANFLAGS)
LUASRC     := build/lua-src
# quiet by default: `make V=1` shows the commands
ifeq ($(V),1)
  Q :=
  say = @true
else
  Q := @
  say = @printf '  %-6s %s\n' $(1) $(2)
endif
WARN       := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wno-unused-parameter
CFLAGS_ALL := -std=c11 -D_GNU_SOURCE $(OPT) $(WARN) $(SANFLAGS) -fPIC -fvisibility=hidden \
              -Iinclude -Isrc -I$(LUASRC)/src $(CFLAGS)
# Every compile also writes a .d file beside its output naming the headers it read, so an object is
# rebuilt exactly when one of those changes (-MP: a deleted header does not break the build).
DEPFLAGS   := -MMD -MP
LIBS       := -lcurl -lcrypto -lsqlite3 -lz -lm -lpthread -ldl
LDFLAGS_ALL := $(SANFLAGS) $(LDFLAGS)

CORE_SRC   := $(wildcard src/*.c)
CORE_OBJ   := $(patsubst src/%.c,$(BUILD)/obj/%.o,$(CORE_SRC)) $(BUILD)/obj/bundled_lua.o
BUNDLED    := $(wildcard lua/tally/*.lua)
CLI_SRC    := $(wildcard src/cli/*.c)
CLI_OBJ    := $(patsubst src/cli/%.c,$(BUILD)/obj/cli/%.o,$(CLI_SRC))
LUA_CORE   := lapi lcode lctype ldebug ldo ldump lfunc lgc llex lmem lobject lopcodes lparser \
              lstate lstring ltable ltm lundump lvm lzio lauxlib lbaselib lcorolib lmathlib \
              lstrlib ltablib lutf8lib loslib
LUA_OBJ    := $(patsubst %,$(BUILD)/lua/%.o,$(LUA_CORE))

TEST_SRC   := $(wildcard tests/c/test_*.c)
TEST_BIN   := $(patsubst tests/c/%.c,$(BUILD)/tests/%,$(TEST_SRC))
TEST_SUPPORT := tests/c/harness.c tests/c/collector.c tests/c/util.c tests/c/jfields.c tests/c/fixtures.c tests/c/delivery.c \
                tests/c/store_fixture.c
TEST_OBJ   := $(patsubst tests/c/%.c,$(BUILD)/tests/obj/%.o,$(TEST_SRC) $(TEST_SUPPORT))
TEST_SUPPORT_OBJ := $(patsubst tests/c/%.c,$(BUILD)/tests/obj/%.o,$(TEST_SUPPORT))

.PHONY: all deps lib cli test test-asan test-tsan demo bench install uninstall clean fuzz check-symbols \
        print-core-sources print-lua-sources
all: lib cli

# `make deps` (and so `make test`, `make demo`) installs packages and unpacks the Lua source; plain
# `make` never runs apt-get nor edits apt's sources: it says what is missing and how to get it.
deps:
	@bash scripts/deps.sh test
	@bash scripts/lua-src.sh $(LUASRC)

$(LUASRC)/src/lapi.c:
	@bash scripts/deps.sh check
	@echo "$(LUASRC) (Debian's lua5.4 source, compiled into libtally) is missing: run 'make deps'" >&2; exit 1

# Our patches to the embedded Lua (patches/lua/): applied to trees unpacked before they existed too.
# lua-src.sh touches the stamp only when it changed the tree (so `make deps` rebuilds nothing);
# here a newer patch or script made make ask, so the stamp is brought up to date either way.
$(LUASRC)/.tally-patched: $(LUASRC)/src/lapi.c $(wildcard patches/lua/*.patch) scripts/lua-src.sh
	@bash scripts/lua-src.sh $(LUASRC)
	@touch $@

# The embedded Lua: position independent, every symbol hidden, no dlopen (LUA_USE_POSIX, not
# LUA_USE_LINUX) since scripts must never load native code.
$(BUILD)/lua/%.o: $(LUASRC)/.tally-patched
	@mkdir -p $(dir $@)
	$(call say,LUA,$@)
	$(Q)$(CC) -std=gnu99 -O2 -g $(LUA_SANFLAGS) -fPIC -fvisibility=hidden -DLUA_USE_POSIX -w $(DEPFLAGS) \
	    -c $(LUASRC)/src/$*.c -o $@

# The patched Lua source must exist before anything that includes its headers compiles; which of
# its headers an object reads (and so whether a new patch rebuilds it) is in the object's .d file.
$(BUILD)/obj/%.o: src/%.c | $(LUASRC)/.tally-patched
	@mkdir -p $(dir $@)
	$(call say,CC,$<)
	$(Q)$(CC) $(CFLAGS_ALL) $(DEPFLAGS) -c $< -o $@

# The bundled rule modules, compiled into the library (see scripts/embed-lua.sh).
build/gen/bundled_lua.c: $(BUNDLED) scripts/embed-lua.sh
	$(call say,GEN,$@)
	$(Q)bash scripts/embed-lua.sh $@

$(BUILD)/obj/bundled_lua.o: build/gen/bundled_lua.c
	@mkdir -p $(dir $@)
	$(call say,CC,$<)
	$(Q)$(CC) $(CFLAGS_ALL) $(DEPFLAGS) -c $< -o $@

# One relocatable object holding the core and the embedded Lua, with every hidden symbol made
# local: whatever links it (our .so, our .a, the Lua module, a host with its own Lua or LuaJIT)
# sees only tally_* and can never bind to our lua_* by accident.
$(BUILD)/tally_all.o: $(CORE_OBJ) $(LUA_OBJ)
	$(call say,LD,$@)
	$(Q)ld -r -o $@.tmp $^
	$(Q)objcopy --localize-hidden $@.tmp $@
	@rm -f $@.tmp

$(BUILD)/libtally.so.$(VERSION): $(BUILD)/tally_all.o
	$(call say,LINK,$@)
	$(Q)$(CC) -shared -Wl,-soname,libtally.so.$(SOVERSION) -o $@ $< $(LDFLAGS_ALL) $(LIBS)
	$(Q)ln -sf libtally.so.$(VERSION) $(BUILD)/libtally.so.$(SOVERSION)
	$(Q)ln -sf libtally.so.$(VERSION) $(BUILD)/libtally.so

$(BUILD)/libtally.a: $(BUILD)/tally_all.o
	$(call say,AR,$@)
	$(Q)rm -f $@
	$(Q)ar rcs $@ $<

lib: $(BUILD)/libtally.so.$(VERSION) $(BUILD)/libtally.a
	@ln -sfn $(notdir $(BUILD)) build/current 2>/dev/null || true

$(BUILD)/obj/cli/%.o: src/cli/%.c | $(LUASRC)/.tally-patched
	@mkdir -p $(dir $@)
	$(call say,CC,$<)
	$(Q)$(CC) $(CFLAGS_ALL) $(DEPFLAGS) -c $< -o $@

# The CLI is ours: it links the core objects directly to share the codec and the config table.
$(BUILD)/tally: $(CLI_OBJ) $(CORE_OBJ) $(LUA_OBJ)
	$(call say,LINK,$@)
	$(Q)$(CC) -o $@ $(CLI_OBJ) $(CORE_OBJ) $(LUA_OBJ) $(LDFLAGS_ALL) $(LIBS)

cli: $(BUILD)/tally

$(BUILD)/tests/obj/%.o: tests/c/%.c | $(LUASRC)/.tally-patched
	@mkdir -p $(dir $@)
	$(call say,CC,$<)
	$(Q)$(CC) $(CFLAGS_ALL) -Itests/c $(DEPFLAGS) -c $< -o $@

# Tests link the core objects directly (not tally_all.o) so they can reach internal functions.
# test_game_mods is a Lua host and has its own rule below.
$(filter-out $(BUILD)/tests/test_game_mods,$(TEST_BIN)): $(BUILD)/tests/%: $(BUILD)/tests/obj/%.o \
                                                        $(TEST_SUPPORT_OBJ) $(CORE_OBJ) $(LUA_OBJ)
	@mkdir -p $(dir $@)
	$(call say,TEST,$@)
	$(Q)$(CC) -o $@ $< $(TEST_SUPPORT_OBJ) $(CORE_OBJ) $(LUA_OBJ) $(LDFLAGS_ALL) $(LIBS)

test-bins: $(TEST_BIN) $(BUILD)/tally

# The README's test command. Installs what is missing, builds, runs every suite, prints one
# "N passed, M failed" line for all of them.
test: deps
	@$(MAKE) --no-print-directory test-bins lib
	@BUILD=$(BUILD) SAN=$(SAN) bash scripts/run-tests.sh

test-asan:
	@$(MAKE) --no-print-directory test SAN=asan

test-tsan:
	@$(MAKE) --no-print-directory test SAN=tsan

# scripts/fuzz.sh compiles the same sources with clang: it reads the lists from here, so each
# list is written once.
print-core-sources:
	@echo $(CORE_SRC) build/gen/bundled_lua.c

print-lua-sources:
	@echo $(patsubst %,$(LUASRC)/src/%.c,$(LUA_CORE))

check-symbols: lib
	@bad=$$(nm -D --defined-only $(BUILD)/libtally.so | awk '{print $$3}' | grep -v '^tally_' || true); \
	if [ -n "$$bad" ]; then echo "exported non-tally symbols:"; echo "$$bad"; exit 1; fi; \
	echo "libtally.so exports only tally_* symbols"

demo: deps
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) bash examples/demo.sh

bench:
	@bash scripts/deps.sh bench
	@bash scripts/lua-src.sh $(LUASRC)
	@$(MAKE) --no-print-directory all bench-bins
	@BUILD=$(BUILD) bash bench/run.sh

fuzz:
	@bash scripts/fuzz.sh $(or $(SECONDS_PER_TARGET),60)

# `make install PREFIX=P` (and DESTDIR=staging): everything a C program, a Lua 5.4 program, a C host
# with its own Lua, and nginx need, plus the man pages. `make uninstall` with the same variables
# removes exactly these files. The .pc files name PREFIX, never DESTDIR.
BINDIR      ?= $(PREFIX)/bin
LIBDIR      ?= $(PREFIX)/lib
INCLUDEDIR  ?= $(PREFIX)/include
MANDIR      ?= $(PREFIX)/share/man
DOCDIR      ?= $(PREFIX)/share/doc/tally
# resty.tally runs in nginx's LuaJIT, which reads Lua 5.1 module paths; it requires tally.ip from
# there (libtally carries its own copy of lua/tally/*.lua for the rules).
LUAJIT_SHAREDIR ?= $(PREFIX)/share/lua/5.1
# The pkg-config name of the host Lua that tally-lua.pc requires (Debian: lua5.4).
LUA_PC      ?= lua5.4
INSTALLED    = $(BINDIR)/tally $(INCLUDEDIR)/tally.h \
               $(LIBDIR)/libtally.so.$(VERSION) $(LIBDIR)/libtally.so.$(SOVERSION) $(LIBDIR)/libtally.so \
               $(LIBDIR)/libtally.a $(LIBDIR)/libtally_lua.a \
               $(LIBDIR)/pkgconfig/tally.pc $(LIBDIR)/pkgconfig/tally-lua.pc \
               $(LUA_LIBDIR)/tally.so $(LUAJIT_SHAREDIR)/resty/tally.lua $(LUAJIT_SHAREDIR)/tally/ip.lua \
               $(MANDIR)/man1/tally.1 $(MANDIR)/man3/tally.3 $(DOCDIR)/LICENSE

install: all luamod
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(LIBDIR)/pkgconfig \
	    $(DESTDIR)$(LUA_LIBDIR) $(DESTDIR)$(LUAJIT_SHAREDIR)/resty $(DESTDIR)$(LUAJIT_SHAREDIR)/tally \
	    $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man3 $(DESTDIR)$(DOCDIR)
	install -m 755 $(BUILD)/tally $(DESTDIR)$(BINDIR)/
	install -m 644 include/tally.h $(DESTDIR)$(INCLUDEDIR)/
	install -m 755 $(BUILD)/libtally.so.$(VERSION) $(DESTDIR)$(LIBDIR)/
	ln -sf libtally.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libtally.so.$(SOVERSION)
	ln -sf libtally.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libtally.so
	install -m 644 $(BUILD)/libtally.a $(LUAMOD)/libtally_lua.a $(DESTDIR)$(LIBDIR)/
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' \
	    -e 's|@VERSION@|$(VERSION)|g' -e 's|@LUA_PC@|$(LUA_PC)|g' tally.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/tally.pc
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' \
	    -e 's|@VERSION@|$(VERSION)|g' -e 's|@LUA_PC@|$(LUA_PC)|g' tally-lua.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/tally-lua.pc
	chmod 644 $(DESTDIR)$(LIBDIR)/pkgconfig/tally.pc $(DESTDIR)$(LIBDIR)/pkgconfig/tally-lua.pc
	install -m 755 $(LUAMOD)/tally.so $(DESTDIR)$(LUA_LIBDIR)/
	install -m 644 lua/resty/tally.lua $(DESTDIR)$(LUAJIT_SHAREDIR)/resty/
	install -m 644 lua/tally/ip.lua $(DESTDIR)$(LUAJIT_SHAREDIR)/tally/
	install -m 644 man/tally.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 644 man/tally.3 $(DESTDIR)$(MANDIR)/man3/
	install -m 644 LICENSE $(DESTDIR)$(DOCDIR)/

# Removes the files `install` wrote, then whichever of its directories are left empty.
uninstall:
	rm -f $(addprefix $(DESTDIR),$(INSTALLED))
	-rmdir $(DESTDIR)$(LUAJIT_SHAREDIR)/resty $(DESTDIR)$(LUAJIT_SHAREDIR)/tally $(DESTDIR)$(DOCDIR) 2>/dev/null

clean:
	rm -rf build/release build/asan build/tsan build/current build/fuzz

# ---- examples ----
$(BUILD)/examples/quickstart: examples/quickstart.c $(BUILD)/libtally.so.$(VERSION)
	@mkdir -p $(dir $@)
	$(call say,CC,$<)
	$(Q)$(CC) -std=c11 -Wall -Wextra -Werror $(SANFLAGS) -Iinclude $(DEPFLAGS) -MF $@.d -MT $@ -o $@ $< -L$(BUILD) -ltally -Wl,-rpath,$(abspath $(BUILD))

examples: $(BUILD)/examples/quickstart
test-bins: examples

# ---- benchmarks ----
$(BUILD)/bench/throughput: bench/throughput.c $(BUILD)/libtally.a
	@mkdir -p $(dir $@)
	$(call say,CC,$<)
	$(Q)$(CC) -std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Werror $(SANFLAGS) -Iinclude $(DEPFLAGS) -MF $@.d -MT $@ -o $@ $< $(BUILD)/libtally.a $(LDFLAGS_ALL) $(LIBS)

bench-bins: $(BUILD)/bench/throughput

# How long one hostile rule call can hold the processor (bench/hostile.c).
$(BUILD)/bench/hostile: bench/hostile.c $(BUILD)/libtally.a
	@mkdir -p $(dir $@)
	$(call say,CC,$<)
	$(Q)$(CC) -std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Werror $(SANFLAGS) -Iinclude $(DEPFLAGS) -MF $@.d -MT $@ -o $@ $< $(BUILD)/libtally.a $(LDFLAGS_ALL) $(LIBS)

.PHONY: bench-hostile
bench-hostile: lib $(BUILD)/bench/hostile
	@$(BUILD)/bench/hostile

# ==== Lua hosts (src/lua_module) ===================================================== begin ====
# tally.so (the `tally` Lua module), libtally_lua.a (tally_lua_push_mod for C hosts that embed
# their own Lua 5.4), the game example and its C test. These objects are compiled against the
# HOST's Lua headers, never against $(LUASRC): the module's lua_* calls must bind to the host
# interpreter. The bridge (json_lua.c) and the codec it calls (json.c, buf.c) are compiled a second
# time for that Lua and made local like tally_all.o, so they can clash with nothing.
LUA_HOST_CFLAGS ?= $(shell pkg-config --cflags lua5.4 2>/dev/null || echo -I/usr/include/lua5.4)
LUA_HOST_LIBS   ?= $(shell pkg-config --libs lua5.4 2>/dev/null || echo -llua5.4)
LUA_LIBDIR      ?= $(PREFIX)/lib/lua/5.4
LUAMOD          := $(BUILD)/luamod
LUAMOD_CFLAGS   := -std=c11 -D_GNU_SOURCE $(OPT) $(WARN) $(SANFLAGS) -fPIC -fvisibility=hidden \
                   -Iinclude -Isrc $(LUA_HOST_CFLAGS) $(CFLAGS)
LUAMOD_OBJ      := $(LUAMOD)/obj/tally_lua.o $(LUAMOD)/obj/json_lua.o $(LUAMOD)/obj/json.o $(LUAMOD)/obj/buf.o

.PHONY: luamod demo-bins install-luamod

$(LUAMOD)/obj/tally_lua.o: src/lua_module/tally_lua.c
	@mkdir -p $(dir $@)
	$(call say,CC,$<)
	$(Q)$(CC) $(LUAMOD_CFLAGS) $(DEPFLAGS) -c $< -o $@

$(LUAMOD)/obj/json_lua.o $(LUAMOD)/obj/json.o $(LUAMOD)/obj/buf.o: $(LUAMOD)/obj/%.o: src/%.c
	@mkdir -p $(dir $@)
	$(call say,CC,$<)
	$(Q)$(CC) $(LUAMOD_CFLAGS) $(DEPFLAGS) -c $< -o $@

$(LUAMOD)/tally_lua_all.o: $(LUAMOD_OBJ)
	$(call say,LD,$@)
	$(Q)ld -r -o $@.tmp $^
	$(Q)objcopy --localize-hidden $@.tmp $@
	@rm -f $@.tmp

# Not linked with -llua5.4: the interpreter that loads the module provides lua_*.
$(LUAMOD)/tally.so: $(LUAMOD)/tally_lua_all.o $(BUILD)/tally_all.o src/lua_module/tally.map
	$(call say,LINK,$@)
	$(Q)$(CC) -shared -o $@ $(LUAMOD)/tally_lua_all.o $(BUILD)/tally_all.o \
	    -Wl,--version-script=src/lua_module/tally.map $(LDFLAGS_ALL) $(LIBS)

# For C hosts: link with libtally (.a or .so) and the host's Lua (-llua5.4).
$(LUAMOD)/libtally_lua.a: $(LUAMOD)/tally_lua_all.o
	$(call say,AR,$@)
	$(Q)rm -f $@
	$(Q)ar rcs $@ $<

luamod: $(LUAMOD)/tally.so $(LUAMOD)/libtally_lua.a

# The generic test rule links the core objects and our embedded Lua; this test is a Lua host, so it
# compiles against the host's Lua headers and links like one.
$(BUILD)/tests/obj/test_game_mods.o: tests/c/test_game_mods.c
	@mkdir -p $(dir $@)
	$(call say,CC,$<)
	$(Q)$(CC) $(LUAMOD_CFLAGS) -Itests/c $(DEPFLAGS) -c $< -o $@

$(BUILD)/tests/test_game_mods: $(BUILD)/tests/obj/test_game_mods.o $(BUILD)/tests/obj/harness.o \
                               $(BUILD)/tests/obj/util.o $(BUILD)/tests/obj/fixtures.o \
                               $(LUAMOD)/libtally_lua.a $(BUILD)/libtally.a
	@mkdir -p $(dir $@)
	$(call say,TEST,$@)
	$(Q)$(CC) -o $@ $(filter %.o %.a,$^) $(LDFLAGS_ALL) $(LUA_HOST_LIBS) $(LIBS)

$(BUILD)/examples/game: examples/game/game.c $(LUAMOD)/libtally_lua.a $(BUILD)/libtally.a
	@mkdir -p $(dir $@)
	$(call say,LINK,$@)
	$(Q)$(CC) $(LUAMOD_CFLAGS) $(DEPFLAGS) -MF $@.d -MT $@ -o $@ $< $(LUAMOD)/libtally_lua.a $(BUILD)/libtally.a \
	    $(LDFLAGS_ALL) $(LUA_HOST_LIBS) $(LIBS)

demo-bins: $(BUILD)/examples/game $(BUILD)/tally

test-bins: luamod demo-bins
demo: demo-bins

# Used by the rockspec (luarocks passes LUA_LIBDIR); also works by hand.
install-luamod: luamod
	install -d $(DESTDIR)$(LUA_LIBDIR)
	install -m 755 $(LUAMOD)/tally.so $(DESTDIR)$(LUA_LIBDIR)/
# ==== Lua hosts (src/lua_module) ======================================================= end ====

# ---- header dependencies ----
# The .d files the compiler wrote (DEPFLAGS), each beside its object in $(BUILD).
DEP_OBJ  := $(CORE_OBJ) $(CLI_OBJ) $(LUA_OBJ) $(LUAMOD_OBJ) $(TEST_OBJ)
DEP_BIN  := $(BUILD)/bench/throughput $(BUILD)/bench/hostile $(BUILD)/examples/quickstart \
            $(BUILD)/examples/game
-include $(wildcard $(DEP_OBJ:.o=.d) $(addsuffix .d,$(DEP_BIN)))
# The compiler writes them; make never makes them. Without this, once a new Lua patch made the
# stamp newer, make tried to remake lua/X.d from lua/X.d.o through the Lua pattern rule and failed.
$(DEP_OBJ:.o=.d): ;
# An output built before the compiler wrote dependency files has none, so nothing would tell make
# when its headers change: build it once more.
NO_DEPFILE := $(foreach o,$(wildcard $(DEP_OBJ)),$(if $(wildcard $(o:.o=.d)),,$(o))) \
              $(foreach b,$(wildcard $(DEP_BIN)),$(if $(wildcard $(b).d),,$(b)))
ifneq ($(strip $(NO_DEPFILE)),)
$(NO_DEPFILE): FORCE
endif
.PHONY: FORCE
FORCE:
