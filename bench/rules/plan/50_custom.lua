-- A hand-written rule of the kind a game mod adds: derive a bucket from a numeric property and
-- count the tags.
return { name = "bucket", stage = "enrichment", types = { "track" }, process = function(m, ctx)
  local p = m.properties
  if type(p) ~= "table" then return m end
  local s = p.score
  if type(s) == "number" then p.score_bucket = s >= 1000 and "high" or "low" end
  if type(p.tags) == "table" then p.tag_count = #p.tags end
  return m
end }
