#!lua flags=allow-oom
--[[ redispatch.lua: the reaper's step for one batch whose lease ran out (DESIGN §3 "Reaper").

KEYS[1] batch HASH   KEYS[2] inflight ZSET   KEYS[3] stats HASH   KEYS[4] events STREAM
ARGV[1] now_ms ('' = Redis TIME)   ARGV[2] batch id   ARGV[3] attempt the caller saw
ARGV[4] new lease ms   ARGV[5] RQ job alive (1/0: queued or running, checked by the caller)
ARGV[6] events MAXLEN

  dispatched, job alive -> lease extended, same attempt        {1, 'extended', attempt, priority}
  dispatched, job gone  -> next attempt, no handler call counted {1, 'lost', attempt + 1, priority}
  claimed (worker died) -> next attempt, entries redelivered   {1, 'redelivered', attempt + 1, priority}
  retrying (back-off over) -> next attempt                     {1, 'retry', attempt + 1, priority}
  lease not yet out, attempt moved on, or batch gone           {0, 'stale'}
The caller then enqueues RQ job '<batch id>-<attempt>'.
]]
local batch, inflight, stats, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now
if ARGV[1] ~= '' then now = tonumber(ARGV[1]) else
  local t = redis.call('TIME'); now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local batch_id, seen_attempt, lease_ms, job_alive, maxlen = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5] == '1', ARGV[6]

local meta = redis.call('HMGET', batch, 'attempt', 'status', 'priority', 'n')
local lease = redis.call('ZSCORE', inflight, batch_id)
if not meta[1] or meta[1] ~= seen_attempt or not lease or tonumber(lease) > now then
  return {0, 'stale'}
end
local status, attempt = meta[2], tonumber(meta[1])
local outcome
if status == 'dispatched' and job_alive then
  redis.call('ZADD', inflight, string.format('%.0f', now + lease_ms), batch_id)
  return {1, 'extended', attempt, tonumber(meta[3])}
elseif status == 'dispatched' then
  outcome = 'lost'
  -- 'free': this dispatch was not a handler call, so it costs no entry an attempt
  redis.call('HINCRBY', batch, 'free', 1)
  redis.call('HINCRBY', stats, 'lost_dispatches', 1)
elseif status == 'claimed' then
  outcome = 'redelivered'
  redis.call('HINCRBY', stats, 'redeliveries', tonumber(meta[4]))
  redis.call('HINCRBY', stats, 'redelivered_batches', 1)
else
  outcome = 'retry'
  redis.call('HINCRBY', stats, 'retries', 1)
end
attempt = attempt + 1
redis.call('HSET', batch, 'attempt', attempt, 'status', 'dispatched')
redis.call('ZADD', inflight, string.format('%.0f', now + lease_ms), batch_id)
redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'type', outcome, 'batch', batch_id,
  'attempt', attempt, 'n', meta[4])
return {1, outcome, attempt, tonumber(meta[3])}
