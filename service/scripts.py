"""Lua scripts: every multi-key state change of a job is one atomic script.

Shared by the API's async store and the worker's sync store so both sides enforce the same
invariants (see ``store.JobStore``'s docstring).
"""

from __future__ import annotations

TERMINAL = "st == 'succeeded' or st == 'failed' or st == 'cancelled'"

# KEYS: idem (or a dummy), job, events, tenant_jobs, seq, tenant_active, outbox, active
# ARGV: job_id, body_hash ('' = no idempotency key), idem_ttl, first event json, max jobs in flight (0 = no
#       limit), job-key prefix, outbox member, outbox score, field/value pairs...
# Returns '' created, 'job_id|hash' of an earlier job with this Idempotency-Key, or '!quota:<n>' (n in flight).
# The quota scan prunes terminal jobs from the tenant's active set (reads job hashes outside KEYS: one Redis,
# not a cluster).
CREATE = f"""
if redis.call('EXISTS', KEYS[2]) == 1 then return '' end  -- a retry after a lost reply: already created
if ARGV[2] ~= '' then
  local existing = redis.call('GET', KEYS[1])
  if existing then return existing end
end
local limit = tonumber(ARGV[5])
if limit > 0 then
  local n = 0
  for _, jid in ipairs(redis.call('SMEMBERS', KEYS[6])) do
    local st = redis.call('HGET', ARGV[6] .. jid, 'status')
    if (not st) or {TERMINAL} then redis.call('SREM', KEYS[6], jid) else n = n + 1 end
  end
  if n >= limit then return '!quota:' .. n end
  redis.call('SADD', KEYS[6], ARGV[1])
end
if ARGV[2] ~= '' then redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2], 'EX', ARGV[3]) end
local seq = redis.call('INCR', KEYS[5])
redis.call('HSET', KEYS[2], 'seq', seq, unpack(ARGV, 9))
redis.call('XADD', KEYS[3], '*', 't', 'status', 'e', ARGV[4])
redis.call('ZADD', KEYS[4], seq, ARGV[1])
redis.call('ZADD', KEYS[7], ARGV[8], ARGV[7])
redis.call('SADD', KEYS[8], ARGV[1])
return ''
"""

# KEYS: job, events   ARGV: cancelled-event json, error json, now
# Returns -1 no job, 0 already terminal, 1 flag set (running: the worker stops it), 2 cancelled now.
CANCEL = f"""
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
if {TERMINAL} then return 0 end
redis.call('HSET', KEYS[1], 'cancel_requested', '1', 'updated_at', ARGV[3])
if st == 'running' then return 1 end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'error', ARGV[2], 'pending_query', '')
redis.call('XADD', KEYS[2], '*', 't', 'error', 'e', ARGV[1])
return 2
"""

# KEYS: job, queries, answers, events, outbox
# ARGV: qid, answer json, new ticket, now, queued-event json, outbox member, outbox score
# Returns -1 unknown query, -2 already answered, -3 not the pending query (stale), 1 accepted.
ANSWER = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return -1 end
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return -2 end
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'waiting' or redis.call('HGET', KEYS[1], 'pending_query') ~= ARGV[1] then return -3 end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[1], 'status', 'queued', 'ticket', ARGV[3], 'pending_query', '', 'updated_at', ARGV[4])
redis.call('XADD', KEYS[4], '*', 't', 'status', 'e', ARGV[5])
redis.call('ZADD', KEYS[5], ARGV[7], ARGV[6])
return 1
"""

# KEYS: fence, lease, job, events, outbox, open
# ARGV: ticket, lease ttl, now, running-event json, max consecutive crashes, job id
# Returns {token, previous status} on success, or {code, info}: -1 no job, -2 terminal, -3 stale ticket (or a
# waiting job: only an answer, with a new ticket, resumes it), -4 lease held by a live segment (info = its ttl),
# -5 cancel requested (info = token to finish with), -6 the job's segments died max-crashes times in a row (info =
# "token|crashes"; the task fails the job). A segment that acquired and never released (``open`` still set)
# crashed, stalled past its lease or was fenced out: each such one counts towards -6 until a release resets it.
ACQUIRE = f"""
local st = redis.call('HGET', KEYS[3], 'status')
if not st then return {{-1, ''}} end
if {TERMINAL} then return {{-2, st}} end
if redis.call('HGET', KEYS[3], 'ticket') ~= ARGV[1] or st == 'waiting' then return {{-3, st}} end
local pttl = redis.call('PTTL', KEYS[2])
if pttl > 0 then return {{-4, tostring(math.ceil(pttl / 1000))}} end
redis.call('ZREM', KEYS[5], ARGV[6] .. '|' .. ARGV[1])
local token = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], token, 'EX', ARGV[2])
local crashes = 0
local open = redis.call('HGET', KEYS[3], 'open')
if open and open ~= '' then crashes = redis.call('HINCRBY', KEYS[3], 'crashes', 1) end
redis.call('HSET', KEYS[3], 'open', token)
redis.call('SADD', KEYS[6], ARGV[6])
if redis.call('HGET', KEYS[3], 'cancel_requested') == '1' then return {{-5, tostring(token)}} end
if crashes >= tonumber(ARGV[5]) then return {{-6, token .. '|' .. crashes}} end
if st ~= 'running' then
  redis.call('HSET', KEYS[3], 'status', 'running', 'updated_at', ARGV[3])
  redis.call('XADD', KEYS[4], '*', 't', 'status', 'e', ARGV[4])
