-- The `tally` Lua module (tally.so) built from this checkout:
--   luarocks --lua-version=5.4 make tally-scm-1.rockspec
-- (Debian 12's luarocks defaults to Lua 5.1; this module is for Lua 5.4.)
-- The module carries its own copy of the runtime (libtally, with a private Lua inside), so nothing
-- but the system libraries below is needed at run time. Building needs what `make` needs (gcc,
-- make, Debian's lua5.4 source package for the private Lua): run `make deps` once first.
rockspec_format = "3.0"
package = "tally"
version = "scm-1"
source = {
   -- only `luarocks install` fetches it; `luarocks make` builds the checkout it runs in
   url = "git+https://example.invalid/tally.git",
}
description = {
   summary = "Scriptable analytics runtime (Segment Spec): track, identify, rules in Lua, local store",
   detailed = [[
      tally.open{...} opens a runtime (durable SQLite queue, background delivery to files, SQLite,
      Segment or HTTP, Lua rules); t:track/identify/page/screen/group/alias/send enqueue without
      blocking, with exact JSON (64-bit integers, null, empty arrays). t:mod(name, version, rate)
      gives a mod or plugin its own rate-limited table stamped with context.mod.
   ]],
   license = "MIT",
}
dependencies = {
   "lua >= 5.4, < 5.5",
}
-- Libraries, not headers, are what luarocks can find on Debian: curl's header is under the
-- multiarch include dir (/usr/include/x86_64-linux-gnu), which luarocks does not search, while
-- its library dirs include lib/<multiarch>. The compiler finds the headers itself.
external_dependencies = {
   CURL = { library = "curl" },
   CRYPTO = { library = "crypto" },
   SQLITE3 = { library = "sqlite3" },
   ZLIB = { library = "z" },
}
build = {
   type = "make",
   build_target = "luamod",
   build_variables = {
      LUA_HOST_CFLAGS = "-I$(LUA_INCDIR)",
   },
   install_target = "install-luamod",
   install_variables = {
      LUA_LIBDIR = "$(LIBDIR)",
   },
}
