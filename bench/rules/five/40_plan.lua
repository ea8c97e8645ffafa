return require("tally.plan").rule{
  name = "plan",
  plan = {
    events = {
      ["button clicked"] = {
        type = "object",
        required = { "button_name" },
        properties = {
          button_name = { type = "string", minLength = 1 },
          level = { type = "integer", minimum = 0 },
          score = { type = "number" },
        },
      },
    },
  },
  unplanned_events = "flag", unplanned_properties = "allow", violations = "flag",
}
