"""Lua scripts: every multi-key state change of a job is one atomic script.

Shared by the API's async store and the worker's sync store so both sides enforce the same
invariants (see ``store.JobStore``'s docstring).
"""

from __future__ import annotations

TERMINAL = "st == 'succeeded' or st == 'failed' or st == 'cancelled'"

# KEYS: idem (or a dummy), job, events, tenant_jobs, seq
# ARGV: job_id, body_hash ('' = no idempotency key), idem_ttl, first event json, field/value pairs...
CREATE = """
if ARGV[2] ~= '' then
  local existing = redis.call('GET', KEYS[1])
  if existing then return existing end
  redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2], 'EX', ARGV[3])
end
local seq = redis.call('INCR', KEYS[5])
redis.call('HSET', KEYS[2], 'seq', seq, unpack(ARGV, 5))
redis.call('XADD', KEYS[3], '*', 't', 'status', 'e', ARGV[4])
redis.call('ZADD', KEYS[4], seq, ARGV[1])
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

# KEYS: job, queries, answers, events   ARGV: qid, answer json, new ticket, now, queued-event json
# Returns -1 unknown query, -2 already answered, -3 not the pending query (stale), 1 accepted.
ANSWER = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return -1 end
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return -2 end
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'waiting' or redis.call('HGET', KEYS[1], 'pending_query') ~= ARGV[1] then return -3 end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[1], 'status', 'queued', 'ticket', ARGV[3], 'pending_query', '', 'updated_at', ARGV[4])
redis.call('XADD', KEYS[4], '*', 't', 'status', 'e', ARGV[5])
return 1
"""

# KEYS: fence, lease, job, events   ARGV: ticket, lease ttl, now, running-event json
# Returns {token} on success, or {code, info}: -1 no job, -2 terminal, -3 stale ticket,
# -4 lease held by a live segment (info = its ttl), -5 cancel requested (token given to finish).
ACQUIRE = f"""
local st = redis.call('HGET', KEYS[3], 'status')
if not st then return {{-1, ''}} end
if {TERMINAL} then return {{-2, st}} end
if redis.call('HGET', KEYS[3], 'ticket') ~= ARGV[1] then return {{-3, st}} end
local ttl = redis.call('TTL', KEYS[2])
if ttl > 0 then return {{-4, tostring(ttl)}} end
local token = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], token, 'EX', ARGV[2])
if redis.call('HGET', KEYS[3], 'cancel_requested') == '1' then return {{-5, tostring(token)}} end
if st ~= 'running' then
  redis.call('HSET', KEYS[3], 'status', 'running', 'updated_at', ARGV[3])
  redis.call('XADD', KEYS[4], '*', 't', 'status', 'e', ARGV[4])
end
redis.call('HINCRBY', KEYS[3], 'segments', 1)
return {{token, st}}
"""

# KEYS: fence, lease, job, events, ckpt, queries
# ARGV: token, op json {hset:{...}, queries:{...}, release:bool, lease_ttl, maxlen}, ckpt bytes ('' = keep),
#       then (type, event json) pairs
# Returns -1 fenced out (a newer segment owns the job), -2 job already terminal, 1 cancel requested, 0 ok.
COMMIT = f"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local st = redis.call('HGET', KEYS[3], 'status')
if {TERMINAL} then redis.call('DEL', KEYS[2]) return -2 end
local op = cjson.decode(ARGV[2])
for i = 4, #ARGV, 2 do redis.call('XADD', KEYS[4], 'MAXLEN', '~', op.maxlen, '*', 't', ARGV[i], 'e', ARGV[i + 1]) end
for k, v in pairs(op.hset) do redis.call('HSET', KEYS[3], k, v) end
for k, v in pairs(op.queries) do redis.call('HSET', KEYS[6], k, v) end
if ARGV[3] ~= '' then redis.call('SET', KEYS[5], ARGV[3]) end
if op.release then
  if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
else
  redis.call('SET', KEYS[2], ARGV[1], 'EX', op.lease_ttl)
end
if redis.call('HGET', KEYS[3], 'cancel_requested') == '1' then return 1 end
return 0
"""
