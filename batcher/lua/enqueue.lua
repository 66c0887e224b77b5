#!lua
--[[ enqueue.lua: accept a chunk of entries atomically (DESIGN §3 "Enqueue").

KEYS[1] pending    ZSET  id -> (3 - priority) * 1e13 + enqueued_ms
KEYS[2] seen       ZSET  id -> accepted ms (de-duplication window)
KEYS[3] state      HASH  bytes, size_threshold, wake_ms
KEYS[4] wakeup     LIST  at most one token for the coordinator
KEYS[5] stats      HASH  counters
KEYS[6] delayed    ZSET  ids backing off (their payload is still held: a re-send is a duplicate)
KEYS[7..9] active:0..2  ZSET  per priority: source group -> its fair-share tag (issue 17)
KEYS[10] the source lists' prefix: list '<prefix><priority>:<group>' holds that source's pending
         ids, oldest first (one key per source: named here, not in KEYS; same hash tag); an
         entry with a batch key K is in list '<prefix>k:<K>:<priority>:<group>' and its source
         in ZSET '<active:priority>:<K>'
KEYS[11] keys      ZSET  batch key -> entries pending with it
KEYS[12] the batch keys' prefix: ZSET '<prefix><K>' holds key K's pending ids (score as pending)

ARGV[1]  now_ms ('' = Redis TIME)
ARGV[2]  max_buffer_size          ARGV[3]  max_buffer_bytes
ARGV[4]  default size threshold   ARGV[5]  early flush pressure (0..1)
ARGV[6]  adaptive timeout (1/0)   ARGV[7..9] time thresholds ms: normal, high, urgent
ARGV[10] dedupe window ms (0 = only pending/delayed ids are duplicates)
ARGV[11] dedupe max ids (the seen set's cap)
ARGV[12] max pending entries per source group and priority (0 = no cap)
ARGV[13] the payloads HASH (id -> envelope, opaque JSON, never decoded here). Named in ARGV,
         not KEYS, on purpose: Redis's ACL checks every declared key of an EVALSHA for read
         AND write, so a producer user that may only write payloads (docs/acl/users.acl:
         %W~...:payloads, never reading other entries') could not call the script. The
         script's own HSET is checked as a write only. Same hash tag: same slot.
ARGV[14] one line per entry: id '\n' priority-digit '\n' (ids are printable: no newline)
ARGV[15..] the envelopes, in the same order (each its own argument: used as is, never copied).
         An envelope opens with '{"g":"<group>",' and, for an entry with a batch key, then
         '"k":"<key>",': read from that fixed prefix (the rest is never decoded); an envelope
         without them is in group '' with no key.

Returns {accepted_count, {duplicate ids}, {rejected ids}, woke (0/1), {ids rejected by the
source cap (also in rejected ids)}}.
Every entry is written whole or not at all: ZADD, HSET and the byte gauge move together.
Cost per chunk: three ZMSCORE look-ups and three variadic writes, whatever its size.
]]
local pending, seen, state, wakeup, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local delayed = KEYS[6]
local active = {[0] = KEYS[7], KEYS[8], KEYS[9]}
local src_prefix, keysizes, key_prefix = KEYS[10], KEYS[11], KEYS[12]
local payloads = ARGV[13]

local now
if ARGV[1] ~= '' then now = tonumber(ARGV[1]) else
  local t = redis.call('TIME'); now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local max_count, max_bytes = tonumber(ARGV[2]), tonumber(ARGV[3])
local threshold = tonumber(redis.call('HGET', state, 'size_threshold') or ARGV[4])
local early, adaptive = tonumber(ARGV[5]), ARGV[6] == '1'
local thr = {[0] = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])}
local window, max_ids = tonumber(ARGV[10]), tonumber(ARGV[11])
local per_source = tonumber(ARGV[12])

local count = redis.call('ZCARD', pending)
local bytes = tonumber(redis.call('HGET', state, 'bytes') or '0')
local count0, bytes0 = count, bytes
local key_ready = false  -- a batch key reached the size threshold in this call
local accepted, dups, rejected = 0, {}, {}
local prios = {}

