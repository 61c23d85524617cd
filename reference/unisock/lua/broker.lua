-- The Redis broker's server side: every operation that must be atomic is one call of this
-- script (EVALSHA), so a publish is one round trip (UNI-PUB: an ack means sequenced and stored).
--
-- ARGV[1] names the operation, ARGV[2] is the clock (ms, or -1 for Redis TIME), ARGV[3] a fresh
-- random generation candidate from the caller. KEYS[1] is always the generation hash.
--
-- Layout (P = key prefix, C = channel id, see redis_keys.py):
--   P gen          hash  g = generation, r = Redis run_id it was made on, d = how many sweeps
--                  discarded idle channels in it (a channel created after the d-th has epoch g.d)
--   P seq          counter of fan-out entries
--   P fan          stream every node tails: events and supersede notices, in sequencing order
--   P c:C:m        hash  e = epoch, g = generation, n = head offset, t = last ts (or when the
--                  state was created), y = ts of the last evicted event, r = last ts of a
--                  discarded earlier state of C
--   P c:C:h        stream of retained events, ID = <ts>-<offset>, field r = the record
--   P c:C:d:<id>   dedup record "<epoch> <offset> <ts> <expires>"; on $sys channels the key is
--                  P c:C:d:<tenant>/<id>, one record per publisher tenant (UNI-SEC-19)
--   P s:<scope>    zset of channel ids by last ts (channels with retained history per scope)
--   P x:<scope>    zset of channel ids by the last ts of their discarded state (tombstones)
--   P idle         zset of channel ids by last activity (event, creation, subscription)
--   P u:<t>:<sub>  list of "<connection>\t<node>\t<stamp>\t<sid>" in authentication order
--                  (UNI-SESS); stamp = when the connection authenticated, Redis time in us
--   P node:<id>    liveness of a node; its connections stop counting when it expires

local op = ARGV[1]

local function redis_time()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function clock()
  local n = tonumber(ARGV[2])
  if n >= 0 then return n end
  return redis_time()
end

local function int(n)
  return string.format('%d', n)
end

-- The generation names one unbroken history of this Redis. A Redis that restarted (or failed
-- over to a replica) may have come back with less than it acknowledged, so a new run_id starts
-- a new generation: offsets are never reused under an epoch clients already hold (UNI-DEL-8).
local function generation()
  local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
  local cur = redis.call('HMGET', KEYS[1], 'g', 'r')
  if cur[1] and cur[2] == run then return cur[1] end
  redis.call('HSET', KEYS[1], 'g', ARGV[3], 'r', run)
  redis.call('HDEL', KEYS[1], 'd')
  return ARGV[3]
end

-- The channel's state in this generation: epoch, head, last ts, replaced ts; nil if none.
local function state(meta, hist, gen)
  local m = redis.call('HMGET', meta, 'e', 'n', 't', 'g', 'r')
  if m[1] and (m[4] or m[1]) == gen then
    return m[1], tonumber(m[2]), tonumber(m[3]), tonumber(m[5])
  end
  if m[1] then
    redis.call('DEL', meta, hist)  -- state of an older generation: gone for good
  end
  return nil, 0, 0, nil
end

-- The epoch a channel created now gets: one no channel discarded before it ever had.
local function fresh(gen)
  local d = redis.call('HGET', KEYS[1], 'd')
  if d then return gen .. '.' .. d end
  return gen
end

-- Hold a channel's state (UNI-SEC-14): asking for it makes it, so that the epoch a subscriber
-- is told is the one the first event carries. A tombstone makes it remember the loss.
local function channel(meta, hist, gen, now, cid, idle, tombs)
  local epoch, head, last, replaced = state(meta, hist, gen)
  if epoch then
    redis.call('ZADD', idle, 'GT', int(now), cid)
    return epoch, head, last, replaced
  end
  epoch = fresh(gen)
  replaced = redis.call('ZSCORE', tombs, cid)
  redis.call('HSET', meta, 'e', epoch, 'g', gen, 'n', 0, 't', int(now))
  if replaced then
    replaced = tonumber(replaced)
    redis.call('HSET', meta, 'r', int(replaced))
  end
  redis.call('ZADD', idle, int(now), cid)
  return epoch, 0, now, replaced
end

local function split_id(id)
  local ts, offset = string.match(id, '^(%d+)%-(%d+)$')
  return tonumber(ts), tonumber(offset)
end

