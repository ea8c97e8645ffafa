-- "When there is any ambiguity about who this user might be, pass an additional prop called
-- user_type and indicate whether it is a patient, practitioner, hr_admin, or whatever else."
-- (Segment tracking guide)
--
-- The ambiguity criterion: an event is ambiguous when its object (the first word of the name) is
-- something several kinds of users act on. A call or a video has a patient and a practitioner
-- at either end; anybody can be a user who signs up or logs in, or send a message. Objects that
-- only one kind of user acts on (a prescription is issued by a practitioner, a questionnaire is
-- filled in by a patient) are not ambiguous and need no user_type. Extend SHARED_OBJECTS as the
-- product grows.
--
-- The value is normalized to snake_case ("Practitioner" -> "practitioner", "HR Admin" ->
-- "hr_admin") and must be a string.
local naming = require("tally.naming")
local util = require("tally.util")

local SHARED_OBJECTS = { user = true, call = true, video = true, message = true, chat = true,
                         appointment = true, episode = true, document = true }

local function ambiguous(msg)
  local object = type(msg.event) == "string" and msg.event:match("^(%S+)")
  return object ~= nil and SHARED_OBJECTS[object] == true
end

local rule = naming.rule{
  name = "user_type",
  types = { "track" },
  mode = "fix",
  required = { { property = "user_type", when = ambiguous } },
}

-- Composition: run the bundled check, then normalize the value it made sure is there.
local check = rule.process
rule.process = function(msg, ctx)
  msg = check(msg, ctx)
  local props = msg.properties
  if type(props) ~= "table" or util.is_absent(props.user_type) then return msg end
  if type(props.user_type) == "string" then
    props.user_type = naming.to_snake(props.user_type)
  else
    ctx:violation("naming.user_type", "properties.user_type must be a string such as 'patient'")
  end
  return msg
end

return rule
