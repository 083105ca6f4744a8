-- wrk script: replays pre-signed webhook requests (one per line: signature \t timestamp \t body),
-- each wrk thread its own share, so every request carries events never seen before.
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local file = args[1]
  local nthreads = tonumber(args[2])
  reqs = {}
  local i = 0
  for line in io.lines(file) do
    if i % nthreads == id then
      local sig, ts, body = line:match("^([^\t]+)\t([^\t]+)\t(.*)$")
      local headers = {}
      headers["Content-Type"] = "application/json"
      headers["X-HubSpot-Signature-v3"] = sig
      headers["X-HubSpot-Request-Timestamp"] = ts
      table.insert(reqs, wrk.format("POST", "/webhooks/hubspot", headers, body))
    end
    i = i + 1
  end
  pos = 0
  non2xx = 0
end

function request()
  pos = pos + 1
  if pos > #reqs then pos = 1 end
  return reqs[pos]
end

function response(status, headers, body)
  if status ~= 200 then non2xx = non2xx + 1 end
end