-- Trim by count and by age (UNI-DEL-22 keeps at least these), remembering the ts of the newest
-- evicted event so that "since" replay can tell whether it lost something.
local function evict(meta, hist, now, max_count, max_age)
  local last = nil
  local len = redis.call('XLEN', hist)
  if len > max_count then
    local old = redis.call('XRANGE', hist, '-', '+', 'COUNT', len - max_count)
    last = old[#old][1]
    redis.call('XTRIM', hist, 'MAXLEN', max_count)
  end
  local cutoff = now - max_age + 1  -- keep ts > now - max_age
  if cutoff > 0 then
    local aged = redis.call('XREVRANGE', hist, '(' .. int(cutoff) .. '-0', '-', 'COUNT', 1)
    if aged[1] then
      last = aged[1][1]
      redis.call('XTRIM', hist, 'MINID', int(cutoff) .. '-0')
    end
  end
  if last then
    local ts = split_id(last)
    redis.call('HSET', meta, 'y', int(ts))
  end
end

-- The offset of the oldest retained event minus one: replay from below it would skip events.
local function evicted_offset(hist, head)
  local first = redis.call('XRANGE', hist, '-', '+', 'COUNT', 1)
  if first[1] then
    local _, offset = split_id(first[1][1])
    return offset - 1
  end
  return head
end

local function dedup_hit(dedup, current, now)
  local d = redis.call('GET', dedup)
  if not d then return nil end
  local epoch, offset, ts, expires = string.match(d, '^(%S+) (%d+) (%d+) (%d+)$')
  if epoch ~= current or now >= tonumber(expires) then return nil end
  return {epoch, offset, ts}
end

local function original(hist, hit)
  local id = hit[3] .. '-' .. hit[2]
  local got = redis.call('XRANGE', hist, id, id)
  if got[1] then return got[1][2][2] end
  return false  -- trimmed: the caller answers with the retry's record and the original position
end

if op == 'publish' then
  -- KEYS: gen meta hist dedup seq fan scope idle tombs
  -- ARGV: op now cand record max_count max_age dedup_ms fan_max cid hist_ttl_ms deadline
  -- Past the deadline (Redis time) the node has answered `unavailable` already, or will
  -- before it could read an ack: a late publish must take no effect (UNI-ERR-6).
  if redis_time() > tonumber(ARGV[11]) then return redis.error_reply('UNISOCK expired') end
  local now = clock()
  local gen = generation()
  local meta, hist, dedup = KEYS[2], KEYS[3], KEYS[4]
  local epoch, head, last_ts = channel(meta, hist, gen, now, ARGV[9], KEYS[8], KEYS[9])
  local hit = dedup_hit(dedup, epoch, now)
  if hit then
    return {1, hit[1], tonumber(hit[2]), tonumber(hit[3]), original(hist, hit)}
  end
  local max_count, max_age = tonumber(ARGV[5]), tonumber(ARGV[6])
  local offset = head + 1
  local ts = math.max(now, last_ts)  -- never backwards on a channel
  redis.call('XADD', hist, int(ts) .. '-' .. int(offset), 'r', ARGV[4])
  redis.call('HSET', meta, 'n', int(offset), 't', int(ts))
  evict(meta, hist, now, max_count, max_age)
  local hist_ttl = tonumber(ARGV[10])
  redis.call('PEXPIRE', hist, hist_ttl)
  local dedup_ms = tonumber(ARGV[7])
  if dedup_ms > 0 then
    local value = epoch .. ' ' .. int(offset) .. ' ' .. int(ts) .. ' ' .. int(now + dedup_ms)
    redis.call('SET', dedup, value, 'PX', dedup_ms + 60000)
  end
  redis.call('ZADD', KEYS[7], int(ts), ARGV[9])
  redis.call('PEXPIRE', KEYS[7], hist_ttl)
  redis.call('ZADD', KEYS[8], int(ts), ARGV[9])
  local q = redis.call('INCR', KEYS[5])
  local pos = int(q) .. ' ' .. gen .. ' ' .. int(offset) .. ' ' .. int(ts) .. ' ' .. epoch
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[8], '*', 'p', pos, 'k', ARGV[9], 'r', ARGV[4])
  return {0, epoch, offset, ts}
end

if op == 'find' then
  -- KEYS: gen meta hist dedup
  local gen = generation()
  local epoch = state(KEYS[2], KEYS[3], gen)
  if not epoch then return false end
  local hit = dedup_hit(KEYS[4], epoch, clock())
  if not hit then return false end
  return {1, hit[1], tonumber(hit[2]), tonumber(hit[3]), original(KEYS[3], hit)}
end

if op == 'head' then
  -- KEYS: gen meta hist idle tombs; ARGV: op now cand cid
  local gen = generation()
  local epoch, head = channel(KEYS[2], KEYS[3], gen, clock(), ARGV[4], KEYS[4], KEYS[5])
  return {epoch, head}
