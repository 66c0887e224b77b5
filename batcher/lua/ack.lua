#!lua flags=allow-oom
--[[ ack.lua: a handler finished a batch; store results, retire entries, record figures.

KEYS[1] batch    HASH   KEYS[2] inflight ZSET   KEYS[3] stats   HASH   KEYS[4] hist:processing_ms
KEYS[5] hist:queue_wait_ms  KEYS[6] hist:end_to_end_ms          KEYS[7] samples LIST
KEYS[8] events   STREAM KEYS[9] wakeup   LIST   KEYS[10] throughput HASH (second -> entries)
KEYS[11] payloads HASH  KEYS[12] delayed ZSET   KEYS[13] delayed:score HASH
KEYS[14] attempts HASH  KEYS[15] dead    ZSET   KEYS[16] dead:payloads HASH
KEYS[17..] result:<id> for each result pair below, in order

ARGV[1] now_ms ('' = Redis TIME)   ARGV[2] batch id   ARGV[3] attempt
ARGV[4] processing ms   ARGV[5] result TTL s (0 = results not kept)   ARGV[6] max in-flight batches
ARGV[7] samples cap     ARGV[8] events MAXLEN   ARGV[9] handler start ms   ARGV[10] max attempts
ARGV[11] number of result pairs R (-D: D results dropped, none sent)   ARGV[12] failed triples F
then R pairs (entry id, result JSON), then F triples (entry id, error text, back-off ms)

Failed entries (a partial outcome) go to delayed with their attempt counted, or to the dead set
when they have had max attempts. A back-off of -1 sends the entry to the dead set at once, with
reason 'rejected' (the handler knows no retry can succeed: the LLM API refused the entry). Every other entry of the batch is acked. An id can be held twice
when a producer re-sent it after the seen window: a failed copy whose id is pending or delayed
again is dropped (the other copy carries the retry), and a dead record replaces an older one of
the same id; either way the dropped copy is counted as purged, so no accepted entry goes unseen.
Flagged allow-oom: the ack frees the batch's memory, so it runs on a full Redis. Its variant
'ack_results' (the same text flagged deny-oom, see scripts.py) carries results: a full Redis
refuses it whole, and the worker acks again with -D (results are best-effort, the ack is not).
Returns {1, acked, delayed, dead}, or {0, 'stale'} for an ack of a superseded attempt (no-op).
Dead record (dead:payloads, parsed by batcher.records.DeadRecord; requeue.lua cuts it apart):
'{"score":<pending score>,"attempts":<calls>,"reason":"<reason>","error":<JSON>,"envelope":<env>}'
]]
local batch, inflight, stats = KEYS[1], KEYS[2], KEYS[3]
local h_proc, h_wait, h_e2e, samples, events = KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local wakeup, tput, payloads, delayed, delayed_score = KEYS[9], KEYS[10], KEYS[11], KEYS[12], KEYS[13]
local attempts, dead, dead_payloads = KEYS[14], KEYS[15], KEYS[16]

local now
if ARGV[1] ~= '' then now = tonumber(ARGV[1]) else
  local t = redis.call('TIME'); now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local batch_id, attempt, proc_ms = ARGV[2], ARGV[3], tonumber(ARGV[4])
local ttl, max_inflight, samples_cap, maxlen = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local started, max_attempts = tonumber(ARGV[9]), tonumber(ARGV[10])
local n_results, n_failed = tonumber(ARGV[11]), tonumber(ARGV[12])
local n_dropped = 0
if n_results < 0 then n_dropped, n_results = -n_results, 0 end
local function fmt(x) return string.format('%.0f', x) end
local function low_water_mark(cap) return cap - math.ceil(cap / 4) end
-- the dead record (batcher.records.DeadRecord): the same text in ack, fail and expire.lua
local function dead_record(score, attempts, reason, err, envelope)
  return '{"score":' .. score .. ',"attempts":' .. attempts .. ',"reason":"' .. reason ..
    '","error":' .. cjson.encode(err) .. ',"envelope":' .. envelope .. '}'
end

local meta = redis.call('HMGET', batch, 'attempt', 'status', 'free')
if meta[1] ~= attempt or meta[2] ~= 'claimed' then
  redis.call('HINCRBY', stats, 'stale_acks', 1)
  return {0, 'stale'}
end
-- handler calls so far, this one included: dispatches less those that were no call ('free')
local calls = tonumber(attempt) - tonumber(meta[3] or '0')

local failed = {}
local base = 12 + 2 * n_results
for i = 0, n_failed - 1 do
  failed[ARGV[base + 3 * i + 1]] = {ARGV[base + 3 * i + 2], tonumber(ARGV[base + 3 * i + 3])}
end

-- latency buckets (upper bounds, ms); the last is +Inf
local bounds = {5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000, 300000, 600000}
local function bucket(ms)
  for _, b in ipairs(bounds) do if ms <= b then return tostring(b) end end
  return '+Inf'
