-- "When possible, multiple events that occur in similar contexts should be flattened into one
-- event. E.g. call ended by practitioner, call ended by patient could become call ended with a
-- type of ended_by_patient or ended_by_practitioner." (Segment tracking guide, Best Practices)
--
-- Keys are the lower-case names produced by 10_naming. A message that already has a different
-- `type` is renamed anyway and the conflict is reported (its `type` is kept).
return require("tally.naming").rule{
  name = "flatten",
  types = { "track" },
  mode = "fix",
  rename = {
    ["call ended by patient"] = { event = "call ended", set = { type = "ended_by_patient" } },
    ["call ended by practitioner"] = { event = "call ended", set = { type = "ended_by_practitioner" } },
  },
}
