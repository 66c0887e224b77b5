#!lua flags=allow-oom
--[[ promote.lua: delayed entries whose back-off is over return to pending with their original score.

KEYS[1] pending ZSET   KEYS[2] payloads HASH   KEYS[3] delayed ZSET   KEYS[4] delayed:score HASH
KEYS[5] state   HASH   KEYS[6..8] active:0..2 ZSET   KEYS[9] the source lists' prefix (enqueue.lua)
ARGV[1] now_ms ('' = Redis TIME)   ARGV[2] at most this many entries
Returns the number of entries promoted.
]]
local pending, payloads, delayed, delayed_score, state = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local active, src_prefix = {[0] = KEYS[6], KEYS[7], KEYS[8]}, KEYS[9]
local now
if ARGV[1] ~= '' then now = tonumber(ARGV[1]) else
  local t = redis.call('TIME'); now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local due = redis.call('ZRANGE', delayed, '-inf', string.format('%.0f', now), 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]))
if #due == 0 then return 0 end
local scores = redis.call('HMGET', delayed_score, unpack(due))
local envs = redis.call('HMGET', payloads, unpack(due))
local vt = redis.call('HMGET', state, 'vt:0', 'vt:1', 'vt:2')
local bytes = 0
for i = 1, #due do
  redis.call('ZADD', pending, scores[i], due[i])
  local e = envs[i] or ''
  bytes = bytes + #e
  -- back at the head of its source's list: it is older than what that source has pending
  local p = 3 - math.floor(tonumber(scores[i]) / 1e13)
  local g = string.match(e, '^{"g":"([^"]*)"') or ''
  redis.call('LPUSH', src_prefix .. p .. ':' .. g, due[i])
  redis.call('ZADD', active[p], 'NX', vt[p + 1] or '0', g)
end
redis.call('ZREM', delayed, unpack(due))
redis.call('HDEL', delayed_score, unpack(due))
redis.call('HINCRBY', state, 'bytes', bytes)
return #due
