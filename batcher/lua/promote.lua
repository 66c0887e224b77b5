#!lua flags=allow-oom
--[[ promote.lua: delayed entries whose back-off is over return to pending with their original score.

KEYS[1] pending ZSET   KEYS[2] payloads HASH   KEYS[3] delayed ZSET   KEYS[4] delayed:score HASH
KEYS[5] state   HASH   KEYS[6..8] active:0..2 ZSET   KEYS[9] the source lists' prefix (enqueue.lua)
KEYS[10] batch keys ZSET   KEYS[11] the batch keys' prefix (enqueue.lua)
ARGV[1] now_ms ('' = Redis TIME)   ARGV[2] at most this many entries
Returns the number of entries promoted.
]]
local pending, payloads, delayed, delayed_score, state = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local active, src_prefix = {[0] = KEYS[6], KEYS[7], KEYS[8]}, KEYS[9]
local keysizes, key_prefix = KEYS[10], KEYS[11]
local now
if ARGV[1] ~= '' then now = tonumber(ARGV[1]) else
  local t = redis.call('TIME'); now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local due = redis.call('ZRANGE', delayed, '-inf', string.format('%.0f', now), 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]))
if #due == 0 then return 0 end
local scores = redis.call('HMGET', delayed_score, unpack(due))
local envs = redis.call('HMGET', payloads, unpack(due))
local vt = redis.call('HMGET', state, 'vt:0', 'vt:1', 'vt:2')
-- back into its source list (at the head: it is older than what that source has pending)
-- and, with a batch key, into that key's records (enqueue.lua)
local function enter(id, env, score)
  local p = 3 - math.floor(tonumber(score) / 1e13)
  local g, bkey = string.match(env, '^{"g":"([^"]*)","k":"([^"]*)"')
  if not g then g = string.match(env, '^{"g":"([^"]*)"') or '' end
  if bkey then
    redis.call('LPUSH', src_prefix .. 'k:' .. bkey .. ':' .. p .. ':' .. g, id)
    local at = redis.call('HGET', state, 'vt:' .. p .. ':' .. bkey) or '0'
    redis.call('ZADD', active[p] .. ':' .. bkey, 'NX', at, g)
    redis.call('ZADD', key_prefix .. bkey, score, id)
    redis.call('ZINCRBY', keysizes, 1, bkey)
    redis.call('HINCRBY', state, 'keyed', 1)
  else
    redis.call('LPUSH', src_prefix .. p .. ':' .. g, id)
    redis.call('ZADD', active[p], 'NX', vt[p + 1] or '0', g)
  end
end
local bytes = 0
for i = 1, #due do
  redis.call('ZADD', pending, scores[i], due[i])
  local e = envs[i] or ''
  bytes = bytes + #e
  enter(due[i], e, scores[i])
end
redis.call('ZREM', delayed, unpack(due))
redis.call('HDEL', delayed_score, unpack(due))
redis.call('HINCRBY', state, 'bytes', bytes)
return #due
