"""The Lua scripts of the driver: each call's whole work in one atomic round trip.

Conventions shared by every script:

* ``now`` (the driver's clock, Unix seconds) always arrives as an ARGV, so
  expiry follows the injected clock and never Redis's own time;
* absolute expiry times are computed in Python and stored exactly as sent:
  Lua's ``tostring`` would round a double to 14 digits;
* a native TTL in milliseconds, computed from the caller's ``ttl``, lets Redis
  reclaim memory by itself; logical expiry never depends on it;
* every key a script touches is derived from its KEYS and shares their hash
  tag, so each script runs on one Redis Cluster slot.
"""

from __future__ import annotations

# Helpers prepended to the state scripts.
_STATE_HELPERS = """
local function kind(k)
  return redis.call('TYPE', k)['ok']
end

-- Whether the plain key or window k holds something live at now.
local function live(k, now, now_s)
  local t = kind(k)
  if t == 'hash' then
    local e = redis.call('HGET', k, 'e')
    return e ~= false and tonumber(e) > now
  elseif t == 'zset' then
    return redis.call('ZCOUNT', k, '(' .. now_s, '+inf') > 0
  end
  return false
end

-- Store a plain value, replacing a plain key or window of the same name.
local function put(k, w, value, expires, ttl_ms)
  redis.call('DEL', k, w)
  redis.call('HSET', k, 'v', value, 'e', expires)
  redis.call('PEXPIRE', k, ttl_ms)
end

-- Extend a key's native TTL to at least ttl_ms (never shorten it).
local function keep(k, ttl_ms)
  local left = redis.call('PTTL', k)
  if left < tonumber(ttl_ms) then
    redis.call('PEXPIRE', k, ttl_ms)
  end
end

-- The live entries of window z as a flat list: member, expiry, weight, ...
local function entries(z, w, now_s)
  local scored = redis.call('ZRANGEBYSCORE', z, '(' .. now_s, '+inf', 'WITHSCORES')
  local out = {}
  for i = 1, #scored, 2 do
    out[#out + 1] = scored[i]
    out[#out + 1] = scored[i + 1]
    out[#out + 1] = redis.call('HGET', w, scored[i]) or '1'
  end
  return out
end
"""

#: KEYS: state key. ARGV: now. Returns the JSON value or nil.
GET = """
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then return false end
local r = redis.call('HMGET', KEYS[1], 'v', 'e')
if not r[2] or tonumber(r[2]) <= tonumber(ARGV[1]) then return false end
return r[1]
"""

#: KEYS: state keys (one domain, so one hash tag). ARGV: now.
#: Returns one JSON value or nil per key; a window or an expired key is nil.
GET_MANY = """
local now, out = tonumber(ARGV[1]), {}
for i, k in ipairs(KEYS) do
  out[i] = false
  if redis.call('TYPE', k)['ok'] == 'hash' then
    local r = redis.call('HMGET', k, 'v', 'e')
    if r[2] and tonumber(r[2]) > now then out[i] = r[1] end
  end
end
return out
"""

#: KEYS: state key, weights key. ARGV: value, expires, ttl_ms.
SET = _STATE_HELPERS + """
put(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
return 1
"""

#: KEYS: state key, weights key[, guard key]. ARGV: now, value, expires, ttl_ms. Returns 1 if stored.
#: With a guard key (the same domain, so the same hash tag), stores only while
#: it is a live plain key: absent, expired, deleted or a window, nothing is stored.
ADD = _STATE_HELPERS + """
local now = tonumber(ARGV[1])
local g = KEYS[3]
if g then
  if kind(g) ~= 'hash' then return 0 end
  local e = redis.call('HGET', g, 'e')
  if not e or tonumber(e) <= now then return 0 end
end
if live(KEYS[1], now, ARGV[1]) then return 0 end
put(KEYS[1], KEYS[2], ARGV[2], ARGV[3], ARGV[4])
return 1
"""

#: KEYS: state key. ARGV: now, value, expires, ttl_ms. Returns 1 if stored.
#: Only a live plain key is replaced: an absent, expired or deleted key stays
#: absent (a replace never revives it), and a window is left alone.
REPLACE = """
local k = KEYS[1]
if redis.call('TYPE', k)['ok'] ~= 'hash' then return 0 end
local e = redis.call('HGET', k, 'e')
if not e or tonumber(e) <= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', k, 'v', ARGV[2], 'e', ARGV[3])
redis.call('PEXPIRE', k, ARGV[4])
return 1
"""