end
redis.call('HINCRBY', KEYS[3], 'segments', 1)
return {{token, st}}
"""

# KEYS: fence, lease, job, events, ckpt, queries, outbox, open
# ARGV: token, op json {hset:{...}, queries:{...}, release:bool, lease_ttl, maxlen, cid, job, outbox, due},
#       ckpt bytes ('' = keep), then (type, event json) pairs
# Returns -1 fenced out (a newer segment owns the job), -2 job already terminal, 1 cancel requested, 0 ok.
# A pair typed PROGRESS_RUN carries the progress events of consecutive steps, one JSON per line (compact JSON
# holds no newline), the first one's step in ``steps``: each line is appended as a ``progress``.
# ``steps`` (optional) gives each event's step (0: not a progress event): a step at or below the job's
# ``published_step`` is not appended again, and ``progress`` never moves back, whatever a segment believes
# (defence in depth behind the replay logic; each drop is counted in ``republished_dropped``). ``cid`` makes a retried commit (reply lost when Redis restarted) a no-op; ``outbox`` (a "job|ticket"
# member, due at ``due``) records a segment to be sent, so the reaper sends it if this worker dies first;
# a release clears ``open`` and the crash count.
PROGRESS_RUN = "progress-run"
COMMIT = f"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local op = cjson.decode(ARGV[2])
if op.cid ~= '' and redis.call('HGET', KEYS[3], 'last_commit') == op.cid then return 0 end
local st = redis.call('HGET', KEYS[3], 'status')
if {TERMINAL} then redis.call('DEL', KEYS[2]) return -2 end
local published = tonumber(redis.call('HGET', KEYS[3], 'published_step'))
if not published then
  local p = redis.call('HGET', KEYS[3], 'progress')
  published = (p and tonumber(cjson.decode(p).step)) or 0
end
local steps, dropped, j = op.steps or {{}}, 0, 0
for i = 4, #ARGV, 2 do
  j = j + 1
  local s = tonumber(steps[j]) or 0
  if ARGV[i] == '{PROGRESS_RUN}' then
    local run, pos = ARGV[i + 1], 1
    while pos <= #run do
      local stop = string.find(run, '\\n', pos, true) or (#run + 1)
      if s <= published then
        dropped = dropped + 1
      else
        redis.call('XADD', KEYS[4], 'MAXLEN', '~', op.maxlen, '*', 't', 'progress', 'e', string.sub(run, pos, stop - 1))
        published = s
      end
      s, pos = s + 1, stop + 1
    end
  elseif s > 0 and s <= published then
    dropped = dropped + 1
  else
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', op.maxlen, '*', 't', ARGV[i], 'e', ARGV[i + 1])
    if s > published then published = s end
  end
end
redis.call('HSET', KEYS[3], 'published_step', published)
if dropped > 0 then redis.call('HINCRBY', KEYS[3], 'republished_dropped', dropped) end
for k, v in pairs(op.hset) do
  if k ~= 'progress' or (tonumber(cjson.decode(v).step) or 0) >= published then redis.call('HSET', KEYS[3], k, v) end
end
for k, v in pairs(op.queries) do redis.call('HSET', KEYS[6], k, v) end
if ARGV[3] ~= '' then redis.call('SET', KEYS[5], ARGV[3]) end
if op.cid ~= '' then redis.call('HSET', KEYS[3], 'last_commit', op.cid) end
if op.outbox ~= '' then redis.call('ZADD', KEYS[7], op.due, op.outbox) end
if op.release then
  if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
  redis.call('HSET', KEYS[3], 'open', '', 'crashes', 0)
  redis.call('SREM', KEYS[8], op.job)
else
  redis.call('SET', KEYS[2], ARGV[1], 'EX', op.lease_ttl)
end
if redis.call('HGET', KEYS[3], 'cancel_requested') == '1' then return 1 end
return 0
"""

# KEYS: fence, lease, job   ARGV: token, lease ttl
# Extends a live segment's lease during a long step; a no-op once the segment released or was fenced out.
RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('HGET', KEYS[3], 'open') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
return 1
"""

# KEYS: job, lease, outbox, open   ARGV: job id, new ticket, outbox score, now
# The reaper's revival of a job whose segment died: the lease has expired but the segment never released.
# Rotates the ticket (the dead worker's message, if it ever comes back, is then stale), records the new
# segment in the outbox and returns the queue to send it to; '' when there is nothing to do.
REVIVE = f"""
local st = redis.call('HGET', KEYS[1], 'status')
local open = redis.call('HGET', KEYS[1], 'open')
if (not st) or {TERMINAL} or (not open) or open == '' then redis.call('SREM', KEYS[4], ARGV[1]) return '' end
if redis.call('PTTL', KEYS[2]) > 0 then return '' end
redis.call('HSET', KEYS[1], 'ticket', ARGV[2], 'updated_at', ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1] .. '|' .. ARGV[2])
redis.call('SREM', KEYS[4], ARGV[1])
return redis.call('HGET', KEYS[1], 'queue') or 'cpu'
"""

# KEYS: job, outbox   ARGV: outbox member ("job|ticket"), ticket, new score
# The reaper's re-send of a segment whose sender died between recording and sending it. Drops entries whose
# ticket is no longer current (or whose job waits or ended); otherwise re-arms the entry (another reaper waits
# a full period) and returns the queue.
RESEND = f"""
local st = redis.call('HGET', KEYS[1], 'status')
if (not st) or {TERMINAL} or st == 'waiting' or redis.call('HGET', KEYS[1], 'ticket') ~= ARGV[2] then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return ''
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return redis.call('HGET', KEYS[1], 'queue') or 'cpu'
"""

# KEYS: bucket   ARGV: rate (tokens per second), burst
# A token bucket on Redis time: returns 0 when a token was taken, else the milliseconds until one is free.
RATE = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(b[1]), tonumber(b[2])
if not tokens then tokens, ts = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
local wait = 0
if tokens < 1 then wait = math.ceil((1 - tokens) * 1000 / rate) else tokens = tokens - 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return wait
"""
