-- keygate fleet-wide limits: one atomic exchange between a sidecar and Redis for one subject
-- (a workspace, or an internal key with limits of its own). See src/limits/fleet/mod.rs for the
-- algorithm and the bound it gives.
--
-- KEYS[1]  string: the burst window, 41 buckets of 25 ms, packed little-endian: a double, the
--          bucket it was last brought up to, then 41 u32 counts, bucket b's in slot b % 41
--          (172 bytes)
-- KEYS[2]  string: the sustained window, 61 buckets of 1 s, likewise (252 bytes)
-- KEYS[3]  hash: leases outstanding, field = lease id, value = "<tokens>:<expiry ms>"
-- ARGV[1]  burst limit          ARGV[2] sustained limit
-- ARGV[3]  new lease id ('' when no tokens are wanted)
-- ARGV[4]  tokens needed now, by requests waiting for them: granted while there is any room
-- ARGV[5]  tokens wanted in all (at least ARGV[4]): the rest only while ARGV[6] stays free
-- ARGV[6]  room to leave free for other sidecars' waiting requests
-- ARGV[7]  the new lease's lifetime, ms
-- ARGV[8]  the longest lifetime any lease may have, ms
-- ARGV[9], ARGV[10], ARGV[11], ...  triples (lease id, tokens used, "age:count,...") of leases
--          this sidecar is done with: `count` of them last used `age` ms before the call was sent
--
-- Returns {granted, burst count, sustained count, burst retry ms, sustained retry ms,
--          burst reset ms, sustained reset ms}; counts include every lease still outstanding.

local floor = math.floor
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)
local burst_limit, sustained_limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local BG, BN = 25, 41    -- 41 buckets of 25 ms: any 1 s window lies inside the last 41
local SG, SN = 1000, 61  -- 61 buckets of 1 s: any 60 s window lies inside the last 61

