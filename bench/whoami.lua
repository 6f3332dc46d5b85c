-- wrk script: GET /v1/whoami with the key from the AIRLOCK_TOKEN
-- environment: Airlock's HTTP stack and key lookup, with no decision and
-- no audit record (what the allow path costs beyond them).
wrk.method = "GET"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("AIRLOCK_TOKEN")
