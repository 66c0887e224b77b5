--[[ fetch_release.lua: a fetcher gives back the feeds it fetched, each with its next due time.

KEYS[1] fetch:due    ZSET  feed url -> ms it is due
KEYS[2] fetch:claims HASH  feed url -> token of the fetcher that holds it
ARGV[1] now_ms ('' = Redis TIME)   ARGV[2] the fetcher's token
ARGV[3..] pairs: feed url, ms from now until it is due again
Returns the number of feeds released. A feed whose lease lapsed and which another fetcher
has claimed since is left alone (not counted): its schedule is the new holder's.
]]
local due_key, claims, token = KEYS[1], KEYS[2], ARGV[2]
local now
if ARGV[1] ~= '' then now = tonumber(ARGV[1]) else
  local t = redis.call('TIME'); now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local released = 0
for i = 3, #ARGV, 2 do
  local url = ARGV[i]
  if redis.call('HGET', claims, url) == token then
    redis.call('ZADD', due_key, string.format('%.0f', now + tonumber(ARGV[i + 1])), url)
    redis.call('HDEL', claims, url)
    released = released + 1
  end
end
return released
