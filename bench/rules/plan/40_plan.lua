-- A tracking plan of 20 events as a team would export it (plan.json, next to the rules); the
-- bench's "button clicked" is planned and valid, so the rule checks every property and passes.
return require("tally.plan").rule{
  name = "plan", plan = tally.load_json("plan.json"),
  unplanned_events = "flag", unplanned_properties = "flag", violations = "flag",
}