end

if op == 'replay' then
  -- KEYS: gen meta hist idle tombs; ARGV: op now cand epoch offset max_count max_age cid
  local now = clock()
  local gen = generation()
  local meta, hist = KEYS[2], KEYS[3]
  local epoch, head = channel(meta, hist, gen, now, ARGV[8], KEYS[4], KEYS[5])
  local after = tonumber(ARGV[5])
  if ARGV[4] ~= epoch then return {epoch, head, 'epoch_changed'} end
  if after > head or after < 0 then return {epoch, head, 'position_invalid'} end
  if after == head then return {epoch, head, false, {}} end
  evict(meta, hist, now, tonumber(ARGV[6]), tonumber(ARGV[7]))
  if after < evicted_offset(hist, head) then return {epoch, head, 'window_exceeded'} end
  return {epoch, head, false, redis.call('XREVRANGE', hist, '+', '-', 'COUNT', head - after)}
end

if op == 'since' then
  -- KEYS: gen meta hist idle tombs; ARGV: op now cand since max_count max_age cid
  local now = clock()
  local gen = generation()
  local meta, hist = KEYS[2], KEYS[3]
  local since = tonumber(ARGV[4])
  local epoch, head, _, replaced = state(meta, hist, gen)
  if not epoch then
    if not redis.call('ZSCORE', KEYS[5], ARGV[7]) then return {fresh(gen), 0, false, {}} end
    -- Its state was discarded: hold a new one, as head does, to report the loss.
    epoch, head, _, replaced = channel(meta, hist, gen, now, ARGV[7], KEYS[4], KEYS[5])
  end
  if replaced and replaced >= since then return {epoch, head, 'epoch_changed'} end
  if head == 0 then return {epoch, 0, false, {}} end
  evict(meta, hist, now, tonumber(ARGV[5]), tonumber(ARGV[6]))
  if evicted_offset(hist, head) > 0 then
    -- Something was evicted; with nothing retained the newest evicted event is the head.
    local evicted_ts = tonumber(redis.call('HGET', meta, 'y'))
    if redis.call('EXISTS', hist) == 0 then evicted_ts = tonumber(redis.call('HGET', meta, 't')) end
    if evicted_ts and evicted_ts >= since then return {epoch, head, 'window_exceeded'} end
  end
  return {epoch, head, false, redis.call('XRANGE', hist, int(since) .. '-0', '+')}
end

if op == 'channels' then
  -- KEYS: gen scope tombs; ARGV: op now cand max_age max_count prefix
  local now = clock()
  local gen = generation()
  local found, seen = {}, {}
  -- Channels whose state was discarded still owe a resume by time their gap (UNI-DEL-35).
  for _, cid in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    seen[cid] = true
    table.insert(found, cid)
  end
  if tonumber(ARGV[5]) == 0 then return found end
  local cutoff = now - tonumber(ARGV[4])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cutoff)
  for _, cid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. int(cutoff), '+inf')) do
    local m = redis.call('HMGET', ARGV[6] .. 'c:' .. cid .. ':m', 'e', 'g')
    if not seen[cid] and m[1] and (m[2] or m[1]) == gen then
      table.insert(found, cid)
    end
  end
  return found
end

if op == 'idle' then
  -- KEYS: gen idle; ARGV: op now cand max_age limit
  -- Channels without activity for longer than the history's age: candidates for discarding.
  local cutoff = clock() - tonumber(ARGV[4])
  return redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. int(cutoff), 'LIMIT', 0, ARGV[5])
end

if op == 'discard' then
  -- KEYS: gen idle; ARGV: op now cand max_age grace prefix touched cid...
  -- The first `touched` channels have a subscription on the calling node: they count as active
  -- now. The others go if idle for longer than the age and the grace, in which every node had
  -- its turn to mark those its subscriptions match (UNI-SEC-14).
  local now = clock()
  local gen = generation()
  local prefix, touched = ARGV[6], tonumber(ARGV[7])
  local cutoff = now - tonumber(ARGV[4]) - tonumber(ARGV[5])
  local count = 0
  for i = 8, #ARGV do
    local cid = ARGV[i]
    if i < 8 + touched then
      redis.call('ZADD', KEYS[2], 'XX', 'GT', int(now), cid)
    else
      local score = tonumber(redis.call('ZSCORE', KEYS[2], cid))
      if score and score < cutoff then
        local meta, hist = prefix .. 'c:' .. cid .. ':m', prefix .. 'c:' .. cid .. ':h'
        local m = redis.call('HMGET', meta, 'e', 'n', 't', 'g', 'r')
        redis.call('ZREM', KEYS[2], cid)
        if m[1] and (m[4] or m[1]) == gen then
          local scope = string.match(cid, '^(.*)/[^/]*$')
          local last = m[5]
          if tonumber(m[2]) > 0 then last = m[3] end
          if last then redis.call('ZADD', prefix .. 'x:' .. scope, last, cid) end
          redis.call('ZREM', prefix .. 's:' .. scope, cid)
          count = count + 1
        end
        redis.call('DEL', meta, hist)
      end
    end
  end
  if count > 0 then redis.call('HINCRBY', KEYS[1], 'd', 1) end
  return count
