-- The game's tracking plan: the events the game itself means to send. `make demo` hands it to
-- `tally report --plan` to show coverage (the mods' achievement events are not in it, and
-- "game over" is planned but never sent). As a rule it would flag what the plan does not cover.
return require("tally.plan").rule{
  plan = {
    events = {
      ["level started"] = {
        type = "object",
        properties = { level = { type = "integer", minimum = 1 } },
      },
      ["level completed"] = {
        type = "object",
        required = { "level", "duration_ms" },
        properties = {
          level = { type = "integer", minimum = 1 },
          duration_ms = { type = "integer", minimum = 0 },
          score = { type = "integer" },
          personal_best = { type = "boolean" },
        },
      },
      ["item purchased"] = {
        type = "object",
        required = { "item", "price", "currency" },
        properties = {
          item = { type = "string" },
          price = { type = "number", minimum = 0 },
          currency = { type = "string", enum = { "EUR", "USD" } },
        },
      },
      ["game over"] = true,
    },
  },
  unplanned_events = "flag",
}
