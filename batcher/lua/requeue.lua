#!lua flags=allow-oom
--[[ requeue.lua: dead entries go back to pending with their original score, or are purged.

KEYS[1] pending ZSET   KEYS[2] payloads HASH   KEYS[3] state HASH   KEYS[4] dead ZSET
KEYS[5] dead:payloads HASH   KEYS[6] stats HASH   KEYS[7] events STREAM
KEYS[8..10] active:0..2 ZSET   KEYS[11] the source lists' prefix (enqueue.lua)
KEYS[12] batch keys ZSET   KEYS[13] the batch keys' prefix (enqueue.lua)
ARGV[1] mode: 'requeue' | 'purge'   ARGV[2] events MAXLEN   ARGV[3..] entry ids
An id that is pending again (re-sent by a producer) is purged instead of requeued, so it is not
held twice. Returns {moved, purged, missing}.
]]
local pending, payloads, state, dead, dead_payloads, stats, events =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local active, src_prefix = {[0] = KEYS[8], KEYS[9], KEYS[10]}, KEYS[11]
local keysizes, key_prefix = KEYS[12], KEYS[13]
local mode, maxlen = ARGV[1], ARGV[2]
local vt = redis.call('HMGET', state, 'vt:0', 'vt:1', 'vt:2')
local moved, purged, missing, bytes = 0, 0, 0, 0
local marker = ',"envelope":'
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
for i = 3, #ARGV do
  local id = ARGV[i]
  local rec = redis.call('HGET', dead_payloads, id)
  if not rec then
    missing = missing + 1
  else
    redis.call('ZREM', dead, id)
    redis.call('HDEL', dead_payloads, id)
    if mode == 'requeue' and redis.call('HEXISTS', payloads, id) == 0 then
      -- the error is cjson-encoded, so the first raw ',"envelope":' is ours
      local at = string.find(rec, marker, 1, true)
      local score = string.match(rec, '^{"score":(%d+),')
      local env = string.sub(rec, at + #marker, -2)
      redis.call('ZADD', pending, score, id)
      redis.call('HSET', payloads, id, env)
      enter(id, env, score)
      bytes = bytes + #env
      moved = moved + 1
    else
      purged = purged + 1
    end
  end
end
if bytes > 0 then redis.call('HINCRBY', state, 'bytes', bytes) end
if moved > 0 then redis.call('HINCRBY', stats, 'requeued', moved) end
if purged > 0 then redis.call('HINCRBY', stats, 'purged', purged) end
if moved + purged > 0 then
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'type', mode, 'moved', moved, 'purged', purged)
end
return {moved, purged, missing}
