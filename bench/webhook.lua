-- wrk script for bench/run.py: POST one CoScale trigger per request to /webhooks/coscale.
--
-- Usage: wrk -t1 -c32 -d10s -s bench/webhook.lua http://127.0.0.1:PORT/webhooks/coscale -- RUN_ID TOKEN
--
-- Every request carries a distinct alert_id ("<run id>-t<thread>-<counter>"): a repeated id
-- would be a cheaper no-op for the worker later and would not measure what CoScale sends in a
-- storm of distinct alerts. wrk runs each thread in its own Lua state, so the counter is per
-- thread and the thread number (handed out in setup(), which runs in the main state) keeps ids
-- from two threads apart.
--
-- done() prints one line starting with "BENCH_JSON " that run.py parses; wrk's own text report
-- is printed too, for a human reading the raw output.

local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_number", thread_count)
end

local counter = 0
local run_id = "run"

function init(args)
  run_id = args[1] or run_id
  local token = args[2] or ""
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. token
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"alert_id":"%s-t%d-%d","action":"triggered","message":"bench ingest",'
      .. '"metric":"cpu/used","subject":"server bench-%d","app":"bench","host":"bench-host"}',
    run_id, thread_number, counter, counter % 50
  )
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean
  ))
end
