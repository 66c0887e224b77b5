#!lua flags=allow-oom
--[[ expire.lua: pending entries older than max_buffer_age go to the dead set as 'expired'.

KEYS[1] pending ZSET   KEYS[2] payloads HASH   KEYS[3] state HASH   KEYS[4] dead ZSET
KEYS[5] dead:payloads HASH   KEYS[6] stats HASH   KEYS[7] attempts HASH   KEYS[8] events STREAM
KEYS[9..11] active:0..2 ZSET   KEYS[12] the source lists' prefix (enqueue.lua)
KEYS[13] batch keys ZSET   KEYS[14] the batch keys' prefix (enqueue.lua)
ARGV[1] now_ms ('' = Redis TIME)   ARGV[2] max age ms   ARGV[3] at most this many per priority
ARGV[4] events MAXLEN
A dead record replaces an older one of the same id (re-sent after the seen window); the older
copy is counted as purged. Dead record (dead:payloads, parsed by batcher.records.DeadRecord):
'{"score":<pending score>,"attempts":<calls>,"reason":"<reason>","error":<JSON>,"envelope":<env>}'
Returns the number of entries expired.
]]
local pending, payloads, state, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local dead_payloads, stats, attempts, events = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local active, src_prefix = {[0] = KEYS[9], KEYS[10], KEYS[11]}, KEYS[12]
local keysizes, key_prefix = KEYS[13], KEYS[14]
-- the dead record (batcher.records.DeadRecord): the same text in ack, fail and expire.lua
local function dead_record(score, attempts, reason, err, envelope)
  return '{"score":' .. score .. ',"attempts":' .. attempts .. ',"reason":"' .. reason ..
    '","error":' .. cjson.encode(err) .. ',"envelope":' .. envelope .. '}'
end
-- out of its source list (the oldest of its source: at or near the head) and its key's records
local function leave(id, env, p)
  local g, bkey = string.match(env, '^{"g":"([^"]*)","k":"([^"]*)"')
  if not g then g = string.match(env, '^{"g":"([^"]*)"') or '' end
  local list, akey = src_prefix .. p .. ':' .. g, active[p]
  if bkey then
    list, akey = src_prefix .. 'k:' .. bkey .. ':' .. p .. ':' .. g, active[p] .. ':' .. bkey
    redis.call('ZREM', key_prefix .. bkey, id)
    if tonumber(redis.call('ZINCRBY', keysizes, -1, bkey)) <= 0 then
      redis.call('ZREM', keysizes, bkey)
    end
    redis.call('HINCRBY', state, 'keyed', -1)
  end
  redis.call('LREM', list, 1, id)
  if redis.call('LLEN', list) == 0 then redis.call('ZREM', akey, g) end
end
local now
if ARGV[1] ~= '' then now = tonumber(ARGV[1]) else
  local t = redis.call('TIME'); now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local max_age, limit, maxlen = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local function fmt(x) return string.format('%.0f', x) end
if now - max_age < 0 then return 0 end
local total, bytes, n_purged = 0, 0, 0
for p = 0, 2 do
  local lo = (3 - p) * 1e13
  local r = redis.call('ZRANGE', pending, fmt(lo), fmt(lo + now - max_age), 'BYSCORE', 'LIMIT', 0, limit, 'WITHSCORES')
  if #r > 0 then
    local ids = {}
    for i = 1, #r, 2 do ids[#ids + 1] = r[i] end
    local envs = redis.call('HMGET', payloads, unpack(ids))
    local prior = redis.call('HMGET', attempts, unpack(ids))
    for i = 1, #ids do
      bytes = bytes + #envs[i]
      n_purged = n_purged + redis.call('HEXISTS', dead_payloads, ids[i])
      redis.call('ZADD', dead, fmt(now), ids[i])
      redis.call('HSET', dead_payloads, ids[i], dead_record(r[2 * i], prior[i] or '0', 'expired',
        'older than max_buffer_age', envs[i]))
      leave(ids[i], envs[i], p)
    end
    redis.call('ZREM', pending, unpack(ids))
    redis.call('HDEL', payloads, unpack(ids))
    redis.call('HDEL', attempts, unpack(ids))
    total = total + #ids
  end
end
if n_purged > 0 then redis.call('HINCRBY', stats, 'purged', n_purged) end
if total > 0 then
  redis.call('HINCRBY', state, 'bytes', -bytes)
  redis.call('HINCRBY', stats, 'expired', total)
  redis.call('HINCRBY', stats, 'dead', total)
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'type', 'expired', 'n', total)
end
return total
