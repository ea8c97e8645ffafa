-- a hand-written rule of the kind a game mod adds: derive a bucket from a numeric property
return { name = "bucket", stage = "enrichment", types = { "track" }, process = function(m, ctx)
  local s = m.properties and m.properties.score
  if type(s) == "number" then m.properties.score_bucket = s >= 1000 and "high" or "low" end
  return m
end }
