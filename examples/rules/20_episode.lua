-- "When an action occurs inside an episode, episode_id should always be passed as a property
-- (and never as channel_id)." (Segment tracking guide, Properties Naming)
--
-- channel_id is moved to episode_id when episode_id is absent (reported when both are there and
-- differ). "Inside an episode" is decided by two signals:
--   * the event's object only exists within an episode (a call, a consultation, a chat message,
--     a questionnaire...): the event name starts with one of EPISODE_OBJECTS;
--   * or the event carries the id of something that only exists within an episode (call_id,
--     qnaire_tid: the guide's examples of feature and workflow ids).
-- Runs after 10_naming, so names are already lower case and keys snake_case.
local EPISODE_OBJECTS = { "call ", "consultation ", "episode ", "message ", "questionnaire ",
                          "video ", "prescription " }
local EPISODE_IDS = { "call_id", "qnaire_tid" }

return require("tally.naming").rule{
  name = "episode",
  types = { "track" },
  mode = "fix",
  forbidden = { channel_id = "use episode_id" },
  required = {
    { property = "episode_id",
      when = { any = { { event_prefix = EPISODE_OBJECTS }, { has = EPISODE_IDS } } } },
  },
}
