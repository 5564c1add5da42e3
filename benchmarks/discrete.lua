-- POST /discrete with varied events (20 scopes, 250 ids per scope, 30 actions)
math.randomseed(42)
local bodies = {}
for i = 1, 5000 do
  local s = math.random(0, 19)
  local a = math.floor(30 * (math.random() ^ 3))
  bodies[i] = string.format('{"org":"org%d","source":"src%d","pop":"pop%d","id":"user%d","action":"GET /api/v1/item/%d"}',
    s % 4, s, s, math.random(0, 249), a)
end
local headers = {["Content-Type"] = "application/json"}
local token = os.getenv("BINORMAL_TOKEN")  -- auth on: a producer token (http_discrete.py --auth)
if token and token ~= "" then headers["Authorization"] = "Bearer " .. token end
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", "/discrete", headers, bodies[(n % #bodies) + 1])
end
