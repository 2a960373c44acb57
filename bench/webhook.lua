-- wrk script for bench/run.py: POST CoScale events to /webhooks/coscale.
--
--   wrk -t1 -c32 -d10s -s bench/webhook.lua http://127.0.0.1:PORT/webhooks/coscale -- RUN_ID TOKEN
--   wrk -t1 -c16 -d300s -s bench/webhook.lua URL -- RUN_ID TOKEN triggered|resolved N DONE_FILE
--
-- Mode "ingest" (the default): one new trigger per request, for as long as wrk runs. Every
-- request carries a distinct alert_id ("<run id>-t<thread>-<counter>"): a repeated id would be
-- a cheaper no-op for the worker and would not be what CoScale sends in a storm of distinct
-- alerts. wrk runs each thread in its own Lua state, so the counter is per thread and the
-- thread number (handed out in setup(), which runs in the main state) keeps threads apart.
--
-- Modes "triggered" and "resolved": send that action once for each of the alert ids
-- "<run id>-b0" .. "<run id>-b<N-1>" (the backlog run.py then waits on), then stop. Use one
-- thread (-t1) so the ids are not split between threads. Once the N events are sent, idle
-- connections ask GET /healthz (answered 200), twice a second each, until every event has its
-- answer (202, or an error status); then the thread stops, so no event is cut off in flight,
-- and creates DONE_FILE: wrk's main thread sleeps for the whole --duration whatever the threads
-- do, so run.py waits for that file and then ends wrk with SIGINT (wrk then reports as usual).
--
-- wrk calls request() once in the first thread, right after init(), only to check the request
-- it returns; that call must not use up an alert id (setup() flags the thread it will happen in).
--
-- With BENCH_TARGET=alertmanager in the environment, the same modes send Prometheus
-- Alertmanager's alerts instead (POST /api/v2/alerts, one alert per request, the alert id as a
-- label): the peer bench/alertmanager.py measures under the same load. Alertmanager answers an
-- alert with 200, like a filler would, so there the fillers ask a path it answers 404.
--
-- done() prints one line starting with "BENCH_JSON " that run.py parses; wrk's own text report
-- is printed too, for a human reading the raw output.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_number", #threads)
  thread:set("expect_check_call", #threads == 1)
end

-- Globals, not locals: done() reads them from each thread with thread:get().
events_sent = 0
events_answered = 0
events_accepted = 0

local target = os.getenv("BENCH_TARGET") or "coscale"
local filler_path = "/healthz"
local filler_status = 200
if target == "alertmanager" then
  filler_path = "/bench-filler"
  filler_status = 404
end

local counter = 0
local run_id = "run"
local mode = "ingest"
local total = 0
local done_file = nil

function init(args)
  run_id = args[1] or run_id
  local token = args[2] or ""
  mode = args[3] or mode
  total = tonumber(args[4] or "0")
  done_file = args[5]
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. token
end

local function alertmanager_body(alert_id, summary)
  return string.format(
    '[{"labels":{"alertname":"bench","alert_id":"%s","subject":"server bench"},'
      .. '"annotations":{"summary":"%s","metric":"cpu/used"}}]',
    alert_id, summary
  )
end

local function ingest_body()
  if target == "alertmanager" then
    return alertmanager_body(string.format("%s-t%d-%d", run_id, thread_number, counter), "bench ingest")
  end
  return string.format(
    '{"alert_id":"%s-t%d-%d","action":"triggered","message":"bench ingest",'
      .. '"metric":"cpu/used","subject":"server bench-%d","app":"bench","host":"bench-host"}',
    run_id, thread_number, counter, counter % 50
  )
end

local function backlog_body(index)
  if target == "alertmanager" then
    return alertmanager_body(string.format("%s-b%d", run_id, index), "bench backlog")
  end
  if mode == "resolved" then
    return string.format('{"alert_id":"%s-b%d","action":"resolved"}', run_id, index)
  end
  return string.format(
    '{"alert_id":"%s-b%d","action":"triggered","message":"bench backlog",'
      .. '"metric":"cpu/used","subject":"server bench","app":"bench","host":"bench-host"}',
    run_id, index
  )
end

function request()
  if expect_check_call then
    expect_check_call = false
    return wrk.format("GET", filler_path)
  end
  counter = counter + 1
  if mode == "ingest" then
    events_sent = counter
    return wrk.format(nil, nil, nil, ingest_body())
  end
  if counter <= total then
    events_sent = counter
    return wrk.format(nil, nil, nil, backlog_body(counter - 1))
  end
  return wrk.format("GET", filler_path)
end

function delay()
  -- Milliseconds before a connection's next request: none while there are events to send, then
  -- slow /healthz fillers that cost the api next to nothing.
  if mode ~= "ingest" and counter >= total then
    return 500
  end
  return 0
end

function response(status, headers, body)
  -- A filler answers filler_status; an event anything else (2xx, or an error status).
  if mode ~= "ingest" and status ~= filler_status then
    events_answered = events_answered + 1
    if status >= 200 and status < 300 then
      events_accepted = events_accepted + 1
    end
    if events_answered >= total then
      if done_file then
        local marker = io.open(done_file, "w")
        if marker then
          marker:close()
        end
      end
      wrk.thread:stop()
    end
  end
end

function done(summary, latency, requests)
  local sent, answered, accepted = 0, 0, 0
  for _, thread in ipairs(threads) do
    sent = sent + thread:get("events_sent")
    answered = answered + thread:get("events_answered")
    accepted = accepted + thread:get("events_accepted")
  end
  local errors = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"events_sent":%d,"events_answered":%d,"events_accepted":%d,'
      .. '"duration_us":%d,'
      .. '"bytes":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, sent, answered, accepted, summary.duration, summary.bytes,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean
  ))
end