end
local wait_b, e2e_b = {}, {}
local acked, n_delayed, n_dead, n_purged, wait_sum, e2e_sum = 0, 0, 0, 0, 0, 0
local n_rejected = 0
-- the index line of each entry: '<score> <prior attempts> <id>'; envelopes are read back
-- only for the failed ones
local ix = redis.call('HGET', batch, 'ix')
for line in string.gmatch(ix, '[^\n]+') do
  local score, prior, id = string.match(line, '^(%S+) (%S+) (.*)$')
  local enq = tonumber(score) % 1e13
  local fail = failed[id]
  if fail then
    local env = redis.call('HGET', batch, 'e:' .. id)
    local total = tonumber(prior) + calls
    local rejected = fail[2] < 0
    if total >= max_attempts or rejected then
      n_purged = n_purged + redis.call('HEXISTS', dead_payloads, id)
      redis.call('ZADD', dead, fmt(now), id)
      redis.call('HSET', dead_payloads, id,
        dead_record(score, total, rejected and 'rejected' or 'failed', fail[1], env))
      n_dead = n_dead + 1
      if rejected then n_rejected = n_rejected + 1 end
    elseif redis.call('HEXISTS', payloads, id) == 1 then
      n_purged = n_purged + 1
    else
      redis.call('HSET', payloads, id, env)
      redis.call('HSET', delayed_score, id, score)
      redis.call('HSET', attempts, id, total)
      redis.call('ZADD', delayed, fmt(now + fail[2]), id)
      n_delayed = n_delayed + 1
    end
  else
    acked = acked + 1
    local w, e = math.max(0, started - enq), math.max(0, now - enq)
    wait_sum, e2e_sum = wait_sum + w, e2e_sum + e
    local bw, be = bucket(w), bucket(e)
    wait_b[bw] = (wait_b[bw] or 0) + 1
    e2e_b[be] = (e2e_b[be] or 0) + 1
  end
end

if ttl > 0 then
  for i = 0, n_results - 1 do
    local id = ARGV[13 + 2 * i]
    if not failed[id] then redis.call('SET', KEYS[17 + i], ARGV[14 + 2 * i], 'EX', ttl) end
  end
end

local in_flight = redis.call('ZCARD', inflight)
redis.call('DEL', batch)
redis.call('ZREM', inflight, batch_id)

redis.call('HINCRBY', h_proc, bucket(proc_ms), 1)
for b, c in pairs(wait_b) do redis.call('HINCRBY', h_wait, b, c) end
for b, c in pairs(e2e_b) do redis.call('HINCRBY', h_e2e, b, c) end
redis.call('HINCRBY', stats, 'batches_processed', 1)
redis.call('HINCRBY', stats, 'acked', acked)
-- a float sum: most batches take less than a millisecond with a fast handler
redis.call('HINCRBYFLOAT', stats, 'processing_ms_sum', string.format('%.3f', proc_ms))
redis.call('HINCRBY', stats, 'queue_wait_ms_sum', fmt(wait_sum))
redis.call('HINCRBY', stats, 'end_to_end_ms_sum', fmt(e2e_sum))
if n_delayed > 0 then redis.call('HINCRBY', stats, 'retried_entries', n_delayed) end
if n_dead > 0 then redis.call('HINCRBY', stats, 'dead', n_dead) end
if n_rejected > 0 then redis.call('HINCRBY', stats, 'dead_rejected', n_rejected) end
if n_purged > 0 then redis.call('HINCRBY', stats, 'purged', n_purged) end
if n_dropped > 0 then redis.call('HINCRBY', stats, 'results_dropped', n_dropped) end
redis.call('HSET', stats, 'last_ack_ms', fmt(now))

-- the sizing model's samples and the per-second throughput window (kept ~11 minutes)
redis.call('LPUSH', samples, fmt(now) .. ':' .. (acked + n_delayed + n_dead) .. ':' .. fmt(proc_ms))
redis.call('LTRIM', samples, 0, samples_cap - 1)
local sec = math.floor(now / 1000)
redis.call('HINCRBY', tput, tostring(sec), acked)
local gc_raw = redis.call('HGET', tput, 'gc')
-- without the marker the window would never be trimmed: record where trimming starts
if not gc_raw then redis.call('HSET', tput, 'gc', sec - 700) end
local gc = tonumber(gc_raw or (sec - 700))
if sec - 700 > gc then
  if sec - 700 - gc > 700 then
    redis.call('DEL', tput); redis.call('HINCRBY', tput, tostring(sec), acked)
  else
    local old = {}
    for s = gc, sec - 701 do old[#old + 1] = tostring(s) end
    if #old > 0 then redis.call('HDEL', tput, unpack(old)) end
  end
  redis.call('HSET', tput, 'gc', sec - 700)
end

redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'type', 'ack', 'batch', batch_id,
  'n', acked, 'delayed', n_delayed, 'dead', n_dead, 'processing_ms', fmt(proc_ms), 'attempt', attempt)
-- a coordinator held at the in-flight cap is woken once in flight falls to the low-water mark
-- (a quarter of the slots free), so it refills in one pipelined burst instead of one flush,
-- dispatch and wait per ack
if in_flight == low_water_mark(max_inflight) + 1 and redis.call('LLEN', wakeup) == 0 then
  redis.call('RPUSH', wakeup, '1')
end
return {1, acked, n_delayed, n_dead}