end

if op == 'register' then
  -- KEYS: gen user seq fan
  -- ARGV: op now cand connection node sid max node_prefix ttl fan_max node_ttl stamp
  -- sid is '' without one, else '=' .. sid, so that no sid ever equals the empty one. stamp is
  -- when the connection authenticated (Redis time in us, as the node estimates it; -1: now):
  -- the list is in stamp order, the newer connection of a session wins and the cap closes
  -- the oldest, whatever order registrations arrive in (a restore, or a registration that
  -- failed then, comes late). A restore (Redis lost the list) is a registration like any
  -- other: whatever order the nodes restore in, the cap keeps the newest connections.
  local gen = generation()
  local user, connection, me, sid = KEYS[2], ARGV[4], ARGV[5], ARGV[6]
  local t = redis.call('TIME')
  local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local stamp = tonumber(ARGV[12])
  if stamp < 0 or stamp > now_us then stamp = now_us end  -- a node's estimate is no later
  -- A node that registers is alive, at once: Redis may have lost its key (restarted, flushed)
  -- and another node must not take this connection for a dead node's. Had the key gone, the
  -- caller registers its other connections again.
  local lapsed = redis.call('SET', ARGV[8] .. me, '1', 'PX', ARGV[11], 'GET') == false
  local alive = {[me] = true}
  local keep, superseded, lost = {}, {}, false
  for _, entry in ipairs(redis.call('LRANGE', user, 0, -1)) do
    local cid, node, estamp, esid = string.match(entry, '^([^\t]*)\t([^\t]*)\t(%d+)\t(.*)$')
    if cid and alive[node] == nil then
      alive[node] = redis.call('EXISTS', ARGV[8] .. node) == 1
    end
    if not cid or cid == connection or not alive[node] then
      -- the same registration again, or a connection of a node that died: forget it
    elseif sid ~= '' and esid == sid then
      if tonumber(estamp) > stamp then
        -- A newer connection took the session while this node was cut off: it keeps it.
        lost = true
        table.insert(keep, entry)
      else
        table.insert(superseded, cid)  -- UNI-SESS-6: the newer connection wins
      end
    else
      table.insert(keep, entry)
    end
  end
  if lost then table.insert(superseded, connection) end
  if not lost then
    -- in authentication order: a late registration goes before the newer ones
    local mine = connection .. '\t' .. me .. '\t' .. int(stamp) .. '\t' .. sid
    local at = #keep + 1
    for i, entry in ipairs(keep) do
      if tonumber(string.match(entry, '^[^\t]*\t[^\t]*\t(%d+)')) > stamp then
        at = i
        break
      end
    end
    table.insert(keep, at, mine)
    -- UNI-SESS-11: the oldest go, after the session rule (UNI-SESS-13)
    local overflow = #keep - math.max(tonumber(ARGV[7]), 1)
    if overflow > 0 then
      local rest = {}
      for i, entry in ipairs(keep) do
        if i <= overflow then
          table.insert(superseded, string.match(entry, '^([^\t]*)'))
        else
          table.insert(rest, entry)
        end
      end
      keep = rest
    end
  end
  redis.call('DEL', user)
  if #keep > 0 then
    redis.call('RPUSH', user, unpack(keep))
    redis.call('PEXPIRE', user, tonumber(ARGV[9]))
  end
  if #superseded > 0 then
    local q = redis.call('INCR', KEYS[3])
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[10], '*',
      'p', int(q) .. ' ' .. gen, 's', table.concat(superseded, ' '))
  end
  local reply = {lapsed and 1 or 0, int(stamp)}
  for _, cid in ipairs(superseded) do table.insert(reply, cid) end
  return reply
end

if op == 'reset' then
  -- Discard every channel's history and offsets: a new generation (UNI-DEL-8).
  local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
  redis.call('HSET', KEYS[1], 'g', ARGV[3], 'r', run)
  redis.call('HDEL', KEYS[1], 'd')
  return ARGV[3]
end

return redis.error_reply('unknown operation ' .. tostring(op))