-- variadic commands, at most ~1000 values per unpack()
local function each_slice(cmd, key, values)
  for i = 1, #values, 1000 do
    redis.call(cmd, key, unpack(values, i, math.min(i + 999, #values)))
  end
end
local function mscore(key, ids)
  local out = {}
  for i = 1, #ids, 1000 do
    local r = redis.call('ZMSCORE', key, unpack(ids, i, math.min(i + 999, #ids)))
    for j = 1, #r do out[i + j - 1] = r[j] end
  end
  return out
end

local ids, prio_of, n_ids = {}, {}, 0
for id, prio in string.gmatch(ARGV[14], '([^\n]+)\n(%d)\n') do
  n_ids = n_ids + 1
  ids[n_ids], prio_of[n_ids] = id, tonumber(prio)
end
if n_ids ~= #ARGV - 14 then
  return redis.error_reply('enqueue: ' .. n_ids .. ' id lines for ' .. (#ARGV - 14) .. ' envelopes')
end
if n_ids == 0 then return {0, {}, {}, 0, {}} end
local in_pending, in_delayed = mscore(pending, ids), mscore(delayed, ids)
local seen_at = {}
if window > 0 then seen_at = mscore(seen, ids) end

-- every entry of a call shares one clock: its score and seen-time strings are made once
local now_s = string.format('%.0f', now)
local score_s = {}
for p = 0, 2 do score_s[p] = string.format('%.0f', (3 - p) * 1e13 + now) end
local zadd, hset, seen_add, taken = {}, {}, {}, {}
local oldest_seen = now - window
-- per source list (suffix after the prefix): the ids to append, its length so far (source cap)
local push, push_order, held, capped, meta = {}, {}, {}, {}, {}
local kadd, korder = {}, {}  -- batch key -> {score, id, ...} for its own ZSET
local j = 0  -- zadd, hset and seen_add grow together: two slots per accepted entry
for k = 1, n_ids do
  local id, env = ids[k], ARGV[14 + k]
  local dup = in_pending[k] or in_delayed[k] or taken[id]
    or (seen_at[k] and tonumber(seen_at[k]) >= oldest_seen)
  local prio = prio_of[k]
  local ls, bkey
  if not dup then
    local g
    g, bkey = string.match(env, '^{"g":"([^"]*)","k":"([^"]*)"')
    if g then ls = 'k:' .. bkey .. ':' .. prio .. ':' .. g
    else
      g = string.match(env, '^{"g":"([^"]*)"') or ''
      ls = prio .. ':' .. g
    end
    if push[ls] == nil then
      push[ls], push_order[#push_order + 1], meta[ls] = {}, ls, {prio, g, bkey}
      held[ls] = per_source > 0 and redis.call('LLEN', src_prefix .. ls) or 0
    end
  end
  if dup then
    dups[#dups + 1] = id
  elseif count + 1 > max_count or bytes + #env > max_bytes then
    rejected[#rejected + 1] = id
  elseif per_source > 0 and held[ls] + #push[ls] >= per_source then
    rejected[#rejected + 1] = id
    capped[#capped + 1] = id
  else
    local list = push[ls]
    list[#list + 1] = id
    if bkey then
      if kadd[bkey] == nil then kadd[bkey], korder[#korder + 1] = {}, bkey end
      local ka = kadd[bkey]
      ka[#ka + 1], ka[#ka + 2] = score_s[prio], id
    end
    zadd[j + 1], zadd[j + 2] = score_s[prio], id
    hset[j + 1], hset[j + 2] = id, env
    seen_add[j + 1], seen_add[j + 2] = now_s, id
    j = j + 2
    taken[id] = true
    count, bytes, accepted = count + 1, bytes + #env, accepted + 1
    prios[prio] = true
  end
end
if accepted > 0 then
  each_slice('ZADD', pending, zadd)
  each_slice('HSET', payloads, hset)
  if window > 0 and max_ids > 0 then each_slice('ZADD', seen, seen_add) end
  -- fair share: append to each source's list; a source new to its class joins at the class's
  -- virtual time, so it neither waits behind nor jumps ahead of those already queued
  local vt = redis.call('HMGET', state, 'vt:0', 'vt:1', 'vt:2')
  local joins, jorder = {}, {}
  for _, ls in ipairs(push_order) do
    local list = push[ls]
    if #list > 0 then
      local p, g, bkey = meta[ls][1], meta[ls][2], meta[ls][3]
      each_slice('RPUSH', src_prefix .. ls, list)
      local akey = bkey and (active[p] .. ':' .. bkey) or active[p]
      if joins[akey] == nil then joins[akey], jorder[#jorder + 1] = {}, akey end
      local join = joins[akey]
      local at = vt[p + 1]
      if bkey then at = redis.call('HGET', state, 'vt:' .. p .. ':' .. bkey) end
      join[#join + 1], join[#join + 2] = at or '0', g
    end
  end
  for _, akey in ipairs(jorder) do
    local join = joins[akey]
    for i = 1, #join, 1000 do
      redis.call('ZADD', akey, 'NX', unpack(join, i, math.min(i + 999, #join)))
    end
  end
  -- batch keys: each key's own ZSET and count; a key reaching the size threshold wakes
  local keyed = 0
  for _, bkey in ipairs(korder) do
    local ka = kadd[bkey]
    each_slice('ZADD', key_prefix .. bkey, ka)
    local after = tonumber(redis.call('ZINCRBY', keysizes, #ka / 2, bkey))
    if after >= threshold and after - #ka / 2 < threshold then key_ready = true end
    keyed = keyed + #ka / 2
  end
  if keyed > 0 then redis.call('HINCRBY', state, 'keyed', keyed) end
end

if accepted > 0 then
  redis.call('HINCRBY', state, 'bytes', bytes - bytes0)
  redis.call('HINCRBY', stats, 'accepted', accepted)
  if window > 0 and max_ids > 0 then
    local over = redis.call('ZCARD', seen) - max_ids
    if over > 0 then redis.call('ZREMRANGEBYRANK', seen, 0, over - 1) end
  end
end
if #dups > 0 then redis.call('HINCRBY', stats, 'duplicates', #dups) end
if #rejected > 0 then redis.call('HINCRBY', stats, 'rejected', #rejected) end
if #capped > 0 then redis.call('HINCRBY', stats, 'rejected_source_cap', #capped) end

-- Wake the coordinator only when this call may have brought a flush forward.
local function util(c, b) return math.max(c / max_count, b / max_bytes) end
local u0, u1 = util(count0, bytes0), util(count, bytes)
local wake = false
if accepted > 0 then
  local function crossed(level) return u0 < level and u1 >= level end
  wake = (count0 < threshold and count >= threshold) or key_ready or crossed(0.5)
    or crossed(early)
  local wake_ms = tonumber(redis.call('HGET', state, 'wake_ms') or '0')
  if not wake then
    local f = 1
    if adaptive and u1 > 0.5 then f = math.max(0.25, 1 - 0.75 * (u1 - 0.5) / (early - 0.5)) end
    for p = 0, 2 do
      if prios[p] and (wake_ms <= 0 or now + thr[p] * f < wake_ms) then wake = true end
    end
    -- a fuller buffer shrinks the deadline of what is already pending
    if not wake and adaptive and u1 > 0.5 and wake_ms > 0 then
      for p = 0, 2 do
        local lo = (3 - p) * 1e13
        local first = redis.call('ZRANGE', pending, string.format('%.0f', lo),
          string.format('%.0f', lo + 1e13 - 1), 'BYSCORE', 'LIMIT', 0, 1, 'WITHSCORES')
        if #first > 0 and tonumber(first[2]) - lo + thr[p] * f < wake_ms then wake = true end
      end
    end
  end
  if wake and redis.call('LLEN', wakeup) == 0 then redis.call('RPUSH', wakeup, '1') end
end

return {accepted, dups, rejected, wake and 1 or 0, capped}