-- One window: its last `nb` buckets of `g` ms, in a ring (bucket b in slot b % nb + 1), kept as
-- one packed string: a call reads it and writes it once, with no number written out as text
-- (on a small VM that conversion, not Redis, was most of a call's cost).
local function window(key, g, nb)
  local fmt = '<d' .. string.rep('I4', nb)
  local newest = floor(now / g)
  local raw = redis.pcall('GET', key)
  local counts, upto, dirty = nil, nil, raw ~= false
  if type(raw) == 'string' and #raw == 8 + 4 * nb then
    counts = {struct.unpack(fmt, raw)}
    upto = counts[1]
    table.remove(counts, 1)
    counts[nb + 1] = nil  -- struct.unpack's last value: where it stopped reading
    -- Not ours (a stray write) or a clock that went back a long way: start afresh.
    if upto ~= floor(upto) or upto > newest + 1 then
      counts = nil
    else
      dirty = false
      -- A clock one bucket back: the window still ends where it was brought up to.
      newest = math.max(newest, upto)
    end
  end
  if counts == nil then
    counts, upto = {}, newest - nb
    for i = 1, nb do counts[i] = 0 end
  end
  -- Buckets that left the window since it was last brought up to date free their slots.
  local total = 0
  if newest - upto >= nb then
    for i = 1, nb do
      dirty = dirty or counts[i] ~= 0
      counts[i] = 0
    end
  else
    for b = upto + 1, newest do
      local i = b % nb + 1
      dirty = dirty or counts[i] ~= 0
      counts[i] = 0
    end
    for i = 1, nb do total = total + counts[i] end
  end
  return {key = key, g = g, nb = nb, fmt = fmt, newest = newest, counts = counts,
          total = total, dirty = dirty}
end

local burst_w = window(KEYS[1], BG, BN)
local sustained_w = window(KEYS[2], SG, SN)

-- Admissions are charged to a bucket no earlier than they happened, so no window ever holds
-- fewer than it should: an age is measured before the call was sent, so `now - age` is after the
-- use. A bucket that has already left a window can no longer weigh on it and is not charged.
local function charge_window(w, at, n)
  local b = floor(at / w.g)
  if b > w.newest - w.nb then
    local i = b % w.nb + 1
    w.counts[i] = w.counts[i] + n
    w.total = w.total + n
    w.dirty = true
  end
end
local function charge(at, n)
  if n > 0 then
    charge_window(burst_w, at, n)
    charge_window(sustained_w, at, n)
  end
end

-- Leases returned: what was used is charged when it was used, the rest is free again. An
-- unknown id (expired and charged already, or lost with Redis's data) is ignored.
for i = 9, #ARGV, 3 do
  local lease = redis.call('HGET', KEYS[3], ARGV[i])
  if lease then
    redis.call('HDEL', KEYS[3], ARGV[i])
    local left = math.min(tonumber(ARGV[i + 1]) or 0, tonumber(string.match(lease, '^(%d+):')) or 0)
    for age, n in string.gmatch(ARGV[i + 2] or '', '(%d+):(%d+)') do
      n = math.min(tonumber(n), left)
      charge(now - math.min(tonumber(age), now), n)
      left = left - n
    end
    charge(now, left)  -- anything the runs did not place
  end
end

-- Leases past their expiry were never returned (a sidecar died or lost Redis): every token is
-- taken as used, at the expiry, the latest moment it could have been. Live ones count in full.
local outstanding = 0
local first_expiry = nil  -- when the first outstanding lease is charged or back, at the latest
local leases = redis.call('HGETALL', KEYS[3])
for i = 1, #leases, 2 do
  local n, exp = string.match(leases[i + 1], '^(%d+):(%d+)$')
  n, exp = tonumber(n), tonumber(exp)
  if n == nil or exp <= now then
    redis.call('HDEL', KEYS[3], leases[i])
    if n ~= nil then charge(exp, n) end
  else
    outstanding = outstanding + n
    if first_expiry == nil or exp < first_expiry then first_expiry = exp end
  end
end

-- When `need` more would fit under the window's limit (ms from now), and when it empties.
local function timing(w, limit, need)
  local retry, reset = 0, 0
  if w.total > 0 then
    -- It empties when its newest charged bucket leaves it.
    for b = w.newest, w.newest - w.nb + 1, -1 do
      if w.counts[b % w.nb + 1] > 0 then
        reset = (b + w.nb) * w.g - now
        break
      end
    end
  end
  local count = w.total + outstanding
  if count + need > limit then
    -- Past the buckets, only leases can make room: the first comes back by its expiry.
    retry = (first_expiry or now) - now
    for b = w.newest - w.nb + 1, w.newest do
      count = count - w.counts[b % w.nb + 1]
      if count + need <= limit then
        retry = (b + w.nb) * w.g - now
        break
      end
    end
  end
  return math.max(retry, 0), math.max(reset, 0)
end

local granted = 0
local need, want = tonumber(ARGV[4]), tonumber(ARGV[5])
if ARGV[3] ~= '' and want > 0 then
  local room = math.min(burst_limit - burst_w.total, sustained_limit - sustained_w.total) - outstanding
  granted = math.max(0, math.min(want, math.max(room - tonumber(ARGV[6]), math.min(need, room))))
  if granted > 0 then
    local exp = now + tonumber(ARGV[7])
    redis.call('HSET', KEYS[3], ARGV[3], granted .. ':' .. exp)
    outstanding = outstanding + granted
    if first_expiry == nil or exp < first_expiry then first_expiry = exp end
  end
end

local burst_retry, burst_reset = timing(burst_w, burst_limit, 1)
local sustained_retry, sustained_reset = timing(sustained_w, sustained_limit, 1)

-- Nothing outlives the longest window plus a lease. A window written with nothing in it is
-- dropped; one nothing was charged to or left since its last write is left as it is: its
-- stored end brings it up to date on the next read.
local keep = SN * SG + tonumber(ARGV[8])
for _, w in ipairs({burst_w, sustained_w}) do
  if w.total == 0 then
    if w.dirty then redis.call('DEL', w.key) end
  elseif w.dirty then
    redis.call('SET', w.key, struct.pack(w.fmt, w.newest, unpack(w.counts)), 'PX', keep)
  end
end
redis.call('PEXPIRE', KEYS[3], keep)

return {granted, burst_w.total + outstanding, sustained_w.total + outstanding,
        burst_retry, sustained_retry, burst_reset, sustained_reset}
