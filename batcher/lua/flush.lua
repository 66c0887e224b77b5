#!lua flags=allow-oom
--[[ flush.lua: decide whether a batch is due and pop it, in one atomic step (DESIGN §3 "Flush").

KEYS[1] pending   ZSET   KEYS[2] payloads HASH   KEYS[3] state  HASH   KEYS[4] inflight ZSET
KEYS[5] stats     HASH   KEYS[6] events   STREAM KEYS[7] batch  HASH (the new batch's key)
KEYS[8] room      LIST   KEYS[9] attempts HASH
KEYS[10..12] active:0..2 ZSET source group -> fair-share tag   KEYS[13] weights HASH group -> weight
KEYS[14] the source lists' prefix (enqueue.lua: list '<prefix><priority>:<group>', oldest first)
KEYS[15] keys ZSET batch key -> pending count   KEYS[16] the batch keys' prefix (enqueue.lua)
A batch never mixes batch keys: it serves one key (or the entries without one), chosen below.

ARGV[1]  now_ms ('' = Redis TIME)      ARGV[2]  batch id (made by the caller)
ARGV[3]  manual (1/0)                  ARGV[4]  max_buffer_size      ARGV[5] max_buffer_bytes
ARGV[6]  default size threshold        ARGV[7]  max_batch_size       ARGV[8] max_batch_bytes
ARGV[9]  early pressure                ARGV[10] emergency pressure   ARGV[11] adaptive timeout (1/0)
ARGV[12..14] time thresholds ms: normal, high, urgent
ARGV[15] max in-flight batches         ARGV[16] dispatch lease ms    ARGV[17] events MAXLEN
ARGV[18] Redis memory utilisation, scaled so that 'early' is the configured flush level
         (used_memory / maxmemory read by the coordinator; '0' = unknown or off)

Returns {1, batch_id, reason, n, priority, attempt, key}  a batch was written and popped
        {0, wait_ms}                                 nothing due; -1 = until woken
Errors  BATCH_EXISTS <id>                            the batch id is already in use
                                                     (batcher.errors.BatchExistsError)
The batch hash holds meta fields, one field per entry ('e:<id>' -> the envelope, byte for byte as the
producer sent it) and an index 'ix' of '<score> <prior attempts> <id>' lines.
Meta fields (read in Python by batcher.records.BatchRecord): status, reason, created_ms, priority,
n, bytes, key, attempt (dispatches so far) and 'free' (the dispatches that were not handler calls:
a lost RQ job, a rate limit, a pause; attempt - free = handler calls); claim adds claimed_ms.
]]
local pending, payloads, state, inflight = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local stats, events, batch, room, attempts = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local active, weights, src_prefix = {[0] = KEYS[10], KEYS[11], KEYS[12]}, KEYS[13], KEYS[14]
local keysizes, key_prefix = KEYS[15], KEYS[16]

local now
if ARGV[1] ~= '' then now = tonumber(ARGV[1]) else
  local t = redis.call('TIME'); now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local batch_id, manual = ARGV[2], ARGV[3] == '1'
local max_count, max_bytes = tonumber(ARGV[4]), tonumber(ARGV[5])
local threshold = tonumber(redis.call('HGET', state, 'size_threshold') or ARGV[6])
local max_batch, max_batch_bytes = tonumber(ARGV[7]), tonumber(ARGV[8])
local early, emergency, adaptive = tonumber(ARGV[9]), tonumber(ARGV[10]), ARGV[11] == '1'
local thr = {[0] = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])}
local max_inflight, lease_ms, maxlen = tonumber(ARGV[15]), tonumber(ARGV[16]), ARGV[17]
local function fmt(x) return string.format('%.0f', x) end
local function fmt_tag(x) return string.format('%.17g', x) end
-- a reused batch id would merge two batches into one record
if redis.call('EXISTS', batch) == 1 then return redis.error_reply('BATCH_EXISTS ' .. batch_id) end

