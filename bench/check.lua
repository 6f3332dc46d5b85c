-- wrk script: POST /v1/check on the allow path (a small export of a
-- non-personal table), with the key from the AIRLOCK_TOKEN environment.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("AIRLOCK_TOKEN")
wrk.body = '{"action":"export","resource":{"type":"Table","id":"prod.orders"},"params":{"sql":"select * from orders limit 100"},"context":{"rows":100}}'
