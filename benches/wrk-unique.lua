-- wrk script: POST a Teams activity with a Bot Framework Bearer token, a UNIQUE activity id on every request.
--
-- agentgate deduplicates on (bot, conversation id, activity id): re-posting one body measures the duplicate path
-- after the first request. This script rewrites the activity's top-level "id" to "<prefix>-<thread>-<counter>", so
-- every request is a new activity and goes through the durable commit.
--
-- env: BODY   path of the activity JSON (required)
--      TOKEN  the JWT sent as "Authorization: Bearer ..." (required)
--      ID_PREFIX  prefix of the generated ids (default: wrk-<unix time>); use a different one per wrk run
--                 against the same store, or the later run's ids collide with the earlier run's
--      RESULT optional file that receives the one-line JSON summary written in done() (also written to stderr)
-- usage: BODY=activity.json TOKEN=... wrk -t1 -c32 -d15s -s wrk-unique.lua http://127.0.0.1:3978/api/messages
--
-- Note on wrk's Lua states: the main state runs setup() and done(); every thread has its own state, where the
-- globals set with thread:set() appear only AFTER this file's top level ran. So the per-thread values are read
-- in init() through globals (never `local` at the top level, which would shadow them), and counted per thread
-- in globals that done() reads back with thread:get().

local body_file = assert(os.getenv("BODY"), "BODY not set (path of the activity JSON)")
local token = assert(os.getenv("TOKEN"), "TOKEN not set")
local f = assert(io.open(body_file, "rb"))
local template = f:read("*a")
f:close()

-- Find the value of the top-level "id" key (depth 1, outside strings): returns the byte range of the string value
-- without its quotes, or nil when the object has no top-level id.
local function top_level_id(s)
  local depth, i, n = 0, 1, #s
  while i <= n do
    local c = s:sub(i, i)
    if c == '"' then
      local j = i + 1
      while true do -- end of this string, honouring backslash escapes
        local q = s:find('["\\]', j)
        assert(q, "unterminated string in BODY")
        if s:sub(q, q) == "\\" then j = q + 2 else j = q; break end
      end
      if depth == 1 and s:sub(i, j) == '"id"' then
        local vs = s:match("^%s*:%s*()\"", j + 1)
        assert(vs, 'the top-level "id" of BODY is not a string')
        local ve = vs + 1
        while true do
          local q = assert(s:find('["\\]', ve), "unterminated id in BODY")
          if s:sub(q, q) == "\\" then ve = q + 2 else ve = q; break end
        end
        return vs + 1, ve - 1
      end
      i = j + 1
    else
      if c == "{" or c == "[" then depth = depth + 1 elseif c == "}" or c == "]" then depth = depth - 1 end
      i = i + 1
    end
  end
  return nil
end

local head, tail
do
  local vs, ve = top_level_id(template)
  if vs then
    head, tail = template:sub(1, vs - 1), template:sub(ve + 1)
  else -- no id: add one as the first member
    local open = assert(template:find("{", 1, true), "BODY is not a JSON object")
    head, tail = template:sub(1, open) .. '"id":"', '",' .. template:sub(open + 1)
  end
end

local headers = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token }
local run_prefix = os.getenv("ID_PREFIX") or ("wrk-" .. os.time())

-- ---------------------------------------------------------------- main state
threads = {}
local next_thread = 0

function setup(thread)
  next_thread = next_thread + 1
  thread:set("thread_no", next_thread)
  table.insert(threads, thread)
end

-- ---------------------------------------------------------------- thread states
sent, non2xx = 0, 0
local id_prefix

function init(args)
  id_prefix = run_prefix .. "-" .. tostring(thread_no or 0) .. "-"
end

function request()
  sent = sent + 1
  return wrk.format("POST", nil, headers, head .. id_prefix .. sent .. tail)
end

function response(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
end

-- ---------------------------------------------------------------- main state, after the run
function done(summary, latency, requests)
  local total_sent, total_non2xx = 0, 0
  for _, t in ipairs(threads) do
    total_sent = total_sent + (t:get("sent") or 0)
    total_non2xx = total_non2xx + (t:get("non2xx") or 0)
  end
  local e = summary.errors
  local line = string.format(
    '{"requests":%d,"duration_us":%d,"rps":%.1f,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,' ..
    '"non2xx":%d,"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,"errors":%d,' ..
    '"ids_sent":%d,"id_prefix":"%s"}',
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    total_non2xx, e.connect, e.read, e.write, e.status, e.timeout,
    total_non2xx + e.connect + e.read + e.write + e.timeout,
    total_sent, run_prefix)
  local out = os.getenv("RESULT")
  if out and out ~= "" then
    local o = assert(io.open(out, "w"))
    o:write(line .. "\n")
    o:close()
  end
  io.stderr:write(line .. "\n")
end
