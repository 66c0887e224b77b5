#!lua flags=allow-oom
--[[ fail.lua: a handler raised; schedule the batch's retry or dead-letter what is out of attempts.

KEYS[1] batch  HASH   KEYS[2] inflight ZSET   KEYS[3] stats HASH   KEYS[4] events STREAM
KEYS[5] dead   ZSET   KEYS[6] dead:payloads HASH   KEYS[7] state HASH   KEYS[8] wakeup LIST

ARGV[1] now_ms ('' = Redis TIME)   ARGV[2] batch id   ARGV[3] attempt   ARGV[4] error text
ARGV[5] back-off ms (with jitter, made by the caller)  ARGV[6] max attempts
ARGV[7] rate-limited until ms (0 = an ordinary failure)  ARGV[8] events MAXLEN  ARGV[9] max in-flight

An ordinary failure counts one handler call for every entry: entries that reach max attempts go to
the dead set with reason 'failed' and the error; the rest stay in the batch, whose status becomes
'retrying' and whose lease becomes now + back-off, so the reaper dispatches the next attempt.
A rate-limited call counts no attempt and pauses the whole queue until the given time.
A dead record replaces an older one of the same id (re-sent after the seen window); the older
copy is counted as purged.
Returns {1, 'retrying'|'dead'|'rate_limited', dead_count}, or {0, 'stale'} (a superseded attempt:
no-op, also after an ack).
Dead record (dead:payloads, parsed by batcher.records.DeadRecord; requeue.lua cuts it apart):
'{"score":<pending score>,"attempts":<calls>,"reason":"<reason>","error":<JSON>,"envelope":<env>}'
]]
local batch, inflight, stats, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local dead, dead_payloads, state, wakeup = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local now
if ARGV[1] ~= '' then now = tonumber(ARGV[1]) else
  local t = redis.call('TIME'); now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local batch_id, attempt, err = ARGV[2], ARGV[3], ARGV[4]
local backoff, max_attempts, limited_until = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local maxlen, max_inflight = ARGV[8], tonumber(ARGV[9])
local function fmt(x) return string.format('%.0f', x) end
local function low_water_mark(cap) return cap - math.ceil(cap / 4) end
-- the dead record (batcher.records.DeadRecord): the same text in ack, fail and expire.lua
local function dead_record(score, attempts, reason, err, envelope)
  return '{"score":' .. score .. ',"attempts":' .. attempts .. ',"reason":"' .. reason ..
    '","error":' .. cjson.encode(err) .. ',"envelope":' .. envelope .. '}'
end

local meta = redis.call('HMGET', batch, 'attempt', 'status', 'free')
if meta[1] ~= attempt or meta[2] ~= 'claimed' then
  redis.call('HINCRBY', stats, 'stale_fails', 1)
  return {0, 'stale'}
end

if limited_until > 0 then
  local paused = tonumber(redis.call('HGET', state, 'paused_until_ms') or '0')
  if limited_until > paused then
    redis.call('HSET', state, 'paused_until_ms', fmt(limited_until))
    redis.call('HDEL', state, 'paused_reason')  -- pause.lua's reason no longer holds the queue
  end
  -- 'free': this dispatch was not a handler call, so it costs no entry an attempt
  redis.call('HINCRBY', batch, 'free', 1)
  redis.call('HSET', batch, 'status', 'retrying', 'last_error', err)
  redis.call('ZADD', inflight, fmt(limited_until), batch_id)
  redis.call('HINCRBY', stats, 'rate_limited', 1)
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'type', 'rate_limited', 'batch', batch_id,
    'until_ms', fmt(limited_until), 'error', err)
  return {1, 'rate_limited', 0}
end

-- handler calls so far, this one included: dispatches less those that were no call ('free')
local calls = tonumber(attempt) - tonumber(meta[3] or '0')
local n_dead, n_purged, gone, kept = 0, 0, {}, {}
for line in string.gmatch(redis.call('HGET', batch, 'ix'), '[^\n]+') do
  local score, prior, id = string.match(line, '^(%S+) (%S+) (.*)$')
  local total = tonumber(prior) + calls
  if total >= max_attempts then
    local env = redis.call('HGET', batch, 'e:' .. id)
    n_purged = n_purged + redis.call('HEXISTS', dead_payloads, id)
    redis.call('ZADD', dead, fmt(now), id)
    redis.call('HSET', dead_payloads, id, dead_record(score, total, 'failed', err, env))
    gone[#gone + 1] = 'e:' .. id
    n_dead = n_dead + 1
  else
    kept[#kept + 1] = line
  end
end

redis.call('HINCRBY', stats, 'batches_failed', 1)
if n_purged > 0 then redis.call('HINCRBY', stats, 'purged', n_purged) end
local left = tonumber(redis.call('HGET', batch, 'n')) - n_dead
local outcome = 'retrying'
if n_dead > 0 then
  redis.call('HINCRBY', stats, 'dead', n_dead)
  if left <= 0 then
    local in_flight = redis.call('ZCARD', inflight)
    redis.call('DEL', batch)
    redis.call('ZREM', inflight, batch_id)
    -- ack.lua's low-water wake: once in flight falls to the cap less a quarter of it
    if in_flight == low_water_mark(max_inflight) + 1 and redis.call('LLEN', wakeup) == 0 then
      redis.call('RPUSH', wakeup, '1')
    end
    outcome = 'dead'
  else
    redis.call('HDEL', batch, unpack(gone))
    redis.call('HSET', batch, 'n', left, 'ix', table.concat(kept, '\n'))
  end
end
if outcome == 'retrying' then
  redis.call('HSET', batch, 'status', 'retrying', 'last_error', err)
  redis.call('ZADD', inflight, fmt(now + backoff), batch_id)
end
redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'type', 'failure', 'batch', batch_id,
  'attempt', attempt, 'outcome', outcome, 'dead', n_dead, 'error', err)
return {1, outcome, n_dead}