local count = redis.call('ZCARD', pending)
if count == 0 then
  redis.call('HSET', state, 'wake_ms', 0)
  return {0, -1}
end
local bytes = tonumber(redis.call('HGET', state, 'bytes') or '0')
-- Redis's own memory counts too: a full Redis refuses every producer, whatever our limits
local util = math.max(count / max_count, bytes / max_bytes, tonumber(ARGV[18] or '0') or 0)

-- 1. paused or at the in-flight cap: backpressure, unless the buffer is about to overflow
if not manual and util < emergency then
  local paused = tonumber(redis.call('HGET', state, 'paused_until_ms') or '0')
  if paused > now then
    redis.call('HSET', state, 'wake_ms', fmt(paused))
    return {0, paused - now}
  end
  if redis.call('ZCARD', inflight) >= max_inflight then
    redis.call('HSET', state, 'wake_ms', fmt(now + 86400000))  -- an ack wakes us
    return {0, -1}
  end
end

-- effective deadlines (DESIGN §4): thresholds shrink as the buffer fills
local f = 1
if adaptive and util > 0.5 then f = math.max(0.25, 1 - 0.75 * (util - 0.5) / (early - 0.5)) end
local eff = {[0] = math.floor(thr[0] * f), math.floor(thr[1] * f), math.floor(thr[2] * f)}
local earliest, earliest_id = nil, nil
for p = 0, 2 do
  local lo = (3 - p) * 1e13
  local first = redis.call('ZRANGE', pending, fmt(lo), fmt(lo + 1e13 - 1), 'BYSCORE', 'LIMIT', 0, 1, 'WITHSCORES')
  if #first > 0 then
    local d = tonumber(first[2]) - lo + eff[p]
    if earliest == nil or d < earliest then earliest, earliest_id = d, first[1] end
  end
end
local function key_of(e) return e and string.match(e, '^{"g":"[^"]*","k":"([^"]*)"') end

-- batch keys: the size rule holds per key; the entries without a key are one more group
local keyed = tonumber(redis.call('HGET', state, 'keyed') or '0')
local keyless, big_key, big_n = count - keyed, nil, 0
if keyed > 0 then
  local top = redis.call('ZRANGE', keysizes, -1, -1, 'WITHSCORES')
  if #top > 0 then big_key, big_n = top[1], tonumber(top[2]) end
end
local size_ready = keyless >= threshold or big_n >= threshold

-- 2. the reason, first that holds
local reason
if manual then reason = 'manual'
elseif util >= emergency then reason = 'emergency'
elseif size_ready then reason = 'size'
elseif util >= early then reason = 'pressure'
elseif earliest <= now then reason = 'deadline'
else
  redis.call('HSET', state, 'wake_ms', fmt(earliest))
  return {0, earliest - now}
end
local limit = math.min(threshold, max_batch)
if reason == 'emergency' then limit = max_batch end

-- the key this batch serves (nil: the entries without one): the earliest deadline's when a
-- deadline is due, else the larger of the biggest key and the keyless entries; while a key
-- stays the biggest its batches go out back to back
local serve = nil
if keyed > 0 then
  local last = redis.call('HGET', state, 'last_key')
  if reason == 'deadline' then
    serve = key_of(redis.call('HGET', payloads, earliest_id))
  elseif reason == 'size' and last == '' and keyless >= threshold then
    serve = nil  -- the keyless entries again, back to back
  elseif reason == 'size' and last and last ~= ''
      and tonumber(redis.call('ZSCORE', keysizes, last) or '0') >= threshold then
    serve = last  -- the same key again, back to back
  elseif big_n > keyless or (reason == 'size' and keyless < threshold) then
    serve = big_key
  end
end
local function list_of(p, g)
  if serve then return src_prefix .. 'k:' .. serve .. ':' .. p .. ':' .. g end
  return src_prefix .. p .. ':' .. g
end
local function active_of(p) return serve and (active[p] .. ':' .. serve) or active[p] end
local vt_field = serve and (':' .. serve) or ''

