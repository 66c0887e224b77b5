--[[ fetch_claim.lua: a fetcher claims the feeds whose time has come, each with a lease.

KEYS[1] fetch:due    ZSET  feed url -> ms it is due; while claimed, the ms its lease lapses
KEYS[2] fetch:claims HASH  feed url -> token of the fetcher that holds it
ARGV[1] now_ms ('' = Redis TIME)   ARGV[2] lease_ms   ARGV[3] at most this many (<= 1000)
ARGV[4] the claiming fetcher's token
Returns {now_ms, next_due_ms (-1: no feed left), url...}: the claimed urls; next_due_ms is
the earliest due time among the feeds not claimed, so the fetcher knows how long to wait.
A fetcher killed mid-fetch leaves its feeds due at their lease's end: another claims them.
]]
local due_key, claims = KEYS[1], KEYS[2]
local lease_ms, limit, token = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local now
if ARGV[1] ~= '' then now = tonumber(ARGV[1]) else
  local t = redis.call('TIME'); now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local due = redis.call('ZRANGE', due_key, '-inf', string.format('%.0f', now), 'BYSCORE',
                       'LIMIT', 0, limit)
local deadline = string.format('%.0f', now + lease_ms)
for i = 1, #due do
  redis.call('ZADD', due_key, 'XX', deadline, due[i])
  redis.call('HSET', claims, due[i], token)
end
local next_due = -1
local first = redis.call('ZRANGE', due_key, 0, 0, 'WITHSCORES')
if #first > 0 then next_due = tonumber(first[2]) end
local reply = {now, next_due}
for i = 1, #due do reply[i + 2] = due[i] end
return reply
