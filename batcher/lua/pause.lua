--[[ pause.lua: a handler found that nothing can succeed until a person acts (LLM quota, auth).

KEYS[1] batch HASH   KEYS[2] inflight ZSET   KEYS[3] stats HASH   KEYS[4] events STREAM
KEYS[5] state HASH

ARGV[1] now_ms ('' = Redis TIME)   ARGV[2] batch id   ARGV[3] attempt   ARGV[4] reason
ARGV[5] error text (the provider's)   ARGV[6] probe after ms   ARGV[7] events MAXLEN

Like a rate limit (fail.lua), the call counts no attempt: the batch waits, status 'retrying',
until the probe time, when the reaper dispatches it again as the probe. The queue is paused until
then (flush.lua reads paused_until_ms) and the state keeps the reason, which stats, top, the
health check and the exporter show while the pause lasts; a later rate-limit pause clears it.
Returns {1, 'paused', until_ms}, or {0, 'stale'} (a superseded attempt: no-op).
]]
local batch, inflight, stats, events, state = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now
if ARGV[1] ~= '' then now = tonumber(ARGV[1]) else
  local t = redis.call('TIME'); now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local batch_id, attempt, reason, err = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local probe_ms, maxlen = tonumber(ARGV[6]), ARGV[7]
local function fmt(x) return string.format('%.0f', x) end

local meta = redis.call('HMGET', batch, 'attempt', 'status')
if meta[1] ~= attempt or meta[2] ~= 'claimed' then
  redis.call('HINCRBY', stats, 'stale_fails', 1)
  return {0, 'stale'}
end
local untl = now + probe_ms
local paused = tonumber(redis.call('HGET', state, 'paused_until_ms') or '0')
-- a longer pause (an operator's `batcher pause`) is kept, and so is its lack of a reason
if untl >= paused then
  redis.call('HSET', state, 'paused_until_ms', fmt(untl), 'paused_reason', reason)
end
-- 'free': this dispatch was not a handler call, so it costs no entry an attempt
redis.call('HINCRBY', batch, 'free', 1)
redis.call('HSET', batch, 'status', 'retrying', 'last_error', err)
redis.call('ZADD', inflight, fmt(untl), batch_id)
redis.call('HINCRBY', stats, 'pauses', 1)
redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'type', 'paused', 'batch', batch_id,
  'until_ms', fmt(untl), 'reason', reason, 'error', err)
return {1, 'paused', untl}