-- 3. contents: overdue entries by deadline then score (never held back for fairness), then
-- each class in priority order filled across its sources by weighted fair share (below)
local ids, env, scores, n, sum, full, taken = {}, {}, {}, 0, 0, false, {}
local function add(id, e, s)  -- false once the byte cap stops the batch (always one entry)
  if n > 0 and sum + #e > max_batch_bytes then full = true; return false end
  n = n + 1
  ids[n], env[n], scores[n], sum, taken[id] = id, e, s, sum + #e, true
  return true
end
local function group(e) return string.match(e, '^{"g":"([^"]*)"') or '' end
local function set_tag(p, g, tag)  -- a source whose list ran dry leaves its class's active set
  if redis.call('LLEN', list_of(p, g)) == 0 then redis.call('ZREM', active_of(p), g)
  elseif tag then redis.call('ZADD', active_of(p), fmt_tag(tag), g) end
end
local cand_from = serve and (key_prefix .. serve) or pending

local cand = {}
for p = 2, 0, -1 do
  local lo = (3 - p) * 1e13
  if now - eff[p] >= 0 then
    local r = redis.call('ZRANGE', cand_from, fmt(lo), fmt(lo + now - eff[p]), 'BYSCORE', 'LIMIT', 0, limit, 'WITHSCORES')
    for i = 1, #r, 2 do
      local s = tonumber(r[i + 1])
      cand[#cand + 1] = {r[i], r[i + 1], s - lo + eff[p], s, p}
    end
  end
end
if #cand > 0 then
  table.sort(cand, function(a, b)
    if a[3] ~= b[3] then return a[3] < b[3] end
    return a[4] < b[4]
  end)
  local m = math.min(#cand, limit)
  local cid, cat = {}, {}
  for i = 1, m do cid[i], cat[cand[i][1]] = cand[i][1], i end
  local cenv = redis.call('HMGET', payloads, unpack(cid))
  -- Per source, FIFO as a size flush keeps it: a source's overdue entries are the head of its
  -- list (enqueue.lua RPUSHes; promote and requeue LPUSH older ones back), while ZRANGE orders
  -- entries of one score (one queue_many call shares a ms) by id. So each source's slots in
  -- the deadline order above are filled from its list's head, when that head is overdue too.
  local srcs, per, slots = {}, {}, {}
  for i = 1, m do
    if serve or not key_of(cenv[i]) then  -- the keyless batch leaves keyed entries alone
      local p, g = cand[i][5], group(cenv[i])
      local l = list_of(p, g)
      local sv = per[l]
      if not sv then
        sv = {l = l, p = p, g = g, c = 0, ids = {}, top = 0, at = 0, used = 0}
        per[l], srcs[#srcs + 1] = sv, sv
      end
      sv.c = sv.c + 1
      sv.ids[sv.c] = cid[i]
      if cand[i][4] > sv.top then sv.top = cand[i][4] end
      slots[#slots + 1] = sv
    end
  end
  local xenv, xscore = {}, {}  -- head entries that were not candidates (a tie cut by limit)
  for _, sv in ipairs(srcs) do
    if sv.c > 1 then
      local head = redis.call('LRANGE', sv.l, 0, sv.c - 1)
      local ok, miss = #head == sv.c, {}
      for _, id in ipairs(head) do if not cat[id] then miss[#miss + 1] = id end end
      if ok and #miss > 0 then
        local ms = redis.call('ZMSCORE', pending, unpack(miss))
        local me = redis.call('HMGET', payloads, unpack(miss))
        for x, id in ipairs(miss) do
          local sc = tonumber(ms[x])
          if not sc or not me[x] or sc > sv.top then ok = false; break end
          xscore[id], xenv[id] = ms[x], me[x]
        end
      end
      if ok then sv.ids, sv.head = head, true end
    end
  end
  for _, sv in ipairs(slots) do
    sv.at = sv.at + 1
    local id = sv.ids[sv.at]
    local i = cat[id]
    local e, sc = xenv[id], xscore[id]
    if i then e, sc = cenv[i], cand[i][2] end
    if not add(id, e, sc) then break end
    sv.used = sv.used + 1
  end
  for _, sv in ipairs(srcs) do
    if sv.used > 0 then
      if sv.head then redis.call('LPOP', sv.l, sv.used)
      else  -- the oldest of a class: at or near the head of its source's list
        for x = 1, sv.used do redis.call('LREM', sv.l, 1, sv.ids[x]) end
      end
      set_tag(sv.p, sv.g, nil)
    end
  end
end

-- Fair share within a class (start-time fair queueing, i.e. deficit round-robin by tags):
-- each active source carries a tag; the source with the lowest tag gives its oldest entry and
-- its tag grows by 1/weight. Only the `need` lowest-tagged sources can take part, and a
-- binary heap plans the picks, so the cost per entry stays flat however many sources wait.
local function plan(p, need)
  local top = redis.call('ZRANGE', active_of(p), 0, need - 1, 'WITHSCORES')
  local k = #top / 2
  if k == 0 then return end
  local g, tag, w, len, cnt, heap = {}, {}, {}, {}, {}, {}
  for i = 1, k do g[i], tag[i] = top[2 * i - 1], tonumber(top[2 * i]) end
  local wr = redis.call('HMGET', weights, unpack(g))
  for i = 1, k do
    w[i] = tonumber(wr[i]) or 1
    len[i] = redis.call('LLEN', list_of(p, g[i]))
    cnt[i], heap[i] = 0, i
  end
  local cur = {}
  for i = 1, k do cur[i] = tag[i] end
  local function less(a, b) return cur[a] < cur[b] or (cur[a] == cur[b] and a < b) end
  local function down(h, i)
    local size = #h
    while true do
      local l, r, m = 2 * i, 2 * i + 1, i
      if l <= size and less(h[l], h[m]) then m = l end
      if r <= size and less(h[r], h[m]) then m = r end
      if m == i then return end
      h[i], h[m] = h[m], h[i]
      i = m
    end
  end
  for i = math.floor(k / 2), 1, -1 do down(heap, i) end
  local order, last_tag = {}, nil
  while #order < need and #heap > 0 do
    local i = heap[1]
    if cnt[i] < len[i] then
      cnt[i], order[#order + 1], last_tag = cnt[i] + 1, i, cur[i]
      cur[i] = cur[i] + 1 / w[i]
    else
      heap[1] = heap[#heap]; heap[#heap] = nil
    end
    if #heap > 0 then down(heap, 1) end
  end
  if #order == 0 then return end
  -- one LPOP per source; what the byte cap leaves out goes back to the head of its list
  local heads, at, oid = {}, {}, {}
  for i = 1, k do
    if cnt[i] > 0 then heads[i] = redis.call('LPOP', list_of(p, g[i]), cnt[i]) end
    at[i] = 0
  end
  for x = 1, #order do
    local i = order[x]
    at[i] = at[i] + 1
    oid[x] = heads[i][at[i]]
  end
  local oenv = redis.call('HMGET', payloads, unpack(oid))
  local osc = redis.call('ZMSCORE', pending, unpack(oid))
  local used = {}
  for i = 1, k do used[i] = 0 end
  for x = 1, #order do
    local i = order[x]
    if oenv[x] and osc[x] then
      if not add(oid[x], oenv[x], osc[x]) then break end
    end  -- an id with no payload is not pending: dropped from its list all the same
    used[i] = used[i] + 1
  end
  local tags, gone = {}, {}
  for i = 1, k do
    if cnt[i] > 0 then
      for x = cnt[i], used[i] + 1, -1 do
        redis.call('LPUSH', list_of(p, g[i]), heads[i][x])
      end
      if len[i] - used[i] <= 0 then gone[#gone + 1] = g[i]
      else tags[#tags + 1], tags[#tags + 2] = fmt_tag(tag[i] + used[i] / w[i]), g[i] end
    end
  end
  if #gone > 0 then redis.call('ZREM', active_of(p), unpack(gone)) end
  if #tags > 0 then redis.call('ZADD', active_of(p), unpack(tags)) end
  if last_tag then redis.call('HSET', state, 'vt:' .. p .. vt_field, fmt_tag(last_tag)) end
end
for p = 2, 0, -1 do
  if full or n >= limit then break end
  plan(p, limit - n)
end
-- entries in no source list (written before fair share existed): by score, as before
if not serve and not full and n < limit and n < keyless then
  local r = redis.call('ZRANGE', pending, 0, limit + n - 1, 'WITHSCORES')
  local rid, rsc = {}, {}
  for i = 1, #r, 2 do
    if not taken[r[i]] then rid[#rid + 1], rsc[#rid + 1] = r[i], r[i + 1] end
  end
  if #rid > 0 then
    local renv = redis.call('HMGET', payloads, unpack(rid))
    for i = 1, #rid do
      if not key_of(renv[i]) and (n >= limit or not add(rid[i], renv[i], rsc[i])) then break end
    end
  end
end

if n == 0 then  -- nothing to take (the key's records disagree): look again shortly
  redis.call('HSET', state, 'wake_ms', fmt(now + 1000))
  return {0, 1000}
end
if serve then
  redis.call('ZREM', key_prefix .. serve, unpack(ids))
  if tonumber(redis.call('ZINCRBY', keysizes, -n, serve)) <= 0 then
    redis.call('ZREM', keysizes, serve)
  end
  redis.call('HINCRBY', state, 'keyed', -n)
end
local prior = redis.call('HMGET', attempts, unpack(ids))

-- 4. write the batch record and pop; 'ix' lists '<score> <prior> <id>' lines so that ack
-- and fail need not read the envelopes back (ids are printable: no newline). An envelope is
-- stored as it came: prefixing it made a new kilobyte string per entry (~2.4 µs each)
local best, fields, had_prior, ix = 3, {}, false, {}
for i = 1, n do
  local score = scores[i]
  local klass = math.floor(tonumber(score) / 1e13)
  if klass < best then best = klass end
  if prior[i] then had_prior = true end
  ix[i] = score .. ' ' .. (prior[i] or '0') .. ' ' .. ids[i]
  fields[#fields + 1] = 'e:' .. ids[i]
  fields[#fields + 1] = env[i]
  if #fields >= 1000 then redis.call('HSET', batch, unpack(fields)); fields = {} end
end
if #fields > 0 then redis.call('HSET', batch, unpack(fields)) end
local priority = 3 - best
redis.call('HSET', batch, 'status', 'dispatched', 'reason', reason, 'created_ms', fmt(now),
  'priority', priority, 'attempt', 1, 'free', 0, 'n', n, 'bytes', sum, 'ix', table.concat(ix, '\n'))
if serve then redis.call('HSET', batch, 'key', serve) end
if keyed > 0 or serve then redis.call('HSET', state, 'last_key', serve or '') end
redis.call('ZREM', pending, unpack(ids))
redis.call('HDEL', payloads, unpack(ids))
if had_prior then redis.call('HDEL', attempts, unpack(ids)) end
redis.call('HINCRBY', state, 'bytes', -sum)
redis.call('ZADD', inflight, fmt(now + lease_ms), batch_id)
redis.call('HINCRBY', stats, 'flushes:' .. reason, 1)
redis.call('HINCRBY', stats, 'batches_flushed', 1)
redis.call('HINCRBY', stats, 'entries_flushed', n)
redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'type', 'flush', 'batch', batch_id,
  'reason', reason, 'n', n, 'bytes', sum, 'priority', priority, 'ms', fmt(now))
-- room for producers waiting under the 'block' overflow policy
redis.call('RPUSH', room, '1')
redis.call('LTRIM', room, -64, -1)
return {1, batch_id, reason, n, priority, 1, serve or ''}
