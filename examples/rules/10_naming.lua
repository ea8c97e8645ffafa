-- Naming conventions of the Segment tracking guide:
--   * events are Object Action ("call started", "user signed up"), all in lower case;
--   * property keys are snake_case (episode_id, user_type, button_name).
-- Fix mode rewrites what it safely can ("Call Started" -> "call started", episodeId ->
-- episode_id) and reports what it cannot: a one-word event such as "login" has no object, and
-- only a person can say which one was meant.
return require("tally.naming").rule{
  name = "naming",
  style = "lower",
  object_action = true,
  property_case = "snake",
  mode = "fix",
}
