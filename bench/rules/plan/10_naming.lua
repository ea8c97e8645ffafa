return require("tally.naming").rule{
  name = "naming", style = "lower", object_action = true, property_case = "snake", mode = "fix",
  forbidden = { channel_id = "use episode_id" },
}