#: KEYS: state key, weights key. ARGV: now. Returns 1 if something live went.
DELETE = _STATE_HELPERS + """
local was = live(KEYS[1], tonumber(ARGV[1]), ARGV[1])
redis.call('DEL', KEYS[1], KEYS[2])
if was then return 1 end
return 0
"""

#: KEYS: state key, weights key. ARGV: now, amount, expires, ttl_ms. Returns the new count.
#: A live integer keeps its expiry (a fixed window); anything else restarts at amount.
INCR = _STATE_HELPERS + """
local k = KEYS[1]
if kind(k) == 'hash' then
  local r = redis.call('HMGET', k, 'v', 'e')
  if r[2] and tonumber(r[2]) > tonumber(ARGV[1]) and r[1] and string.match(r[1], '^%-?%d+$') then
    return redis.call('HINCRBY', k, 'v', ARGV[2])
  end
end
put(k, KEYS[2], ARGV[2], ARGV[3], ARGV[4])
return tonumber(ARGV[2])
"""

#: KEYS: window key, weights key. ARGV: now, member, weight, expires, ttl_ms.
#: Drops expired members, adds or replaces one, returns the live entries.
WINDOW_ADD = _STATE_HELPERS + """
local z, w, now_s = KEYS[1], KEYS[2], ARGV[1]
if kind(z) ~= 'zset' then
  redis.call('DEL', z, w)
end
local gone = redis.call('ZRANGEBYSCORE', z, '-inf', now_s)
if #gone > 0 then
  for _, member in ipairs(gone) do redis.call('HDEL', w, member) end
  redis.call('ZREMRANGEBYSCORE', z, '-inf', now_s)
end
redis.call('ZADD', z, ARGV[4], ARGV[2])
redis.call('HSET', w, ARGV[2], ARGV[3])
keep(z, ARGV[5])
keep(w, ARGV[5])
return entries(z, w, now_s)
"""

#: KEYS: window key, weights key. ARGV: now. Returns the live entries.
WINDOW_ENTRIES = _STATE_HELPERS + """
if kind(KEYS[1]) ~= 'zset' then return {} end
return entries(KEYS[1], KEYS[2], ARGV[1])
"""

#: KEYS: window key, weights key. ARGV: now, member. Returns 1 if the member was live.
WINDOW_DISCARD = _STATE_HELPERS + """
if kind(KEYS[1]) ~= 'zset' then return 0 end
local score = redis.call('ZSCORE', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[2])
if score and tonumber(score) > tonumber(ARGV[1]) then return 1 end
return 0
"""

#: KEYS: the model's order key. ARGV: record key prefix, the id the page starts after ('' for none),
#: the most records to read ('0' for no limit), then index set keys.
#: Returns a flat list: id, version, JSON data, ... in creation order; 0 when the id to start after is no record.
SELECT = """
local order, prefix, after, limit = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
local start
if after ~= '' then
  start = redis.call('ZSCORE', order, after)
  if not start then return 0 end
  start = tonumber(start)
end
local ids
if #ARGV > 3 then
  local sets = {}
  for i = 4, #ARGV do sets[#sets + 1] = ARGV[i] end
  -- Index sets are intersected; records are never scanned.
  local found = redis.call('SINTER', unpack(sets))
  local scored = {}
  for _, id in ipairs(found) do
    local seq = redis.call('ZSCORE', order, id)
    if seq then
      seq = tonumber(seq)
      if not start or seq > start then scored[#scored + 1] = {id, seq} end
    end
  end
  table.sort(scored, function(a, b) return a[2] < b[2] end)
  ids = {}
  for i, pair in ipairs(scored) do
    if limit > 0 and i > limit then break end
    ids[i] = pair[1]
  end
elseif start then
  -- One page: a range of the creation order past the record it starts after.
  ids = redis.call('ZRANGEBYSCORE', order, '(' .. start, '+inf', 'LIMIT', 0, limit > 0 and limit or -1)
else
  ids = redis.call('ZRANGE', order, 0, limit > 0 and limit - 1 or -1)
end
local out = {}
for _, id in ipairs(ids) do
  local r = redis.call('HMGET', prefix .. id, 'v', 'd')
  if r[1] then
    out[#out + 1] = id
    out[#out + 1] = r[1]
    out[#out + 1] = r[2]
  end
end
return out
"""

