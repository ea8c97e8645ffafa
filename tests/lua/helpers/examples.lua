--- The examples/rules scenarios, run by examples_spec.lua through `tally check` and by
-- examples_runtime_spec.lua through a runtime opened with the Lua module (kept apart: under TSan
-- the Lua module cannot be loaded, so the run-tests script leaves that spec out).
-- A runner gives:
--   run(msg) -> the messages out, and an outcome with :expect_codes(list) and :expect_text(pattern)
--   expect_order(names)            the rules load in this order
--   expect_loaded(n, stages)       n rules loaded (and, where the runner can see it, each in one of
--                                  stages, a set: tally_stats shows stages, `tally check` does not)
-- `b` is the spec's busted API ({ describe = describe, it = it, assert = assert }): busted gives
-- those to spec files only.
local M = {}

function M.describe(label, runner, b)
  local describe, it, assert = b.describe, b.it, b.assert
  describe("examples/rules through " .. label, function()
    local run = runner.run

    it("finds the four examples, in name order", function()
      runner.expect_order({ "naming", "episode", "user_type", "flatten" })
    end)

    it("loads plugin tables the C side accepts, in the stages they name", function()
      runner.expect_loaded(4, { before = true, enrichment = true })
    end)

    it("cleans up a badly named call event completely", function()
      local out, o = run{ type = "track", event = "Call Ended By Patient", userId = "u1",
                          properties = { channelId = "ep-9", userType = "Patient" } }
      assert.equal(1, #out)
      assert.equal("call ended", out[1].event)
      assert.same({ episode_id = "ep-9", type = "ended_by_patient", user_type = "patient" }, out[1].properties)
      o:expect_codes({})
    end)

    it("flattens call ended by practitioner", function()
      local out = run{ type = "track", event = "call ended by practitioner", userId = "u",
                       properties = { episode_id = "e", user_type = "practitioner" } }
      assert.equal("call ended", out[1].event)
      assert.equal("ended_by_practitioner", out[1].properties.type)
    end)

    it("reports what it cannot fix, and still passes the message", function()
      local out, o = run{ type = "track", event = "login", userId = "u", properties = {} }
      assert.equal(1, #out)
      o:expect_codes({ "naming.object_action" })
    end)

    it("requires episode_id inside an episode, by event object or by an episode-only id", function()
      local _, o = run{ type = "track", event = "call started", userId = "u", properties = { user_type = "patient" } }
      o:expect_codes({ "naming.required" })
      o:expect_text("episode_id")

      _, o = run{ type = "track", event = "note added", userId = "u", properties = { call_id = "c1" } }
      o:expect_codes({ "naming.required" })

      _, o = run{ type = "track", event = "report downloaded", userId = "u", properties = {} }
      o:expect_codes({})
    end)

    it("keeps both ids, and reports, when channel_id and episode_id disagree", function()
      local out, o = run{ type = "track", event = "prescription issued", userId = "u",
                          properties = { channel_id = "c", episode_id = "e" } }
      assert.same({ channel_id = "c", episode_id = "e" }, out[1].properties)
      o:expect_codes({ "naming.forbidden" })
    end)

    it("requires user_type only when the object is shared by several kinds of users", function()
      local _, o = run{ type = "track", event = "user signed up", userId = "u", properties = {} }
      o:expect_codes({ "naming.required" })
      o:expect_text("user_type")

      _, o = run{ type = "track", event = "prescription issued", userId = "u", properties = { episode_id = "e" } }
      o:expect_codes({})
    end)

    it("normalizes user_type values and rejects non-strings", function()
      local out = run{ type = "track", event = "user logged in", userId = "u", properties = { user_type = "HR Admin" } }
      assert.equal("hr_admin", out[1].properties.user_type)
      local _, o = run{ type = "track", event = "user logged in", userId = "u", properties = { user_type = 3 } }
      o:expect_codes({ "naming.user_type" })
    end)

    it("applies key conventions to identify traits and leaves event rules to track", function()
      local out, o = run{ type = "identify", userId = "u1", traits = { firstName = "Peter", email = "p@i.com" } }
      assert.same({ first_name = "Peter", email = "p@i.com" }, out[1].traits)
      o:expect_codes({})
    end)
  end)
end

return M
