-- POST tasks round-robin over many users. Args: TOKENS_FILE [QUOTA]
-- TOKENS_FILE has "user token" lines. With QUOTA > 0 the thread sends exactly QUOTA
-- POSTs (then only GET /healthz fillers) and stops once all QUOTA are answered (201 or
-- failed), so no POST is left in flight: used to seed exact numbers of tasks.
-- Counters are globals so that done() can read them with thread:get().
local threads = {}
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

local users, auth = {}, {}
quota, sent, created, failed, n, stopped = 0, 0, 0, 0, 0, false

function init(args)
  for line in io.lines(args[1]) do
    local u, t = line:match("^(%S+)%s+(%S+)$")
    if u then
      users[#users + 1] = u
      auth[#auth + 1] = "Bearer " .. t
    end
  end
  quota = tonumber(args[2] or "0")
  n = id * 1000003
  -- wrk calls request() once on thread 0 before the run, to check the script
  -- (script_verify_request); that request is never sent.
  if id == 0 then sent = -1 end
end

local filler = nil
-- What GET /healthz answers: a filler's answer, not a POST's.
FILLER_ANSWER = '{"status":"ok"}'

function request()
  if quota > 0 and sent >= quota then
    filler = filler or wrk.format("GET", "/healthz")
    return filler
  end
  sent = sent + 1
  n = n + 1
  local i = n % #users + 1
  local body = '{"title":"bench task ' .. n .. '","description":"written by wrk for the taskledger benchmark"}'
  return wrk.format("POST", "/api/" .. users[i] .. "/tasks",
    { ["Authorization"] = auth[i], ["Content-Type"] = "application/json" }, body)
end

function response(status, headers, body)
  if status == 201 then
    created = created + 1
  elseif not (status == 200 and body == FILLER_ANSWER) then
    -- (Anything but a filler's answer answers a POST: a 200 too, a replay.)
    failed = failed + 1
    if failed <= 3 then io.stderr:write("HTTP " .. status .. " " .. body .. "\n") end
  end
  -- Every POST answered, each created or failed: the harness checks the count.
  if quota > 0 and created + failed >= quota and not stopped then
    stopped = true
    wrk.thread:stop()
    -- wrk's main thread sleeps for the whole -d duration regardless: tell the
    -- harness, which interrupts wrk (SIGINT) so that it reports at once.
    io.write("QUOTA_DONE\n")
    io.stdout:flush()
  end
end

function done(summary, latency, requests)
  local c, f = 0, 0
  for _, t in ipairs(threads) do
    c = c + t:get("created")
    f = f + t:get("failed")
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"counters":{"created":%d,"failed":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout, c, f))
end