#: Fields of one change in the COMMIT ARGV.
CHANGE_FIELDS = 8

#: KEYS: the domain's sequence key. ARGV: the domain's key prefix, the number of
#: changes, then per change: op, record key, order key, id, expected version,
#: new version, JSON data, JSON list of index keys (relative to the prefix);
#: then, when some change keeps history, the number of history entries and per
#: entry: the history list's key, how many entries it keeps, the JSON entry;
#: then, when some delete keeps history (a removal), the number of models
#: removed from and per model: its removals key, its history key prefix, its
#: bound (keep_removed), the most removed histories to drop, the number of
#: removals and their ids, in the order of the changes.
#: Checks every version first and writes only if all hold; returns 0, or the
#: 1-based position of the first change that conflicts (nothing written).
#: The removals of a model are numbered after the highest number its removals
#: key holds (a record removed again takes its new number); the histories of
#: the lowest numbers the bound leaves out are dropped up to their last
#: deletion entry (the only entries ending in ``"data":null}``: every other
#: entry's data is an object), the whole list unless the id was inserted again.
COMMIT = """
local P, n, F = ARGV[1], tonumber(ARGV[2]), @FIELDS@
for i = 0, n - 1 do
  local b = 3 + i * F
  local op, rkey, vsn = ARGV[b], ARGV[b + 1], ARGV[b + 4]
  local current = redis.call('HGET', rkey, 'v')
  if op == 'insert' then
    if current then return i + 1 end
  elseif current ~= vsn then
    return i + 1
  end
end
for i = 0, n - 1 do
  local b = 3 + i * F
  local op, rkey, okey, id = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local old = redis.call('HGET', rkey, 'x')
  if old then
    for _, ikey in ipairs(cjson.decode(old)) do redis.call('SREM', P .. ikey, id) end
  end
  if op == 'delete' then
    redis.call('DEL', rkey)
    redis.call('ZREM', okey, id)
  else
    -- A record keeps its place in creation order for life.
    if not redis.call('ZSCORE', okey, id) then
      redis.call('ZADD', okey, redis.call('INCR', KEYS[1]), id)
    end
    redis.call('HSET', rkey, 'v', ARGV[b + 5], 'd', ARGV[b + 6], 'x', ARGV[b + 7])
    for _, ikey in ipairs(cjson.decode(ARGV[b + 7])) do redis.call('SADD', P .. ikey, id) end
  end
end
local h = 3 + n * F
local kept = tonumber(ARGV[h]) or 0
for j = 0, kept - 1 do
  local e = h + 1 + j * 3
  redis.call('RPUSH', ARGV[e], ARGV[e + 2])
  redis.call('LTRIM', ARGV[e], -tonumber(ARGV[e + 1]), -1)
end
local r = h + 1 + kept * 3
local models = tonumber(ARGV[r]) or 0
r = r + 1
for _ = 1, models do
  local zkey, prefix, bound, most, count = ARGV[r], ARGV[r + 1], tonumber(ARGV[r + 2]), ARGV[r + 3], tonumber(ARGV[r + 4])
  local top = redis.call('ZRANGE', zkey, -1, -1, 'WITHSCORES')
  local last = tonumber(top[2]) or 0
  for i = 1, count do
    last = last + 1
    redis.call('ZADD', zkey, last, ARGV[r + 4 + i])
  end
  local gone = redis.call('ZRANGEBYSCORE', zkey, '-inf', last - bound, 'LIMIT', 0, most)
  for _, id in ipairs(gone) do
    local hkey = prefix .. id
    local entries = redis.call('LRANGE', hkey, 0, -1)
    local cut = 0
    for i = #entries, 1, -1 do
      if string.sub(entries[i], -13) == ',"data":null}' then
        cut = i
        break
      end
    end
    if cut == #entries then
      redis.call('DEL', hkey)
    elseif cut > 0 then
      redis.call('LTRIM', hkey, cut, -1)
    end
    redis.call('ZREM', zkey, id)
  end
  r = r + 5 + count
end
return 0
""".replace("@FIELDS@", str(CHANGE_FIELDS))
