-- Achievements. Unlocks a few achievements and, like many first versions of a mod, reports
-- progress on every coin. The game caps this mod at 5 events/s (burst 10), so most progress
-- events are refused with nil, "rate limited (...)": this mod drops those (the next coin
-- reports newer progress anyway) but keeps unlocks, holds progress back while one waits, and
-- re-sends them at the next hook, once time (the loading screen) has refilled its bucket.
local hooks = {}
local coins, unlocked, pending = 0, {}, {}

local function send_pending()
  while pending[1] do
    local u = pending[1]
    if not tally.track("achievement unlocked", u) then return end -- still limited: later
    table.remove(pending, 1)
  end
end

local function unlock(id, title)
  if unlocked[id] then return end
  unlocked[id] = true
  pending[#pending + 1] = { achievement_id = id, title = title, coins = coins }
  send_pending()
end

function hooks.on_menu()
  send_pending()
end

function hooks.on_quit()
  send_pending()
  if pending[1] then print("achievements: " .. #pending .. " unlock(s) not reported") end
end

function hooks.on_level_start(e)
  send_pending()
  if e.level == 1 and coins > 0 then unlock("second_wind", "Back for more") end
end

function hooks.on_coin()
  coins = coins + 1
  send_pending()
  -- progress is best effort and must not eat the tokens an unlock is waiting for
  if pending[1] == nil then
    tally.track("achievement progress", { achievement_id = "coin_hoarder", progress = coins, goal = 40 })
  end
  if coins >= 40 then unlock("coin_hoarder", "Coin hoarder") end
end

function hooks.on_level_complete(e)
  unlock("first_clear", "First clear")
  if e.score >= 1200 then unlock("high_score", "High scorer") end
  if e.level >= 4 then unlock("explorer", "Explorer") end
end

function hooks.on_purchase(e)
  unlock("big_spender", "Big spender")
  -- a purchase seen by the mod: only the host reports the sale itself (item purchased)
  tally.track("achievement progress", { achievement_id = "big_spender", progress = 1, goal = 1,
                                        item = e.item })
end

return hooks
